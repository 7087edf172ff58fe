"""
The Debian packages, end to end (CTest entry package_package, label
`package`): built from the tree with deploy/package.sh (twice: the tree's
version and a higher one for the upgrade), checked with lintian, installed on
this machine with apt-get, run, upgraded, removed and purged; then installed
in a container booted under a real systemd and run as services.

On the host (PID 1 is not systemd, so nothing starts the units): the files
land where Debian wants them; the installed daemons, set up with the
installed orderctl (db create, token init) and run with the installed
environment files (edited as an operator would: broker, database, port),
settle an order against the test broker and PostgreSQL; an upgrade keeps the
edited conffiles; remove keeps them; purge removes them and /etc/orders.
Everything installed is purged at the end, also when a test failed.

In the container (debootstrap --variant=minbase, cached under
.run/pkg-systemd-root/; systemd-nspawn --boot on the host's network): a fresh
install neither enables nor starts anything; `systemctl start` returns only
after READY=1 (and a daemon that cannot reach Kafka stays "activating");
an order settles through the three services; `systemctl reload` brings in a
new token; LoadCredential= delivers the HTTP TLS key and the pgpass file;
SIGKILL and a SIGSTOP (watchdog) are answered with a restart; journalctl -u
shows the daemons' lines with their priorities; an upgrade restarts the
running services and leaves a stopped one stopped; `systemctl stop` ends
each with exit 0; remove stops them.

Not asserted in the container (not enforced there: its cgroup controllers are
read-only): MemoryMax=, TasksMax=, IPAddressDeny=.

Needs root, apt-get, and the network to deb.debian.org the first time (build
dependencies, the container's root). The tests run in file order and build on
each other.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import requests

from conftest import (KAFKA_SH, PG_SH, RUN_DIR, TOPICS_SH, Daemon, kafka_sh_env, make_pki,
                      parse_assignments, run_script, wait_until)
from nspawn import Container, ensure_root

ROOT = Path(__file__).resolve().parents[2]
OFFSET = int(os.environ.get("TEST_PORT_OFFSET", "0"))
WORK = RUN_DIR / f"test-package{OFFSET}"
KAFKA_DIR = RUN_DIR / f"test-package-kafka{OFFSET}"
KAFKA_PORT = 19092 + OFFSET
DAEMONS = {"order-service": (18080 + OFFSET, "orders"),
           "payment-service": (18081 + OFFSET, "payments"),
           "inventory-service": (18082 + OFFSET, "inventory")}
PACKAGES = ["orders-common", *DAEMONS, "orderctl", "orders-bench"]
DB_HOST = f"test{OFFSET}_pkg_"  # databases of the host part
DB_CT = f"test{OFFSET}_pkgct_"  # and of the container part
CONF = Path("/etc/orders")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs packages: needs root")


def sh(args, check=True, timeout=600, env=None):
    cp = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                        env=env)
    if check and cp.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {cp.returncode}\n"
                             f"stdout:\n{cp.stdout[-4000:]}\nstderr:\n{cp.stderr[-4000:]}")
    return cp


def tree_version():
    text = (ROOT / "CMakeLists.txt").read_text()
    return re.search(r"project\(event-driven-orders VERSION ([0-9.]+)", text).group(1)


def upgrade_version(v):
    parts = v.split(".")
    return ".".join(parts + ["1"]) if len(parts) < 4 else ".".join(
        parts[:3] + [str(int(parts[3]) + 1)])


def debs(d):
    return sorted(str(p) for p in Path(d).glob("*.deb") if "-dbgsym_" not in p.name)


def apt(*args):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return sh(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "-o",
               "Dpkg::Options::=--force-confold", *args], env=env)


def installed(pkg):
    cp = sh(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", pkg], check=False)
    return cp.stdout.strip() if cp.returncode == 0 else ""


def known(pkg):
    """Installed, or its configuration left (dpkg still knows it)."""
    return installed(pkg).split(" ")[0] not in ("", "not-installed")


def purge_all():
    present = [p for p in PACKAGES if known(p)]
    if present:
        apt("purge", *present)


def read_env_file(path):
    """A systemd EnvironmentFile= as systemd reads it (KEY=VALUE, '#'/';'
    comments, optional quotes)."""
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        env[k.strip()] = v
    return env


def edit_env_file(path, values):
    """Sets KEY=VALUE lines in place (replacing the active line), as an operator would."""
    lines = Path(path).read_text().splitlines()
    for k, v in values.items():
        for i, line in enumerate(lines):
            if line.startswith(k + "="):
                lines[i] = f"{k}={v}"
                break
        else:
            lines.append(f"{k}={v}")
    Path(path).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def built():
    """Both builds: the tree's version (with lintian) and a higher one."""
    WORK.mkdir(parents=True, exist_ok=True)
    v1, v2 = tree_version(), upgrade_version(tree_version())
    package_sh = ROOT / "deploy" / "package.sh"
    out1 = sh([package_sh, "--out", WORK / "v1", "-j", "2"], timeout=1200)
    out2 = sh([package_sh, "--out", WORK / "v2", "-j", "2", "--version", v2, "--no-lintian"],
              timeout=1200)
    return {"v1": v1, "v2": v2, "debs1": debs(WORK / "v1"), "debs2": debs(WORK / "v2"),
            "lintian": (WORK / "v1" / "lintian.txt").read_text(), "log": out1.stderr + out2.stderr}


