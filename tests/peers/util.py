"""Helpers for the outside-peer suites: processes, ports, waiting, logs.

The fixtures in conftest.py are thin wrappers around these; a suite may use
them directly too (e.g. `read_jsonl` on a peer's log, `wait_until` on any
condition). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
PEERS_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(pred, timeout: float = 10.0, interval: float = 0.05, what: str | None = None):
    """Poll `pred()` until it returns something truthy; return that value.

    Raises AssertionError naming `what` (or the predicate) after `timeout` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


def read_jsonl(path) -> list[dict]:
    """The JSON lines of `path` (none if it does not exist yet).

    A last line still being written (no newline yet) is left out.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True)
            if line.endswith("\n") and line.strip()]


class Proc:
    """A child process with its output in a log file, stopped for sure at teardown."""

    def __init__(self, argv, log_path, env=None, cwd=None):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {' '.join(self.argv)}\n".encode())
            log.flush()
            # own session: a Ctrl-C in the terminal reaches pytest only, and
            # the fixture decides how each child ends
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=self.env, cwd=self.cwd, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self):
        return None if self.popen is None else self.popen.poll()

    def signal(self, sig) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def wait(self, timeout: float):
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 5.0):
        """SIGTERM, then SIGKILL after `timeout` s; return the exit code."""
        if self.popen is None:
            return None
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def kill9(self):
        if self.alive:
            self.popen.kill()
        return self.popen.wait(timeout=5) if self.popen else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, pred, timeout: float, what: str):
        """wait_until(pred), failing early with the log if the process died."""
        def check():
            if not self.alive:
                raise AssertionError(
                    f"{what}: process exited with {self.returncode}\n{self.log_text()[-4000:]}")
            return pred()
        try:
            return wait_until(check, timeout, what=what)
        except AssertionError:
            if self.alive:
                raise AssertionError(f"{what}: not ready in {timeout}s\n{self.log_text()[-4000:]}")
            raise


def peer_argv(script: str, *args) -> list[str]:
    """Run one of the peer scripts with this interpreter (the suite's venv)."""
    return [sys.executable, str(PEERS_DIR / script), *[str(a) for a in args]]


def csv(values) -> str:
    return ",".join(str(v) for v in values)


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ------------------------------------------------ gateway suites: small helpers

def without_t(entries) -> list[dict]:
    """Peer log entries without their timestamp `t`, to compare exactly."""
    return [{k: v for k, v in e.items() if k != "t"} for e in entries]


def modbus_tcp_bus(name: str, address: str, timeout: str = "500ms", extra: str = "") -> str:
    """A `[buses.NAME]` section for a Modbus TCP device at `address` (host:port)."""
    return (f'[buses.{name}]\nkind = "modbus-tcp"\naddress = "{address}"\n'
            f'timeout = "{timeout}"\n{extra}\n')


def modbus_rtu_bus(name: str, port: str, timeout: str = "500ms", baud: int = 9600, extra: str = "") -> str:
    """A `[buses.NAME]` section for Modbus RTU on the serial path `port`."""
    return (f'[buses.{name}]\nkind = "modbus-rtu"\nport = "{port}"\nbaud = {baud}\n'
            f'timeout = "{timeout}"\n{extra}\n')


def one_outcome(backend, message_id) -> dict:
    """The outcome reported about `message_id`: a report may legitimately come
    again (a redelivery of a finished id is answered with its stored outcome,
    a kill -9 may cost the mark that the report went out), but every report
    must be the same outcome, completed at the same moment."""
    reports = backend.reports_for(message_id)
    assert reports, f"no report about {message_id}"
    assert all(r == reports[0] for r in reports), reports
    return reports[0]


def find_gateway_bin():
    """`$C2D_GATEWAY_BIN`, else the release build under the cargo target dir.

    Returns (path, None), or (None, reason) when there is no binary to test.
    """
    import os
    from pathlib import Path
    explicit = os.environ.get("C2D_GATEWAY_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            return None, f"C2D_GATEWAY_BIN={explicit} is not an executable"
        return Path(explicit), None
    repo = Path(__file__).resolve().parents[2]
    target = Path(os.environ.get("CARGO_TARGET_DIR", repo / "target"))
    binary = target / "release" / "c2d-gateway"
    if not os.access(binary, os.X_OK):
        return None, "no gateway binary: run tests/run, or cargo build --release, or set C2D_GATEWAY_BIN"
    return binary, None

