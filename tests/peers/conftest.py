"""Fixtures for the outside-peer suites: real peers around the real binary.

- `mosquitto`: a Mosquitto broker of its own on 127.0.0.1:<free port>.
- `socat_pair` / `make_socat_pair()`: two linked ptys, `.a` and `.b`.
- `modbus_device(...)`: tests/peers/modbus_device.py (pymodbus) on TCP or RTU.
- `serial_device(port, ...)`: tests/peers/serial_device.py on a pty.
- `gateway(config_text, ...)`: `$C2D_GATEWAY_BIN run --config <tmp>/config.toml`.
- `backend`: the back end on `mosquitto` (paho-mqtt): publishes C2D messages
  with QoS 1, collects the result reports from `gateway/+/result`.
- `mqtt_gateway(config_text, ...)`: `gateway` with `[hub] kind = "mqtt"` on
  `mosquitto` and a fixed client id, started once its subscription is acked.
- `password_mosquitto(logins)`: a broker of its own that checks passwords.

Each fixture stops what it started at teardown. A peer program missing from
the machine skips the test (fails it under CI=true, where tests/run has
installed everything).
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import subprocess
import textwrap
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway import Gateway
from util import HOST, Proc, csv, find_gateway_bin, free_port, peer_argv, port_accepts, read_jsonl, wait_until

REPO = Path(__file__).resolve().parents[2]


def require_program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path:
        return path
    message = f"{name} is not installed (tests/run installs it with apt-get)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# --------------------------------------------------------------------- broker

class Broker:
    """A Mosquitto process: `.host`, `.port`, `.log_text()`, `stop()`, `start()`."""

    def __init__(self, program: str, workdir: Path):
        self.host = HOST
        self.port = free_port()
        self.conf_path = workdir / "mosquitto.conf"
        self.conf_path.write_text(
            f"listener {self.port} {HOST}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type all\n", encoding="utf-8")
        self.proc = Proc([program, "-c", self.conf_path], workdir / "mosquitto.log")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "Broker":
        """Start (again, on the same port) and wait until the port accepts."""
        self.proc.start()
        self.proc.wait_ready(lambda: port_accepts(self.port), 10, f"mosquitto on {self.port}")
        return self

    def stop(self) -> None:
        self.proc.stop()

    def log_text(self) -> str:
        return self.proc.log_text()


@pytest.fixture
def mosquitto(tmp_path):
    program = require_program("mosquitto")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = Broker(program, workdir)
    try:
        broker.start()
    except AssertionError:
        broker.stop()  # the port was taken in between: once more on another
        broker = Broker(program, workdir)
        broker.start()
    yield broker
    broker.stop()


# ------------------------------------------------------------------ pty pairs

class PtyPair:
    """Two linked pseudo-terminals from socat: open `.a` at one end, `.b` at the other."""

    def __init__(self, a: str, b: str, proc: Proc):
        self.a, self.b, self.proc = a, b, proc


@pytest.fixture
def make_socat_pair(tmp_path):
    program = require_program("socat")
    procs = []
    counter = itertools.count()

    def make() -> PtyPair:
        n = next(counter)
        workdir = tmp_path / f"pty{n}"
        workdir.mkdir()
        a, b = workdir / "a", workdir / "b"
        proc = Proc([program, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                    workdir / "socat.log").start()
        procs.append(proc)
        proc.wait_ready(lambda: a.exists() and b.exists(), 10, "socat pty links")
        return PtyPair(str(a), str(b), proc)

    yield make
    for proc in reversed(procs):
        proc.stop()


@pytest.fixture
def socat_pair(make_socat_pair) -> PtyPair:
    return make_socat_pair()


# ---------------------------------------------------------------- peer scripts

class Peer:
    """A peer script: `.log_path` (JSON lines), `.entries()`, `wait_entries(n)`."""

    def __init__(self, argv, workdir: Path, ready_file: Path):
        self.argv = argv
        self.ready_file = ready_file
        self.log_path = workdir / "log.jsonl"
        self.proc = Proc(argv, workdir / "stderr.log")
        self.address = ""

    def start(self) -> "Peer":
        self.ready_file.unlink(missing_ok=True)
        self.proc.start()
        self.address = self.proc.wait_ready(self._ready, 15, f"{Path(self.argv[1]).name} ready")
        return self

    def _ready(self):
        try:
            return self.ready_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> "Peer":
        self.stop()
        return self.start()

    def entries(self) -> list[dict]:
        return read_jsonl(self.log_path)

    def wait_entries(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Until at least `n` log entries exist; returns all of them."""
        return wait_until(lambda: (e := self.entries()) and len(e) >= n and e, timeout,
                          what=f"{n} entries in {self.log_path}")

    def stderr_text(self) -> str:
        return self.proc.log_text()


