"""Faults around the real gateway, with Mosquitto as the hub and pymodbus as
the device: kill -9 with messages queued and on the wire, a dead unit beside
a live one on one RTU bus, and bodies that can never succeed.
"""

from __future__ import annotations

import time

from util import modbus_rtu_bus, modbus_tcp_bus, one_outcome, wait_until, without_t


def sp_point(address=10):
    return f'points.sp = {{ table = "holding", address = {address}, type = "u16" }}\n'


# ------------------------------------------------------------------ kill -9

def test_kill9_with_messages_queued_loses_none_and_runs_none_twice(mqtt_gateway, modbus_device, backend):
    """30 messages to a slow idempotent device; kill -9 after some were
    written; after the restart every message is delivered, each once except
    the last few whose outcomes were not yet durable, which may come again,
    in order, flagged as such."""
    device = modbus_device(delay_ms=100)
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address, timeout="2s") + f"""
        [devices.boiler]
        bus = "plc"
        unit = 1
        idempotent = true
        {sp_point()}""")
    ids = [f"k-{i}" for i in range(30)]
    for i, message_id in enumerate(ids):
        backend.publish("boiler", {"id": message_id, "point": "sp", "value": i})
    device.wait_writes(10, timeout=10)
    assert gw.kill9() == -9
    written_before = len(device.writes())
    assert written_before < 30, "the kill came too late to test anything"

    gw.restart_subscribed()
    reports = backend.wait_reports(ids, timeout=20)
    values = [w["values"][0] for w in device.wait_writes(30)]
    # the last write may still be coming: the device log settles once every report is in
    assert all(w["unit"] == 1 and w["fc"] == 6 and w["address"] == 10 for w in device.writes())

    # Each value once and in order, except that the writes whose outcome was
    # not yet durable at the kill may come again (an idempotent device's
    # requests do not wait for the journal, at most 16 of them unsettled:
    # MAX_AHEAD in src/bus/commit.rs): after the restart the device sees that
    # run of its last commands again, in order, each flagged in its report.
    print(f"kill -9 after {written_before} writes; written: {values}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    evidence = "\n".join(line for line in gw.log_text().splitlines()
                         if any(f"message_id=k-{v} " in line for v in repeated))
    if repeated:
        first, last = repeated[0], repeated[-1]
        assert repeated == list(range(first, last + 1)) and len(repeated) <= 16, f"{repeated}\n{evidence}"
        assert values == list(range(last + 1)) + list(range(first, 30)), f"order: {values}\n{evidence}"
        for k in repeated:
            assert reports[f"k-{k}"].get("resent_after_crash") is True, (
                f"k-{k} was written twice but its report does not say resent_after_crash: "
                f"{reports[f'k-{k}']}\n{evidence}")
    else:
        assert values == list(range(30)), f"order or loss: {values}"
    # Requests to an idempotent device do not wait for the journal, so after
    # the crash its first 16 unfinished messages (MAX_AHEAD in src/bus/
    # commit.rs) count as possibly sent and say so: a run of flags starting
    # no later than the first message not written before the kill. Nothing
    # else is flagged, and nothing unflagged was written twice (above).
    flagged = []
    for i, message_id in enumerate(ids):
        r = one_outcome(backend, message_id)
        assert r["status"] == "delivered", r
        if r.get("resent_after_crash"):
            flagged.append(i)
    assert set(repeated) <= set(flagged)
    if flagged:
        assert flagged == list(range(flagged[0], flagged[0] + len(flagged))), f"flags not one run: {flagged}"
        assert len(flagged) <= 16 and flagged[0] <= written_before, f"flagged {flagged}, {written_before} written"


def test_kill9_right_after_an_idempotent_send_flags_the_resend(mqtt_gateway, modbus_device, backend):
    """The gateway dies a moment after putting a command for an idempotent
    device on the wire: after the restart the command is sent again (the
    device sees it twice) and the report says so."""
    device = modbus_device(delay_ms=1000)
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address, timeout="3s") + f"""
        [devices.boiler]
        bus = "plc"
        unit = 1
        idempotent = true
        {sp_point()}""")
    backend.publish("boiler", {"id": "wire-1", "point": "sp", "value": 81})
    gw.wait_log(r"sending message_id=wire-1\b")
    assert gw.kill9() == -9  # at once: the reply is a second away
    assert device.writes() == []
    gw.restart_subscribed()
    report = backend.wait_report("wire-1", timeout=10)
    assert report["status"] == "delivered", report
    # the device applied the first request after its delay, and the resent one
    assert without_t(device.wait_writes(2)) == [{"unit": 1, "fc": 6, "address": 10, "values": [81]}] * 2
    evidence = "\n".join(line for line in gw.log_text().splitlines() if "wire-1" in line)
    assert report.get("resent_after_crash") is True, f"{report}\n{evidence}"
    assert one_outcome(backend, "wire-1") == report


