"""The peers themselves work, before any suite trusts them with the gateway.

Each test drives a peer with an independent client (pymodbus, pyserial,
paho-mqtt) and checks what the peer logged or answered. A fake gateway
(a few lines of Python that speak sd_notify) checks the `Gateway` fixture's
contract without the real binary.
"""

from __future__ import annotations

import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import serial
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from gateway import Gateway, render_config

STX, ETX = b"\x02", b"\x03"


def client_for(kind, request):
    """A started Modbus device (units 1 and 3) and a pymodbus client for it."""
    if kind == "tcp":
        device = request.getfixturevalue("modbus_device")(units=(1, 3), exception_at=(200,))
        client = ModbusTcpClient(device.host, port=device.port, timeout=1, retries=0)
    else:
        pair = request.getfixturevalue("socat_pair")
        device = request.getfixturevalue("modbus_device")(pair.a, units=(1, 3), exception_at=(200,))
        client = ModbusSerialClient(pair.b, baudrate=9600, timeout=0.5, retries=0)
    assert client.connect()
    request.addfinalizer(client.close)
    return device, client


def without_time(entries):
    for e in entries:
        assert isinstance(e.pop("t"), float)
    return entries


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
def test_modbus_writes_are_logged_exactly(kind, request):
    device, client = client_for(kind, request)
    assert not client.write_register(100, 16812, device_id=3).isError()           # FC6
    assert not client.write_registers(100, [16812, 0], device_id=3).isError()     # FC16
    assert not client.write_coil(7, True, device_id=3).isError()                  # FC5
    assert not client.write_coils(7, [True, False, True], device_id=1).isError()  # FC15
    assert not client.write_register(0, 65535, device_id=1).isError()
    entries = device.wait_writes(5)
    times = [e["t"] for e in entries]
    assert times == sorted(times)
    assert without_time(entries) == [
        {"unit": 3, "fc": 6, "address": 100, "values": [16812]},
        {"unit": 3, "fc": 16, "address": 100, "values": [16812, 0]},
        {"unit": 3, "fc": 5, "address": 7, "values": [True]},
        {"unit": 1, "fc": 15, "address": 7, "values": [True, False, True]},
        {"unit": 1, "fc": 6, "address": 0, "values": [65535]},
    ]
    # the writes landed in the unit they were sent to, and nowhere else
    assert client.read_holding_registers(100, count=2, device_id=3).registers == [16812, 0]
    assert client.read_holding_registers(100, count=2, device_id=1).registers == [0, 0]
    assert client.read_coils(7, count=3, device_id=1).bits[:3] == [True, False, True]


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
def test_write_at_exception_address_answers_illegal_data_address(kind, request):
    device, client = client_for(kind, request)
    for response in (client.write_register(200, 1, device_id=3),
                     client.write_registers(199, [1, 2], device_id=3),
                     client.write_coil(200, True, device_id=3)):
        assert response.isError()
        assert response.exception_code == 2
    assert client.read_holding_registers(199, count=1, device_id=3).registers == [0]
    assert not client.write_register(201, 1, device_id=3).isError()
    assert without_time(device.wait_writes(1)) == [
        {"unit": 3, "fc": 6, "address": 201, "values": [1]}]


def test_rtu_unit_not_served_never_answers(socat_pair, modbus_device):
    device = modbus_device(socat_pair.a, units=(1, 7), dead_units=(7,))
    client = ModbusSerialClient(socat_pair.b, baudrate=9600, timeout=0.5, retries=0)
    assert client.connect()
    try:
        for unit in (7, 9):
            started = time.monotonic()
            with pytest.raises(ModbusIOException):
                client.write_register(10, 1, device_id=unit)
            assert time.monotonic() - started >= 0.4
        assert not client.write_register(10, 2, device_id=1).isError()
    finally:
        client.close()
    assert without_time(device.wait_writes(1)) == [
        {"unit": 1, "fc": 6, "address": 10, "values": [2]}]
    assert "unit 9 not served" in device.stderr_text()


def test_reads_return_presets(modbus_device):
    device = modbus_device(preset=["holding:10=1,2", "input:5=7", "coil:3=1", "discrete:4=1,0,1"])
    client = ModbusTcpClient(device.host, port=device.port, timeout=1, retries=0)
    assert client.connect()
    try:
        assert client.read_holding_registers(10, count=3, device_id=1).registers == [1, 2, 0]
        assert client.read_input_registers(5, count=1, device_id=1).registers == [7]
        assert client.read_coils(3, count=1, device_id=1).bits[0] is True
        assert client.read_discrete_inputs(4, count=3, device_id=1).bits[:3] == [True, False, True]
    finally:
        client.close()
    assert device.writes() == []


def test_delay_and_pacing_slow_the_answer(socat_pair, modbus_device):
    slow = modbus_device(delay_ms=300)
    client = ModbusTcpClient(slow.host, port=slow.port, timeout=2, retries=0)
    assert client.connect()
    started = time.monotonic()
    assert not client.write_register(1, 1, device_id=1).isError()
    assert time.monotonic() - started >= 0.3
    client.close()
    # 1200 baud, 10 bits a character: FC16 of 2 registers is 13 bytes out,
    # a 3.5-character gap and 8 bytes back: 24.5 characters = 204 ms
    paced = modbus_device(socat_pair.a, baud=1200, pace_baud=True)
    client = ModbusSerialClient(socat_pair.b, baudrate=1200, timeout=2, retries=0)
    assert client.connect()
    started = time.monotonic()
    assert not client.write_registers(1, [1, 2], device_id=1).isError()
    assert 0.2 <= time.monotonic() - started < 1.5
    client.close()
    assert len(paced.writes()) == 1