class ModbusPeer(Peer):
    """modbus_device.py: `.writes()` are its applied writes; TCP: `.host`, `.port`."""

    writes = Peer.entries
    wait_writes = Peer.wait_entries

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def restart(self) -> "Peer":
        """Stop and start again; a TCP device comes back on the same port."""
        if "--tcp" in self.argv and self.address:
            self.argv[self.argv.index("--tcp") + 1] = self.address
            self.proc.argv = [str(a) for a in self.argv]
        return super().restart()


class SerialPeer(Peer):
    """serial_device.py: `.frames()` are the frames it received."""

    frames = Peer.entries
    wait_frames = Peer.wait_entries


def _workdir(tmp_path: Path, stem: str, counter) -> Path:
    workdir = tmp_path / f"{stem}{next(counter)}"
    workdir.mkdir()
    return workdir


@pytest.fixture
def modbus_device(tmp_path):
    """Factory: `modbus_device(rtu=None, *, tcp="127.0.0.1:0", units=(1,), ...)` -> ModbusPeer."""
    peers, counter = [], itertools.count()

    def start(rtu=None, *, tcp=f"{HOST}:0", units=(1,), dead_units=(), exception_at=(),
              delay_ms=0, baud=9600, parity="N", size=None, preset=(), pace_baud=False,
              extra_args=()) -> ModbusPeer:
        workdir = _workdir(tmp_path, "modbus", counter)
        ready = workdir / "ready"
        args = ["--rtu", rtu, "--baud", baud, "--parity", parity] if rtu else ["--tcp", tcp]
        args += ["--units", csv(units), "--log", workdir / "log.jsonl", "--ready-file", ready]
        if dead_units:
            args += ["--dead-units", csv(dead_units)]
        if exception_at:
            args += ["--exception-at", csv(exception_at)]
        if delay_ms:
            args += ["--delay-ms", delay_ms]
        if size:
            args += ["--size", size]
        for p in preset:
            args += ["--preset", p]
        if pace_baud:
            args += ["--pace-baud"]
        peer = ModbusPeer(peer_argv("modbus_device.py", *args, *extra_args), workdir, ready)
        peers.append(peer)
        return peer.start()

    yield start
    for peer in reversed(peers):
        peer.stop()


@pytest.fixture
def serial_device(tmp_path):
    """Factory: `serial_device(port, *, framing="line", ...)` -> SerialPeer."""
    peers, counter = [], itertools.count()

    def start(port, *, framing="line", baud=115200, reply_ok="OK", reply_nack="ERR",
              nack_on=(), silent_on=(), delay_ms=0, idle_ms=None, extra_args=()) -> SerialPeer:
        workdir = _workdir(tmp_path, "serial", counter)
        ready = workdir / "ready"
        args = ["--port", port, "--baud", baud, "--framing", framing,
                "--reply-ok", reply_ok, "--reply-nack", reply_nack,
                "--log", workdir / "log.jsonl", "--ready-file", ready]
        for text in nack_on:
            args += ["--nack-on", text]
        for text in silent_on:
            args += ["--silent-on", text]
        if delay_ms:
            args += ["--delay-ms", delay_ms]
        if idle_ms is not None:
            args += ["--idle-ms", idle_ms]
        peer = SerialPeer(peer_argv("serial_device.py", *args, *extra_args), workdir, ready)
        peers.append(peer)
        return peer.start()

    yield start
    for peer in reversed(peers):
        peer.stop()


