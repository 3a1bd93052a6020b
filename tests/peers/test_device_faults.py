"""Device faults around the real gateway, with Mosquitto as the hub and
independent device peers (pymodbus over TCP and RTU, a pyserial line device,
socat pty pairs): a dead unit beside a live one, measured; devices answering
garbage; a device at the edge of the timeout; a serial device unplugged and
plugged back; a Modbus TCP server killed and restarted.

The promise checked everywhere: no command lost, none written twice to a
device that is not idempotent (it becomes `uncertain` instead), a clear
outcome in every report, no panic, no hang, and the next message to a
healthy device still goes through.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conftest import require_program
from util import Proc, modbus_rtu_bus, modbus_tcp_bus, one_outcome, read_jsonl, wait_until, without_t


def point(name="sp", address=10, ty="u16"):
    return f'points.{name} = {{ table = "holding", address = {address}, type = "{ty}" }}\n'


def device_section(name, bus, unit, *, idempotent=False, extra=""):
    return (f'[devices.{name}]\nbus = "{bus}"\nunit = {unit}\nidempotent = {str(idempotent).lower()}\n'
            f'{extra}{point()}{point("wide", 20, "u32")}\n')


def requests(path) -> list[dict]:
    """The device's request log (`--request-log`): every request that reached it."""
    return read_jsonl(path)


def no_panic(gw) -> None:
    assert gw.alive, gw.log_text()[-3000:]
    assert "panicked" not in gw.log_text(), gw.log_text()[-3000:]


def wait_log_more(gw, pattern, than: int, timeout: float = 10.0) -> int:
    """Until the gateway log has more than `than` matches of `pattern`; returns the count."""
    count = lambda: len(re.findall(pattern, gw.log_text()))  # noqa: E731
    wait_until(lambda: count() > than, timeout, what=f"gateway log /{pattern}/ more than {than} times")
    return count()


def evidence(gw, *ids) -> str:
    return "\n".join(line for line in gw.log_text().splitlines() if any(re.search(rf"\b{i}\b", line) for i in ids))


# ------------------------------------------------ 1. dead unit, live unit, measured

def max_dead_tries(window: float, timeout: float, breaker_max: float, opened: int = 1) -> int:
    """The most tries of a dead unit that fit in `window` seconds once its
    breaker is open (src/bus/schedule.rs): after each timed-out try the unit
    waits at least its open period, `timeout x 2^opened` (capped at
    breaker_max, the opened count growing by one per try), and each try
    itself lasts one timeout. The first try may come at the window's start."""
    tries, t = 1, 0.0
    while True:
        t += timeout + min(timeout * 2 ** opened, breaker_max)
        if t > window:
            return tries
        tries += 1
        opened += 1


