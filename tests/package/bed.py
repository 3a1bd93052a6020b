"""The test bed of the package suite: a booted Debian 12 in a container, and
the peers the gateway inside it talks to on the host's loopback.

- `rootfs()`: a minimal Debian 12 made by debootstrap, cached under
  /var/cache/c2d-gateway-tests/rootfs-bookworm (rebuilt only when the recipe
  below changes; `C2D_ROOTFS_CACHE` moves it, `C2D_DEBIAN_MIRROR` picks the
  mirror). Each run boots a copy, so the cache is never modified.
- `Container`: `systemd-nspawn --boot` of that copy, without
  --private-network, so the container shares the host's network namespace
  and reaches servers on the host's 127.0.0.1. Commands run inside with
  `nsenter -t <container PID 1> -a`. `kill()` ends it with SIGKILL to its
  PID 1 (the container's systemd survives a kill of systemd-nspawn itself).
- `Emulator`: `c2d-gateway hub-emulator` (MQTT over TLS + HTTP API).
- `ModbusDevice`: tests/peers/modbus_device.py (pymodbus) over TCP.

Everything started is recorded in a state file, so that a run killed hard
(SIGKILL, power cut of the CI job) is cleaned up by the next one.

Without systemd on the host (PID 1 is something else, as in many CI
sandboxes) nspawn cannot ask the host's systemd for a scope: it runs with
--keep-unit in a cgroup v2 directory of its own, with the unified hierarchy
inside, and with bpf() allowed, so the container's systemd can enforce
DevicePolicy=/DeviceAllow= as on a real machine.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
# The rootfs recipe: a change here rebuilds the cache. procps (/bin/kill for
# ExecReload=) is the package's only dependency minbase lacks, so apt can
# install the .deb without the network; socat makes the serial panel.
INCLUDE = ["systemd", "systemd-sysv", "dbus", "procps", "socat"]
RECIPE = f"debootstrap --variant=minbase --include={','.join(INCLUDE)} {SUITE}; hosts v1; apt timers masked"
CACHE = Path(os.environ.get("C2D_ROOTFS_CACHE", "/var/cache/c2d-gateway-tests"))
STATE = Path("/run/c2d-gateway-tests/package-bed.json")
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# findings worth a line in the suite's summary (printed even under -q)
NOTES: list[str] = []


def log(msg: str) -> None:
    print(f"[package] {msg}", flush=True)


def note(msg: str) -> None:
    log(msg)
    NOTES.append(msg)


def wait_until(what: str, predicate, timeout: float, interval: float = 0.25):
    """Polls `predicate` until it returns something truthy; fails with `what`."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - kept for the failure message
            last_error = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------- the rootfs

def rootfs() -> Path:
    """The cached Debian rootfs, built first if missing or stale."""
    target = CACHE / f"rootfs-{SUITE}"
    stamp = target / ".c2d-rootfs-stamp"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"rootfs-{SUITE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it
        if stamp.is_file() and stamp.read_text().strip() == RECIPE:
            log(f"rootfs: cached {target}")
            return target
        tmp = CACHE / f"rootfs-{SUITE}.tmp"
        for d in (tmp, target):
            if d.exists():
                shutil.rmtree(d)
        mirror = os.environ.get("C2D_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(tmp), mirror]
        log(f"rootfs: building with {' '.join(cmd)} (about a minute, cached afterwards)")
        started = time.monotonic()
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
        if out.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed ({out.returncode}):\n{out.stdout[-4000:]}")
        # debootstrap leaves no /etc/hosts: without it `localhost` (the
        # emulator's HostName) does not resolve. Only the IPv4 name, since
        # the peers listen on 127.0.0.1.
        (tmp / "etc/hosts").write_text("127.0.0.1 localhost\n::1 ip6-localhost ip6-loopback\n")
        (tmp / "etc/hostname").write_text("c2d-pkgtest\n")
        # apt's timers would take the dpkg lock (and the network) under the test
        for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
            link = tmp / "etc/systemd/system" / timer
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        subprocess.run(["chroot", str(tmp), "apt-get", "clean"], check=False)
        (tmp / ".c2d-rootfs-stamp").write_text(RECIPE + "\n")
        tmp.rename(target)
        log(f"rootfs: built in {time.monotonic() - started:.0f}s")
        return target


# --------------------------------------------------------------- leftovers

def _ours(pid: int, work: str, key: str, root_id: list | None) -> bool:
    """Whether `pid` is still the process a previous run recorded (not a
    reused PID): the container's PID 1 has the rootfs copy (device, inode
    `root_id`) as its root, the others name the work directory on their
    command line."""
    try:
        if key == "pid1":
            st = os.stat(f"/proc/{pid}/root/")  # the root it sees, even from another mount namespace
            return [st.st_dev, st.st_ino] == root_id
        return work in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def clean_leftovers() -> None:
    """Ends what a previous run, killed before its own clean-up, left behind."""
    if not STATE.is_file():
        return
    try:
        state = json.loads(STATE.read_text())
    except ValueError:
        state = {}
    log(f"cleaning up after an interrupted run: {state}")
    work = state.get("work") or ""
    if "c2d-pkgtest" in work:
        for key in ("pid1", "nspawn", "emulator", "modbus"):
            pid = state.get(key)
            if pid and _ours(pid, work, key, state.get("root_id")):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.5)
    _remove_container_dirs(state.get("name"), state.get("cgroup"), work or None)
    STATE.unlink(missing_ok=True)