# -------------------------------------------------------------------- gateway

@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    """`$C2D_GATEWAY_BIN`, else the release build under the cargo target dir."""
    binary, why = find_gateway_bin()
    if binary is None:
        (pytest.fail if os.environ.get("C2D_GATEWAY_BIN") else pytest.skip)(why)
    return binary


@pytest.fixture
def gateway(tmp_path, gateway_bin):
    """Factory: `gateway(config_text, *, start=True, wait_ready=True, env=None, args=())` -> Gateway.

    `config_text` may use `{dir}` (this gateway's tmp dir) and `{state_dir}`;
    without a `state_dir` key one under `{dir}` is added to `[gateway]`.
    """
    gateways, counter = [], itertools.count()

    def start(config_text, *, start=True, wait_ready=True, env=None, args=()) -> Gateway:
        gw = Gateway(gateway_bin, tmp_path / f"gateway{next(counter)}", config_text, env, args)
        gateways.append(gw)
        if start:
            gw.start(wait_ready=wait_ready)
        return gw

    yield start
    for gw in reversed(gateways):
        gw.close()


# ------------------------------------------------- the back end, over the broker

class Backend:
    """The back end's side of a plain MQTT broker (paho-mqtt, v2 callbacks).

    `publish(device, body)` sends a C2D message with QoS 1 to
    `gateway/{device}/c2d` and waits for the broker's PUBACK; every result
    report published on `report_topic` (default `gateway/+/result`) is kept
    in `.reports` as `(topic, dict)` (a body that is not JSON is kept as
    `{"_raw": text}`). `wait_report(id)` waits for the report about a message id.
    """

    def __init__(self, broker, client_id: str, report_topic: str = "gateway/+/result",
                 username: str | None = None, password: str | None = None):
        self.reports: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(report_topic, qos=1)
        if not subscribed.wait(5):
            raise AssertionError(f"back end: no SUBACK for {report_topic}")

    def _on_message(self, _client, _userdata, message):
        try:
            body = json.loads(message.payload)
        except ValueError:
            body = {"_raw": message.payload.decode("utf-8", "replace")}
        with self._lock:
            self.reports.append((message.topic, body))

    def publish(self, device: str, body, *, topic: str | None = None, timeout: float = 5.0) -> None:
        """QoS 1 PUBLISH of `body` (dict -> JSON, str -> UTF-8, bytes as is); waits for the PUBACK."""
        if isinstance(body, (dict, list, int, float)) and not isinstance(body, bool):
            payload = json.dumps(body).encode()
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = bytes(body)
        info = self.client.publish(topic or f"gateway/{device}/c2d", payload, qos=1)
        info.wait_for_publish(timeout)
        assert info.is_published(), "the broker did not acknowledge the C2D message"

    def all_reports(self) -> list[dict]:
        with self._lock:
            return [body for _, body in self.reports]

    def reports_for(self, message_id) -> list[dict]:
        return [r for r in self.all_reports() if r.get("message_id") == str(message_id)]

    def topics_for(self, message_id) -> list[str]:
        with self._lock:
            return [t for t, r in self.reports if r.get("message_id") == str(message_id)]

    def wait_report(self, message_id, timeout: float = 10.0, count: int = 1) -> dict:
        """The first report about `message_id`, once `count` of them arrived."""
        got = wait_until(lambda: (r := self.reports_for(message_id)) and len(r) >= count and r,
                         timeout, what=f"{count} report(s) about message {message_id!r}; "
                                       f"reports so far: {self.all_reports()[-5:]}")
        return got[0]

    def wait_reports(self, ids, timeout: float = 10.0) -> dict:
        """{id: first report} once every id in `ids` has one."""
        ids = [str(i) for i in ids]

        def all_there():
            by_id = {}
            for r in self.all_reports():
                by_id.setdefault(r.get("message_id"), r)
            return all(i in by_id for i in ids) and {i: by_id[i] for i in ids}
        try:
            return wait_until(all_there, timeout, what=f"reports about {len(ids)} messages")
        except AssertionError:
            have = {r.get("message_id") for r in self.all_reports()}
            raise AssertionError(f"no report within {timeout}s about {[i for i in ids if i not in have]}")

    def close(self) -> None:
        self.client.disconnect()  # first: the network loop then ends at once
        self.client.loop_stop()