@pytest.fixture(scope="module")
def infra():
    """The test broker (own folder and port) with the topics, and PostgreSQL."""
    out = run_script([PG_SH, "ensure"])
    pg = {k: v for k, v in parse_assignments(out).items() if k.startswith("PG")}
    run_script([KAFKA_SH, "clean", "--dir", KAFKA_DIR], env=kafka_sh_env(), check=False)
    try:
        out = run_script([KAFKA_SH, "start", "--dir", KAFKA_DIR, "--port", KAFKA_PORT],
                         env=kafka_sh_env())
        bootstrap = parse_assignments(out)["bootstrap"]
        run_script([TOPICS_SH, "--bootstrap", bootstrap, "--partitions", 3])
        yield {"pg": pg, "bootstrap": bootstrap}
    finally:
        run_script([KAFKA_SH, "stop", "--dir", KAFKA_DIR], env=kafka_sh_env(), check=False,
                   timeout=120)


def drop_dbs(pg, prefix):
    with psycopg.connect(f"host={pg['PGHOST']} port={pg['PGPORT']} user={pg['PGUSER']} "
                         "dbname=postgres", autocommit=True) as c:
        for _, db in DAEMONS.values():
            c.execute(f'DROP DATABASE IF EXISTS "{prefix}{db}" WITH (FORCE)')
            c.execute(f'DROP ROLE IF EXISTS "{prefix}{db}"')


@pytest.fixture(scope="module")
def host(built, infra):
    """The packages on this machine: purged before (a killed earlier run) and
    always after; /etc/orders must not be there before, and is not after."""
    purge_all()
    assert not CONF.exists(), f"{CONF} exists before the test: not ours, not touching it"
    drop_dbs(infra["pg"], DB_HOST)
    state = {"daemons": {}}
    try:
        yield state
    finally:
        for d in state["daemons"].values():
            d.terminate()
        purge_all()
        shutil.rmtree(CONF, ignore_errors=True)


def start_installed(state, name, env_file):
    port = DAEMONS[name][0]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **read_env_file(env_file)}
    d = Daemon(name, f"/usr/sbin/{name}", port, env, WORK / f"host-{name}.log")
    state["daemons"][name] = d
    return d.start()


def api(port, token, method, path, **kw):
    return requests.request(method, f"http://127.0.0.1:{port}{path}",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10, **kw)


def place_order(ports, tokens, order_scheme="http", verify=True):
    """Funds a customer, stocks a SKU, posts an order to order-service (over
    order_scheme); returns (order id, a function returning the order)."""
    o, p, i = ports
    cust, sku = f"c-{time.monotonic_ns()}", f"sku-{time.monotonic_ns()}"
    admin, orders = tokens["ADMIN_TOKEN"], tokens["ORDERS_TOKEN"]
    assert api(p, admin, "PUT", f"/accounts/{cust}",
               json={"balanceCents": 5000}).status_code == 200
    assert api(i, admin, "PUT", f"/stock/{sku}", json={"available": 3}).status_code == 200
    base = f"{order_scheme}://127.0.0.1:{o}"
    auth = {"Authorization": f"Bearer {orders}"}
    r = requests.post(f"{base}/orders", headers=auth, verify=verify, timeout=10,
                      json={"customerId": cust, "sku": sku, "quantity": 1, "amountCents": 1200})
    assert r.status_code == 202, r.text
    oid = r.json()["orderId"]

    def get():
        return requests.get(f"{base}/orders/{oid}", headers=auth, verify=verify,
                            timeout=10).json()
    return oid, get