def test_dead_rtu_unit_costs_the_live_unit_at_most_one_timeout_per_breaker_period(
        socat_pair, mqtt_gateway, modbus_device, backend, tmp_path):
    timeout, breaker_after, breaker_max = 0.4, 3, 60.0
    req_log = tmp_path / "requests.jsonl"
    device = modbus_device(socat_pair.a, units=(1,), extra_args=["--request-log", req_log])  # unit 2 is dead
    gw = mqtt_gateway(
        modbus_rtu_bus("field", socat_pair.b, timeout=f"{int(timeout * 1000)}ms",
                       extra=f'breaker_after = {breaker_after}\nbreaker_max = "{int(breaker_max)}s"')
        + device_section("live", "field", 1, idempotent=True)
        + device_section("dead", "field", 2, idempotent=True, extra='max_attempts = 1000\nmax_age = "120s"\n'))
    dead_ids = [f"dead-{i}" for i in range(3)]
    for i, message_id in enumerate(dead_ids):
        backend.publish("dead", {"id": message_id, "point": "sp", "value": 100 + i})
    gw.wait_log(r"device=dead.*isolated by the circuit breaker|isolated by the circuit breaker.*device=dead",
                timeout=10)
    before_live = len(requests(req_log))
    assert before_live >= breaker_after and all(r["unit"] == 2 for r in requests(req_log))

    # Live messages one after the other, each published once the previous
    # one is written, paced so the run spans several breaker periods.
    n, pace = 40, 0.15
    latencies = []
    window_start = time.time()
    for i in range(n):
        sent_at = time.time()
        backend.publish("live", {"id": f"live-{i}", "point": "sp", "value": i})
        writes = device.wait_writes(i + 1, timeout=10)
        latencies.append(writes[i]["t"] - sent_at)
        time.sleep(pace)
    window_end = device.writes()[-1]["t"]
    window = window_end - window_start

    reqs = requests(req_log)
    dead_in_window = [r for r in reqs if r["unit"] == 2 and window_start <= r["t"] <= window_end]
    live_reqs = [r for r in reqs if r["unit"] == 1]
    bound = max_dead_tries(window, timeout, breaker_max)
    ordered = sorted(latencies)
    median, worst = ordered[n // 2], ordered[-1]
    extra_wait = sum(lat - median for lat in latencies if lat > median)
    print(f"\n{n} live messages over {window:.2f}s beside a dead unit (timeout {timeout}s, breaker_after "
          f"{breaker_after}): dead unit tried {len(dead_in_window)} times on the wire (design bound {bound}, "
          f"without isolation ~{n}); live latency median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms, "
          f"extra wait in all {extra_wait:.2f}s")

    # Every live message once, in order, at the first attempt.
    assert without_t(device.writes()) == [{"unit": 1, "fc": 6, "address": 10, "values": [i]} for i in range(n)]
    assert len(live_reqs) == n, "a live message was sent more than once"
    live = backend.wait_reports([f"live-{i}" for i in range(n)])
    assert all((r["status"], r["attempts"]) == ("delivered", 1) for r in live.values()), live
    # The dead unit was still being tried, but at most once per open period.
    assert 1 <= len(dead_in_window) <= bound + 1, (
        f"dead unit tried {len(dead_in_window)} times in {window:.2f}s, bound {bound}: "
        f"{[round(r['t'] - window_start, 2) for r in dead_in_window]}")
    # Each try costs a live message at most one timeout: in all, the live
    # messages waited no more than one timeout per dead try (generous slack
    # for a busy machine), and none waited more than one timeout (+ slack).
    assert extra_wait <= len(dead_in_window) * timeout + 0.05 * n + 2.0, sorted(latencies)[-8:]
    assert worst <= timeout + 2.0, sorted(latencies)[-8:]
    # The dead unit's messages are still pending, not lost, not finished.
    assert [backend.reports_for(i) for i in dead_ids] == [[]] * len(dead_ids)
    no_panic(gw)


# ------------------------------------------------------- 2. devices replying garbage

GARBAGE = {
    "tcp": ["wrong-unit", "wrong-fc", "truncated", "random", "echo-value", "echo-address", "wrong-tid"],
    "rtu": ["wrong-unit", "wrong-fc", "bad-crc", "truncated", "random", "echo-value", "echo-address"],
}


@pytest.mark.parametrize("transport,mode", [(t, m) for t, modes in GARBAGE.items() for m in modes])
def test_garbage_reply_gets_a_clear_outcome_and_the_bus_goes_on(transport, mode, make_socat_pair, mqtt_gateway,
                                                                modbus_device, backend, tmp_path):
    """Units 1 (not idempotent) and 3 (idempotent) apply each write and then
    answer with a broken frame; unit 2 on the same bus is healthy. The
    non-idempotent write was sent once and is `uncertain`; the idempotent
    one is retried up to max_attempts and then `expired` with the last
    error; neither is ever reported delivered or rejected (the device did
    run the write: nothing says it refused); unit 2 is delivered after."""
    req_log = tmp_path / "requests.jsonl"
    args = ["--request-log", req_log, "--garbage", mode, "--garbage-units", "1,3", "--seed", "7"]
    if transport == "rtu":
        pair = make_socat_pair()
        device = modbus_device(pair.a, units=(1, 2, 3), extra_args=args)
        bus = modbus_rtu_bus("field", pair.b, timeout="300ms")
    else:
        device = modbus_device(units=(1, 2, 3), extra_args=args)
        bus = modbus_tcp_bus("field", device.address, timeout="300ms")
    gw = mqtt_gateway(bus + device_section("valve", "field", 1)
                      + device_section("healthy", "field", 2)
                      + device_section("boiler", "field", 3, idempotent=True, extra="max_attempts = 3\n"))
    backend.publish("valve", {"id": "g-valve", "point": "sp", "value": 11})
    backend.publish("boiler", {"id": "g-boiler", "point": "wide", "value": 70000})
    reports = backend.wait_reports(["g-valve", "g-boiler"], timeout=20)
    backend.publish("healthy", {"id": "g-healthy", "point": "sp", "value": 22})
    healthy = backend.wait_report("g-healthy", timeout=10)
    valve, boiler = reports["g-valve"], reports["g-boiler"]
    print(f"\n{transport} {mode}:\n  valve  (not idempotent): {valve['status']} after {valve['attempts']}: "
          f"{valve['detail']}\n  boiler (idempotent):     {boiler['status']} after {boiler['attempts']}: "
          f"{boiler['detail']}")
    log = evidence(gw, "g-valve", "g-boiler", "g-healthy")

    # not idempotent: on the wire once, then uncertain, with the reason
    assert (valve["status"], valve["attempts"]) == ("uncertain", 1), f"{valve}\n{log}"
    assert "not idempotent" in valve["detail"] and "unit 1" in valve["detail"], valve
    assert [r["unit"] for r in requests(req_log)].count(1) == 1, requests(req_log)
    # idempotent: tried max_attempts times, then expired with the last error
    assert (boiler["status"], boiler["attempts"]) == ("expired", 3), f"{boiler}\n{log}"
    assert "gave up after 3 attempts" in boiler["detail"] and "unit 3" in boiler["detail"], boiler
    assert [r["unit"] for r in requests(req_log)].count(3) == 3, requests(req_log)
    # the healthy unit on the same bus, right after
    assert (healthy["status"], healthy["attempts"]) == ("delivered", 1), f"{healthy}\n{log}"
    assert [r["unit"] for r in requests(req_log)].count(2) == 1
    assert without_t([w for w in device.writes() if w["unit"] != 3]) == [
        {"unit": 1, "fc": 6, "address": 10, "values": [11]},
        {"unit": 2, "fc": 6, "address": 10, "values": [22]}]
    for message_id in ("g-valve", "g-boiler", "g-healthy"):
        one_outcome(backend, message_id)
    no_panic(gw)


def flagged_as_resent(report) -> bool:
    """Whether a report tells the back end the device may have seen the
    command twice: `resent` (sent again after an attempt without a clear
    answer) or `resent_after_crash` (sent again after a crash mid-send)."""
    return report.get("resent") is True or report.get("resent_after_crash") is True


def test_a_resend_after_an_unconfirmed_exchange_is_flagged_in_the_report(mqtt_gateway, modbus_device, backend,
                                                                         tmp_path):
    """The first answer of an idempotent unit is garbled (it did apply the
    write); the gateway sends the write again, which is fine for this
    device, and delivered. The device saw the command twice: the report
    must say so, as it does after a crash mid-send."""
    req_log = tmp_path / "requests.jsonl"
    device = modbus_device(units=(3,), extra_args=["--request-log", req_log, "--garbage", "echo-value",
                                                   "--garbage-count", "1"])
    gw = mqtt_gateway(modbus_tcp_bus("field", device.address, timeout="300ms")
                      + device_section("boiler", "field", 3, idempotent=True))
    backend.publish("boiler", {"id": "twice", "point": "sp", "value": 9})
    report = backend.wait_report("twice", timeout=10)
    assert (report["status"], report["attempts"]) == ("delivered", 2), report
    assert without_t(device.wait_writes(2)) == [{"unit": 3, "fc": 6, "address": 10, "values": [9]}] * 2
    assert len(requests(req_log)) == 2
    no_panic(gw)
    assert report.get("resent") is True, f"the device ran it twice, the report does not say so: {report}"


# -------------------------------------------------- 3. a device at the edge of the timeout

def edge_device(transport, make_socat_pair, modbus_device, req_log, delay_ms, timeout):
    """Units 1 (slow by `delay_ms`), 2 (fast), 3 (slow, idempotent) on one bus."""
    args = ["--request-log", req_log, "--delay-ms", delay_ms, "--delay-units", "1,3"]
    if transport == "rtu":
        pair = make_socat_pair()
        device = modbus_device(pair.a, units=(1, 2, 3), extra_args=args)
        return device, modbus_rtu_bus("field", pair.b, timeout=timeout)
    device = modbus_device(units=(1, 2, 3), extra_args=args)
    return device, modbus_tcp_bus("field", device.address, timeout=timeout)


EDGE_DEVICES = (device_section("valve", "field", 1) + device_section("fast", "field", 2)
                + device_section("boiler", "field", 3, idempotent=True, extra="max_attempts = 3\n"))


@pytest.mark.parametrize("transport", ["rtu", "tcp"])
def test_a_reply_just_inside_the_timeout_is_delivered_once(transport, make_socat_pair, mqtt_gateway, modbus_device,
                                                           backend, tmp_path):
    req_log = tmp_path / "requests.jsonl"
    device, bus = edge_device(transport, make_socat_pair, modbus_device, req_log, 600, "800ms")
    gw = mqtt_gateway(bus + EDGE_DEVICES)
    ids = [f"in-{i}" for i in range(4)]
    for i, message_id in enumerate(ids):
        backend.publish("valve", {"id": message_id, "point": "sp", "value": i})
    reports = backend.wait_reports(ids, timeout=20)
    assert all((reports[i]["status"], reports[i]["attempts"]) == ("delivered", 1) for i in ids), reports
    assert without_t(device.writes()) == [{"unit": 1, "fc": 6, "address": 10, "values": [i]} for i in range(4)]
    assert len(requests(req_log)) == 4
    no_panic(gw)


@pytest.mark.parametrize("transport", ["rtu", "tcp"])
def test_a_reply_just_after_the_timeout_never_runs_a_command_twice(transport, make_socat_pair, mqtt_gateway,
                                                                    modbus_device, backend, tmp_path):
    """Units 1 and 3 answer 100 ms after the gateway gave up (timeout
    300 ms); unit 2 on the same bus is fast.

    Not idempotent (unit 1): sent once, `uncertain` (the device did apply it,
    late). The late answer, once it has arrived, is never read as the answer
    to the next request (RTU: it waits in the port; TCP: the connection is
    renewed). A late answer that arrives *during* the next exchange spoils
    that exchange (RTU has one line): a safe outcome, never `rejected`, never
    a second write. Idempotent (unit 3): retried until max_attempts; a late
    echo of an earlier try of the same write may confirm a later try."""
    req_log = tmp_path / "requests.jsonl"
    device, bus = edge_device(transport, make_socat_pair, modbus_device, req_log, 400, "300ms")
    gw = mqtt_gateway(bus + EDGE_DEVICES)
    n_writes = lambda unit: [w["unit"] for w in device.writes()].count(unit)  # noqa: E731

    # A: the late answer has arrived before the next request
    backend.publish("valve", {"id": "late-valve", "point": "sp", "value": 1})
    valve = backend.wait_report("late-valve", timeout=10)
    wait_until(lambda: n_writes(1) == 1, 5, what="the late write")
    backend.publish("fast", {"id": "after-valve", "point": "sp", "value": 2})
    fast1 = backend.wait_report("after-valve", timeout=10)

    # B: idempotent, too slow for every try
    backend.publish("boiler", {"id": "late-boiler", "point": "sp", "value": 3})
    boiler = backend.wait_report("late-boiler", timeout=15)
    wait_until(lambda: n_writes(3) >= boiler["attempts"], 5, what="the idempotent device's late writes")

    # C: the next request goes out while the late answer is still coming
    backend.publish("valve", {"id": "valve-again", "point": "sp", "value": 4})
    backend.publish("fast", {"id": "right-after", "point": "sp", "value": 5})
    valve2 = backend.wait_report("valve-again", timeout=10)
    fast2 = backend.wait_report("right-after", timeout=10)
    wait_until(lambda: n_writes(1) == 2, 5, what="the second late write")
    backend.publish("fast", {"id": "settled", "point": "sp", "value": 6})
    fast3 = backend.wait_report("settled", timeout=10)

    ids = ("late-valve", "after-valve", "late-boiler", "valve-again", "right-after", "settled")
    log = evidence(gw, *ids)
    print(f"\n{transport}: " + ", ".join(
        f"{i} {r['status']}/{r['attempts']}" for i, r in zip(ids, (valve, fast1, boiler, valve2, fast2, fast3)))
        + f"\n  right-after: {fast2['detail']}")

    assert (valve["status"], valve["attempts"]) == ("uncertain", 1), f"{valve}\n{log}"
    assert "no reply from unit 1" in valve["detail"] and "not idempotent" in valve["detail"], valve
    assert (fast1["status"], fast1["attempts"]) == ("delivered", 1), f"{fast1}\n{log}"
    assert boiler["status"] in ("expired", "delivered"), f"{boiler}\n{log}"
    if boiler["status"] == "expired":
        assert boiler["attempts"] == 3 and "no reply from unit 3" in boiler["detail"], boiler
    assert (valve2["status"], valve2["attempts"]) == ("uncertain", 1), f"{valve2}\n{log}"
    assert fast2["status"] in ("delivered", "uncertain") and fast2["attempts"] == 1, f"{fast2}\n{log}"
    assert (fast3["status"], fast3["attempts"]) == ("delivered", 1), f"{fast3}\n{log}"
    # each try of the idempotent write reached the device; every other command exactly once
    units = [r["unit"] for r in requests(req_log)]
    assert units.count(3) == boiler["attempts"] == n_writes(3), units
    assert units.count(1) == 2 and units.count(2) == 3, units
    writes = without_t(device.writes())
    assert [w["values"][0] for w in writes if w["unit"] == 1] == [1, 4]
    assert [w["values"][0] for w in writes if w["unit"] == 2] == [2, 5, 6]
    for message_id in ids:
        one_outcome(backend, message_id)
    no_panic(gw)


# ----------------------------------------------- 4. a serial device unplugged and back

class StablePty:
    """A socat pty pair at fixed link paths, stopped and started again like a
    USB serial adapter pulled and plugged back (socat removes its links on
    SIGTERM and makes them again, pointing at new ptys)."""

    def __init__(self, workdir: Path):
        self.program = require_program("socat")
        self.a, self.b = workdir / "dev-a", workdir / "dev-b"
        self.log = workdir / "socat.log"
        self.proc = None

    def plug(self):
        self.proc = Proc([self.program, "-d", "-d", f"pty,raw,echo=0,link={self.a}",
                          f"pty,raw,echo=0,link={self.b}"], self.log).start()
        self.proc.wait_ready(lambda: self.a.exists() and self.b.exists(), 10, "socat pty links")
        return self

    def unplug(self):
        self.proc.stop()
        wait_until(lambda: not self.a.exists() and not self.b.exists(), 5, what="socat links removed")


@pytest.fixture
def stable_pty(tmp_path):
    pty = StablePty(tmp_path).plug()
    yield pty
    if pty.proc:
        pty.proc.stop()


def test_serial_device_unplugged_and_back_gets_every_queued_message_once(stable_pty, serial_device, mqtt_gateway,
                                                                         backend):
    device = serial_device(str(stable_pty.a), delay_ms=300, extra_args=["--reopen"])
    # The gateway's port is a link the test makes only once the device has
    # its end open again: the adapter is pulled, the device stays listening.
    # (Without it, a frame the gateway writes in the instant between socat's
    # new ptys and the device's reopen is lost for real, and a
    # non-idempotent command ends `uncertain`: right, but not this test.)
    port = stable_pty.a.parent / "gw-port"
    port.symlink_to(stable_pty.b)
    gw = mqtt_gateway(f"""
        [buses.display]
        kind = "serial"
        port = "{port}"
        framing = "line"
        ack = "^OK"
        nack = "^ERR"
        timeout = "1s"

        [devices.panel]
        bus = "display"
        max_attempts = 10
        max_age = "2m"
        """)
    ids = [f"p-{i}" for i in range(10)]
    for message_id in ids[:8]:
        backend.publish("panel", {"id": message_id, "text": f"TEXT {message_id}"})
    # p-2 reached the device; its OK is 300 ms away: pull the plug now
    wait_until(lambda: any(f.get("frame") == "TEXT p-2" for f in device.frames()), 10, what="p-2 at the device")
    port.unlink()
    stable_pty.unplug()
    unplugged_at = time.monotonic()
    # the gateway notices, and cannot open the port while it is away
    gw.wait_log(r"cannot open .*gw-port", timeout=10)
    for message_id in ids[8:]:  # more arrive while the device is away
        backend.publish("panel", {"id": message_id, "text": f"TEXT {message_id}"})
    assert all(not backend.reports_for(i) for i in ids[3:]), backend.all_reports()
    time.sleep(1.0)  # stay unplugged a while (the gateway keeps retrying)
    stable_pty.plug()
    wait_until(lambda: any(f.get("event") == "reopened" for f in device.frames()), 10, what="the device reopened")
    port.symlink_to(stable_pty.b)
    reports = backend.wait_reports(ids, timeout=40)
    back_after = time.monotonic() - unplugged_at
    frames = [f["frame"] for f in device.frames() if "frame" in f]
    print(f"\nunplugged for ~1s, all reported {back_after:.1f}s after the unplug; device saw {frames}; "
          + ", ".join(f"{i}: {reports[i]['status']}/{reports[i]['attempts']}" for i in ids))

    assert any(f.get("event") == "reopened" for f in device.frames()), "the device never saw the unplug"
    # p-2 was on the wire when the plug was pulled: sent once, and uncertain
    # unless its OK made it out first; never sent again
    assert reports["p-2"]["status"] in ("uncertain", "delivered"), reports["p-2"]
    if reports["p-2"]["status"] == "uncertain":
        assert "not idempotent" in reports["p-2"]["detail"], reports["p-2"]
    # every other message delivered, exactly once, in order
    assert frames == [f"TEXT {i}" for i in ids], frames
    for message_id in ids:
        if message_id != "p-2":
            assert reports[message_id]["status"] == "delivered", (message_id, reports[message_id],
                                                                  evidence(gw, message_id))
        one_outcome(backend, message_id)
    no_panic(gw)


# -------------------------------------------- 5. Modbus TCP server killed and restarted

def test_modbus_tcp_server_restarted_mid_stream_delivers_everything_once(mqtt_gateway, modbus_device, backend,
                                                                        tmp_path):
    """A slow pymodbus server (400 ms per answer) is killed twice with a
    request on the wire, first one for the non-idempotent unit, then one for
    the idempotent unit, and started again on the same port each time.
    Every message ends: the idempotent ones all delivered (the interrupted
    one sent again and its report saying it may have run twice), the
    non-idempotent ones delivered once except the interrupted one,
    `uncertain` and never written."""
    req_log = tmp_path / "requests.jsonl"
    device = modbus_device(units=(1, 2), delay_ms=400, extra_args=["--request-log", req_log])
    gw = mqtt_gateway(modbus_tcp_bus("plc", device.address, timeout="2s")
                      + device_section("boiler", "plc", 1, idempotent=True, extra='max_age = "2m"\n')
                      + device_section("valve", "plc", 2, extra='max_age = "2m"\n'))
    boiler_ids = [f"b-{i}" for i in range(6)]
    valve_ids = [f"v-{i}" for i in range(6)]
    for i in range(6):
        backend.publish("boiler", {"id": boiler_ids[i], "point": "sp", "value": i})
        backend.publish("valve", {"id": valve_ids[i], "point": "sp", "value": 100 + i})

    def kill_when_on_the_wire(unit, nth):
        """kill -9 once the `nth` request for `unit` reached the device (its answer is 400 ms away)."""
        wait_until(lambda: [r["unit"] for r in requests(req_log)].count(unit) >= nth, 15,
                   what=f"request #{nth} for unit {unit}")
        device.proc.kill9()
        return len(device.writes())

    refused = r"cannot connect to 127\.0\.0\.1"
    kill_when_on_the_wire(2, 2)  # v-1 on the wire
    seen = wait_log_more(gw, refused, 0)  # the gateway finds the server gone
    device.restart()
    kill_when_on_the_wire(1, 5)  # a later boiler message on the wire
    wait_log_more(gw, refused, seen)
    device.restart()

    reports = backend.wait_reports(boiler_ids + valve_ids, timeout=40)
    writes = without_t(device.wait_writes(1))
    boiler_values = [w["values"][0] for w in writes if w["unit"] == 1]
    valve_values = [w["values"][0] for w in writes if w["unit"] == 2]
    print(f"\nboiler written {boiler_values}, valve written {valve_values}; "
          + ", ".join(f"{i}: {r['status']}/{r['attempts']}{' resent' if r.get('resent_after_crash') else ''}"
                      for i, r in reports.items()))
    log = evidence(gw, *boiler_ids, *valve_ids)

    # valve (not idempotent): v-1 was interrupted: uncertain, never written.
    # Another one may be too: right after a kill the gateway can connect to
    # the dying server's listen queue and send into a connection that is
    # then reset (seen in practice): uncertain is the only honest answer.
    # Each valve command is written at most once, a delivered one exactly once.
    assert (reports["v-1"]["status"], reports["v-1"]["attempts"]) == ("uncertain", 1), f"{reports['v-1']}\n{log}"
    assert "the device closed the connection" in reports["v-1"]["detail"], reports["v-1"]
    assert 101 not in valve_values
    assert valve_values == sorted(set(valve_values)), valve_values
    for i in range(6):
        r = reports[f"v-{i}"]
        # (attempts may be 2: a try that wrote nothing, into a dead connection, is retried)
        assert r["status"] in ("delivered", "uncertain"), (r, log)
        if r["status"] == "delivered":
            assert 100 + i in valve_values, (r, valve_values)
        else:
            assert "connection" in r["detail"] and "not idempotent" in r["detail"], r
    uncertain = [i for i in valve_ids if reports[i]["status"] == "uncertain"]
    assert len(uncertain) <= 4, f"more valve messages uncertain than two kills explain: {uncertain}\n{log}"
    # boiler (idempotent): every value written, in order, none lost; a value
    # written again only right after itself (the interrupted one)
    assert all(r["status"] == "delivered" for i, r in reports.items() if i.startswith("b-")), (reports, log)
    assert sorted(set(boiler_values)) == list(range(6)), boiler_values
    assert boiler_values == sorted(boiler_values), boiler_values
    resent = [i for i in boiler_ids if reports[i]["attempts"] > 1]
    assert resent, f"no boiler message was interrupted: {reports}"
    for message_id in boiler_ids + valve_ids:
        one_outcome(backend, message_id)
    no_panic(gw)
