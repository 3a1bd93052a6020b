#!/usr/bin/env python3
"""`c2d-gateway bench` against an independent device: pymodbus.

Starts tests/peers/modbus_device.py (pymodbus, Modbus TCP on loopback,
logging every write it applies), then runs

    c2d-gateway bench --only ceiling --device HOST:PORT --json PATH

which measures what a tight-loop Modbus client gets from that device (its
ceiling), then the gateway delivering C2D messages to it end to end (hub
emulator, journal durable, PUBACK after the device's answer), with the
gateway's CPU and journal flushes per message. Then the same in mqtt mode:
a Mosquitto, the gateway with `kind = "mqtt"`, and a back end publishing
QoS 1 commands as fast as the gateway completes them. Prints the bench's
table and a summary line per mode; writes the JSON (the mqtt mode's next to
it, `<name>-mqtt.json`).

Asserts no speed (the machines are shared and noisy): only that the bench
ran without an error and that the device applied every message exactly
once (its own write log: the tight loop's writes plus the gateway's).

Usage: pymodbus.py --json PATH [--logs DIR] [--quick]; the gateway binary is
$C2D_GATEWAY_BIN (tests/run sets it to the release build).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PEERS = Path(__file__).resolve().parent.parent / "peers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def mqtt_len(n: int) -> bytes:
    """MQTT's variable-length "remaining length"."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def blast(port: int, topic: str, bodies: list[bytes]) -> None:
    """Publishes `bodies` with QoS 1 as fast as Mosquitto takes them, over
    a raw MQTT 3.1.1 connection (paho spends ~50 us of Python on each,
    which would make the back end, not the gateway, the bottleneck); the
    broker's PUBACKs are read and dropped."""
    s = socket.create_connection(("127.0.0.1", port))
    vh = mqtt_str(b"MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big")
    cid = mqtt_str(b"bench-blaster")
    s.sendall(bytes([0x10]) + mqtt_len(len(vh) + len(cid)) + vh + cid)
    connack = s.recv(4)
    if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"mosquitto refused the publisher: {connack!r}")
    stop = threading.Event()

    def drain():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                if not s.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    t = mqtt_str(topic.encode())
    chunk = bytearray()
    for i, body in enumerate(bodies):
        chunk += bytes([0x32]) + mqtt_len(len(t) + 2 + len(body)) + t + (i % 65535 + 1).to_bytes(2, "big") + body
        if len(chunk) > 64 * 1024:
            s.sendall(chunk)
            chunk.clear()
    s.sendall(chunk)
    # Every PUBLISH taken before we go: a PINGREQ is answered after them.
    s.sendall(bytes([0xC0, 0]))
    time.sleep(0.5)
    stop.set()
    reader.join()
    s.sendall(bytes([0xE0, 0]))
    s.close()