# ---------------------------------------------------------------- build


def test_version_is_the_projects_and_the_changelogs(built):
    v1, v2 = built["v1"], built["v2"]
    head = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert head.startswith(f"event-driven-orders ({v1}) "), head
    names = {Path(p).name.split("_")[0] for p in built["debs1"]}
    assert names == set(PACKAGES)
    for p in built["debs1"]:
        assert sh(["dpkg-deb", "-f", p, "Version"]).stdout.strip() == v1
    for p in built["debs2"]:
        assert sh(["dpkg-deb", "-f", p, "Version"]).stdout.strip() == v2


def test_package_sh_refuses_a_version_that_is_not_an_upgrade():
    for v, why in (("0.0.1", "not higher"), ("1.x", "numeric")):
        r = sh([ROOT / "deploy" / "package.sh", "--version", v, "--out", WORK / "refused"],
               check=False)
        assert r.returncode == 1 and why in r.stderr, r.stderr
    assert not (WORK / "refused").exists()


def test_lintian_finds_no_errors_and_each_warning_is_documented(built):
    lines = [ln for ln in built["lintian"].splitlines() if re.match(r"^[EWX]: ", ln)]
    assert not [ln for ln in lines if ln.startswith(("E:", "X:"))], built["lintian"]
    readme = (ROOT / "deploy" / "README.md").read_text()
    for ln in lines:
        tag = ln.split()[2]
        assert f"`{tag}`" in readme, f"lintian warning {tag} is not explained in deploy/README.md"


def test_each_daemon_depends_on_what_it_links(built):
    for p in built["debs1"]:
        name = Path(p).name.split("_")[0]
        depends = sh(["dpkg-deb", "-f", p, "Depends"]).stdout
        if name in DAEMONS:
            for lib in ("librdkafka1", "libpq5", "libjansson4", "libmicrohttpd12"):
                assert lib in depends, f"{name}: Depends lacks {lib}: {depends}"
            assert "orders-common (= " in depends


# ---------------------------------------------------------------- on the host


def test_install_puts_each_file_where_debian_wants_it(built, host):
    apt("install", "--no-install-recommends", *built["debs1"])
    for name in DAEMONS:
        assert installed(name) == f"installed {built['v1']}"
        exe = Path(f"/usr/sbin/{name}")
        assert stat.S_IMODE(exe.stat().st_mode) == 0o755
        unit = Path(f"/usr/lib/systemd/system/{name}.service").read_text()
        assert f"ExecStart=/usr/sbin/{name}\n" in unit
        assert f"EnvironmentFile=/etc/orders/{name}.env\n" in unit
        conf = CONF / f"{name}.env"
        st = conf.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
        assert str(conf) in sh(["dpkg-query", "-W", "-f=${Conffiles}", name]).stdout
        assert Path(f"/usr/share/man/man8/{name}.8.gz").is_file()
        # Not enabled: no wants link, nothing recorded as enabled.
        assert not Path(f"/etc/systemd/system/multi-user.target.wants/{name}.service").exists()
    for tool in ("orderctl", "orders-bench"):
        assert stat.S_IMODE(Path(f"/usr/bin/{tool}").stat().st_mode) == 0o755
        assert Path(f"/usr/share/man/man1/{tool}.1.gz").is_file()
        sh([f"/usr/bin/{tool}", "--version"])
    assert Path("/usr/share/orders/prometheus/alerts.yml").is_file()
    assert Path("/usr/share/doc/orders/examples/credentials.conf.example").is_file()
    assert Path("/usr/share/doc/orders/README.md").is_file()
    assert stat.S_IMODE(CONF.stat().st_mode) == 0o755
    assert sorted(p.name for p in CONF.iterdir()) == sorted(f"{n}.env" for n in DAEMONS)
    assert sh(["/usr/sbin/order-service", "--version"]).stdout.split() == [
        "order-service", built["v1"]]
    for name in DAEMONS:
        page = sh(["man", "-l", "-Tutf8", f"/usr/share/man/man8/{name}.8.gz"], check=False)
        if page.returncode == 0:  # man-db is not everywhere
            assert "/etc/orders/" in page.stdout


