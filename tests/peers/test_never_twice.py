"""Never twice, at the edges, around the real gateway with Mosquitto as the
hub and pymodbus (tests/peers/modbus_device.py) as the device:

1. a multi-step command ({"points": {"a": 1, "b": 2}}) whose device drops
   off between the steps resumes after the confirmed step, across a reload
   (SIGHUP), a clean restart and a crash: the device's write log shows each
   step once;
2. expiry after a partial write names what was written and what was not;
3. a dead unit whose device is not idempotent (each timeout ends its message
   `uncertain`) is still isolated by the circuit breaker, so a live unit on
   the same bus keeps its pace;
4. Modbus exceptions that say "not now" (0x06 busy, 0x0B gateway target) are
   retried, even for a device that is not idempotent; 0x05 (acknowledge)
   is delivered, named in the detail;
5. a serial device with `raw` framing (and no `ack` pattern) whose reply
   comes byte by byte over a socat pty pair: "ERR" is a refusal, not an ack
   on its "E".
"""

from __future__ import annotations

import re
import time

import pytest

from util import modbus_tcp_bus, one_outcome, read_jsonl, wait_until, without_t


def point(name, address, ty="u16"):
    return f'points.{name} = {{ table = "holding", address = {address}, type = "{ty}" }}\n'


def device(name, bus, unit, *, idempotent=False, extra="", points=(("a", 10), ("b", 11))):
    return (f'[devices.{name}]\nbus = "{bus}"\nunit = {unit}\nidempotent = {str(idempotent).lower()}\n'
            f'{extra}' + "".join(point(n, a) for n, a in points) + "\n")


def no_panic(gw) -> None:
    assert "panicked" not in gw.log_text(), gw.log_text()[-3000:]


def log_count(gw, pattern) -> int:
    return len(re.findall(pattern, gw.log_text()))


# ------------------------------------- 1. multi-step progress survives a stop

def back(dev) -> None:
    """The device that dropped off comes back on its port, for good."""
    i = dev.argv.index("--exit-after-writes")
    del dev.argv[i:i + 2]
    dev.restart()


@pytest.mark.parametrize("stop", ["reload", "restart", "kill9"])
def test_a_multi_step_command_resumes_after_the_confirmed_step(stop, mqtt_gateway, modbus_device, backend):
    """Write a lands, then the device drops off the network before b (b is
    not sent at all: the gateway cannot connect). The message is requeued
    with its confirmed step in the journal. The gateway is then reloaded,
    restarted, or killed (-9) and started again while the device is away;
    once the device is back, only b is written.

    After kill -9 the requeue may not have reached the disk: the entry is
    then still `sending`, which recovery turns into `uncertain` for a device
    that is not idempotent; never a second write of a. (The test waits 1.5 s
    first, past sled's periodic flush, so in practice it resumes.)"""
    dev = modbus_device(units=(1,), extra_args=["--exit-after-writes", 1])
    gw = mqtt_gateway(modbus_tcp_bus("plc", dev.address, timeout="500ms")
                      + device("valve", "plc", 1, extra='max_age = "2m"\nmax_attempts = 20\n'))
    backend.publish("valve", {"id": "ms-1", "points": {"a": 1, "b": 2}})
    assert without_t(dev.wait_writes(1)) == [{"unit": 1, "fc": 6, "address": 10, "values": [1]}]
    wait_until(lambda: not dev.proc.alive, 5, what="the device dropping off")
    # b could not be sent: requeued, and tried again in vain
    gw.wait_log(r"cannot reach the device", timeout=10)
    assert backend.reports_for("ms-1") == []

    if stop == "reload":
        gw.reload()
        gw.wait_log(r"configuration reloaded", timeout=10)
    elif stop == "restart":
        gw.restart_subscribed()
    else:
        time.sleep(1.5)
        gw.kill9()
        gw.start_subscribed()
    before = log_count(gw, r"cannot reach the device")
    wait_until(lambda: log_count(gw, r"cannot reach the device") > before, 10,
               what="the resumed message trying the absent device")
    back(dev)

    report = backend.wait_report("ms-1", timeout=20)
    writes = without_t(dev.writes())
    print(f"\n{stop}: {report['status']} after {report['attempts']}: {report['detail']}; device wrote {writes}")
    assert writes.count({"unit": 1, "fc": 6, "address": 10, "values": [1]}) == 1, f"a written twice: {writes}"
    if stop == "kill9" and report["status"] == "uncertain":
        assert writes == [{"unit": 1, "fc": 6, "address": 10, "values": [1]}], writes
        assert "not idempotent" in report["detail"], report
    else:
        assert writes == [{"unit": 1, "fc": 6, "address": 10, "values": [1]},
                          {"unit": 1, "fc": 6, "address": 11, "values": [2]}], writes
        assert report["status"] == "delivered", report
        assert report["detail"] == "holding 10 = 1; holding 11 = 2", report
    one_outcome(backend, "ms-1")
    no_panic(gw)


