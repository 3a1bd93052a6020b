"""The gateway's way out of a plant network: MQTT over WebSockets through a
real HTTP CONNECT proxy (Debian's tinyproxy, started here on loopback), to
the hub emulator (`transport = "websockets"`, TLS verified end to end
through the tunnel) and to Mosquitto's WebSocket listener (`kind = "mqtt"`,
`ws://`). Each message is written once by the pymodbus device and reported;
the proxy's own log shows the CONNECT; a gateway trusting the wrong CA is
refused although the proxy let it through; telemetry taken while the proxy
is down arrives after it, once and in order. And the Device Provisioning
Service: a gateway with DPS alone, moved while its journal holds messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import Backend, require_program
from hub_emulator import emulator  # noqa: F401 (a fixture)
from operator_surface import Ops, verb
from test_hub_faults import BOILER, Batch, assert_exactly_once, wait_emulator_done
from util import HOST, Proc, free_port, modbus_tcp_bus, port_accepts, wait_until

pytestmark = pytest.mark.timeout(120)


class Tinyproxy:
    """tinyproxy on a free loopback port, in the foreground, logging each
    CONNECT it serves."""

    def __init__(self, workdir: Path, login: tuple[str, str] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.login = login
        self.port = free_port()
        self.log = workdir / "tinyproxy.log"
        self.log.touch()
        self.log.chmod(0o666)
        conf = workdir / "tinyproxy.conf"
        conf.write_text(
            f"Port {self.port}\nListen {HOST}\nTimeout 600\nMaxClients 20\nAllow {HOST}\n"
            f'LogFile "{self.log}"\nLogLevel Connect\n'
            + (f"BasicAuth {login[0]} {login[1]}\n" if login else ""), encoding="utf-8")
        self.proc = Proc([require_program("tinyproxy"), "-d", "-c", conf], workdir / "stderr.log")

    def start(self) -> "Tinyproxy":
        self.proc.start()
        self.proc.wait_ready(lambda: port_accepts(self.port), 10, f"tinyproxy on {self.port}")
        return self

    def url(self) -> str:
        login = f"{self.login[0]}:{self.login[1]}@" if self.login else ""
        return f"http://{login}{HOST}:{self.port}"

    def connects(self) -> list[str]:
        """The `host:port` of each CONNECT request in the proxy's log."""
        return re.findall(r"CONNECT (\S+) HTTP", self.log.read_text(encoding="utf-8", errors="replace"))


@pytest.fixture
def tinyproxy(tmp_path):
    proxy = Tinyproxy(tmp_path / "tinyproxy").start()
    yield proxy
    proxy.proc.stop()


def websockets_hub(emu, proxy_url: str, ca_file) -> str:
    return (f'[hub]\nkind = "azure"\nconnection_string_file = "{emu.cs_file}"\ntransport = "websockets"\n'
            f'port = {emu.wss_port}\nca_file = "{ca_file}"\nproxy = "{proxy_url}"\n\n'
            '[routing]\ndevice_property = "device"\n\n')


def test_iot_hub_over_websockets_through_an_http_proxy_with_a_login(emulator, modbus_device, gateway, tmp_path):
    """The proxy asks for a login (basic auth): given in the proxy url, never logged."""
    tinyproxy = Tinyproxy(tmp_path / "tinyproxy-auth", ("plant-gw", "pr0xy-Secret-4711")).start()
    emu = emulator(args=["--wss", f"{HOST}:0"])
    device = modbus_device()
    gw = gateway(websockets_hub(emu, tinyproxy.url(), emu.ca_file) + modbus_tcp_bus("plc", device.address) + BOILER)
    gw.wait_log(r"connected to the hub", timeout=20)
    assert f"localhost:{emu.wss_port}" in tinyproxy.connects(), tinyproxy.log.read_text()
    assert "over WebSockets through proxy http://127.0.0.1" in gw.log_text()
    # The operator sees how the gateway reaches its hub (and no login).
    status = verb(gw, "status")
    assert status.returncode == 0, status.stderr
    want = f"IoT Hub localhost:{emu.wss_port} as device gw over WebSockets through proxy http://{HOST}:{tinyproxy.port}"
    assert want in status.stdout and "pr0xy" not in status.stdout, status.stdout
    batch = Batch("ws", 10)
    for mid in batch.ids:
        emu.send(mid, "boiler", batch.body(mid))
    wait_emulator_done(emu, batch.ids)
    wait_until(lambda: {r["message_id"] for r in emu.reports() if r["status"] == "delivered"} >= set(batch.ids),
               20, what="a delivered report per message")
    assert_exactly_once(device, batch, gw)
    assert "pr0xy-Secret-4711" not in gw.log_text()
    tinyproxy.proc.stop()
    # Without the login the proxy refuses the tunnel, and the log says so.
    gw2 = gateway(websockets_hub(emu, tinyproxy.url().replace("plant-gw:pr0xy-Secret-4711@", ""), emu.ca_file)
                  + modbus_tcp_bus("plc", device.address) + BOILER, wait_ready=False)
    tinyproxy.start()
    wait_until(lambda: "the proxy asks for a login (407)" in gw2.log_text(), 20, what="the proxy's refusal in the log")