def test_installed_daemons_set_up_with_orderctl_settle_an_order(built, host, infra):
    pg = infra["pg"]
    admin = f"host={pg['PGHOST']} port={pg['PGPORT']} user={pg['PGUSER']} dbname=postgres"
    for name, (port, db) in DAEMONS.items():
        passfile = CONF / "credentials" / name / "pgpass"
        out = sh(["/usr/bin/orderctl", "db", "create", name, "--admin", admin,
                  "--database", DB_HOST + db, "--pgpass", passfile]).stdout
        url = parse_assignments(out)["DATABASE_URL"]
        assert f"dbname={DB_HOST}{db} user={DB_HOST}{db}" in url
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        # No systemd here: the password file by its path (root runs the daemon).
        edit_env_file(CONF / f"{name}.env", {"KAFKA_BOOTSTRAP_SERVERS": infra["bootstrap"],
                                              "DATABASE_URL": url, "HTTP_PORT": port,
                                              "PGPASSFILE": passfile})
    tokens = parse_assignments(sh(["/usr/bin/orderctl", "token", "init"]).stdout)
    host["tokens"] = tokens
    assert stat.S_IMODE((CONF / "tokens").stat().st_mode) == 0o644
    for name in DAEMONS:
        start_installed(host, name, CONF / f"{name}.env")
    for d in host["daemons"].values():
        d.wait_ready(60)
    oid, get = place_order([p for p, _ in DAEMONS.values()], tokens)
    order = wait_until(lambda: (get()["status"] == "CONFIRMED", get()), 60,
                       f"order {oid} confirmed")[1]
    host["order"] = oid
    assert order["status"] == "CONFIRMED"
    for d in host["daemons"].values():
        d.stop()


def test_upgrade_keeps_the_edited_configuration(built, host):
    before = {n: (CONF / f"{n}.env").read_text() for n in DAEMONS}
    tokens_before = (CONF / "tokens").read_text()
    apt("install", "--no-install-recommends", *built["debs2"])
    for name in DAEMONS:
        assert installed(name) == f"installed {built['v2']}"
        assert (CONF / f"{name}.env").read_text() == before[name]
        assert stat.S_IMODE((CONF / f"{name}.env").stat().st_mode) == 0o600
    assert (CONF / "tokens").read_text() == tokens_before
    leftovers = [p.name for p in CONF.iterdir() if re.search(r"\.dpkg-", p.name)]
    assert not leftovers
    assert sh(["/usr/sbin/payment-service", "--version"]).stdout.split() == [
        "payment-service", built["v2"]]
    # The upgraded daemons run on the kept configuration and find the order.
    for name in DAEMONS:
        start_installed(host, name, CONF / f"{name}.env")
    for d in host["daemons"].values():
        d.wait_ready(60)
    r = api(DAEMONS["order-service"][0], host["tokens"]["ORDERS_TOKEN"], "GET",
            f"/orders/{host['order']}")
    assert r.status_code == 200 and r.json()["status"] == "CONFIRMED", r.text
    for d in host["daemons"].values():
        d.stop()


