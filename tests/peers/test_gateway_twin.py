"""Twin setpoints against independent peers: the hub emulator in a process
of its own (desired properties set over its service API, `PATCH
/twins/{id}`, as a back end sets them) and pymodbus as the device. The
device's own write log counts: a setpoint is written once, a restart with
nothing changed writes nothing, a change made while the gateway was down is
written once when it is back, and each outcome is reported in the twin."""

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
points.sp = { table = "holding", address = 10, type = "u16" }

[twin]
enabled = true
"""


def set_desired(emu: HubEmulator, desired: dict) -> None:
    status, reply = emu.request("PATCH", f"/twins/{DEVICE_ID}", json.dumps({"properties": {"desired": desired}}).encode(),
                                [("Content-Type", "application/json")])
    assert status == 200, (status, reply)


def reported(emu: HubEmulator) -> dict:
    status, twin = emu.request("GET", f"/twins/{DEVICE_ID}")
    assert status == 200, twin
    return twin["properties"]["reported"]


def sp_values(device) -> list:
    return [w["values"][0] for w in device.writes() if w.get("address") == 10]


def started(emu: HubEmulator, start) -> None:
    """Calls `start`; returns once the gateway reported its status and had time to reconcile."""
    before = reported(emu)["$version"]
    start()
    wait_until(lambda: reported(emu)["$version"] > before, 20, what="the gateway's status in the twin")
    time.sleep(1.0)


def test_setpoints_are_written_once_across_restarts(emulator, modbus_device, gateway):
    emu = emulator()
    device = modbus_device()
    set_desired(emu, {"devices": {"boiler": {"sp": 40}}})
    gw = gateway(azure_hub(emu, emu.mqtt_port) + modbus_tcp_bus("plc", device.address) + DEVICES, start=False)
    started(emu, gw.start)
    wait_until(lambda: reported(emu).get("devices", {}).get("boiler", {}).get("sp", {}).get("status") == "delivered",
               15, what="sp reported")
    sp = reported(emu)["devices"]["boiler"]["sp"]
    assert (sp["value"], sp["desired_version"]) == (40, 2), sp
    assert sp_values(device) == [40]

    started(emu, gw.restart)
    assert sp_values(device) == [40], "nothing changed: nothing written"

    gw.terminate()
    set_desired(emu, {"devices": {"boiler": {"sp": 41}}})  # while the gateway is down
    gw.start()
    wait_until(lambda: reported(emu)["devices"]["boiler"]["sp"]["value"] == 41, 20, what="the new sp reported")
    assert reported(emu)["devices"]["boiler"]["sp"]["desired_version"] == 3
    started(emu, gw.restart)
    assert sp_values(device) == [40, 41], "each value written once"