def serial_exchange(port, data, wait=0.5):
    """Write `data`, then return whatever comes back within `wait` s."""
    port.write(data)
    port.flush()
    deadline, got = time.monotonic() + wait, b""
    while time.monotonic() < deadline:
        got += port.read(256)
    return got


def test_serial_device_line_framing(socat_pair, serial_device):
    device = serial_device(socat_pair.a, nack_on=["BAD"], silent_on=["QUIET"])
    with serial.Serial(socat_pair.b, 115200, timeout=0.05) as port:
        assert serial_exchange(port, b"set 1\r\n") == b"OK\n"
        assert serial_exchange(port, b"BAD value\n") == b"ERR\n"
        assert serial_exchange(port, b"QUIET please\n") == b""
    assert without_time(device.wait_frames(3)) == [
        {"frame": "set 1", "reply": "OK"},
        {"frame": "BAD value", "reply": "ERR"},
        {"frame": "QUIET please", "reply": None},
    ]


def test_serial_device_stx_etx_and_raw_framing(make_socat_pair, serial_device):
    framed_pair, raw_pair = make_socat_pair(), make_socat_pair()
    framed = serial_device(framed_pair.a, framing="stx-etx", reply_ok="ACK", nack_on=["X"])
    raw = serial_device(raw_pair.a, framing="raw", idle_ms=50)
    with serial.Serial(framed_pair.b, 115200, timeout=0.05) as port:
        assert serial_exchange(port, b"noise" + STX + b"hello" + ETX) == STX + b"ACK" + ETX
        assert serial_exchange(port, STX + b"X1" + ETX) == STX + b"ERR" + ETX
    with serial.Serial(raw_pair.b, 115200, timeout=0.05) as port:
        assert serial_exchange(port, b"abc") == b"OK"
    assert [e["frame"] for e in framed.wait_frames(2)] == ["hello", "X1"]
    assert [e["frame"] for e in raw.wait_frames(1)] == ["abc"]


def test_mosquitto_delivers_qos1(mosquitto):
    received, subscribed = [], threading.Event()
    got = threading.Event()

    def on_message(_client, _userdata, message):
        received.append((message.topic, message.payload, message.qos))
        got.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="selfcheck-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="selfcheck-pub")
    try:
        sub.subscribe("gateway/+/c2d", qos=1)
        assert subscribed.wait(5)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        info = pub.publish("gateway/boiler/c2d", b'{"point": "setpoint", "value": 21.5}', qos=1)
        info.wait_for_publish(5)
        assert info.is_published()  # PUBACK came back
        assert got.wait(5)
    finally:
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()
    assert received == [("gateway/boiler/c2d", b'{"point": "setpoint", "value": 21.5}', 1)]
    assert f"{mosquitto.port}" in mosquitto.log_text()


FAKE_GATEWAY = """\
import os, signal, socket, sys, time
assert sys.argv[1:3] == ["run", "--config"], sys.argv
config = open(sys.argv[3]).read()
print("fake gateway config:", config.replace("\\n", " | "), file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, lambda *_: (print("fake gateway: SIGTERM", file=sys.stderr), sys.exit(0)))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1\\nSTATUS=fake up", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(0.1)
"""


def test_gateway_fixture_contract_with_a_fake_binary(tmp_path):
    binary = tmp_path / "fake-gateway"
    binary.write_text(f"#!{sys.executable}\n{FAKE_GATEWAY}")
    binary.chmod(0o755)
    gw = Gateway(binary, tmp_path / "gw", "[devices.panel]\nbus = 'display'\n")
    try:
        gw.start()
        assert gw.status() == "fake up"
        assert f'state_dir = "{gw.state_dir}"' in gw.log_text().replace(" | ", "\n")
        first = gw.pid
        assert gw.terminate() == 0
        assert "SIGTERM" in gw.log_text()
        gw.restart()
        assert gw.pid != first and gw.alive
        assert gw.kill9() == -9
        gw.restart()
        gw.wait_log("fake gateway config")
        assert gw.log_text().count("--- start") == 3
    finally:
        gw.close()
    assert not gw.alive


def test_render_config_places_state_dir(tmp_path):
    state = tmp_path / "s"
    assert render_config("[hub]\nkind = 'mqtt'\n", tmp_path, state).startswith(
        f'[gateway]\nstate_dir = "{state}"\n\n[hub]')
    with_table = render_config("""
        [gateway]
        dedupe_window = "1h"
        """, tmp_path, state)
    assert with_table.splitlines()[:3] == ["[gateway]", f'state_dir = "{state}"', 'dedupe_window = "1h"']
    explicit = render_config('[gateway]\nstate_dir = "{dir}/elsewhere"\n', tmp_path, state)
    assert explicit == f'[gateway]\nstate_dir = "{tmp_path}/elsewhere"\n'