def test_remove_keeps_configuration_and_purge_removes_it(built, host):
    files = {p: set(sh(["dpkg-query", "-L", p]).stdout.split()) for p in PACKAGES}
    apt("remove", *PACKAGES)
    for name in DAEMONS:
        assert installed(name).startswith("config-files")
        assert not Path(f"/usr/sbin/{name}").exists()
        assert not Path(f"/usr/lib/systemd/system/{name}.service").exists()
        assert (CONF / f"{name}.env").is_file()
        assert (CONF / "credentials" / name / "pgpass").is_file()
    assert (CONF / "tokens").is_file()  # orders-common's, until purge

    # The tools have no conffiles: "remove" removed them completely.
    assert not known("orderctl") and not known("orders-bench")
    apt("purge", *[p for p in PACKAGES if known(p)])
    for p in PACKAGES:
        assert not known(p), installed(p)
    assert not CONF.exists(), sorted(str(p) for p in CONF.rglob("*"))
    left = [f for fs in files.values() for f in fs
            if Path(f).is_file() and not Path(f).is_symlink()]
    assert not left, f"files of the packages left after purge: {left}"
    state = Path("/var/lib/systemd/deb-systemd-helper-enabled")
    assert not [p for p in state.rglob("*") if any(n in p.name for n in DAEMONS)]


# ---------------------------------------------------------------- under systemd


@pytest.fixture(scope="module")
def ct(built, infra):
    """A booted container with the v1 packages installed and set up like a
    host: databases with passwords (pgpass credentials), the token file,
    order-service on HTTPS with its key as a credential."""
    sh([ROOT / "deploy" / "install-deps.sh", "--container"])
    libs = set()
    for p in built["debs1"]:
        for dep in sh(["dpkg-deb", "-f", p, "Depends"]).stdout.split(","):
            name = dep.split("|")[0].split("(")[0].strip()
            if name and not name.startswith(("orders-", "$")) and name not in PACKAGES:
                libs.add(name)
    lower = ensure_root(RUN_DIR / "pkg-systemd-root", libs, WORK / "debootstrap.log")
    drop_dbs(infra["pg"], DB_CT)
    c = Container(f"orders-pkg-{OFFSET}", lower, WORK / "container",
                  binds=[(WORK / "v1", "/debs1"), (WORK / "v2", "/debs2")])
    try:
        c.boot()
        yield c
    finally:
        rc = c.stop()
        assert rc == 0, f"systemd-nspawn exited {rc} on SIGTERM\n{c.log_path}"


def ctl(c, *args, check=True):
    return c.run(["systemctl", *args], check=check)


def show(c, unit, *props):
    out = ctl(c, "show", unit, "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def ct_debs(version_dir, built):
    key = "debs1" if version_dir == "/debs1" else "debs2"
    return [f"{version_dir}/{Path(p).name}" for p in built[key]
            if not Path(p).name.startswith("orders-bench")]


def test_container_install_neither_enables_nor_starts(built, ct):
    ct.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *ct_debs("/debs1", built)],
           timeout=300)
    for name in DAEMONS:
        s = show(ct, name, "ActiveState", "UnitFileState", "FragmentPath")
        assert s["ActiveState"] == "inactive", s
        assert s["UnitFileState"] == "disabled", s
        assert s["FragmentPath"].endswith(f"/systemd/system/{name}.service")


