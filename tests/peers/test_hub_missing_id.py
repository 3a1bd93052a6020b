"""C2D messages without a message id, as the seeds' back end sends them: IoT
Hub (here the emulator, `c2d-gateway hub-emulator` in a process of its own)
then delivers them without `$.mid` (and without `$.exp`). Such a message
cannot be deduplicated; `[hub] missing_id` says what the gateway does:
`"execute"` (the default) runs it and its report says `"deduplicated":
false`; `"reject"` rejects it with a clear reason, reports it, and
acknowledges it in its turn.
"""

from __future__ import annotations

import pytest

from test_hub_faults import (BOILER, DEVICE_ID, HubEmulator, azure_hub, emulator,  # noqa: F401 (fixture)
                             write_counts)
from util import modbus_tcp_bus, wait_until

pytestmark = pytest.mark.timeout(120)


def post(emu: HubEmulator, body: bytes, message_id: str | None = None) -> dict:
    headers = [("iothub-app-device", "boiler"), ("iothub-ack", "full")]
    if message_id is not None:
        headers.append(("iothub-messageid", message_id))
    status, reply = emu.request("POST", f"/devices/{DEVICE_ID}/messages", body, headers)
    assert status == 201, (status, reply)
    return reply


def start(emulator, modbus_device, gateway, missing_id: str | None):
    emu = emulator()
    device = modbus_device()
    extra = f'missing_id = "{missing_id}"' if missing_id else ""
    gw = gateway(azure_hub(emu, emu.mqtt_port, extra) + modbus_tcp_bus("plc", device.address) + BOILER)
    wait_until(lambda: "emulator: device connected" in emu.log_text(), 15, what="the gateway at the emulator")
    return emu, device, gw


def wait_done(emu: HubEmulator, count: int) -> list[dict]:
    """Until the queue is empty and `count` reports arrived; the reports."""
    wait_until(lambda: not emu.queue() and len(emu.reports()) >= count, 20,
               what=f"{count} reports and an empty queue at the emulator")
    return emu.reports()


def test_the_emulator_sends_no_mid_when_the_back_end_set_none(emulator):
    emu = emulator()
    assert post(emu, b"{}") == {"message_id": None}
    assert [q["message_id"] for q in emu.queue()] == [None]


def test_without_an_id_the_gateway_runs_each_message_and_says_it_was_not_deduplicated(emulator, modbus_device,
                                                                                      gateway):
    emu, device, gw = start(emulator, modbus_device, gateway, None)
    body = b'{"point": "sp", "value": 4242}'
    post(emu, body)
    post(emu, body)  # the same command sent twice on purpose: both run
    reports = wait_done(emu, 2)
    assert [(r["status"], r.get("deduplicated"), r.get("id_generated")) for r in reports] == \
        [("delivered", False, True)] * 2, reports
    assert reports[0]["message_id"] != reports[1]["message_id"]
    assert write_counts(device)[4242] == 2
    # The hub's feedback cannot name a message it has no id for.
    fb = wait_until(lambda: len(emu.feedback()) >= 2 and emu.feedback(), 20, what="2 feedback records")
    assert [(f["original_message_id"], f["status_code"]) for f in fb] == [("", "Success")] * 2
    # The gateway saw no $.mid: its own id is in the report, not one the hub made up.
    assert all(r["message_id"].startswith("gw-") for r in reports), reports
    assert "panicked" not in gw.log_text()


def test_with_missing_id_reject_a_message_without_id_is_rejected_reported_and_acknowledged_in_turn(
        emulator, modbus_device, gateway):
    emu, device, gw = start(emulator, modbus_device, gateway, "reject")
    post(emu, b'{"point": "sp", "value": 111}')
    post(emu, b'{"point": "sp", "value": 222}', message_id="with-id")
    post(emu, b'{"point": "sp", "value": 333}')
    reports = wait_done(emu, 3)
    by_status = sorted((r["status"], r["message_id"] == "with-id") for r in reports)
    assert by_status == [("delivered", True), ("rejected", False), ("rejected", False)], reports
    for r in reports:
        if r["status"] == "rejected":
            assert "no $.mid" in r["detail"] and 'missing_id = "reject"' in r["detail"], r
            assert r["_props"].get("c2d-status") == "rejected"
    counts = write_counts(device)
    assert counts[222] == 1 and counts[111] == 0 and counts[333] == 0, counts
    # Acknowledged in arrival order: the emulator (strict) would have dropped
    # the connection on an out-of-order PUBACK.
    assert emu.connections() == 1, emu.log_text()[-2000:]
    assert sorted(f["status_code"] for f in emu.feedback()) == ["Success"] * 3