def _remove_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError as e:
        log(f"could not remove cgroup {path}: {e}")


def _remove_container_dirs(name, cgroup, work) -> None:
    if name:
        # nspawn refuses to delete this when /run is not a tmpfs
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{name}", ignore_errors=True)
    if cgroup:
        _remove_cgroup(Path(cgroup))
    if work and Path(work).is_dir() and "c2d-pkgtest" in work:
        mounts = Path("/proc/self/mounts").read_text()
        if f" {work}/" in mounts:
            log(f"not deleting {work}: something is still mounted below it")
        else:
            subprocess.run(["rm", "-rf", "--one-file-system", work], check=False)


def _save_state(**kv) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(STATE.read_text()) if STATE.is_file() else {}
    state.update(kv)
    STATE.write_text(json.dumps(state))


# --------------------------------------------------------------- container

def _cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


class Container:
    def __init__(self, work: Path, image: Path):
        self.work = work
        self.root = work / "root"
        self.name = f"c2d-pkgtest-{os.getpid()}"
        self.log_path = work / "nspawn.log"
        self.nspawn: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.cgroup: Path | None = None
        self.device_acl_note = ""
        log(f"copying the rootfs to {self.root}")
        subprocess.run(["cp", "-a", "--reflink=auto", str(image), str(self.root)], check=True, timeout=600)

    # -- life cycle
    def boot(self, timeout: float = 90) -> None:
        cmd = ["systemd-nspawn", "-D", str(self.root), "--boot", "-M", self.name, "--register=no",
               "--console=read-only", "--link-journal=no"]
        env = dict(os.environ)
        preexec = None
        if not Path("/run/systemd/system").is_dir():
            # No systemd on the host to create a scope: stay in a cgroup of our own.
            cmd.append("--keep-unit")
            mount = _cgroup2_mount()
            if mount is not None and os.access(mount, os.W_OK):
                self.cgroup = mount / self.name
                self.cgroup.mkdir(exist_ok=True)
                procs = str(self.cgroup / "cgroup.procs")

                def preexec():  # runs in the child, before exec
                    with open(procs, "w") as f:
                        f.write("0")

                if mount != Path("/sys/fs/cgroup"):
                    env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"  # hybrid host: v2 inside
                # let the container's systemd attach BPF device filters
                cmd += ["--system-call-filter=bpf", "--capability=CAP_BPF"]
            else:
                self.device_acl_note = "no writable cgroup2 mount on the host"
        st = os.stat(self.root)
        _save_state(name=self.name, work=str(self.work), cgroup=str(self.cgroup) if self.cgroup else None,
                    root_id=[st.st_dev, st.st_ino])
        log(f"booting: {' '.join(cmd)}")
        self.nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.log_path, "w"),
                                       stderr=subprocess.STDOUT, env=env, preexec_fn=preexec,
                                       start_new_session=True)
        _save_state(nspawn=self.nspawn.pid)

        def find_pid1():
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}:\n{self.boot_log()}")
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
            for c in children:
                if Path(f"/proc/{c}/comm").read_text().strip() == "systemd":
                    return int(c)
            return None

        self.pid1 = wait_until("the container's systemd to start", find_pid1, 30)
        _save_state(pid1=self.pid1)

        def booted():
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}:\n{self.boot_log()}")
            r = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            return r.stdout.strip() in ("running", "degraded")

        wait_until("the container to finish booting", booted, timeout, interval=0.5)
        log(f"booted: container PID 1 is {self.pid1} on the host")

    def kill(self, keep_work: bool = False) -> None:
        """SIGKILL to the container's PID 1 (its PID namespace dies with it);
        then the work directory (the rootfs copy) goes, unless `keep_work`."""
        if self.pid1 is not None:
            try:
                os.kill(self.pid1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.nspawn is not None:
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=10)
        self.pid1 = None
        _remove_container_dirs(self.name, str(self.cgroup) if self.cgroup else None,
                               None if keep_work else str(self.work))

    def boot_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- inside
    def run(self, cmd, check: bool = True, timeout: float = 60, input: str | None = None):
        """Runs `cmd` (argv list, or a string for sh -c) in the container."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", f"PATH={INNER_PATH}", "LANG=C.UTF-8",
                "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "DEBIAN_FRONTEND=noninteractive", "TERM=dumb"] + argv
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"in the container: {argv} exited {r.returncode}\n"
                                 f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
        return r

    def path(self, inner: str) -> Path:
        """The host path of a file in the container (not for /tmp or /run: tmpfs there)."""
        return self.root / inner.lstrip("/")

    def put(self, inner: str, data: str | bytes, mode: int = 0o644) -> None:
        p = self.path(inner)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chown(p, 0, 0)
        os.chmod(p, mode)

    def show(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "-p", prop, "--value", unit], timeout=20).stdout.strip()

    def journal(self, *args: str) -> list[dict]:
        r = self.run(["journalctl", "--no-pager", "-o", "json", *args], check=False, timeout=30)
        out = []
        for line in r.stdout.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


# ------------------------------------------------------------------- peers

class Proc:
    def __init__(self, argv: list[str], log_path: Path, state_key: str):
        self.argv, self.log_path, self.state_key = argv, log_path, state_key
        self.p: subprocess.Popen | None = None

    def start(self) -> None:
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=open(self.log_path, "a"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        _save_state(**{self.state_key: self.p.pid})

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        self.p = None

    def check_alive(self) -> None:
        if self.p is None or self.p.poll() is not None:
            raise RuntimeError(f"{self.argv[0]} died:\n{self.log_path.read_text(errors='replace')[-3000:]}")


class Emulator:
    """`c2d-gateway hub-emulator` on 127.0.0.1 with one device, gw1, whose
    key is generated here (so the suite knows the secret to look for)."""

    def __init__(self, binary: str, work: Path):
        self.device = "gw1"
        self.key = base64.b64encode(os.urandom(32)).decode()
        self.tls_port, self.http_port = free_port(), free_port()
        self.ca = work / "emulator-ca.pem"
        self.connection_string = f"HostName=localhost;DeviceId={self.device};SharedAccessKey={self.key}"
        self.proc = Proc([binary, "hub-emulator", "--tls", f"127.0.0.1:{self.tls_port}",
                          "--http", f"127.0.0.1:{self.http_port}", "--ca-out", str(self.ca),
                          "--device", f"{self.device}:{self.key}", "--host-name", "localhost"],
                         work / "emulator.log", "emulator")

    def start(self) -> "Emulator":
        self.proc.start()

        def up():
            self.proc.check_alive()
            return self.ca.is_file() and port_accepts(self.http_port) and port_accepts(self.tls_port)

        wait_until("the hub emulator", up, 20)
        return self

    def _http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method,
                                     headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def send(self, body: str, device: str | None, message_id: str | None = None) -> str:
        headers = {"iothub-ack": "full", "Content-Type": "application/octet-stream"}
        if device:
            headers["iothub-app-device"] = device
        # An id of our own: like IoT Hub, the emulator makes none up, and the
        # tests find feedback and reports by it.
        headers["iothub-messageid"] = message_id or str(uuid.uuid4())
        return self._http("POST", f"/devices/{self.device}/messages", body.encode(), headers)["message_id"]

    def feedback(self, message_id: str) -> list[dict]:
        return [f for f in self._http("GET", "/feedback") if f.get("original_message_id") == message_id]

    def reports(self, message_id: str) -> list[dict]:
        """Result reports (D2C events) for `message_id`, body decoded."""
        out = []
        for e in self._http("GET", f"/devices/{self.device}/events"):
            props = dict(e.get("properties", []))
            if props.get("$.cid") == message_id:
                out.append({"properties": props, "body": json.loads(e.get("body") or "null")})
        return out


class ModbusDevice:
    """tests/peers/modbus_device.py: Modbus TCP units `units` on 127.0.0.1,
    one JSON line per applied write in `log`."""

    def __init__(self, python: str, work: Path, units: str = "3,4"):
        self.port = free_port()
        self.log = work / "modbus-writes.jsonl"
        self.proc = Proc([python, str(REPO / "tests/peers/modbus_device.py"), "--tcp", f"127.0.0.1:{self.port}",
                          "--units", units, "--log", str(self.log)], work / "modbus.log", "modbus")

    def start(self) -> "ModbusDevice":
        self.proc.start()

        def up():
            self.proc.check_alive()
            return port_accepts(self.port)

        wait_until("the Modbus device", up, 20)
        return self

    def stop(self) -> None:
        self.proc.stop()

    def writes(self) -> list[dict]:
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
