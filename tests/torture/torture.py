#!/usr/bin/env python3
"""Crash torture: a long stream of C2D messages while the gateway is killed
with SIGKILL at random moments; then every message is accounted for.

What it runs (all on loopback, each in its own process):
- the hub: `c2d-gateway hub-emulator` (azure dialect, HTTP back-end API,
  50 messages per device queue: the sender refills it as it drains and
  retries on 403), or Mosquitto (mqtt dialect: gateway/{device}/c2d in,
  gateway/{device}/result out);
- pymodbus devices (tests/peers/modbus_device.py, Modbus TCP) that log every
  write they apply: `idem1` (unit 1) and `nonidem` (unit 2, idempotent =
  false) share bus `a`, `idem2` is alone on bus `b`, and `dead` (a unit that
  never answers) sits on bus `c` so that some messages expire;
- the gateway (`$C2D_GATEWAY_BIN` run --config), READY=1 awaited over
  NOTIFY_SOCKET after every start, killed with SIGKILL at random moments
  (some right after the spawn, during journal recovery, some later).

Each message writes a value unique to it (a u32 over two registers at
holding 100), so the device logs say how often each message was executed.
About 2 % of the messages carry a value above the point's `max` (must be
`rejected`, never written) and about 0.5 % go to the dead unit (must be
`expired`, or `uncertain` never: the device is idempotent).

After the stream the gateway runs until everything is reported, then it is
stopped with SIGTERM and the figures are computed:

  sent, delivered, rejected, expired, uncertain (final reports)
  lost              no final report and not on the device           must be 0
  executed_twice    written more than once, without a report that
                    says resent_after_crash (or on a non-idempotent
                    device at all)                                   must be 0
  resent_after_crash  written twice to an idempotent device after a
                    crash mid-send, and the report says so           allowed
  unreported        executed on the device but no report ever came  must be 0
  delivered_not_on_device, stray_writes, conflicting_reports,
  unexpected_status                                                  must be 0
  dead_lettered     never journaled: the hub gave up after its
                    delivery count (IoT Hub's own feedback says so)  reported

The full-disk variant (root only: tmpfs) puts state_dir on a small tmpfs,
fills it, keeps sending and killing, frees the space, and checks that
nothing acked was lost and that everything then goes through.

Modes: full (default: 10,000 messages and 200 kills across both dialects)
and quick (--quick or C2D_QUICK=1: 1,000 messages, 20 kills). Exit status 1
when any must-be-0 figure is not 0, a gateway panicked, exited on its own,
or a wait ran out (a hang). The JSON goes to --json or $C2D_TORTURE_JSON;
all logs stay in --logs / $C2D_TORTURE_LOGS (else a temp dir, printed).

Usage: ~/.cache/c2d-gateway-tests/venv/bin/python tests/torture/torture.py [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "peers"))

from gateway import Gateway  # noqa: E402
from util import HOST, Proc, find_gateway_bin, free_port, peer_argv, port_accepts, read_jsonl, wait_until  # noqa: E402

ADDRESS = 100  # holding register of point `v` (u32, two registers, high word first)
MAX_VALUE = 1_000_000_000  # the point's max: larger values are rejected before sending
REJECT_BASE = 2_000_000_000  # values of the messages meant to be rejected
NORMAL_DEVICES = ("idem1", "nonidem", "idem2")
IDEMPOTENT = {"idem1": True, "nonidem": False, "idem2": True, "dead": True}


class TortureError(Exception):
    """A bounded wait ran out, or a process did something it must not."""


def log(msg: str) -> None:
    print(f"[torture {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------- processes

class ModbusProc:
    """tests/peers/modbus_device.py over TCP; `.writes()` is its write log."""

    def __init__(self, workdir: Path, units, dead_units=()):
        workdir.mkdir(parents=True, exist_ok=True)
        self.ready = workdir / "ready"
        self.log_path = workdir / "writes.jsonl"
        args = ["--tcp", f"{HOST}:0", "--units", ",".join(map(str, units)),
                "--log", self.log_path, "--ready-file", self.ready]
        if dead_units:
            args += ["--dead-units", ",".join(map(str, dead_units))]
        self.proc = Proc(peer_argv("modbus_device.py", *args), workdir / "stderr.log")
        self.address = ""

    def start(self) -> "ModbusProc":
        self.proc.start()

        def ready():
            try:
                return self.ready.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                return ""
        self.address = self.proc.wait_ready(ready, 20, "modbus device ready")
        return self

    def writes(self) -> list[dict]:
        return read_jsonl(self.log_path)

    def stop(self) -> None:
        self.proc.stop()


class Emulator:
    """`c2d-gateway hub-emulator` with plain MQTT and HTTP on free ports."""

    def __init__(self, binary, workdir: Path, device: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.proc = Proc([binary, "hub-emulator", "--mqtt", f"{HOST}:0", "--tls", f"{HOST}:0",
                          "--http", f"{HOST}:0", "--device", device], workdir / "emulator.log")
        self.mqtt_port = self.http_port = 0
        self.connection_string = ""
        self._conn = None
        self._lock = threading.Lock()  # one HTTP connection, used by the sender and the main thread

    def start(self) -> "Emulator":
        self.proc.start()
        self.proc.wait_ready(lambda: "hub emulator running" in self.proc.log_text(), 20, "hub emulator")
        text = self.proc.log_text()
        self.mqtt_port = int(re.search(r"^MQTT\s+mqtt://[\d.]+:(\d+)", text, re.M).group(1))
        self.http_port = int(re.search(r"^HTTP\s+http://[\d.]+:(\d+)", text, re.M).group(1))
        self.connection_string = re.search(rf"^device {self.device}: (HostName=\S+)$", text, re.M).group(1)
        return self

    def request(self, method: str, path: str, body: bytes | None = None, headers=()):
        """One HTTP request on a kept-alive connection; (status, parsed JSON or None)."""
        with self._lock:
            return self._request(method, path, body, headers)

    def _request(self, method: str, path: str, body: bytes | None, headers):
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(HOST, self.http_port, timeout=20)
            try:
                self._conn.putrequest(method, path, skip_accept_encoding=True)
                for k, v in headers:
                    self._conn.putheader(k, v)
                self._conn.putheader("Content-Length", str(len(body or b"")))
                self._conn.endheaders(body or b"")
                r = self._conn.getresponse()
                data = r.read()
                return r.status, (json.loads(data) if data else None)
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self._conn:
            self._conn.close()
        self.proc.stop()


class Mosquitto:
    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        program = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
        if not program:
            raise TortureError("mosquitto is not installed (tests/run installs it)")
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\npersistence false\n"
            # the gateway's persistent session must keep everything sent while it is down
            "max_queued_messages 1000000\nmax_queued_bytes 0\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
            "log_type information\nlog_type subscribe\nconnection_messages true\n", encoding="utf-8")
        self.proc = Proc([program, "-c", conf], workdir / "mosquitto.log")

    def start(self) -> "Mosquitto":
        self.proc.start()
        self.proc.wait_ready(lambda: port_accepts(self.port), 10, "mosquitto")
        return self

    def stop(self) -> None:
        self.proc.stop()


class MqttBackend:
    """Publishes C2D messages (QoS 1) and collects result reports (paho)."""

    def __init__(self, port: int, client_id: str):
        import paho.mqtt.client as mqtt
        self.reports: list[dict] = []
        self.ids: set = set()
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(HOST, port, keepalive=60)
        self.client.loop_start()
        self.client.subscribe("gateway/+/result", qos=1)
        if not subscribed.wait(10):
            raise TortureError("back end: no SUBACK for gateway/+/result")

    def _on_message(self, _client, _userdata, message):
        try:
            body = json.loads(message.payload)
        except ValueError:
            body = {"_raw": message.payload.decode("utf-8", "replace")}
        body["_topic"] = message.topic
        with self.lock:
            self.reports.append(body)
            self.ids.add(body.get("message_id"))

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(20)
        if not info.is_published():
            raise TortureError(f"mosquitto did not acknowledge a C2D message on {topic}")

    def all_reports(self) -> list[dict]:
        with self.lock:
            return list(self.reports)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------ messages

class Plan:
    """The messages of one scenario: n -> (id, device, value, expected)."""

    def __init__(self, prefix: str, count: int, value_base: int, rng: random.Random,
                 reject_share=0.02, dead_share=0.005):
        self.items = []
        for n in range(count):
            r = rng.random()
            if r < reject_share:
                device, value, expect = rng.choice(NORMAL_DEVICES), REJECT_BASE + value_base + n, "rejected"
            elif r < reject_share + dead_share:
                device, value, expect = "dead", value_base + n, "expired"
            else:
                device, value, expect = rng.choice(NORMAL_DEVICES), value_base + n, "delivered"
            self.items.append({"n": n, "id": f"{prefix}-{n}", "device": device, "value": value, "expect": expect})
        self.by_value = {m["value"]: m for m in self.items}
        self.by_id = {m["id"]: m for m in self.items}


def device_section(name: str, bus: str, unit: int, idempotent: bool, max_attempts: int) -> str:
    return (f"[devices.{name}]\nbus = \"{bus}\"\nunit = {unit}\nidempotent = {str(idempotent).lower()}\n"
            f"max_attempts = {max_attempts}\nmax_age = \"1h\"\n"
            f"points.v = {{ table = \"holding\", address = {ADDRESS}, type = \"u32\", min = 0, max = {MAX_VALUE} }}\n\n")


def devices_config(addr_a: str, addr_b: str, addr_c: str) -> str:
    return (f"[buses.a]\nkind = \"modbus-tcp\"\naddress = \"{addr_a}\"\ntimeout = \"500ms\"\n\n"
            f"[buses.b]\nkind = \"modbus-tcp\"\naddress = \"{addr_b}\"\ntimeout = \"500ms\"\n\n"
            f"[buses.c]\nkind = \"modbus-tcp\"\naddress = \"{addr_c}\"\ntimeout = \"150ms\"\n"
            "breaker_after = 100\n\n"
            + device_section("idem1", "a", 1, True, 50)
            + device_section("nonidem", "a", 2, False, 50)
            + device_section("idem2", "b", 1, True, 50)
            + device_section("dead", "c", 1, True, 2))


# ------------------------------------------------------------------ scenario

class Scenario:
    """One dialect's stream under SIGKILL; `run()` returns its figures."""

    def __init__(self, name: str, dialect: str, binary: Path, workdir: Path, count: int, kills: int,
                 rng: random.Random, value_base: int, state_dir: Path | None = None):
        self.name, self.dialect, self.binary = name, dialect, binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.count, self.kills_wanted = count, kills
        self.rng = rng
        self.plan = Plan(name, count, value_base, rng)
        self.state_dir = state_dir or (workdir / "gateway" / "state")
        self.devs: dict[str, ModbusProc] = {}
        self.hub = None  # Emulator or Mosquitto
        self.backend: MqttBackend | None = None
        self.gw: Gateway | None = None
        self.sent = 0
        self.allowed = 0  # the sender may send messages [0, allowed)
        self.kills = 0
        self.starts = 0
        self.self_exits: list[str] = []  # the gateway ended on its own
        self.stop_sender = threading.Event()
        self.sender_error: BaseException | None = None
        self.retries_403 = 0
        self.events_cache: list[dict] = []
        self.failures: list[str] = []
        self.secret = ""

    # ---- set-up
    def start_peers(self) -> None:
        d = self.workdir
        self.devs["a"] = ModbusProc(d / "device-a", units=(1, 2)).start()
        self.devs["b"] = ModbusProc(d / "device-b", units=(1,)).start()
        self.devs["c"] = ModbusProc(d / "device-c", units=(1,), dead_units=(1,)).start()
        if self.dialect == "azure":
            self.hub = Emulator(self.binary, d / "hub", "gw").start()
            self.secret = re.search(r"SharedAccessKey=([^;\s]+)", self.hub.connection_string).group(1)
            cs_file = d / "connection-string"
            cs_file.write_text(self.hub.connection_string + "\n", encoding="utf-8")
            cs_file.chmod(0o600)
            hub = (f"[hub]\nkind = \"azure\"\nconnection_string_file = \"{cs_file}\"\ntransport = \"mqtt\"\n"
                   f"port = {self.hub.mqtt_port}\n\n[routing]\ndevice_property = \"device\"\n\n")
        else:
            self.hub = Mosquitto(d / "mosquitto").start()
            self.backend = MqttBackend(self.hub.port, f"torture-backend-{os.getpid()}-{self.name}")
            hub = (f"[hub]\nkind = \"mqtt\"\nurl = \"mqtt://{HOST}:{self.hub.port}\"\n"
                   f"client_id = \"torture-gw-{os.getpid()}-{self.name}\"\n\n")
        config = (f"[gateway]\nstate_dir = \"{self.state_dir}\"\n\n" + hub
                  + devices_config(self.devs["a"].address, self.devs["b"].address, self.devs["c"].address))
        self.gw = Gateway(self.binary, d / "gateway", config, env={"RUST_LOG": "info,c2d_gateway=debug"})

    def start_gateway(self, wait_ready=True, timeout=30.0) -> None:
        self.starts += 1
        self.gw.start(wait_ready=wait_ready, timeout=timeout)

    def wait_first_subscription(self) -> None:
        """Mosquitto keeps messages for the gateway only once its session subscribed."""
        if self.dialect != "mqtt":
            return
        cid = f"torture-gw-{os.getpid()}-{self.name}"
        wait_until(lambda: f"Sending SUBACK to {cid}" in self.hub.proc.log_text() or
                   re.search(rf"{re.escape(cid)} \d+ gateway/\+/c2d", self.hub.proc.log_text()),
                   20, what="the gateway's first SUBACK in the mosquitto log")

    # ---- the stream
    def send_one(self, m: dict) -> None:
        body = {"point": "v", "value": m["value"]}
        if self.dialect == "azure":
            headers = [("iothub-messageid", m["id"]), ("iothub-app-device", m["device"]),
                       ("iothub-ack", "negative"), ("content-type", "application/json")]
            payload = json.dumps(body).encode()
            deadline = time.monotonic() + 120
            while True:
                status, reply = self.hub.request("POST", f"/devices/{self.hub.device}/messages", payload, headers)
                if status == 201:
                    return
                if status != 403:
                    raise TortureError(f"POST {m['id']}: {status} {reply}")
                self.retries_403 += 1
                if time.monotonic() > deadline or self.stop_sender.is_set():
                    raise TortureError(f"the emulator's queue stayed full for 120 s (sending {m['id']})")
                time.sleep(0.01)
        else:
            body = {"id": m["id"], **body}
            # refill-as-it-drains, like the azure side: at most 300 unreported
            deadline = time.monotonic() + 120
            while self.sent - len(self.backend.ids) > 300:
                if time.monotonic() > deadline or self.stop_sender.is_set():
                    raise TortureError("300 messages stayed unreported for 120 s")
                time.sleep(0.02)
            self.backend.publish(f"gateway/{m['device']}/c2d", json.dumps(body).encode())

    def sender(self) -> None:
        try:
            for m in self.plan.items:
                while self.sent >= self.allowed:
                    if self.stop_sender.is_set():
                        return
                    time.sleep(0.005)
                if self.stop_sender.is_set():
                    return
                self.send_one(m)
                self.sent += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.sender_error = e

    def check_alive(self) -> None:
        """A gateway that ended without our SIGKILL: noted (crash, exit on error)."""
        if self.gw.proc is not None and not self.gw.alive:
            rc = self.gw.returncode
            self.self_exits.append(f"exit status {rc} after start #{self.starts}")
            log(f"{self.name}: the gateway exited on its own with status {rc}")

    def kill_loop(self) -> None:
        per_life = self.count / max(1, self.kills_wanted)
        for k in range(self.kills_wanted):
            self.allowed = min(self.count, math.ceil((k + 1) * per_life))
            r = self.rng.random()
            if self.gw.alive:  # the first life, started by run()
                time.sleep(self.rng.uniform(0.2, 1.6))
            elif r < 0.15:
                # during start-up: journal open, recovery, first connection
                self.start_gateway(wait_ready=False)
                time.sleep(self.rng.uniform(0.0, 0.08))
            else:
                self.start_gateway(wait_ready=True)
                time.sleep(self.rng.uniform(0.0, 0.2) if r < 0.4 else self.rng.uniform(0.2, 1.6))
            if self.sender_error:
                raise self.sender_error
            if not self.gw.alive:
                self.check_alive()
            else:
                self.gw.kill9()
                self.kills += 1
            if (k + 1) % 10 == 0:
                log(f"{self.name}: {self.kills} kills, {self.sent}/{self.count} sent, "
                    f"{len(self.reported_ids())} reported")

    # ---- reports
    def fetch_reports(self) -> list[dict]:
        if self.dialect == "azure":
            status, events = self.hub.request("GET", f"/devices/{self.hub.device}/events")
            if status != 200:
                raise TortureError(f"GET events: {status}")
            out = []
            for ev in events:
                try:
                    body = json.loads(ev.get("body") or "")
                except ValueError:
                    body = {"_raw": ev.get("body")}
                props = dict((k, v) for k, v in ev.get("properties", []))
                body["_props"] = props
                out.append(body)
            self.events_cache = out
            return out
        return self.backend.all_reports()

    def reported_ids(self) -> set:
        if self.dialect == "azure":
            return {r.get("message_id") for r in self.fetch_reports()}
        with self.backend.lock:
            return set(self.backend.ids)

    def gateway_queued(self) -> int | None:
        status = self.gw.status() or ""
        m = re.search(r"(\d+) queued", status)
        return int(m.group(1)) if m else None

    def hub_queue_len(self) -> int:
        if self.dialect != "azure":
            return 0
        status, q = self.hub.request("GET", f"/devices/{self.hub.device}/messages")
        return len(q) if status == 200 else -1

    def drain(self, overall: float, quiet: float = 8.0) -> bool:
        """Until every sent message is reported, or nothing moves for `quiet`
        seconds while the gateway and the hub hold nothing; False on `overall`."""
        deadline = time.monotonic() + overall
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            if not self.gw.alive:
                self.check_alive()
                self.start_gateway(wait_ready=True)
            ids = self.reported_ids()
            done = sum(1 for m in self.plan.items[:self.sent] if m["id"] in ids)
            if done == self.count and self.sent == self.count:
                return True
            if done != last:
                last, last_change = done, time.monotonic()
            elif (time.monotonic() - last_change > quiet and self.sent == self.count
                  and self.gateway_queued() == 0 and self.hub_queue_len() == 0):
                return True  # idle: whatever has no report now will never get one
            time.sleep(0.5)
        return False

    # ---- teardown
    def stop_all(self) -> None:
        self.stop_sender.set()
        if self.gw is not None:
            if self.gw.alive:
                self.gw.proc.signal(signal.SIGTERM)
                try:
                    rc = self.gw.proc.wait(20)
                    if rc != 0:
                        self.failures.append(f"SIGTERM: the gateway exited with {rc}")
                except subprocess.TimeoutExpired:
                    self.failures.append("hang: the gateway did not exit within 20 s of SIGTERM")
            self.gw.close()
        if self.backend is not None:
            self.backend.close()
        if self.hub is not None:
            self.hub.stop()
        for dev in self.devs.values():
            dev.stop()

    # ---- the whole thing
    def run(self) -> dict:
        t0 = time.monotonic()
        log(f"{self.name}: {self.count} messages, {self.kills_wanted} kills, dialect {self.dialect}")
        sender = threading.Thread(target=self.sender, daemon=True)
        drained = False
        try:
            self.start_peers()
            self.start_gateway(wait_ready=True)
            self.wait_first_subscription()
            sender.start()
            self.kill_loop()
            self.allowed = self.count
            self.start_gateway(wait_ready=True)
            sender.join(timeout=max(120.0, self.count * 0.1))
            if sender.is_alive():
                raise TortureError(f"hang: the sender is stuck at {self.sent}/{self.count}")
            if self.sender_error:
                raise self.sender_error
            drained = self.drain(overall=max(180.0, self.count * 0.05))
            if not drained:
                self.failures.append("hang: messages still unreported when the drain wait ran out")
        except Exception as e:  # noqa: BLE001 - every failure is recorded, then the peers are stopped
            self.failures.append(f"{type(e).__name__}: {e}"[:3000])
            traceback.print_exc()
        finally:
            self.stop_all()
        result = self.analyse()
        result["duration_s"] = round(time.monotonic() - t0, 1)
        result["drained"] = drained
        return result

    # ---- accounting
    def analyse(self) -> dict:
        plan = self.plan
        reports = defaultdict(list)
        for r in (self.events_cache if self.dialect == "azure" else self.backend.all_reports() if self.backend else []):
            reports[r.get("message_id")].append(r)
        if self.dialect == "azure" and self.hub is not None:
            # the cache is from the last poll; make sure it is complete (the emulator is stopped by now)
            pass
        writes = defaultdict(list)  # message id -> [device name]
        stray = []
        unit_device = {("a", 1): "idem1", ("a", 2): "nonidem", ("b", 1): "idem2", ("c", 1): "dead"}
        for bus, dev in self.devs.items():
            for w in dev.writes():
                name = unit_device.get((bus, w.get("unit")))
                vals = w.get("values") or []
                m = None
                if w.get("fc") == 16 and w.get("address") == ADDRESS and len(vals) == 2:
                    m = plan.by_value.get(vals[0] * 65536 + vals[1])
                if m is None or m["n"] >= self.sent:
                    stray.append({"bus": bus, **w})
                elif name != m["device"]:
                    stray.append({"bus": bus, "wrong_device": name, "message": m["id"], **w})
                else:
                    writes[m["id"]].append(name)
        feedback = {}
        if self.dialect == "azure" and self.hub is not None:
            feedback = getattr(self, "feedback_cache", {})
        c = Counter()
        bad = defaultdict(list)  # category -> message ids
        for m in plan.items[:self.sent]:
            mid = m["id"]
            rs = [r for r in reports.get(mid, []) if "status" in r]
            n_writes = len(writes.get(mid, []))
            statuses = {r["status"] for r in rs}
            if len({(r["status"], r.get("completed_at")) for r in rs}) > 1:
                bad["conflicting_reports"].append(mid)
            status = rs[0]["status"] if rs else None
            # resent_after_crash: sent again after a crash mid-send; resent:
            # sent again after an exchange without a clear answer
            resent_flag = any(r.get("resent_after_crash") or r.get("resent") for r in rs)
            if status:
                c[status] += 1
            if not rs:
                if n_writes:
                    bad["unreported"].append(mid)
                elif feedback.get(mid) in ("DeliveryCountExceeded", "Expired"):
                    c["dead_lettered"] += 1
                else:
                    bad["lost"].append(mid)
            if n_writes > 1:
                if IDEMPOTENT[m["device"]] and resent_flag:
                    c["resent_after_crash"] += 1
                else:
                    bad["executed_twice"].append(mid)
            if "delivered" in statuses and n_writes == 0:
                bad["delivered_not_on_device"].append(mid)
            if resent_flag and not IDEMPOTENT[m["device"]]:
                bad["unexpected_status"].append(mid)
            if status and status != m["expect"]:
                ok = (m["expect"] == "delivered" and status == "uncertain" and not IDEMPOTENT[m["device"]])
                if not ok:
                    bad["unexpected_status"].append(mid)
            if m["expect"] == "rejected" and n_writes:
                bad["executed_twice" if n_writes > 1 else "rejected_but_written"].append(mid)
        result = {
            "dialect": self.dialect,
            "sent": self.sent,
            "planned": self.count,
            "kills": self.kills,
            "starts": self.starts,
            "delivered": c["delivered"],
            "rejected": c["rejected"],
            "expired": c["expired"],
            "uncertain": c["uncertain"],
            "resent_after_crash": c["resent_after_crash"],
            "dead_lettered": c["dead_lettered"],
            "lost": len(bad["lost"]),
            "executed_twice": len(bad["executed_twice"]),
            "unreported": len(bad["unreported"]),
            "delivered_not_on_device": len(bad["delivered_not_on_device"]),
            "rejected_but_written": len(bad["rejected_but_written"]),
            "conflicting_reports": len(bad["conflicting_reports"]),
            "unexpected_status": len(bad["unexpected_status"]),
            "stray_writes": len(stray),
            "device_writes": sum(len(v) for v in writes.values()),
            "retries_403": self.retries_403,
            "self_exits": self.self_exits,
            "examples": {k: v[:20] for k, v in bad.items() if v},
            "stray_examples": stray[:10],
            "failures": list(self.failures),
            "logs": str(self.workdir),
        }
        gw_log = self.gw.log_path.read_text(encoding="utf-8", errors="replace") if self.gw else ""
        result["panics"] = len(re.findall(r"panicked", gw_log))
        result["secret_in_log"] = bool(self.secret) and self.secret in gw_log
        for key in ("lost", "executed_twice", "unreported", "delivered_not_on_device", "rejected_but_written",
                    "conflicting_reports", "unexpected_status", "stray_writes", "panics"):
            if result[key]:
                result["failures"].append(f"{key} = {result[key]}")
        if result["secret_in_log"]:
            result["failures"].append("the device key appears in the gateway log")
        if self.self_exits:
            result["failures"].append(f"the gateway exited on its own {len(self.self_exits)} times")
        if self.sent < self.count:
            result["failures"].append(f"only {self.sent} of {self.count} messages were sent")
        return result