def test_kill9_while_a_non_idempotent_command_is_on_the_wire_makes_it_uncertain(mqtt_gateway, modbus_device,
                                                                               backend):
    device = modbus_device(delay_ms=1500)  # the answer takes 1.5 s: the kill lands in between
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address, timeout="5s") + f"""
        [devices.valve]
        bus = "plc"
        unit = 1
        {sp_point()}""")
    backend.publish("valve", {"id": "unc-1", "point": "sp", "value": 71})
    gw.wait_log(r"sending message_id=unc-1\b")
    time.sleep(0.3)  # the request leaves right after that line; the reply is 1.2 s away
    assert device.writes() == []
    assert gw.kill9() == -9

    gw.restart_subscribed()
    report = backend.wait_report("unc-1", timeout=10)
    assert (report["status"], report["attempts"]) == ("uncertain", 1), report
    assert "not idempotent" in report["detail"], report
    # a later command to the same device: anything still due for unc-1 would come first
    backend.publish("valve", {"id": "unc-2", "point": "sp", "value": 72})
    assert backend.wait_report("unc-2", timeout=10)["status"] == "delivered"
    values = [w["values"][0] for w in device.writes()]
    assert values in ([71, 72], [72]), f"unc-1 sent again: {values}"
    assert one_outcome(backend, "unc-1")["status"] == "uncertain"
    assert "resent_after_crash" not in report


# ----------------------------------------------------- dead unit, live unit

def test_a_dead_rtu_unit_does_not_stall_a_live_one(socat_pair, mqtt_gateway, modbus_device, backend):
    device = modbus_device(socat_pair.a, units=(1,))  # unit 2 never answers
    gw = mqtt_gateway(modbus_rtu_bus("field", socat_pair.b, timeout="200ms") + f"""
        [devices.live]
        bus = "field"
        unit = 1
        idempotent = true
        {sp_point()}
        [devices.dead]
        bus = "field"
        unit = 2
        idempotent = true
        max_attempts = 1000
        max_age = "5s"
        {sp_point()}""")
    dead_ids = [f"dead-{i}" for i in range(4)]
    dead_sent = time.monotonic()
    for i, message_id in enumerate(dead_ids):
        backend.publish("dead", {"id": message_id, "point": "sp", "value": 100 + i})
    gw.wait_log(r"isolated by the circuit breaker.*device=dead|device=dead.*isolated by the circuit breaker",
                timeout=5)

    live_ids = [f"live-{i}" for i in range(20)]
    started = time.time()
    for i, message_id in enumerate(live_ids):
        backend.publish("live", {"id": message_id, "point": "sp", "value": i})
    writes = device.wait_writes(20, timeout=10)
    took = writes[19]["t"] - started
    # Without isolation every live write would wait behind a 200 ms timeout
    # of the dead unit: 20 x 200 ms = 4 s at least. With the breaker open the
    # dead unit costs one timeout per open period (400 ms, then 800 ms, ...):
    # a few timeouts in all, plus 20 exchanges of a few ms on a pty.
    print(f"20 live writes beside a dead unit took {took:.2f}s")
    timeline = [round(w["t"] - started, 3) for w in writes]
    received = [line for line in gw.log_text().splitlines() if "received message_id=live-" in line]
    assert took < 20 * 0.200, (f"the live unit stalled: {took:.2f}s; writes at {timeline} s;\n"
                               + "\n".join(received[-6:]))
    assert without_t(writes) == [{"unit": 1, "fc": 6, "address": 10, "values": [i]} for i in range(20)]
    live = backend.wait_reports(live_ids)
    assert all((live[i]["status"], live[i]["attempts"]) == ("delivered", 1) for i in live_ids), live
    # meanwhile the dead unit's messages are still pending (max_age 5 s not reached)
    assert time.monotonic() - dead_sent < 5.0
    assert [backend.reports_for(i) for i in dead_ids] == [[]] * len(dead_ids)

    dead = backend.wait_reports(dead_ids, timeout=10)
    for message_id in dead_ids:
        r = dead[message_id]
        assert r["status"] == "expired", r
        assert "max_age" in r["detail"] and "5s" in r["detail"], r
    # the head was tried: its detail says what went wrong on the wire
    assert dead["dead-0"]["attempts"] >= 3, dead["dead-0"]
    assert "no reply from unit 2" in dead["dead-0"]["detail"], dead["dead-0"]
    assert all(w["unit"] == 1 for w in device.writes())
    assert len(device.writes()) == 20


