"""
Deployment files: the systemd units, the example environment files and the
Prometheus alert rules under deploy/. Needs no stack (no Kafka, no database):
only the built daemons, systemd-analyze (Debian package systemd) and promtool
(Debian package prometheus).

Each unit is generated from its deploy/systemd/<name>.service.in the way
CMake's configure_file does, except that ExecStart= names the daemon in the
build tree: `systemd-analyze verify` checks that the binary exists.

Environment:
  ORDERS_BUILD_DIR  build tree with the binaries (default <root>/build/dev)
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("ORDERS_BUILD_DIR", ROOT / "build" / "dev"))
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SERVICES = ["order-service", "payment-service", "inventory-service"]
MAX_EXPOSURE = 2.0

# What configure_file substitutes at install time, for a /usr prefix.
INSTALL_VARS = {
    "CMAKE_INSTALL_FULL_SYSCONFDIR": "/etc",
    "CMAKE_INSTALL_FULL_DATADIR": "/usr/share",
}
# Words in systemd-analyze verify's output that mean the unit is not right
# ("Unknown key name", "Failed to parse", "Ignoring", ...).
BAD_OUTPUT = re.compile(r"fail|unknown|ignor|invalid|deprecated|not found|missing",
                        re.IGNORECASE)


def tool(name, package):
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                  else None)
    if path is None:
        pytest.fail(f"{name} is not installed: install the Debian package '{package}' "
                    f"(deploy/install-deps.sh does)", pytrace=False)
    return path


def binary(name):
    path = BUILD_DIR / name / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build first (cmake --preset dev && "
                    f"cmake --build build/dev), or set ORDERS_BUILD_DIR", pytrace=False)
    return path


def generate(name, out_dir, exec_start=None):
    """The unit configured from its template, with ExecStart= rewritten to the
    daemon in the build tree (or to exec_start); returns its path."""
    text = (SYSTEMD_DIR / f"{name}.service.in").read_text()
    placeholder = f"ExecStart=@CMAKE_INSTALL_FULL_SBINDIR@/{name}\n"
    assert placeholder in text, f"{name}.service.in must have {placeholder.strip()}"
    text = text.replace(placeholder, f"ExecStart={exec_start or binary(name)}\n")
    for var, value in INSTALL_VARS.items():
        text = text.replace(f"@{var}@", value)
    left = re.findall(r"@[A-Za-z_]+@", text)
    assert not left, f"{name}.service.in: no test value for {sorted(set(left))}"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.service"
    path.write_text(text)
    return path


DROPIN = SYSTEMD_DIR / "credentials.conf.example"


def run(*argv, unit_path=None):
    """unit_path: a folder systemd searches for units and their drop-ins
    (<unit>.d/*.conf) too."""
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="", LC_ALL="C.UTF-8")
    if unit_path:
        env["SYSTEMD_UNIT_PATH"] = f"{unit_path}:"  # trailing ':': and the defaults
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def with_dropin(name, out_dir, text=None):
    """The unit generated into out_dir with the credentials drop-in example
    installed next to it as <unit>.d/credentials.conf."""
    unit = generate(name, out_dir)
    d = out_dir / f"{name}.service.d"
    d.mkdir(exist_ok=True)
    (d / "credentials.conf").write_text(DROPIN.read_text() if text is None else text)
    return unit


def directives(path):
    """[Section] Key=value lines of a unit file as {key: [values...]}."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def analyze():
    return tool("systemd-analyze", "systemd")


@pytest.mark.parametrize("name", SERVICES)
def test_unit_verifies(name, analyze, tmp_path):
    unit = generate(name, tmp_path)
    r = run(analyze, "verify", str(unit))
    output = (r.stdout + r.stderr).strip()
    assert r.returncode == 0, f"systemd-analyze verify {unit} exited {r.returncode}:\n{output}"
    bad = [line for line in output.splitlines() if BAD_OUTPUT.search(line)]
    assert not bad, f"systemd-analyze verify {unit} complains:\n{output}"


def test_verify_catches_mistakes(analyze, tmp_path):
    """The check above is not vacuous here: a misspelt key and a missing
    binary are reported (also without systemd as PID 1)."""
    unit = generate("order-service", tmp_path / "typo")
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSytem="))
    r = run(analyze, "verify", str(unit))
    assert "ProtectSytem" in r.stdout + r.stderr, r.stdout + r.stderr

    unit = generate("order-service", tmp_path / "nobin", exec_start=tmp_path / "no-such-daemon")
    r = run(analyze, "verify", str(unit))
    assert r.returncode != 0 or BAD_OUTPUT.search(r.stdout + r.stderr), \
        f"verify accepted a missing ExecStart binary:\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("name", SERVICES)
def test_unit_exposure(name, analyze, tmp_path):
    unit = generate(name, tmp_path)
    r = run(analyze, "security", "--offline=yes", "--no-pager", str(unit))
    output = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert m, f"systemd-analyze security printed no exposure level (exit {r.returncode}):\n{output}"
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, \
        f"{name}: exposure {exposure} > {MAX_EXPOSURE} (lower is better):\n{output}"


@pytest.mark.parametrize("name", SERVICES)
def test_unit_settings(name):
    """The settings the daemons rely on (notify, watchdog, restart, config file)."""
    d = directives(SYSTEMD_DIR / f"{name}.service.in")
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30s",
        "Restart": "on-failure", "RestartSec": "2s", "TimeoutStopSec": "30s",
        "DynamicUser": "yes", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
        "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures": "native", "UMask": "0077", "LimitNOFILE": "65536",
        "ExecStart": f"@CMAKE_INSTALL_FULL_SBINDIR@/{name}",
        "EnvironmentFile": f"@CMAKE_INSTALL_FULL_SYSCONFDIR@/orders/{name}.env",
        "After": "network-online.target", "Wants": "network-online.target",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    wrong = {k: d.get(k) for k, v in expected.items() if d.get(k) != [v]}
    assert not wrong, f"{name}.service.in: unexpected {wrong}"
    assert d.get("SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert "MemoryMax" in d


@pytest.mark.parametrize("name", SERVICES)
def test_credentials_dropin_verifies_and_keeps_exposure(name, analyze, tmp_path):
    unit = with_dropin(name, tmp_path)
    r = run(analyze, "verify", str(unit), unit_path=tmp_path)
    output = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and not BAD_OUTPUT.search(output), \
        f"systemd-analyze verify {unit} with the credentials drop-in:\n{output}"
    r = run(analyze, "security", "--offline=yes", "--no-pager", str(unit), unit_path=tmp_path)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= MAX_EXPOSURE, r.stdout + r.stderr


def test_verify_reads_the_dropin(analyze, tmp_path):
    """The check above is not vacuous: a mistake in the drop-in is reported."""
    unit = with_dropin("order-service", tmp_path,
                       DROPIN.read_text().replace("LoadCredential=", "LoadCredentail=", 1))
    r = run(analyze, "verify", str(unit), unit_path=tmp_path)
    assert "LoadCredentail" in r.stdout + r.stderr, r.stdout + r.stderr


def test_dropin_passes_every_secret_as_a_credential():
    """Each variable the daemons read a secret from points into the
    credentials directory, at a credential that the drop-in loads."""
    d = directives(DROPIN)
    loaded = dict(v.split(":", 1) for v in d["LoadCredential"])
    env = dict(v.split("=", 1) for v in d["Environment"])
    assert set(env) == {"PGPASSFILE", "KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_KEY_LOCATION",
                        "HTTP_TLS_KEY"}, env
    for var, path in env.items():
        assert path.startswith("%d/") and path[3:] in loaded, (var, path, loaded)
    for cred, src in loaded.items():
        assert src.startswith("/etc/orders/credentials/%N/"), (cred, src)


def help_variables(name):
    """(variable, default) pairs from `<daemon> --help`."""
    r = subprocess.run([str(binary(name)), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    found = re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+.*\(default: (.*)\)\s*$", r.stdout, re.MULTILINE)
    assert found, f"no variables in {name} --help:\n{r.stdout}"
    return found


@pytest.mark.parametrize("name", SERVICES)
def test_env_example_mirrors_help(name):
    """Every variable of the daemon is in its example file, set to its default."""
    text = (SYSTEMD_DIR / f"{name}.env.example").read_text()
    settings = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE))
    examples = dict(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE))
    for var, default in help_variables(name):
        if default == "unset":  # no default: shown set (the secure value) or as an example
            assert var in settings or var in examples, f"{name}.env.example lacks {var}"
            continue
        assert settings.get(var) == default, \
            f"{name}.env.example: {var}={settings.get(var)!r}, --help says default {default!r}"
    assert settings.get("KAFKA_BOOTSTRAP_SERVERS") == "127.0.0.1:9092"
    assert re.search(r"^#\s*KAFKA_SECURITY_PROTOCOL=", text, re.MULTILINE)
    assert len(re.findall(r"^#\s*DATABASE_URL=", text, re.MULTILINE)) >= 2


@pytest.mark.parametrize("name", SERVICES)
def test_env_example_shows_the_secure_settings_without_secrets(name):
    text = (SYSTEMD_DIR / f"{name}.env.example").read_text()
    examples = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE)
    urls = [v for k, v in examples if k == "DATABASE_URL"]
    assert any("sslmode=verify-full" in u and "sslrootcert=" in u for u in urls), urls
    # no password in any example: passwords are credentials (PGPASSFILE)
    assert not [u for u in urls if re.search(r"password|://[^/@]*:[^/@]*@", u)], urls
    shown = {k for k, _ in examples}
    for var in ("HTTP_TOKENS_FILE", "HTTP_TLS_CERT", "HTTP_TLS_KEY", "KAFKA_SECURITY_PROTOCOL",
                "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CA_LOCATION",
                "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION", "PGPASSFILE"):
        assert var in shown, f"{name}.env.example does not show {var}"
    assert not re.search(r"^#?\s*KAFKA_SASL_PASSWORD=", text, re.MULTILINE), \
        "a Kafka password belongs in a credential (KAFKA_SASL_PASSWORD_FILE)"


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists()
                                        else None)
    if path is None:
        pytest.fail("promtool is not installed: install the Debian package 'prometheus' "
                    "(deploy/install-deps.sh does)", pytrace=False)
    return path


def test_alert_rules_check(promtool):
    r = run(promtool, "check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 8 rules found" in r.stdout, r.stdout


def test_alert_rules_fire(promtool, tmp_path):
    """Each alert fires on the condition it names, only after its `for:`."""
    def labels_str(**kv):
        return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}"

    def expect(alert, at, **labels):
        samples = []
        if labels:
            samples = [{"labels": "ALERTS" + labels_str(alertname=alert, alertstate="firing",
                                                        **labels), "value": 1}]
        return {"expr": f'ALERTS{{alertname="{alert}",alertstate="firing"}}',
                "eval_time": at, "exp_samples": samples}

    o = dict(job="order-service", instance="h:8080")
    p = dict(job="payment-service", instance="h:8081")
    i = dict(job="inventory-service", instance="h:8082")
    series = [
        ("up" + labels_str(**o), "0x20"),
        ("up" + labels_str(**p), "1x20"),
        ("orders_ready" + labels_str(**p), "0x20"),
        ("orders_ready" + labels_str(**i), "1x20"),
        ("orders_dead_lettered_total" + labels_str(**i, topic="orders.created"),
         "0 0 1 2 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3"),
        ("orders_consumer_lag" + labels_str(**p, topic="orders.created", partition="3"),
         "5000x20"),
        ("orders_consumer_lag" + labels_str(job="payment-service", instance="h2:8081",
                                            topic="orders.created", partition="3"), "10x20"),
        ("orders_consumer_lag" + labels_str(**i, topic="orders.created", partition="3"),
         "900x20"),
        ("orders_outbox_oldest_age_seconds" + labels_str(**o), "0+60x20"),
        # the oldest PENDING order grows a minute a minute: > 300 s from 6m on
        ("orders_pending_oldest_age_seconds" + labels_str(**o), "0+60x20"),
        # orders settle in 2..5 s: p99 ~5 s, above the 2 s objective
        *[("orders_settle_duration_seconds_bucket" + labels_str(**o, outcome="confirmed", le=le),
           v) for le, v in (("1", "0x30"), ("2", "0+1x30"), ("5", "0+100x30"),
                            ("+Inf", "0+100x30"))],
        # a third of the orders rejected, 1.5 settled a second
        ("orders_settled_total" + labels_str(**o, status="REJECTED"), "0+30x40"),
        ("orders_settled_total" + labels_str(**o, status="CONFIRMED"), "0+60x40"),
    ]
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "promql_expr_test": [
                expect("OrdersDaemonDown", "30s"),
                expect("OrdersDaemonDown", "2m", severity="page", **o),
                expect("OrdersDaemonNotReady", "1m"),
                expect("OrdersDaemonNotReady", "3m", severity="page", **p),
                expect("OrdersDeadLettersGrowing", "4m", severity="ticket",
                       job="inventory-service", topic="orders.created"),
                expect("OrdersDeadLettersGrowing", "15m"),
                expect("OrdersConsumerLagHigh", "9m"),
                expect("OrdersConsumerLagHigh", "11m", severity="ticket",
                       job="payment-service", topic="orders.created", partition="3"),
                expect("OrdersOutboxStuck", "5m"),
                expect("OrdersOutboxStuck", "8m", severity="page", **o),
                expect("OrdersNotSettling", "6m"),
                expect("OrdersNotSettling", "9m", severity="page", job="order-service"),
                expect("OrdersSettlementSlow", "4m"),
                expect("OrdersSettlementSlow", "8m", severity="ticket", job="order-service"),
                expect("OrdersRejectionRatioHigh", "14m"),
                expect("OrdersRejectionRatioHigh", "20m", severity="ticket",
                       job="order-service"),
            ],
        }, {
            # Healthy: nothing of the business view fires. Orders wait 30 s at
            # most, settle within 100 ms, one in ten rejected; and one lone
            # order rejected out of one (too few to call a spike).
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in [
                ("orders_pending_oldest_age_seconds" + labels_str(**o), "30x40"),
                *[("orders_settle_duration_seconds_bucket"
                   + labels_str(**o, outcome="confirmed", le=le), v)
                  for le, v in (("0.05", "0+500x40"), ("0.1", "0+1000x40"),
                                ("+Inf", "0+1000x40"))],
                ("orders_settled_total" + labels_str(**o, status="REJECTED"), "0+10x40"),
                ("orders_settled_total" + labels_str(**o, status="CONFIRMED"), "0+90x40"),
                ("orders_settled_total" + labels_str(job="order-service-canary",
                                                     instance="h2:8080", status="REJECTED"),
                 "0+0.6x40"),
            ]],
            "promql_expr_test": [expect(a, t) for a in ("OrdersNotSettling",
                                                        "OrdersSettlementSlow",
                                                        "OrdersRejectionRatioHigh")
                                 for t in ("10m", "30m")],
        }],
    }
    test_file = tmp_path / "alerts.test.yml"
    test_file.write_text(json.dumps(tests, indent=1))  # JSON is YAML
    r = run(promtool, "test", "rules", str(test_file))
    assert r.returncode == 0, r.stdout + r.stderr