def test_a_wrong_ca_is_refused_through_the_proxy(emulator, tinyproxy, modbus_device, gateway, tmp_path):
    emu = emulator(args=["--wss", f"{HOST}:0"])
    other = emulator()  # another emulator's CA: not the one that signed this hub's certificate
    device = modbus_device()
    gw = gateway(websockets_hub(emu, tinyproxy.url(), other.ca_file) + modbus_tcp_bus("plc", device.address)
                 + BOILER, wait_ready=False)
    wait_until(lambda: "the hub's TLS certificate is not trusted" in gw.log_text(), 20,
               what="the TLS refusal in the gateway's log")
    assert tinyproxy.connects(), "the proxy saw no CONNECT: the refusal must come from TLS, through the tunnel"
    assert "emulator: device connected" not in emu.log_text()
    assert "handshake failed" in emu.log_text() or "TLS" in emu.log_text()
    assert gw.alive


def broker_ca(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 made by openssl: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (workdir / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", ca_key, "-out", ca, "-subj", "/CN=test broker CA", "-days", "2")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext = workdir / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n", encoding="ascii")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", ext)
    return ca, cert, key


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_broker_over_websockets_through_the_proxy(tmp_path, tinyproxy, modbus_device, gateway, scheme):
    mosquitto = require_program("mosquitto")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    mqtt_port, ws_port = free_port(), free_port()
    conf = workdir / "mosquitto.conf"
    tls, ca_line = "", ""
    if scheme == "wss":
        ca, cert, key = broker_ca(workdir)
        # (started as root, Mosquitto runs as user mosquitto, who cannot read the test's directory)
        tls = f"certfile {cert}\nkeyfile {key}\n" + ("user root\n" if os.geteuid() == 0 else "")
        ca_line = f'ca_file = "{ca}"\n'
    conf.write_text(f"listener {mqtt_port} {HOST}\nallow_anonymous true\n"
                    f"listener {ws_port} {HOST}\nprotocol websockets\n{tls}"
                    "persistence false\nlog_dest stderr\nlog_type all\n", encoding="utf-8")
    broker = Proc([mosquitto, "-c", conf], workdir / "mosquitto.log")
    broker.start()
    try:
        broker.wait_ready(lambda: port_accepts(ws_port) and port_accepts(mqtt_port), 10, "mosquitto")
        backend = Backend(type("B", (), {"host": HOST, "port": mqtt_port})(), "backend-ws")
        device = modbus_device()
        gw = gateway(f'[hub]\nkind = "mqtt"\nurl = "{scheme}://{HOST}:{ws_port}/mqtt"\nclient_id = "gw-ws"\n'
                     f'proxy = "{tinyproxy.url()}"\n{ca_line}\n[routing]\ndefault_device = "boiler"\n\n'
                     + modbus_tcp_bus("plc", device.address) + BOILER)
        gw.wait_log(r"connected to the hub", timeout=20)
        assert f"{HOST}:{ws_port}" in tinyproxy.connects()
        batch = Batch("mq", 5)
        for mid in batch.ids:
            backend.publish("boiler", {"id": mid, **batch.body(mid)})
        reports = backend.wait_reports(batch.ids, 20)
        assert {r["status"] for r in reports.values()} == {"delivered"}, reports
        assert_exactly_once(device, batch, gw)
        backend.client.loop_stop()
    finally:
        broker.stop()


def test_dps_only_gateway_provisions_and_is_moved_with_messages_in_its_queue(emulator, modbus_device, gateway,
                                                                            tmp_path):
    """A gateway configured with DPS alone (no connection string) registers,
    connects to the hub DPS named and delivers; the emulator then "moves" it
    (the hub refuses its credentials) while its journal holds messages for a
    slow device: it provisions again and carries on, each message written
    once and reported."""
    emu = emulator()
    emu.stop()  # started again with DPS, enrolling the device under its own key
    emu.args += ["--id-scope", "0ne00PEER", "--enrollment", f"gw:{emu.key}"]
    emu.restart()
    key_file = tmp_path / "dps.key"
    key_file.write_text(emu.key + "\n", encoding="ascii")
    device = modbus_device(delay_ms=150)
    gw = gateway(f'[hub]\nkind = "azure"\ntransport = "mqtt"\nport = {emu.mqtt_port}\n\n'
                 f'[hub.dps]\nid_scope = "0ne00PEER"\nregistration_id = "gw"\n'
                 f'global_endpoint = "127.0.0.1:{emu.mqtt_port}"\nsymmetric_key_file = "{key_file}"\n\n'
                 '[routing]\ndevice_property = "device"\n\n' + modbus_tcp_bus("plc", device.address) + BOILER)
    gw.wait_log(r"DPS assigned the gateway to a hub", timeout=20)
    wait_until(lambda: "provisioned by DPS" in verb(gw, "status").stdout, 10, what="status naming DPS")
    batch = Batch("dps", 30)
    for mid in batch.ids:
        emu.send(mid, "boiler", batch.body(mid))
    wait_until(lambda: len(device.writes()) >= 5, 20, what="the first writes")
    status, _ = emu.request("POST", "/devices/gw/move")
    assert status == 204
    wait_until(lambda: emu.request("GET", "/dps/registrations")[1]["registrations"] == 2, 30,
               what="the gateway to provision again")
    assert "the hub refused the identity DPS gave: provisioning again" in gw.log_text()
    wait_emulator_done(emu, batch.ids, timeout=40)
    wait_until(lambda: {r["message_id"] for r in emu.reports() if r["status"] == "delivered"} >= set(batch.ids),
               30, what="a delivered report per message")
    assert_exactly_once(device, batch, gw)
    assert "panicked" not in gw.log_text()


def test_telemetry_taken_while_the_proxy_is_down_reaches_iot_hub_once_in_order(emulator, tinyproxy, modbus_device,
                                                                              gateway):
    """The plant's proxy goes away for 3 s (stopped; the tunnel with it)
    while the boiler is read every 100 ms: the readings of the outage are
    kept on disk and reach the emulator's event store after the reconnect,
    once each, in order with the others, each with its read_at."""
    emu = emulator(args=["--wss", f"{HOST}:0"])
    device = modbus_device()
    ops = Ops()
    try:
        gateway(ops.section + websockets_hub(emu, tinyproxy.url(), emu.ca_file)
                + modbus_tcp_bus("plc", device.address)
                + '[devices.boiler]\nbus = "plc"\nunit = 1\npoints.sp = { table = "holding", address = 10, type = "u16" }\n'
                  'telemetry = { interval = "100ms", points = ["sp"] }\n')

        def readings() -> list[float]:
            out = []
            for e in emu.request("GET", "/devices/gw/events")[1]:
                if any(k == "device" for k, _ in e.get("properties", [])):
                    body = json.loads(e["body"])
                    assert body["time"] == body["read_at"]
                    out.append(datetime.fromisoformat(body["read_at"].replace("Z", "+00:00")).timestamp())
            return out

        wait_until(lambda: len(readings()) >= 5, 15, what="readings before the outage")
        tinyproxy.proc.stop()
        down = time.time()
        time.sleep(3.0)
        assert ops.metric("c2d_gateway_telemetry_buffered") >= 10, "kept while the hub is unreachable"
        tinyproxy.start()
        up = time.time()
        wait_until(lambda: any(t > up + 1.0 for t in readings()), 40, what="readings after the outage")
        times = readings()
        during = [t for t in times if down + 0.2 < t < up - 0.2]
        assert len(during) >= 20, f"the outage's readings arrived: {len(during)}"
        assert len(during) == len(set(during)), "a reading of the outage arrived twice"
        distinct = list(dict.fromkeys(times))  # arrival order, a QoS 1 repeat left out
        assert distinct == sorted(distinct), "out of order"
        gaps = [b - a for a, b in zip(distinct, distinct[1:])]
        assert max(gaps) < 0.5, f"readings missing (largest gap {max(gaps):.2f} s)"
        assert ops.metric("c2d_gateway_telemetry_dropped_total") == 0
    finally:
        ops.close()