def test_container_setup_then_start_is_active_only_after_ready(built, ct, infra):
    pg = infra["pg"]
    admin = f"host=127.0.0.1 port={pg['PGPORT']} user={pg['PGUSER']} dbname=postgres"
    (WORK / "pki").mkdir(parents=True, exist_ok=True)
    pki = make_pki(WORK / "pki")
    for name, (port, db) in DAEMONS.items():
        out = ct.run(["orderctl", "db", "create", name, "--admin", admin, "--database",
                      DB_CT + db, "--pgpass", f"/etc/orders/credentials/{name}/pgpass"]).stdout
        url = parse_assignments(out)["DATABASE_URL"]
        env_file = ct.path(f"/etc/orders/{name}.env")
        edit_env_file(env_file, {"KAFKA_BOOTSTRAP_SERVERS": infra["bootstrap"],
                                 "DATABASE_URL": url, "HTTP_PORT": port})
        dropin = ["[Service]",
                  f"LoadCredential=pgpass:/etc/orders/credentials/{name}/pgpass",
                  "Environment=PGPASSFILE=%d/pgpass"]
        if name == "inventory-service":  # the one the watchdog test stops
            dropin.append("WatchdogSec=10s")  # the unit's own is 30 s: too long for a test
        if name == "order-service":
            shutil.copy(pki / "server.pem", ct.path("/etc/orders/order-service.crt"))
            os.chmod(ct.path("/etc/orders/order-service.crt"), 0o644)
            key = ct.path("/etc/orders/credentials/order-service/http-tls-key.pem")
            shutil.copy(pki / "server.key", key)
            os.chmod(key, 0o600)
            edit_env_file(env_file, {"HTTP_TLS_CERT": "/etc/orders/order-service.crt"})
            dropin += ["LoadCredential=http-tls-key:/etc/orders/credentials/%N/http-tls-key.pem",
                       "Environment=HTTP_TLS_KEY=%d/http-tls-key"]
        d = ct.path(f"/etc/systemd/system/{name}.service.d")
        d.mkdir(parents=True, exist_ok=True)
        (d / "test.conf").write_text("\n".join(dropin) + "\n")
    ct.tokens = parse_assignments(ct.run(["orderctl", "token", "init"]).stdout)
    ctl(ct, "daemon-reload")

    # A daemon that cannot reach Kafka never says READY=1: it stays activating.
    # (A second EnvironmentFile=: it beats the first; Environment= would not.)
    d = ct.path("/etc/systemd/system/payment-service.service.d")
    ct.path("/etc/orders/nokafka.env").write_text("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9\n")
    (d / "nokafka.conf").write_text("[Service]\nEnvironmentFile=/etc/orders/nokafka.env\n")
    ctl(ct, "daemon-reload")
    ctl(ct, "start", "--no-block", "payment-service")
    time.sleep(6)
    s = show(ct, "payment-service", "ActiveState", "SubState", "StatusText", "MainPID")
    assert (s["ActiveState"], s["SubState"]) == ("activating", "start"), s
    assert int(s["MainPID"]) > 0
    ctl(ct, "stop", "payment-service")
    (d / "nokafka.conf").unlink()
    ct.path("/etc/orders/nokafka.env").unlink()
    ctl(ct, "daemon-reload")

    for name in DAEMONS:
        ctl(ct, "start", name)  # returns once the unit is active: after READY=1
        s = show(ct, name, "ActiveState", "SubState", "Type", "StatusText", "MainPID")
        assert (s["ActiveState"], s["SubState"], s["Type"]) == ("active", "running", "notify"), s
        assert s["StatusText"].startswith("ready"), s
        # No polling: ready the moment systemctl start returned.
        port = DAEMONS[name][0]
        scheme = "https" if name == "order-service" else "http"
        r = requests.get(f"{scheme}://127.0.0.1:{port}/readyz", timeout=5, verify=pki / "ca.pem")
        assert r.status_code == 200, (name, r.text)
        # DynamicUser: not root.
        uid = ct.sh(f"grep ^Uid: /proc/{s['MainPID']}/status").stdout.split()[1]
        assert uid != "0"


def test_container_order_settles_and_credentials_reach_the_daemons(ct):
    ports = [p for p, _ in DAEMONS.values()]
    ca = WORK / "pki" / "ca.pem"
    oid, get = place_order(ports, ct.tokens, order_scheme="https", verify=ca)
    wait_until(lambda: (get()["status"] == "CONFIRMED", get()), 60,
               f"order {oid} confirmed through the services")
    for name in DAEMONS:
        pid = show(ct, name, "MainPID")["MainPID"]
        creds = ct.sh(f"ls -l /run/credentials/{name}.service/").stdout
        assert "pgpass" in creds, creds
        env = ct.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.splitlines()
        assert f"PGPASSFILE=/run/credentials/{name}.service/pgpass" in env
        assert f"CREDENTIALS_DIRECTORY=/run/credentials/{name}.service" in env
    # The TLS key reached order-service as a credential: it serves HTTPS (above).
    assert "http-tls-key" in ct.sh("ls /run/credentials/order-service.service/").stdout


def test_container_reload_rereads_the_token_file(ct):
    port = DAEMONS["payment-service"][0]
    new = ct.run(["orderctl", "token", "new", "--name", "late", "--scope",
                  "payments:read"]).stdout.splitlines()
    token, line = new[0], new[1]

    def status():
        return requests.get(f"http://127.0.0.1:{port}/accounts/nobody", timeout=5,
                            headers={"Authorization": f"Bearer {token}"}).status_code
    assert status() == 401
    with open(ct.path("/etc/orders/tokens"), "a") as f:
        f.write(line + "\n")
    pid = show(ct, "payment-service", "MainPID")["MainPID"]
    ctl(ct, "reload", "payment-service")
    wait_until(lambda: (status() == 404, status()), 20,
               "the new token accepted after systemctl reload")
    assert show(ct, "payment-service", "MainPID")["MainPID"] == pid  # no restart


