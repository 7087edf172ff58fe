"""
A throw-away Debian system booted under its own systemd, for the package
test: a minimal root made once with debootstrap and cached under
.run/pkg-systemd-root/ (never in the repository), an overlay over it per run
(so a run never changes the cache), booted with systemd-nspawn on the host's
network. Commands run inside with nsenter into the container's systemd
(machinectl and systemctl -M need a host systemd and D-Bus, which a CI
machine without systemd as PID 1 does not have).

The container gets its own cgroup (a folder under the name=systemd and the
unified hierarchies of the host's cgroup mounts, the nspawn process moved into
it before it starts): systemd-nspawn --keep-unit runs the container in the
cgroup it finds itself in, and two containers must not share one.

stop() ends everything: SIGTERM to systemd-nspawn (the container's systemd
shuts down and nspawn exits 0), SIGKILL after 60 s, then the overlay, the
cgroup folders and what nspawn leaves under /run/systemd/nspawn.
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def host_suite():
    """The host's Debian codename (bookworm, trixie): the container's."""
    text = Path("/etc/os-release").read_text()
    m = re.search(r"^VERSION_CODENAME=(\S+)", text, re.M)
    return m.group(1) if m else "bookworm"


def host_mirror():
    """The Debian mirror of the host's apt sources (deb.debian.org if none)."""
    for f in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1).rstrip("/")
            # Debian's archive, not a third-party repository or the security one.
            if uri.startswith("http") and uri.endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def ensure_root(cache_dir, packages, log):
    """The cached root for `packages` (debootstrap --variant=minbase with
    systemd, dbus and those packages), made if missing; returns its path."""
    suite = host_suite()
    include = sorted({"systemd", "systemd-sysv", "dbus", *packages})
    key = hashlib.sha256(" ".join([suite, *include]).encode()).hexdigest()[:12]
    root = Path(cache_dir) / f"{suite}-{key}"
    if (root / ".complete").exists():
        return root
    for old in Path(cache_dir).glob(f"{suite}-*"):  # roots for other package lists
        shutil.rmtree(old, ignore_errors=True)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(include),
                        suite, str(tmp), host_mirror()],
                       stdout=f, stderr=subprocess.STDOUT, check=True, timeout=900)
    # Nothing of the host's identity: a machine id of its own at each boot.
    (tmp / "etc" / "machine-id").write_text("")
    (tmp / ".complete").write_text(" ".join(include) + "\n")
    tmp.rename(root)
    return root


class Container:
    def __init__(self, name, lower, run_dir, binds=()):
        self.name = name
        self.lower = Path(lower)
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "root"
        self.binds = list(binds)
        self.log_path = self.run_dir / "nspawn.log"
        self.proc = None
        self.leader = None  # PID (host's view) of the container's systemd
        self.cgroups = [CGROUP_ROOT / h / name for h in ("systemd", "unified")
                        if (CGROUP_ROOT / h / "cgroup.procs").exists()]

    # -- start

    def boot(self, timeout=60):
        self.cleanup()  # what an earlier, killed run may have left
        for d in ("upper", "work", "root"):
            (self.run_dir / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.lower},upperdir={self.run_dir / 'upper'},"
                        f"workdir={self.run_dir / 'work'}", str(self.root)],
                       check=True, capture_output=True, timeout=30)
        for cg in self.cgroups:
            cg.mkdir(exist_ok=True)
        move = "".join(f"echo $$ > {cg}/cgroup.procs; " for cg in self.cgroups)
        args = ["systemd-nspawn", "-D", str(self.root), f"--machine={self.name}", "--boot",
                "--register=no", "--keep-unit", "--console=passive"]
        args += [f"--bind-ro={src}:{dst}" for src, dst in self.binds]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(["sh", "-c", move + 'exec "$@"', "sh", *args],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            if self.leader is None:
                self.leader = self._find_leader()
            if self.leader is not None:
                r = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"the container's systemd did not come up within {timeout} s "
                           f"(last state {state!r})\n{self.log_path.read_text()[-3000:]}")

    def _find_leader(self):
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        for pid in kids.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                pass
        return None

    # -- inside

    def run(self, args, check=True, timeout=120, input=None):
        """Runs args inside (all namespaces of the container's systemd)."""
        cp = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *args],
                            capture_output=True, text=True, timeout=timeout, input=input)
        if check and cp.returncode != 0:
            raise AssertionError(f"in the container: {' '.join(args)} exited {cp.returncode}\n"
                                 f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
        return cp

    def sh(self, script, **kw):
        return self.run(["sh", "-ec", script], **kw)

    def path(self, p):
        """The host's path of a file inside the container (through the overlay)."""
        return self.root / str(p).lstrip("/")

    # -- stop

    def stop(self, timeout=60):
        """Shuts the container down; returns nspawn's exit code (None: killed)."""
        rc = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        elif self.proc is not None:
            rc = self.proc.returncode
        self.cleanup()
        return rc

    def _kill_leftover(self):
        """Kills the systemd-nspawn of this container that an earlier run,
        itself killed, left running (found by its --machine= argument)."""
        mine = f"--machine={self.name}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or (self.proc and int(proc.name) == self.proc.pid):
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"systemd-nspawn") and mine in argv:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 30
                while proc.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)

    def _kill_cgroup(self, timeout=15):
        """SIGKILL to every process left in the container's cgroups, until none is."""
        deadline = time.monotonic() + timeout
        while True:
            pids = set()
            for cg in self.cgroups:
                for procs in cg.rglob("cgroup.procs") if cg.exists() else []:
                    try:
                        pids |= set(procs.read_text().split())
                    except OSError:
                        pass
            if not pids or time.monotonic() > deadline:
                return
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def cleanup(self):
        self._kill_leftover()
        self._kill_cgroup()
        if self.root.is_mount():
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True, timeout=30)
        for d in ("upper", "work", "root"):
            shutil.rmtree(self.run_dir / d, ignore_errors=True)
        shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.name, ignore_errors=True)
        for cg in self.cgroups:
            if cg.exists():
                for sub in sorted((p for p in cg.rglob("*") if p.is_dir()),
                                  key=lambda p: len(p.parts), reverse=True):
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
                try:
                    cg.rmdir()
                except OSError:
                    pass
