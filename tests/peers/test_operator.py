"""The operator surface of a running gateway, against real peers
(Mosquitto as the hub, pymodbus as the device):

- `/metrics`, read with prometheus_client's own text parser while messages
  flow: the outcome counter follows the device's own write log, the request
  histogram counts the requests; with the device down, queue depth and
  oldest age match what `queue list` finds in the journal;
- each verb over the control socket: an `uncertain` message (kill -9 while
  a non-idempotent command is on the wire) listed, retried (written once
  more, by the device's log; the report says `retried_by`), another one
  resolved by hand, a queued one dropped (never written), refusals with a
  reason (retry of a delivered one), and the socket closed to a user
  outside its group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from operator_surface import Ops, verb, verb_json
from test_gateway_faults import sp_point
from util import modbus_tcp_bus, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def ops():
    o = Ops()
    yield o
    o.close()


def device_section(name: str, unit: int = 1, idempotent: bool = False, extra: str = "") -> str:
    return (f'[devices.{name}]\nbus = "plc"\nunit = {unit}\nidempotent = {"true" if idempotent else "false"}\n'
            f'max_attempts = 1000\nmax_age = "10m"\n{extra}{sp_point()}\n')


def written(device, value) -> int:
    return sum(1 for w in device.writes() if w.get("address") == 10 and w["values"] == [value])


def test_metrics_follow_the_device_and_the_journal(ops, mqtt_gateway, modbus_device, backend):
    device = modbus_device()
    gw = mqtt_gateway(ops.section + modbus_tcp_bus("plc", device.address, timeout="300ms")
                      + device_section("boiler", idempotent=True))
    assert ops.metric("c2d_gateway_hub_connected") == 1
    ids = [f"m-{i}" for i in range(20)]
    for i, mid in enumerate(ids):
        backend.publish("boiler", {"id": mid, "point": "sp", "value": 100 + i})
    backend.wait_reports(ids)
    # The counter follows the device's own log of applied writes.
    wait_until(lambda: ops.metric("c2d_gateway_messages_total", outcome="delivered") == 20, 5,
               what=f"20 delivered in /metrics: {ops.metric('c2d_gateway_messages_total', outcome='delivered')}")
    assert len(device.writes()) == 20
    requests = ops.metric("c2d_gateway_device_request_duration_seconds_count", bus="plc")
    assert requests == 20, requests
    assert ops.metric("c2d_gateway_device_request_duration_seconds_bucket", bus="plc", le="+Inf") == 20
    assert ops.metric("c2d_gateway_bus_connected", bus="plc") == 1
    assert ops.metric("c2d_gateway_queue_depth") == 0

    # The device goes away: what waits is what the journal holds.
    device.stop()
    waiting = [f"q-{i}" for i in range(5)]
    for i, mid in enumerate(waiting):
        backend.publish("boiler", {"id": mid, "point": "sp", "value": 200 + i})
    wait_until(lambda: ops.metric("c2d_gateway_device_queue_depth", device="boiler") == 5, 10,
               what="5 queued for boiler in /metrics")
    listed = verb_json(gw, "queue", "list", "--device", "boiler")
    assert [m["message_id"] for m in listed["messages"]] == waiting, listed
    assert ops.metric("c2d_gateway_queue_depth") == listed["matched"] == 5
    first = ops.metric("c2d_gateway_oldest_queued_seconds")
    time.sleep(1.5)
    later = ops.metric("c2d_gateway_device_oldest_queued_seconds", device="boiler")
    assert later >= first + 1.0, (first, later)
    assert ops.metric("c2d_gateway_bus_connected", bus="plc") == 0
    status = ops.status()
    assert (status["queued"], status["devices"]["boiler"]["queued"]) == (5, 5), status
    assert status["buses"]["plc"]["connected"] is False and status["buses"]["plc"]["error"], status

    # Back: the queue drains, the counter moves on.
    device.restart()
    backend.wait_reports(waiting, timeout=30)
    wait_until(lambda: ops.metric("c2d_gateway_queue_depth") == 0, 10, what="an empty queue in /metrics")
    assert ops.metric("c2d_gateway_messages_total", outcome="delivered") == 25
    assert ops.metric("c2d_gateway_device_oldest_queued_seconds", device="boiler") == 0


def test_an_uncertain_message_is_listed_retried_once_and_reported(ops, mqtt_gateway, modbus_device, backend):
    device = modbus_device(delay_ms=1500)  # the answer takes 1.5 s: the kill lands in between
    gw = mqtt_gateway(ops.section + modbus_tcp_bus("plc", device.address, timeout="5s") + device_section("valve"))
    backend.publish("valve", {"id": "unc-1", "point": "sp", "value": 71})
    gw.wait_log(r"sending message_id=unc-1\b")
    time.sleep(0.3)
    assert gw.kill9() == -9
    gw.restart_subscribed()
    report = backend.wait_report("unc-1", timeout=10)
    assert report["status"] == "uncertain", report
    time.sleep(1.5)  # pymodbus may still apply the request it got before the kill
    before = written(device, 71)

    listed = verb_json(gw, "queue", "list", "--state", "uncertain")
    assert [m["message_id"] for m in listed["messages"]] == ["unc-1"], listed
    status = verb_json(gw, "status")
    assert status["unresolved"] == {"uncertain": 1, "expired": 0}, status
    assert [m["message_id"] for m in status["attention"]] == ["unc-1"]
    assert ops.metric("c2d_gateway_unresolved_messages", state="uncertain") == 1
    text = verb(gw, "status")
    assert text.returncode == 0 and "unc-1" in text.stdout and "1 uncertain" in text.stdout, text.stdout

    r = verb(gw, "queue", "retry", "unc-1", "--note", "checked on site: the valve did not move")
    assert r.returncode == 0, r.stderr
    assert "unc-1" in r.stdout and "queued again" in r.stdout, r.stdout
    again = backend.wait_report("unc-1", count=2, timeout=15)
    second = backend.reports_for("unc-1")[1]
    assert (second["status"], second["retried_by"]) == ("delivered", "operator"), (again, second)
    assert second["note"] == "checked on site: the valve did not move"
    assert written(device, 71) == before + 1, "the retry wrote it exactly once more"
    assert "operator: retry" in gw.log_text() and "uid 0" in gw.log_text()
    shown = verb_json(gw, "queue", "show", "unc-1")["messages"][0]
    assert shown["operator_action"]["action"] == "retried" and shown["operator_action"]["previous"] == "uncertain"

    # A delivered message is not retried: refused with the reason, exit 1.
    r = verb(gw, "queue", "retry", "unc-1")
    assert r.returncode == 1 and "it is delivered: only uncertain or expired" in r.stderr, (r.stdout, r.stderr)
    assert len(backend.reports_for("unc-1")) == 2 and written(device, 71) == before + 1
    assert ops.metric("c2d_gateway_unresolved_messages", state="uncertain") == 0


def test_resolve_by_hand_and_drop_a_queued_message(ops, mqtt_gateway, modbus_device, backend):
    slow = modbus_device(delay_ms=1000)  # answers after the bus timeout: non-idempotent -> uncertain
    gw = mqtt_gateway(ops.section + modbus_tcp_bus("plc", slow.address, timeout="300ms")
                      + device_section("valve"))
    backend.publish("valve", {"id": "v-1", "point": "sp", "value": 5})
    assert backend.wait_report("v-1", timeout=10)["status"] == "uncertain"

    r = verb(gw, "queue", "resolve", "v-1", "--as", "delivered", "--note", "valve seen open")
    assert r.returncode == 0, r.stderr
    backend.wait_report("v-1", count=2, timeout=10)
    resolved = backend.reports_for("v-1")[1]
    assert (resolved["status"], resolved["resolved_by"], resolved["note"]) == ("delivered", "operator",
                                                                               "valve seen open"), resolved
    assert "resolved by operator" in resolved["detail"]
    r = verb(gw, "queue", "resolve", "v-1", "--as", "maybe")
    assert r.returncode == 1 and "delivered or rejected" in r.stderr, r.stderr

    # A queued message for a device that is down: dropped, never written.
    slow.stop()
    for mid, value in (("d-1", 11), ("d-2", 12)):
        backend.publish("valve", {"id": mid, "point": "sp", "value": value})
    wait_until(lambda: len(verb_json(gw, "queue", "list", "--state", "queued")["messages"]) == 2, 10,
               what="d-1 and d-2 queued")
    r = verb(gw, "queue", "drop", "d-2", "--note", "superseded")
    assert r.returncode == 0, r.stderr
    dropped = backend.wait_report("d-2", timeout=10)
    assert (dropped["status"], dropped["dropped_by"], dropped["note"]) == ("rejected", "operator", "superseded")
    assert dropped["detail"] == "dropped by operator"
    r = verb(gw, "queue", "drop", "d-2")
    assert r.returncode == 1 and "it is rejected already" in r.stderr, r.stderr
    r = verb(gw, "queue", "retry", "d-2")
    assert r.returncode == 1 and "only uncertain or expired" in r.stderr, r.stderr
    r = verb(gw, "queue", "show", "nope")
    assert r.returncode == 1 and 'no message with id "nope"' in r.stderr, r.stderr

    slow.restart()
    assert backend.wait_report("d-1", timeout=30)["status"] in ("delivered", "uncertain")
    time.sleep(1.5)
    assert written(slow, 12) == 0, "a dropped message is never written"
    assert written(slow, 11) == 1
    assert len(backend.reports_for("d-2")) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_the_socket_is_closed_to_a_user_outside_its_group(ops, mqtt_gateway, modbus_device):
    device = modbus_device()
    gw = mqtt_gateway(ops.section + modbus_tcp_bus("plc", device.address) + device_section("valve"))
    os.chmod(ops.dir, 0o755)  # the directory open to all: the socket's own mode decides
    config = ops.dir / "config.toml"  # a copy anyone may read, next to the socket
    config.write_text(gw.config_path.read_text())
    os.chmod(config, 0o644)
    assert (os.stat(ops.socket).st_mode & 0o777) == 0o660
    as_user = [gw.binary, "status", "--config", str(config)]
    r = subprocess.run(as_user, capture_output=True, text=True, timeout=30, user="nobody", group="nogroup")
    assert r.returncode == 1 and "permission denied" in r.stderr, (r.returncode, r.stderr)
    # A member of the socket's group (root here) gets in.
    r = subprocess.run(as_user, capture_output=True, text=True, timeout=30, user="nobody", group="root")
    assert r.returncode == 0 and "hub:" in r.stdout, r.stderr
    with socket.socket(socket.AF_UNIX) as s:  # and a script may speak the protocol itself
        s.connect(str(ops.socket))
        s.sendall(b'{"verb": "list", "state": "all"}\n')
        assert b'"ok":true' in s.recv(65536)