def mqtt_mode(binary: str, device: str, logs: Path, seconds: float) -> dict:
    """Mosquitto + the gateway (`kind = "mqtt"`) + a back end that
    publishes a burst of QoS 1 commands at once (the broker queues them for
    the gateway's session) and counts the reports."""
    import paho.mqtt.client as mqtt

    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if not mosquitto:
        raise RuntimeError("mosquitto is not installed")
    port = free_port()
    conf = logs / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 64\nmax_queued_messages 100000\nlog_dest stderr\nlog_type subscribe\n", encoding="utf-8")
    state = logs / "mqtt-state"
    shutil.rmtree(state, ignore_errors=True)
    config = logs / "gateway-mqtt.toml"
    config.write_text(f"""[gateway]
state_dir = "{state}"
log_level = "info"
[hub]
kind = "mqtt"
url = "mqtt://127.0.0.1:{port}"
client_id = "bench-gateway"
max_unacked = 64
[buses.plc]
kind = "modbus-tcp"
address = "{device}"
timeout = "1s"
[devices.boiler]
bus = "plc"
unit = 1
idempotent = true
max_attempts = 1000000
max_age = "24h"
points.seq = {{ table = "holding", address = 100, type = "u32" }}
""", encoding="utf-8")
    procs = []
    with open(logs / "mosquitto.log", "w", encoding="utf-8") as out:
        procs.append(subprocess.Popen([mosquitto, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT))
    gw_log = open(logs / "gateway-mqtt.log", "w", encoding="utf-8")
    try:
        def accepts():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(accepts, 10, "mosquitto")
        env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "NOTIFY_SOCKET")}
        gw = subprocess.Popen([binary, "run", "--config", str(config)], stdout=gw_log, stderr=subprocess.STDOUT,
                              env=env)
        procs.append(gw)
        reports: dict[str, str] = {}
        lock = threading.Lock()

        def on_message(_c, _u, msg):
            body = json.loads(msg.payload)
            with lock:
                reports[body["message_id"]] = body["status"]

        back = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-backend")
        back.max_inflight_messages_set(64)
        back.max_queued_messages_set(0)
        back.on_message = on_message
        back.connect("127.0.0.1", port)
        back.subscribe("gateway/+/result", qos=1)
        back.loop_start()
        seq = 0

        def publish():
            nonlocal seq
            seq += 1
            body = json.dumps({"id": f"m{seq}", "point": "seq", "value": seq})
            back.publish("gateway/boiler/c2d", body, qos=1)

        # Warm-up: the gateway subscribed (Mosquitto logs it), one delivered.
        wait_for(lambda: "bench-gateway 1 gateway/+/c2d" in (logs / "mosquitto.log").read_text(encoding="utf-8"),
                 30, f"the gateway's subscription (see {logs / 'gateway-mqtt.log'})")
        publish()
        wait_for(lambda: len(reports) == seq, 30, "the warm-up report")
        # The burst: about `seconds` of work at 5,000 msg/s, queued at the
        # broker at once, so the gateway sets the pace.
        burst = int(5000 * seconds)
        bodies = [json.dumps({"id": f"m{k}", "point": "seq", "value": k}).encode()
                  for k in range(seq + 1, seq + burst + 1)]
        base, t0, c0 = seq, time.monotonic(), cpu_ticks(gw.pid)
        blast(port, "gateway/boiler/c2d", bodies)
        seq += burst
        wait_for(lambda: len(reports) == seq, 120, "every report")
        t1, c1 = time.monotonic(), cpu_ticks(gw.pid)
        back.loop_stop()
        back.disconnect()
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
        gw_log.flush()
        flushes = re.findall(r"journal_flushes=(\d+)", (logs / "gateway-mqtt.log").read_text(encoding="utf-8"))
        n = seq - base
        tck = os.sysconf("SC_CLK_TCK")
        return {
            "mode": "mqtt (Mosquitto, kind = \"mqtt\")",
            "messages": n,
            "all_messages": seq,
            "delivered": sum(1 for s in reports.values() if s == "delivered"),
            "reports": len(reports),
            "seconds": t1 - t0,
            "msg_per_s": n / (t1 - t0),
            "cpu_us_per_msg": (c1 - c0) * 1e6 / tck / max(n, 1),
            "journal_flushes_per_msg": int(flushes[-1]) / seq if flushes else None,
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        gw_log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="where the bench writes its JSON")
    p.add_argument("--logs", help="keep the device's logs here (default: a temporary directory)")
    p.add_argument("--quick", action="store_true", help="the bench's short form")
    a = p.parse_args()
    binary = os.environ.get("C2D_GATEWAY_BIN")
    if not binary:
        print("pymodbus bench: set C2D_GATEWAY_BIN to the gateway binary", file=sys.stderr)
        return 2
    logs = Path(a.logs or tempfile.mkdtemp(prefix="c2d-bench-pymodbus-"))
    logs.mkdir(parents=True, exist_ok=True)
    ready, write_log = logs / "device.ready", logs / "device-writes.jsonl"
    ready.unlink(missing_ok=True)
    write_log.unlink(missing_ok=True)
    with open(logs / "device.log", "w", encoding="utf-8") as err:
        device = subprocess.Popen(
            [sys.executable, str(PEERS / "modbus_device.py"), "--tcp", "127.0.0.1:0", "--units", "1",
             "--log", str(write_log), "--ready-file", str(ready)],
            stdout=err, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 15
        while not (ready.exists() and ready.read_text(encoding="utf-8").strip()):
            if device.poll() is not None or time.monotonic() > end:
                print(f"pymodbus bench: the device did not start; see {logs / 'device.log'}", file=sys.stderr)
                return 1
            time.sleep(0.05)
        address = ready.read_text(encoding="utf-8").strip()
        argv = [binary, "bench", "--only", "ceiling", "--device", address, "--json", a.json]
        if a.quick:
            argv.append("--quick")
        print("+ " + " ".join(argv), flush=True)
        rc = subprocess.run(argv, check=False).returncode
        m = None
        if rc == 0:
            try:
                m = mqtt_mode(binary, address, logs, 2.0 if a.quick else 10.0)
            except Exception as exc:  # noqa: BLE001 - reported, then the run fails
                print(f"pymodbus bench: mqtt mode failed: {exc}", file=sys.stderr)
                rc = 1
    finally:
        device.terminate()
        device.wait(10)
    if rc != 0:
        print(f"pymodbus bench: the bench failed (exit {rc})", file=sys.stderr)
        return 1
    mqtt_json = Path(a.json).with_name(Path(a.json).stem + "-mqtt.json")
    mqtt_json.write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    c = json.loads(Path(a.json).read_text(encoding="utf-8"))["ceiling"]
    applied = sum(1 for line in write_log.read_text(encoding="utf-8").splitlines() if line.strip())
    expected = c["ceiling_writes"] + c["gateway_messages"] + m["all_messages"]
    print(f"pymodbus bench: ceiling {c['ceiling_per_s']:.0f} writes/s, gateway {c['gateway_per_s']:.0f} msg/s "
          f"({100 * c['share']:.1f} % of it), {c['cpu_us_per_msg']:.0f} us CPU and "
          f"{c['journal_flushes_per_msg']:.3f} journal flushes per message; the device applied {applied} writes "
          f"({c['ceiling_writes']} from the tight loop, {c['gateway_messages']} messages)")
    flushes = m["journal_flushes_per_msg"]
    print(f"pymodbus bench (mqtt mode): {m['msg_per_s']:.0f} msg/s through Mosquitto, {m['cpu_us_per_msg']:.0f} us CPU "
          f"and {flushes if flushes is None else round(flushes, 3)} journal flushes per message; "
          f"{m['delivered']} of {m['all_messages']} delivered; the device applied {applied} writes in all")
    if c["delivered"] != c["messages"] or m["delivered"] != m["all_messages"] or applied != expected:
        print(f"pymodbus bench: FAILED: {c['messages']} messages, {c['delivered']} delivered; mqtt mode "
              f"{m['delivered']} of {m['all_messages']}; "
              f"device applied {applied} writes, expected {expected} (each message exactly once)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
