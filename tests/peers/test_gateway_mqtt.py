"""The gateway as an MQTT client of a real Mosquitto (`[hub] kind = "mqtt"`):
when it completes (PUBACKs) a message, what the broker redelivers, how
message ids deduplicate, a clean stop on SIGTERM, and secrets kept out of
its log. The device is pymodbus over Modbus TCP.

What the broker did is read from Mosquitto's own log (`log_type all`):
"Sending PUBLISH to <client> (d1, ...)" is a redelivery (DUP flag set),
"Received PUBACK from <client>" is the gateway completing a message.
"""

from __future__ import annotations

import re
import time

from conftest import Backend, wait_subscribed
from util import free_port, modbus_tcp_bus, one_outcome, wait_until, without_t

C2D = "gateway/boiler/c2d"

BOILER = """
[devices.boiler]
bus = "plc"
unit = 1
idempotent = true
points.sp = { table = "holding", address = 10, type = "u16" }
"""


def sp_write(value):
    return {"unit": 1, "fc": 6, "address": 10, "values": [value]}


def redeliveries(broker, client_id, topic=C2D):
    """PUBLISHes Mosquitto re-sent to `client_id` with the DUP flag."""
    return re.findall(rf"Sending PUBLISH to {re.escape(client_id)} \(d1, q1, r\d, m\d+, '{re.escape(topic)}'",
                      broker.log_text())


def pubacks_from(broker, client_id):
    return broker.log_text().count(f"Received PUBACK from {client_id} ")


def log_lines(gw, pattern):
    return [line for line in gw.log_text().splitlines() if re.search(pattern, line)]


def test_puback_only_after_the_device_acknowledged(mosquitto, mqtt_gateway, modbus_device, backend):
    port = free_port()  # the device is down: nothing listens here yet
    gw = mqtt_gateway(modbus_tcp_bus("plc", f"127.0.0.1:{port}") + BOILER)
    backend.publish("boiler", {"id": "ack-1", "point": "sp", "value": 41})
    gw.wait_log(r"received message_id=ack-1\b")
    gw.wait_log(r"cannot reach the device")  # it tried, and is retrying
    # journaled, but the device has not answered: not completed at the broker
    assert pubacks_from(mosquitto, gw.client_id) == 0
    assert backend.reports_for("ack-1") == []
    assert gw.kill9() == -9

    device = modbus_device(tcp=f"127.0.0.1:{port}")
    gw.restart_subscribed()
    report = backend.wait_report("ack-1", timeout=15)
    assert (report["status"], report["attempts"]) == ("delivered", 1), report
    # the broker redelivered the message it never got a PUBACK for, and the
    # gateway recognised its id (resumed from the journal, not run twice)
    assert len(redeliveries(mosquitto, gw.client_id)) == 1, mosquitto.log_text()
    assert len(log_lines(gw, r"redelivered message: not executed again message_id=ack-1\b")) == 1
    wait_until(lambda: pubacks_from(mosquitto, gw.client_id) == 1, 5, what="the gateway's PUBACK of ack-1")
    # a later message to the same device comes after anything still due for ack-1
    backend.publish("boiler", {"id": "ack-2", "point": "sp", "value": 42})
    assert backend.wait_report("ack-2")["status"] == "delivered"
    assert without_t(device.wait_writes(2)) == [sp_write(41), sp_write(42)]
    assert one_outcome(backend, "ack-1")["status"] == "delivered"


def test_a_completed_message_is_not_redelivered_after_a_restart(mosquitto, mqtt_gateway, modbus_device,
                                                                backend):
    device = modbus_device()
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address) + BOILER)
    backend.publish("boiler", {"id": "done-1", "point": "sp", "value": 51})
    assert backend.wait_report("done-1")["status"] == "delivered"
    wait_until(lambda: pubacks_from(mosquitto, gw.client_id) == 1, 5, what="the PUBACK of done-1")
    assert gw.kill9() == -9
    gw.restart_subscribed()
    backend.publish("boiler", {"id": "done-2", "point": "sp", "value": 52})
    assert backend.wait_report("done-2")["status"] == "delivered"
    assert without_t(device.wait_writes(2)) == [sp_write(51), sp_write(52)]
    assert redeliveries(mosquitto, gw.client_id) == []
    assert log_lines(gw, r"redelivered message") == []
    assert one_outcome(backend, "done-1")["status"] == "delivered"


