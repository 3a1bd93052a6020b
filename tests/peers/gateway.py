"""The gateway under test, started the way an operator starts it.

Written against the public contract in shared/design.md, not against the
code: `c2d-gateway run --config PATH`, `[gateway] state_dir`, READY=1 over
sd_notify once the journal is open and the buses are configured, SIGTERM =
finish the request on the wire, flush, exit 0; SIGHUP = reload the device
mapping; log lines on stderr when not under journald.

The binary is `$C2D_GATEWAY_BIN` (tests/run sets it to the release build).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from util import Proc, wait_until


def render_config(text: str, workdir: Path, state_dir: Path) -> str:
    """Dedent, fill `{dir}` / `{state_dir}`, and add `[gateway] state_dir` if absent."""
    text = textwrap.dedent(text).lstrip("\n")
    text = text.replace("{state_dir}", str(state_dir)).replace("{dir}", str(workdir))
    if re.search(r"(?m)^\s*state_dir\s*=", text):
        return text
    line = f'state_dir = "{state_dir}"'
    if re.search(r"(?m)^\s*\[gateway\]\s*$", text):
        return re.sub(r"(?m)^(\s*\[gateway\]\s*)$", lambda m: f"{m.group(1)}\n{line}", text, count=1)
    return f"[gateway]\n{line}\n\n{text}"


class NotifySocket:
    """Plays systemd's NOTIFY_SOCKET: collects what the daemon sd_notify()s.

    Its own short directory under /tmp, since a unix socket path must fit
    in 108 bytes and pytest's tmp paths can be longer.
    """

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="c2d-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict]] = []  # (monotonic time, {"READY": "1", ...})
        self.closed = False
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self):
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines()
                          if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def since(self, t0: float) -> list[dict]:
        return [m for t, m in list(self.messages) if t >= t0]

    def close(self):
        self.closed = True
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Gateway:
    """One gateway process with its own config, state dir, log and notify socket.

    `kill9()`, `terminate()`, `restart()` keep the state dir, so a restarted
    gateway resumes from its journal; the log file accumulates across starts.
    """

    def __init__(self, binary, workdir: Path, config_text: str, env=None, args=()):
        self.binary = str(binary)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.dir / "state"
        self.config_path = self.dir / "config.toml"
        self.log_path = self.dir / "gateway.log"
        self.extra_env = dict(env or {})
        self.args = [str(a) for a in args]
        self.notify = NotifySocket()
        self.proc: Proc | None = None
        self.started_at = 0.0
        self.write_config(config_text)

    def write_config(self, config_text: str) -> None:
        """(Re)write config.toml; `reload()` makes a running gateway read it."""
        self.config_text = render_config(config_text, self.dir, self.state_dir)
        self.config_path.write_text(self.config_text, encoding="utf-8")

    def _env(self) -> dict:
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)  # stderr, not journald
        env.setdefault("RUST_LOG", "info,c2d_gateway=debug")
        env.setdefault("NO_COLOR", "1")  # plain log lines to match on
        env["RUST_BACKTRACE"] = "1"
        env["NOTIFY_SOCKET"] = self.notify.path
        env.update({k: str(v) for k, v in self.extra_env.items()})
        return env

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> "Gateway":
        argv = [self.binary, "run", "--config", str(self.config_path), *self.args]
        self.started_at = time.monotonic()
        self.proc = Proc(argv, self.log_path, env=self._env()).start()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until READY=1 since the last start (fails early if the process exits)."""
        self.proc.wait_ready(
            lambda: any(m.get("READY") == "1" for m in self.notify.since(self.started_at)),
            timeout, "gateway READY=1")

    def status(self) -> str | None:
        """The last STATUS= the gateway sent, if any."""
        statuses = [m["STATUS"] for _, m in list(self.notify.messages) if "STATUS" in m]
        return statuses[-1] if statuses else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    @property
    def returncode(self):
        return self.proc.returncode if self.proc else None

    def kill9(self):
        """SIGKILL: no chance to flush or finish; returns the exit status."""
        return self.proc.kill9()

    def terminate(self, timeout: float = 15.0):
        """SIGTERM and wait for the exit; returns the exit code (0 expected)."""
        self.proc.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def reload(self) -> None:
        """SIGHUP: reload the device mapping from config.toml."""
        self.proc.signal(signal.SIGHUP)

    def restart(self, wait_ready: bool = True, timeout: float = 20.0) -> "Gateway":
        """SIGTERM if still running, then start again on the same state dir."""
        if self.alive:
            self.terminate()
        return self.start(wait_ready=wait_ready, timeout=timeout)

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def wait_log(self, pattern: str, timeout: float = 10.0):
        """Until the log matches the regex `pattern`; returns the match."""
        return wait_until(lambda: re.search(pattern, self.log_text()), timeout,
                          what=f"gateway log /{pattern}/")

    def close(self) -> None:
        """Teardown: stop the process (SIGTERM, then SIGKILL), close the socket."""
        if self.proc:
            self.proc.stop(timeout=10)
        self.notify.close()