# -------------------------------------------- 2. expiry after a partial write

def test_expiry_after_a_partial_write_names_the_written_steps(mqtt_gateway, modbus_device, backend):
    dev = modbus_device(units=(1,), extra_args=["--exit-after-writes", 1])
    gw = mqtt_gateway(modbus_tcp_bus("plc", dev.address, timeout="300ms")
                      + device("valve", "plc", 1, extra='max_age = "3s"\n'))
    backend.publish("valve", {"id": "ms-exp", "points": {"a": 1, "b": 2}})
    report = backend.wait_report("ms-exp", timeout=15)
    print(f"\n{report['status']}: {report['detail']}")
    assert report["status"] == "expired", report
    assert report["detail"].startswith(
        "max_age (3s) reached after writing: holding 10 = 1; not written: holding 11 = 2"), report
    assert without_t(dev.writes()) == [{"unit": 1, "fc": 6, "address": 10, "values": [1]}]
    no_panic(gw)


# ------------------------------------ 3. a dead unit that is not idempotent

def max_dead_tries(window: float, timeout: float, breaker_max: float, opened: int = 1) -> int:
    """The most tries of an isolated dead unit that fit in `window` seconds
    (as in test_device_faults.py): each try lasts one timeout and is followed
    by an open period of `timeout x 2^opened` (capped), `opened` growing."""
    tries, t = 1, 0.0
    while True:
        t += timeout + min(timeout * 2 ** opened, breaker_max)
        if t > window:
            return tries
        tries += 1
        opened += 1


def test_a_dead_unit_that_is_not_idempotent_is_isolated_and_the_live_unit_keeps_its_pace(
        mqtt_gateway, modbus_device, backend, tmp_path):
    """Each timeout of the dead unit ends its message `uncertain` (final: the
    write may have reached it). Those timeouts still count toward its
    breaker: after `breaker_after` of them it is isolated, and its later
    messages wait out the growing open period instead of each costing the
    bus a full timeout while the live unit waits."""
    timeout, breaker_after, breaker_max = 0.3, 3, 60.0
    req_log = tmp_path / "requests.jsonl"
    dev = modbus_device(units=(1,), extra_args=["--request-log", req_log])  # unit 2: dead
    gw = mqtt_gateway(
        modbus_tcp_bus("plc", dev.address, timeout=f"{int(timeout * 1000)}ms",
                       extra=f'breaker_after = {breaker_after}\nbreaker_max = "{int(breaker_max)}s"')
        + device("live", "plc", 1, idempotent=True)
        + device("dead", "plc", 2, extra='max_age = "2m"\n'))
    dead_ids = [f"dead-{i}" for i in range(12)]
    for i, message_id in enumerate(dead_ids):
        backend.publish("dead", {"id": message_id, "point": "a", "value": 100 + i})
    dead_tries = lambda: [r for r in read_jsonl(req_log) if r["unit"] == 2]  # noqa: E731
    wait_until(lambda: len(dead_tries()) >= breaker_after, 10, what=f"{breaker_after} tries of the dead unit")

    n, pace = 20, 0.1
    latencies = []
    window_start = time.time()
    for i in range(n):
        sent_at = time.time()
        backend.publish("live", {"id": f"live-{i}", "point": "a", "value": i})
        writes = dev.wait_writes(i + 1, timeout=10)
        latencies.append(writes[i]["t"] - sent_at)
        time.sleep(pace)
    window_end = time.time()
    window = window_end - window_start
    in_window = [r for r in dead_tries() if window_start <= r["t"] <= window_end]
    bound = max_dead_tries(window, timeout, breaker_max)
    print(f"\n{n} live messages over {window:.2f}s beside a dead unit that is not idempotent: dead unit tried "
          f"{len(in_window)} times in the window (bound {bound}; without isolation one per queued message), "
          f"{len(dead_tries())} in all; live latency max {max(latencies) * 1000:.0f} ms")

    assert len(in_window) <= bound + 1, (
        f"the dead unit was tried {len(in_window)} times in {window:.2f}s (bound {bound}): not isolated; "
        f"{[round(r['t'] - window_start, 2) for r in in_window]}")
    assert re.search(r"isolated by the circuit breaker.*device=dead|device=dead.*isolated by the circuit breaker",
                     gw.log_text()), "no isolation logged"
    live = backend.wait_reports([f"live-{i}" for i in range(n)])
    assert all((r["status"], r["attempts"]) == ("delivered", 1) for r in live.values()), live
    assert sum(max(0.0, lat - timeout) for lat in latencies) < 2.0, sorted(latencies)[-5:]
    # every dead message tried is uncertain after one try, none tried twice
    tried = len(dead_tries())
    finished = [i for i in dead_ids if backend.reports_for(i)]
    assert all(one_outcome(backend, i)["status"] == "uncertain" and one_outcome(backend, i)["attempts"] == 1
               for i in finished), [backend.reports_for(i) for i in finished]
    assert tried == len(finished) or tried == len(finished) + 1, (tried, finished)
    assert tried < len(dead_ids), "every dead message was tried: the breaker never held one back"
    no_panic(gw)