def test_message_ids_deduplicate_and_nothing_else_does(mqtt_gateway, modbus_device, backend):
    device = modbus_device()
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address) + BOILER)

    # the same id twice, the second after the first finished: one write, two reports
    backend.publish("boiler", {"id": "dup-1", "point": "sp", "value": 7})
    backend.wait_report("dup-1")
    backend.publish("boiler", {"id": "dup-1", "point": "sp", "value": 7})
    backend.wait_report("dup-1", count=2)
    both = backend.reports_for("dup-1")
    assert [r["status"] for r in both] == ["delivered", "delivered"]
    assert both[1] == both[0], "the redelivery reports the stored outcome"
    assert len(log_lines(gw, r"redelivered message: not executed again message_id=dup-1\b")) == 1

    # identical bodies, different ids: both run
    backend.publish("boiler", {"id": "dup-2", "point": "sp", "value": 8})
    backend.publish("boiler", {"id": "dup-3", "point": "sp", "value": 8})
    reports = backend.wait_reports(["dup-2", "dup-3"])
    assert [reports[i]["status"] for i in ("dup-2", "dup-3")] == ["delivered", "delivered"]

    # identical bodies without an id: both run, each under an id of its own
    before = len(backend.all_reports())
    backend.publish("boiler", {"point": "sp", "value": 9})
    backend.publish("boiler", {"point": "sp", "value": 9})
    wait_until(lambda: len(backend.all_reports()) >= before + 2, 10, what="2 reports of id-less messages")
    generated = backend.all_reports()[before:]
    assert len(generated) == 2
    assert [(r["status"], r.get("id_generated"), r.get("deduplicated")) for r in generated] == \
        [("delivered", True, False)] * 2
    assert generated[0]["message_id"] != generated[1]["message_id"]
    assert all(r["message_id"] not in ("", None) for r in generated)

    assert without_t(device.wait_writes(5)) == [sp_write(7), sp_write(8), sp_write(8), sp_write(9), sp_write(9)]
    assert len(backend.all_reports()) == 6
    # id-carrying reports never say id_generated (nor that they were not deduplicated)
    assert all("id_generated" not in r and "deduplicated" not in r
               for i in ("dup-1", "dup-2", "dup-3") for r in backend.reports_for(i))


def test_missing_id_reject_refuses_a_body_without_an_id(mosquitto, mqtt_gateway, modbus_device, backend):
    """`[hub] missing_id = "reject"`: a body without an `id` is rejected with
    the reason, reported, and completed at the broker in its turn; the one
    after it, with an id, runs."""
    device = modbus_device()
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address) + BOILER, hub_extra='missing_id = "reject"')
    backend.publish("boiler", {"point": "sp", "value": 5})
    backend.publish("boiler", {"id": "has-id", "point": "sp", "value": 6})
    assert backend.wait_report("has-id")["status"] == "delivered"
    wait_until(lambda: len(backend.all_reports()) >= 2, 10, what="the report of the id-less message")
    no_id = [r for r in backend.all_reports() if r["message_id"] != "has-id"]
    assert [(r["status"], r.get("deduplicated")) for r in no_id] == [("rejected", False)], no_id
    assert 'no "id" in the body' in no_id[0]["detail"] and "missing_id" in no_id[0]["detail"], no_id
    assert without_t(device.wait_writes(1)) == [sp_write(6)]
    wait_until(lambda: pubacks_from(mosquitto, gw.client_id) >= 2, 5, what="both completed at the broker")


PUMP = """
[devices.pump]
bus = "plc"
unit = 2
points.speed = { table = "holding", address = 20, type = "u16" }
"""


def test_the_dedupe_key_is_device_and_id_and_a_reused_id_is_rejected(mqtt_gateway, modbus_device, backend):
    """`{"id": 1}` to the boiler, then `{"id": 1}` to the pump: two messages,
    both run, each report names its device. The same id to the same device
    with another command: `rejected`, never run, never a false `delivered`."""
    device = modbus_device(units=(1, 2))
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address) + BOILER + PUMP)

    backend.publish("boiler", {"id": 1, "point": "sp", "value": 7})
    backend.wait_report("1")
    backend.publish("pump", {"id": 1, "point": "speed", "value": 1500})
    both = backend.wait_report("1", count=2) and backend.reports_for("1")
    assert [(r["device"], r["status"]) for r in both] == [("boiler", "delivered"), ("pump", "delivered")], both
    assert without_t(device.wait_writes(2)) == [sp_write(7), {"unit": 2, "fc": 6, "address": 20, "values": [1500]}]

    backend.publish("boiler", {"id": 1, "point": "sp", "value": 8})
    backend.wait_report("1", count=3)
    third = backend.reports_for("1")[2]
    assert (third["device"], third["status"]) == ("boiler", "rejected"), third
    assert third["detail"] == "message id 1 was already used for a different command"
    # the original command once more: a duplicate, its stored outcome reported
    backend.publish("boiler", {"id": 1, "point": "sp", "value": 7})
    backend.wait_report("1", count=4)
    assert backend.reports_for("1")[3] == both[0]
    time.sleep(0.5)
    assert len(device.writes()) == 2, "nothing else ran"
    assert log_lines(gw, r"panicked") == []