@pytest.fixture
def password_mosquitto(tmp_path):
    """Factory: `password_mosquitto({"user": "password", ...})` -> a started
    Broker of its own that refuses anonymous clients and checks these logins."""
    program = require_program("mosquitto")
    passwd_tool = require_program("mosquitto_passwd")
    brokers = []

    def start(logins: dict) -> Broker:
        workdir = tmp_path / f"mosquitto-auth{len(brokers)}"
        workdir.mkdir()
        passwords = workdir / "passwords"
        passwords.write_text("", encoding="utf-8")
        for user, password in logins.items():
            subprocess.run([passwd_tool, "-b", passwords, user, password], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        broker = Broker(program, workdir)
        broker.conf_path.write_text(
            f"listener {broker.port} {HOST}\nallow_anonymous false\npassword_file {passwords}\n"
            # run as root, mosquitto drops to user `mosquitto`, who could not read the file
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "persistence false\nlog_dest stderr\nlog_type all\n", encoding="utf-8")
        brokers.append(broker)
        return broker.start()

    yield start
    for broker in reversed(brokers):
        broker.stop()


@pytest.fixture
def backend(mosquitto):
    """A `Backend` on the test's broker, subscribed to `gateway/+/result`."""
    b = Backend(mosquitto, client_id=f"backend-{os.getpid()}-{next(_backend_ids)}")
    yield b
    b.close()


_backend_ids = itertools.count()


def mqtt_hub_section(broker, client_id: str, extra: str = "") -> str:
    """`[hub]` for `kind = "mqtt"` against `broker`, with a fixed client id."""
    return (f'[hub]\nkind = "mqtt"\nurl = "mqtt://{broker.host}:{broker.port}"\n'
            f'client_id = "{client_id}"\n{textwrap.dedent(extra).strip()}\n\n')


def wait_subscribed(broker, client_id: str, count: int, timeout: float = 15.0) -> None:
    """Until Mosquitto logged its `count`-th SUBACK to `client_id` (one per connection)."""
    line = f"Sending SUBACK to {client_id}\n"
    wait_until(lambda: broker.log_text().count(line) >= count, timeout,
               what=f"SUBACK #{count} to {client_id} in the mosquitto log")


@pytest.fixture
def mqtt_gateway(gateway, mosquitto):
    """Factory: `mqtt_gateway(rest_of_config, *, hub_extra="", client_id=None, env=None, start=True)`.

    Prepends a `[hub]` section for the test's Mosquitto (`kind = "mqtt"`, a
    fixed `client_id`, so the broker keeps the persistent session across
    restarts) and starts the gateway. The returned Gateway has
    `.client_id`, `.connections` and `.start_subscribed()` /
    `.restart_subscribed()`, which return once the broker has acknowledged
    the gateway's C2D subscription on the new connection (READY=1 comes
    before the hub connection is up).
    """
    counter = itertools.count()

    def start(rest: str, *, hub_extra: str = "", client_id: str | None = None, env=None,
              start: bool = True, args=()) -> Gateway:
        cid = client_id or f"c2d-gw-{os.getpid()}-{next(counter)}"
        text = mqtt_hub_section(mosquitto, cid, hub_extra) + textwrap.dedent(rest).lstrip("\n")
        gw = gateway(text, start=False, env=env, args=args)
        gw.client_id = cid
        gw.connections = 0

        def start_subscribed(wait_ready: bool = True):
            gw.start(wait_ready=wait_ready)
            gw.connections += 1
            wait_subscribed(mosquitto, cid, gw.connections)
            return gw

        def restart_subscribed():
            if gw.alive:
                gw.terminate()
            return start_subscribed()

        gw.start_subscribed = start_subscribed
        gw.restart_subscribed = restart_subscribed
        if start:
            start_subscribed()
        return gw

    return start