# ------------------------------------------------------- 4. Modbus exceptions

def test_busy_and_gateway_exceptions_are_retried_acknowledge_is_delivered(mqtt_gateway, modbus_device, backend,
                                                                          tmp_path):
    """Unit 1 (not idempotent) answers 0x06 (busy) to the first two writes at
    10 and 0x05 (acknowledge: accepted, still working) to writes at 30; unit
    2 (not idempotent either) sits behind a gateway whose target never
    answers (0x0B for every write at 20). Busy: written once, on the third
    try, delivered. Acknowledge: delivered at once, said in the detail.
    0x0B: tried max_attempts times (nothing was executed), then expired;
    never `rejected`, never `uncertain`."""
    req_log = tmp_path / "requests.jsonl"
    dev = modbus_device(units=(1, 2), extra_args=[
        "--request-log", req_log, "--exception", "10:6:2", "--exception", "30:5", "--exception", "20:0x0b"])
    gw = mqtt_gateway(modbus_tcp_bus("plc", dev.address, timeout="500ms")
                      + device("valve", "plc", 1, points=(("busy", 10), ("slow", 30)))
                      + device("remote", "plc", 2, extra="max_attempts = 3\n", points=(("far", 20),)))
    backend.publish("valve", {"id": "x-busy", "point": "busy", "value": 5})
    backend.publish("valve", {"id": "x-ack", "point": "slow", "value": 7})
    backend.publish("remote", {"id": "x-gw", "point": "far", "value": 9})
    reports = backend.wait_reports(["x-busy", "x-ack", "x-gw"], timeout=20)
    for i, r in reports.items():
        print(f"\n{i}: {r['status']} after {r['attempts']}: {r['detail']}")
    busy, ack, gwr = reports["x-busy"], reports["x-ack"], reports["x-gw"]
    assert (busy["status"], busy["attempts"]) == ("delivered", 3), busy
    assert (ack["status"], ack["attempts"]) == ("delivered", 1), ack
    assert "acknowledge (exception 0x05)" in ack["detail"], ack
    assert (gwr["status"], gwr["attempts"]) == ("expired", 3), gwr
    assert "gateway target device failed to respond (exception 0x0b)" in gwr["detail"], gwr
    writes = without_t(dev.writes())
    assert writes == [{"unit": 1, "fc": 6, "address": 30, "values": [7]},
                      {"unit": 1, "fc": 6, "address": 10, "values": [5]}] or \
        writes == [{"unit": 1, "fc": 6, "address": 10, "values": [5]},
                   {"unit": 1, "fc": 6, "address": 30, "values": [7]}], writes
    units = [r["unit"] for r in read_jsonl(req_log)]
    assert units.count(2) == 3, units
    for i in ("x-busy", "x-ack", "x-gw"):
        one_outcome(backend, i)
    no_panic(gw)


# --------------------------------------------- 5. raw serial reply in pieces

def test_a_raw_serial_reply_in_pieces_is_judged_whole(socat_pair, serial_device, mqtt_gateway, backend):
    """`framing = "raw"` with only a `nack` pattern: any reply that is not a
    nack is an ack. The device sends each reply byte by byte, 5 ms apart;
    the gateway must wait for the end of the reply (the line quiet for 10
    character times, at least 30 ms) before it judges it."""
    dev = serial_device(socat_pair.a, framing="raw", idle_ms=20, nack_on=("BAD",), extra_args=["--dribble-ms", 5])
    gw = mqtt_gateway(f"""
        [buses.display]
        kind = "serial"
        port = "{socat_pair.b}"
        baud = 115200
        framing = "raw"
        nack = "^ERR"
        timeout = "1s"

        [devices.panel]
        bus = "display"
        """)
    backend.publish("panel", {"id": "raw-bad", "text": "BAD 1"})
    backend.publish("panel", {"id": "raw-good", "text": "GOOD 2"})
    reports = backend.wait_reports(["raw-bad", "raw-good"], timeout=15)
    bad, good = reports["raw-bad"], reports["raw-good"]
    print(f"\nraw-bad: {bad['status']}: {bad['detail']}\nraw-good: {good['status']}: {good['detail']}")
    assert (bad["status"], bad["detail"]) == ("rejected", 'device refused: "ERR"'), bad
    assert (good["status"], good["detail"]) == ("delivered", 'device replied "OK"'), good
    assert [f["frame"] for f in dev.frames()] == ["BAD 1", "GOOD 2"]
    no_panic(gw)