def test_sigterm_finishes_the_request_on_the_wire_and_exits_0(mosquitto, mqtt_gateway, modbus_device, backend):
    device = modbus_device(delay_ms=800)
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address, timeout="3s") + BOILER)
    backend.publish("boiler", {"id": "term-1", "point": "sp", "value": 61})
    backend.publish("boiler", {"id": "term-2", "point": "sp", "value": 62})  # queued behind it
    gw.wait_log(r"sending message_id=term-1\b")
    assert device.writes() == []  # the device is still thinking: term-1 is on the wire
    started = time.monotonic()
    assert gw.terminate(timeout=10) == 0
    took = time.monotonic() - started
    assert took < 3.0, f"SIGTERM took {took:.1f}s"
    # the request on the wire was finished, its outcome reported and completed
    assert without_t(device.writes()) == [sp_write(61)]
    assert backend.wait_report("term-1", timeout=5)["status"] == "delivered"
    assert "sending message_id=term-2" not in gw.log_text()

    gw.restart_subscribed()
    assert backend.wait_report("term-2", timeout=10)["status"] == "delivered"
    backend.publish("boiler", {"id": "term-3", "point": "sp", "value": 63})
    assert backend.wait_report("term-3", timeout=10)["status"] == "delivered"
    assert without_t(device.wait_writes(3)) == [sp_write(61), sp_write(62), sp_write(63)]
    # term-1 was acknowledged before the exit: no redelivery, no second report
    assert log_lines(gw, r"redelivered message: .* message_id=term-1\b") == []
    assert len(backend.reports_for("term-1")) == 1, backend.reports_for("term-1")
    # term-2 was not: the broker redelivers it, which may repeat its report
    assert one_outcome(backend, "term-2")["status"] == "delivered"
    assert {r["status"] for r in backend.all_reports()} == {"delivered"}


def test_a_clean_restart_sends_no_report_again(mqtt_gateway, modbus_device, backend):
    """Reports go out once: a restart after SIGTERM re-sends only reports
    that never went out, and here every one did."""
    device = modbus_device()
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address) + BOILER)
    ids = [f"once-{i}" for i in range(3)]
    for i, message_id in enumerate(ids):
        backend.publish("boiler", {"id": message_id, "point": "sp", "value": i})
    backend.wait_reports(ids)
    assert gw.terminate() == 0
    gw.restart_subscribed()
    backend.publish("boiler", {"id": "once-after", "point": "sp", "value": 9})
    backend.wait_report("once-after")
    assert without_t(device.wait_writes(4)) == [sp_write(0), sp_write(1), sp_write(2), sp_write(9)]
    assert [r["message_id"] for r in backend.all_reports()] == ids + ["once-after"], backend.all_reports()


SECRET = "Zq7-c2d-s3cr3t-pa55w0rd-91f4"


def test_no_secret_in_the_log_even_at_trace(gateway, password_mosquitto, modbus_device):
    """A broker that checks passwords; the gateway logs at trace level, first
    with a wrong password (refused), then with the right one (delivers)."""
    wrong_secret = SECRET[::-1]
    broker = password_mosquitto({"gateway": SECRET, "backend": "backend-pw"})
    backend = Backend(broker, client_id="backend-secret", username="backend", password="backend-pw")
    try:
        device = modbus_device()
        rest = modbus_tcp_bus("plc", device.address) + BOILER
        hub = (f'[hub]\nkind = "mqtt"\nurl = "mqtt://{broker.host}:{broker.port}"\n'
               'client_id = "gw-secret"\nusername = "gateway"\n')
        env = {"RUST_LOG": "trace"}

        wrong = gateway(hub + f'password = "{wrong_secret}"\n\n' + rest, env=env)
        wrong.wait_log(r"refused the connection", timeout=10)
        assert "not authorised" in broker.log_text() or "not authorized" in broker.log_text().lower()
        assert wrong.terminate() == 0

        right = gateway(hub + f'password = "{SECRET}"\n\n' + rest, env=env)
        wait_subscribed(broker, "gw-secret", 1)
        backend.publish("boiler", {"id": "sec-1", "point": "sp", "value": 5})
        assert backend.wait_report("sec-1")["status"] == "delivered"
        assert right.terminate() == 0
        for gw in (wrong, right):
            text = gw.log_text()
            assert " TRACE " in text, "RUST_LOG=trace took effect"
            for secret in (SECRET, wrong_secret):
                assert secret not in text, f"a password is in {gw.log_path}"
    finally:
        backend.close()


def test_a_read_reports_what_the_device_holds(mosquitto, mqtt_gateway, modbus_device, backend):
    from pymodbus.client import ModbusTcpClient

    device = modbus_device()
    other = ModbusTcpClient(device.host, port=device.port)  # a separate client sets the register
    assert other.connect()
    try:
        assert not other.write_register(10, 321, device_id=1).isError()
    finally:
        other.close()
    mqtt_gateway(modbus_tcp_bus("plc", device.address) + BOILER)
    backend.publish("boiler", {"id": "read-1", "read": ["sp"]})
    report = backend.wait_report("read-1")
    assert report["status"] == "delivered", report
    assert report["values"] == {"sp": 321}, report
    assert report["detail"] == "read sp"
    assert without_t(device.writes()) == [sp_write(321)], "only the other client's write: a read writes nothing"