# ---------------------------------------------------------------- bad input

BAD_INPUT_DEVICE = """
[devices.boiler]
bus = "plc"
unit = 1
idempotent = true
points.setpoint = { table = "holding", address = 100, type = "f32", min = 5.0, max = 90.0 }
points.pump = { table = "coil", address = 7, type = "bool" }
points.broken = { table = "holding", address = 300, type = "u16" }
"""

# (device in the topic, body, id if the body carries one, what the detail must say)
BAD_INPUTS = [
    ("nosuch", {"id": "bad-device", "point": "setpoint", "value": 20}, "bad-device", 'unknown device "nosuch"'),
    ("boiler", b"this is not json", None, "not valid JSON"),
    ("boiler", b"[1, 2, 3]", None, "must be a JSON object"),
    ("boiler", {"id": "bad-point", "point": "nosuch", "value": 1}, "bad-point", 'no point "nosuch"'),
    ("boiler", {"id": "bad-max", "point": "setpoint", "value": 95}, "bad-max", "above its maximum 90"),
    ("boiler", {"id": "bad-min", "point": "setpoint", "value": 4.5}, "bad-min", "below its minimum 5"),
    ("boiler", {"id": "bad-str", "point": "setpoint", "value": "hot"}, "bad-str", "expects a number"),
    ("boiler", {"id": "bad-bool", "point": "pump", "value": 1}, "bad-bool", "expects true or false"),
    ("boiler", {"id": "bad-raw", "fc": 6, "address": 100, "value": 1}, "bad-raw", "raw Modbus bodies are not allowed"),
    ("boiler", {"id": "bad-big", "point": "setpoint", "value": 20, "pad": "x" * 300}, None,
     "exceeds max_body = 256"),
    ("boiler", b'\xff\xfe{"id": "bad-utf8"}', None, "not UTF-8"),
]


def test_bad_input_is_rejected_with_a_reason_and_never_written(mqtt_gateway, modbus_device, backend):
    device = modbus_device(exception_at=(300,))
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address) + BAD_INPUT_DEVICE, hub_extra="max_body = 256")

    for topic_device, body, message_id, why in BAD_INPUTS:
        before = len(backend.all_reports())
        backend.publish(topic_device, body)
        wait_until(lambda: len(backend.all_reports()) > before, 10, what=f"the report about {body!r:.60}")
        new = backend.all_reports()[before:]
        assert len(new) == 1, new
        r = new[0]
        assert r["status"] == "rejected", (body, r)
        assert why in r["detail"], (body, r)
        assert r["attempts"] == 0, (body, r)
        assert r["device"] == topic_device, (body, r)
        if message_id:
            assert r["message_id"] == message_id and "id_generated" not in r, r
        else:
            assert r.get("id_generated") is True, r
        assert backend.topics_for(r["message_id"]) == [f"gateway/{topic_device}/result"]
        assert gw.alive, gw.log_text()[-2000:]

    # the device itself refuses: a Modbus exception is final, not retried
    backend.publish("boiler", {"id": "bad-exception", "point": "broken", "value": 1})
    r = backend.wait_report("bad-exception")
    assert (r["status"], r["attempts"]) == ("rejected", 1), r
    assert "illegal data address" in r["detail"], r

    # still up, and still delivering
    backend.publish("boiler", {"id": "good", "point": "setpoint", "value": 21.5})
    assert backend.wait_report("good")["status"] == "delivered"
    assert without_t(device.wait_writes(1)) == [{"unit": 1, "fc": 16, "address": 100, "values": [16812, 0]}]
    assert len(backend.all_reports()) == len(BAD_INPUTS) + 2
    assert gw.alive