def wait_restarted(ct, name, old_pid, timeout=60):
    def again():
        s = show(ct, name, "ActiveState", "MainPID", "NRestarts", "Result")
        return s["ActiveState"] == "active" and s["MainPID"] not in ("0", old_pid), s
    return wait_until(again, timeout, f"{name} restarted by systemd")[1]


def test_container_sigkill_is_answered_with_a_restart(ct):
    s = show(ct, "payment-service", "MainPID", "NRestarts")
    ct.run(["kill", "-KILL", s["MainPID"]])
    after = wait_restarted(ct, "payment-service", s["MainPID"])
    assert int(after["NRestarts"]) == int(s["NRestarts"]) + 1


def test_container_watchdog_restarts_a_hung_daemon(ct):
    s = show(ct, "inventory-service", "MainPID", "NRestarts")
    ct.run(["kill", "-STOP", s["MainPID"]])
    wait_restarted(ct, "inventory-service", s["MainPID"], timeout=60)
    log = ct.run(["journalctl", "-u", "inventory-service", "--no-pager", "-o", "cat"]).stdout
    assert "Watchdog timeout" in log, log[-2000:]


def test_container_journal_has_the_daemons_lines(ct):
    out = ct.run(["journalctl", "-u", "order-service", "-o", "json", "--no-pager"]).stdout
    entries = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    own = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "order-service"]
    assert own, entries[-5:]
    assert any(e.get("MESSAGE", "").endswith("ready") or " ready" in e.get("MESSAGE", "")
               for e in own), [e.get("MESSAGE") for e in own][-20:]
    # The <N> prefix became the priority (info = 6), not part of the text.
    assert all(not str(e.get("MESSAGE", "")).startswith("<") for e in own)
    assert {e.get("PRIORITY") for e in own} & {"6"}


def test_container_upgrade_restarts_running_services_only(built, ct):
    ctl(ct, "stop", "payment-service")
    before = {n: show(ct, n, "MainPID")["MainPID"] for n in DAEMONS}
    ct.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
            *ct_debs("/debs2", built)], timeout=300)
    s = show(ct, "order-service", "ActiveState", "MainPID")
    assert s["ActiveState"] == "active" and s["MainPID"] != before["order-service"], s
    s = show(ct, "inventory-service", "ActiveState", "MainPID")
    assert s["ActiveState"] == "active" and s["MainPID"] != before["inventory-service"], s
    assert show(ct, "payment-service", "ActiveState")["ActiveState"] == "inactive"
    ver = ct.run(["order-service", "--version"]).stdout.split()
    assert ver == ["order-service", built["v2"]]
    ctl(ct, "start", "payment-service")


def test_container_stop_ends_each_cleanly_and_remove_stops(built, ct):
    for name in ("order-service", "payment-service"):
        since = ct.run(["date", "+%Y-%m-%d %H:%M:%S"]).stdout.strip()
        ctl(ct, "stop", name)
        s = show(ct, name, "ActiveState", "Result")
        # Result=success: exit 0 on SIGTERM within TimeoutStopSec (a non-zero
        # exit gives exit-code, a SIGKILL after the timeout gives timeout).
        assert (s["ActiveState"], s["Result"]) == ("inactive", "success"), s
        log = ct.run(["journalctl", "-u", name, "--since", since, "--no-pager", "-o",
                      "cat"]).stdout
        assert "Deactivated successfully" in log and "Killing" not in log, log
    assert show(ct, "inventory-service", "ActiveState")["ActiveState"] == "active"
    ct.run(["apt-get", "remove", "-y", "-q", "inventory-service"], timeout=300)
    s = show(ct, "inventory-service", "ActiveState", "Result", "ExecMainStatus")
    assert s["ActiveState"] == "inactive" and s["Result"] == "success", s
    assert ct.path("/etc/orders/inventory-service.env").is_file()