def azure_feedback_hook(scn: Scenario) -> None:
    """Keep the emulator's feedback (dead-lettered messages) before it stops."""
    status, fb = scn.hub.request("GET", "/feedback")
    if status == 200:
        scn.feedback_cache = {f["original_message_id"]: f["status_code"] for f in fb}


# ------------------------------------------------------------------ disk full

class DiskFullScenario(Scenario):
    """state_dir on a small tmpfs: fill it, keep sending and killing, free it.

    Phases: (1) normal traffic; (2) the tmpfs is filled to the last byte, then
    messages keep coming while the gateway is killed and restarted (a gateway
    that exits on its own is restarted after 0.5 s, like systemd's
    Restart=on-failure, and counted); (3) the space is freed and the gateway
    is left alone: everything must go through (noted whether it needed a
    restart to recover).
    """

    def __init__(self, *args, tmpfs_size_mb: int = 16, full_kills: int = 10, **kw):
        self.mount = kw.pop("mount")
        super().__init__(*args, state_dir=self.mount / "state", **kw)
        self.tmpfs_size_mb = tmpfs_size_mb
        self.full_kills = full_kills
        self.phase_log: list[str] = []
        self.recovered_without_restart = None
        self.filler = self.mount / "filler"

    def fill(self) -> int:
        """Writes the filler until ENOSPC; returns its size."""
        size = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 65536, 4096, 512, 1):
                data = b"\0" * chunk
                while True:
                    try:
                        size += os.write(fd, data)
                    except OSError:
                        break
        finally:
            os.close(fd)
        return size

    def usage(self) -> str:
        st = os.statvfs(self.mount)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return f"{used} of {st.f_blocks * st.f_frsize} bytes used"

    def keep_up(self, seconds: float, kill_every=None) -> None:
        """For `seconds`: restart a gateway that ended on its own after 0.5 s
        (systemd's Restart=on-failure), and SIGKILL it every `kill_every`
        (lo, hi) seconds if given."""
        end = time.monotonic() + seconds
        next_kill = time.monotonic() + self.rng.uniform(*kill_every) if kill_every else math.inf
        while time.monotonic() < end:
            if not self.gw.alive:
                self.check_alive()
                time.sleep(0.5)
                self.start_gateway(wait_ready=False)
            elif time.monotonic() >= next_kill:
                self.gw.kill9()
                self.kills += 1
                self.start_gateway(wait_ready=False)
                next_kill = time.monotonic() + self.rng.uniform(*kill_every)
            time.sleep(0.05)

    def state_listing(self) -> list[str]:
        out = []
        for root, _dirs, files in os.walk(self.mount):
            for f in files:
                path = Path(root) / f
                try:
                    out.append(f"{path.relative_to(self.mount)} {path.stat().st_size}")
                except OSError:
                    pass
        return sorted(out)

    def run(self) -> dict:
        t0 = time.monotonic()
        drained = False
        n1, n2 = self.count // 3, 2 * self.count // 3
        try:
            log(f"{self.name}: tmpfs {self.tmpfs_size_mb} MiB at {self.mount}, {self.count} messages")
            self.start_peers()
            self.start_gateway(wait_ready=True)
            self.wait_first_subscription()
            sender = threading.Thread(target=self.sender, daemon=True)
            sender.start()
            # (1) normal traffic
            self.allowed = n1
            if not self.drain_until(n1, 120):
                raise TortureError(f"phase 1: {n1} messages not reported in 120 s")
            self.phase_log.append(f"phase 1: {n1} messages through; tmpfs {self.usage()}")
            # (2a) disk full, the gateway left alone: does it hold acks, and recover by itself?
            filled = self.fill()
            lines0 = self.gw.log_path.read_text(errors="replace").count("\n")
            log(f"{self.name}: tmpfs full ({filled} bytes of filler); sending, no kills")
            self.allowed = n2
            self.keep_up(6)
            lines1 = self.gw.log_path.read_text(errors="replace").count("\n")
            self.phase_log.append(f"phase 2a: full for 6 s, no kills: {self.sent} sent, "
                                  f"{len(self.reported_ids())} reported, {len(self.self_exits)} exits on its own, "
                                  f"{lines1 - lines0} log lines, alive = {self.gw.alive}")
            starts_before = self.starts
            self.filler.unlink()
            self.recovered_without_restart = self.drain_until(n2, 15, restart=False) and self.starts == starts_before
            self.phase_log.append(f"phase 2a: space freed: recovered without a restart = "
                                  f"{self.recovered_without_restart} ({len(self.reported_ids())} reported)")
            if not self.gw.alive:
                self.check_alive()
            if not self.recovered_without_restart:
                log(f"{self.name}: not recovered by itself in 15 s; restarting the gateway")
                if self.gw.alive:
                    self.gw.kill9()
                    self.kills += 1
                self.start_gateway(wait_ready=True)
                if not self.drain_until(n2, 60):
                    self.phase_log.append("phase 2a: not everything went through even after a restart")
            # (2b) disk full again, now with kills and restarts
            self.phase_log.append(f"phase 2b: before filling: tmpfs {self.usage()}")
            filled = self.fill()
            exits0, kills0 = len(self.self_exits), self.kills
            log(f"{self.name}: tmpfs full again ({filled} bytes); sending and killing")
            self.allowed = self.count
            self.keep_up(self.full_kills * 1.0, kill_every=(0.3, 1.7))
            self.keep_up(3)
            self.listing_while_full = self.state_listing()
            self.phase_log.append(f"phase 2b: {self.kills - kills0} kills, {len(self.self_exits) - exits0} exits on "
                                  f"its own, {self.sent} sent, {len(self.reported_ids())} reported; state dir: "
                                  + ", ".join(self.listing_while_full))
            # (3) space freed: everything must go through
            self.filler.unlink()
            if not self.gw.alive:
                self.check_alive()
                self.start_gateway(wait_ready=True)
            sender.join(timeout=180)
            if sender.is_alive():
                raise TortureError(f"hang: the sender is stuck at {self.sent}/{self.count}")
            if self.sender_error:
                raise self.sender_error
            if not self.drain_until(self.count, 10, restart=False):
                log(f"{self.name}: not through 10 s after the space was freed; restarting the gateway")
                if self.gw.alive:
                    self.gw.kill9()
                    self.kills += 1
                self.start_gateway(wait_ready=True)
            drained = self.drain(overall=180)
            if not drained:
                self.failures.append("hang: messages still unreported after the space was freed")
            self.phase_log.append("phase 3: state dir at the end: " + ", ".join(self.state_listing()))
        except Exception as e:  # noqa: BLE001 - every failure is recorded, then the peers are stopped
            self.failures.append(f"{type(e).__name__}: {e}"[:3000])
            traceback.print_exc()
        finally:
            self.stop_all()
        result = self.analyse()
        result["duration_s"] = round(time.monotonic() - t0, 1)
        result["drained"] = drained
        result["phases"] = self.phase_log
        result["recovered_without_restart"] = self.recovered_without_restart
        gw_log = self.gw.log_path.read_text(encoding="utf-8", errors="replace") if self.gw else ""
        result["journal_moved_aside"] = len({f.split("/")[1] for f in self.state_listing() if ".corrupt-" in f})
        result["sled_conf_reset"] = gw_log.count("empty/corrupt configuration file found")
        result["log_lines"] = gw_log.count("\n")
        # exits on their own are tolerated here in moderation (no wild crash loop)
        result["failures"] = [f for f in result["failures"] if not f.startswith("the gateway exited on its own")]
        if len(self.self_exits) > 3 * (self.full_kills + 10):
            result["failures"].append(f"crash loop: {len(self.self_exits)} exits on its own while the disk was full")
        if result["journal_moved_aside"]:
            result["failures"].append(f"the journal was moved aside {result['journal_moved_aside']} times "
                                      "(its acked messages and dedupe history are gone)")
        return result

    def drain_until(self, n: int, timeout: float, restart: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.gw.alive:
                self.check_alive()
                if restart:
                    self.start_gateway(wait_ready=True)
            ids = self.reported_ids()
            if sum(1 for m in self.plan.items[:n] if m["id"] in ids) >= n and self.sent >= n:
                return True
            time.sleep(0.3)
        return False


# ---------------------------------------------------------------------- main

COLUMNS = ("sent", "kills", "delivered", "rejected", "expired", "uncertain", "resent_after_crash",
           "dead_lettered", "lost", "executed_twice", "unreported", "delivered_not_on_device",
           "stray_writes", "unexpected_status", "panics", "duration_s")


def print_table(results: dict) -> None:
    names = list(results)
    width = max(len(c) for c in COLUMNS) + 2
    print("\n" + "figure".ljust(width) + "".join(n.rjust(12) for n in names))
    for col in COLUMNS:
        print(col.ljust(width) + "".join(str(results[n].get(col, "")).rjust(12) for n in names))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", default=os.environ.get("C2D_QUICK") == "1",
                   help="CI form: about 1,000 messages and 20 kills (also C2D_QUICK=1)")
    p.add_argument("--messages", type=int, help="messages in total across the dialects")
    p.add_argument("--kills", type=int, help="SIGKILLs in total across the dialects")
    p.add_argument("--dialects", default="azure,mqtt")
    p.add_argument("--no-disk-full", action="store_true", help="skip the full-disk variant")
    p.add_argument("--disk-full-only", action="store_true")
    p.add_argument("--seed", type=int, default=int(os.environ.get("C2D_TORTURE_SEED", "0")) or None)
    p.add_argument("--json", default=os.environ.get("C2D_TORTURE_JSON"), help="write the figures here")
    p.add_argument("--logs", default=os.environ.get("C2D_TORTURE_LOGS"), help="directory for all logs")
    args = p.parse_args(argv)

    binary, why = find_gateway_bin()
    if binary is None:
        print(f"torture: {why}", file=sys.stderr)
        return 2
    seed = args.seed or random.SystemRandom().randrange(1, 2**31)
    rng = random.Random(seed)
    total = args.messages or (1000 if args.quick else 10000)
    kills = args.kills or (20 if args.quick else 200)
    dialects = [d for d in args.dialects.split(",") if d] if not args.disk_full_only else []
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="c2d-torture-"))
    logs.mkdir(parents=True, exist_ok=True)
    log(f"binary {binary}, mode {'quick' if args.quick else 'full'}, seed {seed}, logs {logs}")

    t0 = time.monotonic()
    results: dict[str, dict] = {}
    for i, dialect in enumerate(dialects):
        n = total // len(dialects) + (1 if i < total % len(dialects) else 0)
        k = kills // len(dialects) + (1 if i < kills % len(dialects) else 0)
        scn = Scenario(dialect, dialect, binary, logs / dialect, n, k, rng, value_base=1 + 1_000_000 * i)
        orig_stop = scn.stop_all

        def stop_all(scn=scn, orig_stop=orig_stop):
            if scn.dialect == "azure" and scn.hub is not None and scn.hub.proc.alive:
                try:
                    scn.fetch_reports()
                    azure_feedback_hook(scn)
                except Exception as e:  # noqa: BLE001
                    scn.failures.append(f"cannot read the emulator's events/feedback: {e}")
            orig_stop()
        scn.stop_all = stop_all
        results[dialect] = scn.run()

    if not args.no_disk_full:
        if os.geteuid() != 0:
            log("disk-full variant SKIPPED: it mounts a tmpfs and needs root")
            results["disk_full"] = {"skipped": "not root: mount -t tmpfs needs root"}
        else:
            mount = Path(tempfile.mkdtemp(prefix="c2d-torture-tmpfs-"))
            size_mb = 16
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
                                     capture_output=True, text=True)
            if mounted.returncode != 0:
                log(f"disk-full variant SKIPPED: mount failed: {mounted.stderr.strip()}")
                results["disk_full"] = {"skipped": f"mount -t tmpfs failed: {mounted.stderr.strip()}"}
            else:
                try:
                    n = 300 if args.quick else 900
                    scn = DiskFullScenario("diskfull", "mqtt", binary, logs / "disk_full", n, 0, rng,
                                           value_base=5_000_001, mount=mount, tmpfs_size_mb=size_mb,
                                           full_kills=8 if args.quick else 20)
                    results["disk_full"] = scn.run()
                    results["disk_full"]["kills"] = scn.kills
                finally:
                    subprocess.run(["umount", "-l", str(mount)], check=False)
                    shutil.rmtree(mount, ignore_errors=True)

    ran = {k: v for k, v in results.items() if "skipped" not in v}
    totals = {c: sum(v.get(c, 0) for v in ran.values()) for c in COLUMNS if c != "duration_s"}
    totals["duration_s"] = round(time.monotonic() - t0, 1)
    print_table({**ran, "total": totals})
    failures = [f"{name}: {f}" for name, v in ran.items() for f in v.get("failures", [])]
    for name, v in ran.items():
        if v.get("examples"):
            print(f"\n{name}: example message ids: {json.dumps(v['examples'])}")
        if v.get("stray_examples"):
            print(f"{name}: stray writes: {json.dumps(v['stray_examples'])}")
        if v.get("phases"):
            print(f"{name}: " + "\n  ".join(v["phases"]))
    out = {"mode": "quick" if args.quick else "full", "binary": str(binary), "seed": seed,
           "logs": str(logs), "results": results, "totals": totals, "failures": failures,
           "ok": not failures}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON written to {args.json}")
    print(f"\nlogs (gateway, hub, devices): {logs}")
    if failures:
        print("\nTORTURE FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"\ntorture passed: {totals['sent']} messages, {totals['kills']} kills, nothing lost or run twice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
