"""Direct methods on the gateway against independent peers: the hub emulator
in a process of its own (calls over its service API, `POST
/twins/{id}/methods`, as a back end makes them) and pymodbus as the device.
Each status of `write`, `read` and `status`; a repeated `write` id after a
504 writes once (the device's own write log counts); a `read` returns what
a separate Modbus client put into pymodbus."""

from __future__ import annotations

import json
import time

import pytest

from test_hub_faults import DEVICE_ID, HubEmulator, azure_hub, emulator  # noqa: F401 (fixture)
from util import modbus_tcp_bus, wait_until

pytestmark = pytest.mark.timeout(120)

DEVICES = """
[devices.boiler]
bus = "plc"
unit = 1
max_attempts = 1000
max_age = "10m"
points.sp = { table = "holding", address = 10, type = "u16" }
points.temp = { table = "holding", address = 20, type = "i16", scale = 0.1 }
points.locked = { table = "holding", address = 300, type = "u16" }
"""


def start(emulator, modbus_device, gateway, methods: str = ""):
    emu = emulator()
    device = modbus_device(exception_at=(300,))
    gw = gateway(azure_hub(emu, emu.mqtt_port) + modbus_tcp_bus("plc", device.address) + DEVICES + methods)
    wait_until(lambda: "emulator: device connected" in emu.log_text(), 15, what="the gateway at the emulator")
    return emu, device, gw


def invoke(emu: HubEmulator, method: str, payload) -> tuple[int, dict]:
    """A call through the emulator: (the gateway's status, its answer)."""
    call = {"methodName": method, "payload": payload, "responseTimeoutInSeconds": 5, "connectTimeoutInSeconds": 5}
    status, reply = emu.request("POST", f"/twins/{DEVICE_ID}/methods", json.dumps(call).encode(),
                                [("Content-Type", "application/json")])
    assert status == 200, f"the hub could not complete the call: {status} {reply}"
    return reply["status"], reply["payload"]


def sp_writes(device) -> list:
    return [w["values"] for w in device.writes() if w.get("address") == 10]


def test_write_status_and_a_repeated_id(emulator, modbus_device, gateway):
    emu, device, _ = start(emulator, modbus_device, gateway)
    status, answer = invoke(emu, "write", {"device": "boiler", "id": "w-1", "point": "sp", "value": 7})
    assert status == 200, answer
    assert (answer["status"], answer["message_id"], answer["detail"]) == ("delivered", "w-1", "holding 10 = 7")
    assert sp_writes(device) == [[7]], "the device applied it before the answer"
    status, again = invoke(emu, "write", {"device": "boiler", "id": "w-1", "point": "sp", "value": 7})
    assert (status, again["duplicate"], again["status"]) == (200, True, "delivered")
    status, other = invoke(emu, "write", {"device": "boiler", "id": "w-1", "point": "sp", "value": 8})
    assert status == 409, other
    status, refused = invoke(emu, "write", {"device": "boiler", "id": "w-2", "point": "locked", "value": 1})
    assert (status, refused["status"]) == (422, "rejected"), refused
    assert sp_writes(device) == [[7]], "nothing written twice"
    # The status method sees it all.
    status, st = invoke(emu, "status", None)
    assert (status, st["hub"]["connected"], st["queued"]) == (200, True, 0), st
    assert st["devices"]["boiler"]["last"]["status"] == "rejected", st  # w-2, the locked point
    assert [o["message_id"] for o in st["recent"]][:2] == ["w-2", "w-1"], st


def test_bad_payloads_reach_neither_journal_nor_wire(emulator, modbus_device, gateway):
    emu, device, _ = start(emulator, modbus_device, gateway)
    cases = [
        ("write", {"device": "boiler", "point": "nope", "value": 1}, 404),
        ("write", {"device": "ghost", "point": "sp", "value": 1}, 404),
        ("write", {"device": "boiler", "point": "sp", "value": -1}, 400),
        ("write", [1, 2], 400),
        ("read", {"device": "boiler", "points": ["nope"]}, 404),
        ("read", {"device": "boiler"}, 400),
        ("shutdown", {}, 404),
    ]
    for method, payload, want in cases:
        status, answer = invoke(emu, method, payload)
        assert status == want, (method, payload, answer)
        assert answer["error"], answer
    assert invoke(emu, "status", None)[1]["journal_entries"] == 0
    assert device.writes() == []
    assert emu.reports() == []


def test_a_repeated_write_after_a_504_writes_once(emulator, modbus_device, gateway):
    emu, device, _ = start(emulator, modbus_device, gateway, '[methods]\ntimeout = "1s"\n')
    device.stop()  # the device is gone: the write waits in the journal
    t0 = time.monotonic()
    status, answer = invoke(emu, "write", {"device": "boiler", "id": "slow-1", "point": "sp", "value": 5})
    assert status == 504 and answer["message_id"] == "slow-1" and "stays queued" in answer["detail"], answer
    assert time.monotonic() - t0 < 4
    status, busy = invoke(emu, "write", {"device": "boiler", "id": "slow-1", "point": "sp", "value": 5})
    assert (status, busy["duplicate"]) == (202, True), busy
    device.restart()
    wait_until(lambda: any(r.get("message_id") == "slow-1" for r in emu.reports()), 30, what="the D2C report")
    status, done = invoke(emu, "write", {"device": "boiler", "id": "slow-1", "point": "sp", "value": 5})
    assert (status, done["status"], done["duplicate"]) == (200, "delivered", True), done
    assert sp_writes(device) == [[5]], "the device acted once"


def test_read_returns_what_a_separate_client_put_into_the_device(emulator, modbus_device, gateway):
    from pymodbus.client import ModbusTcpClient

    emu, device, _ = start(emulator, modbus_device, gateway)
    other = ModbusTcpClient(device.host, port=device.port)
    assert other.connect()
    try:
        assert not other.write_register(10, 1234, device_id=1).isError()
        assert not other.write_register(20, 0xFF9C, device_id=1).isError()  # -100 -> -10.0
    finally:
        other.close()
    status, answer = invoke(emu, "read", {"device": "boiler", "points": ["sp", "temp"]})
    assert status == 200, answer
    assert answer["values"] == {"sp": 1234, "temp": -10}
    assert answer["device"] == "boiler" and answer["read_at"].endswith("Z")
    status, answer = invoke(emu, "read", {"device": "boiler", "points": ["locked"]})
    assert status == 502 and "locked" in answer["error"], answer
