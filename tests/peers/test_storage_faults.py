"""Storage faults under the real gateway binary: a journal corrupted while
the gateway is stopped, a journal at its bound with a dead device, and a
full disk (state_dir on a small tmpfs; root only).

The hub is Mosquitto (plain MQTT dialect) or the hub emulator (a process of
its own), the device pymodbus (each message writes a value of its own, so
its write log says how often each message ran). What the hub saw is read
through the MQTT-aware proxy of test_hub_faults.py (the gateway's PUBACKs,
the hub's acknowledgements of the result reports) or from the emulator.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_hub_faults import (DOWN, UP, Batch, HubEmulator, MqttProxy, assert_exactly_once, assert_no_panic,  # noqa: F401
                             assert_reports_consistent, azure_hub, emulator, make_proxy, wait_emulator_done,
                             wait_reports_accepted, write_counts)
from util import HOST, free_port, modbus_tcp_bus, wait_until

pytestmark = pytest.mark.timeout(240)

MOVED_ASIDE = "THE JOURNAL WAS UNREADABLE: it was moved aside and an empty one started"


def devices(live_address: str, late_address: str) -> str:
    """Bus `plc` with `boiler` (live) and bus `late` with `pump` (a device that comes up later)."""
    point = 'points.sp = { table = "holding", address = 10, type = "u16" }\n'
    return (modbus_tcp_bus("plc", live_address, "2s") + modbus_tcp_bus("late", late_address, "300ms")
            + f'[devices.boiler]\nbus = "plc"\nunit = 1\nidempotent = true\nmax_attempts = 1000\n{point}\n'
            + f'[devices.pump]\nbus = "late"\nunit = 1\nidempotent = true\nmax_attempts = 1000\nmax_age = "10m"\n'
            + f'{point}\n')


def state_files(state_dir: Path) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(state_dir):
        for f in files:
            p = Path(root) / f
            out.append(f"{p.relative_to(state_dir)} ({p.stat().st_size} B)")
    return sorted(out)


# ======================================================== 5. a corrupted journal

def flip(path: Path, offsets) -> list[int]:
    data = bytearray(path.read_bytes())
    done = []
    for off in offsets:
        if 0 <= off < len(data):
            data[off] ^= 0xFF
            done.append(off)
    path.write_bytes(bytes(data))
    return done


def corrupt(journal: Path, pattern: str) -> str:
    db, conf = journal / "db", journal / "conf"
    size = db.stat().st_size
    if pattern == "truncate-db-to-0":
        os.truncate(db, 0)
    elif pattern == "truncate-db-in-the-middle":
        os.truncate(db, size // 2)
    elif pattern == "truncate-db-by-7-bytes":
        os.truncate(db, size - 7)
    elif pattern == "flip-db-header":
        return f"flipped db bytes {flip(db, range(0, 16))}"
    elif pattern == "flip-db-bytes":
        rng = random.Random(size)
        return f"flipped db bytes {flip(db, sorted(rng.sample(range(size), 8)))} of {size}"
    elif pattern == "flip-db-tail":
        return f"flipped db bytes {flip(db, range(size - 64, size, 4))} of {size}"
    elif pattern == "zero-db-middle":
        data = bytearray(db.read_bytes())
        data[size // 3: size // 3 + 4096] = bytes(len(data[size // 3: size // 3 + 4096]))
        db.write_bytes(bytes(data))
    elif pattern == "delete-db":
        db.unlink()
    elif pattern == "delete-conf":
        conf.unlink()
    elif pattern == "garbage-conf":
        conf.write_bytes(b"\xff\x00garbage" * 8)
    elif pattern == "truncate-conf-to-0":
        os.truncate(conf, 0)
    elif pattern == "journal-is-a-file":
        shutil.rmtree(journal)
        journal.write_bytes(b"not a directory")
    else:
        raise ValueError(pattern)
    return pattern


PATTERNS = ["truncate-db-to-0", "truncate-db-in-the-middle", "truncate-db-by-7-bytes", "flip-db-header",
            "flip-db-bytes", "flip-db-tail", "zero-db-middle", "delete-db", "delete-conf", "garbage-conf",
            "truncate-conf-to-0", "journal-is-a-file"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_corrupted_journal_is_moved_aside_or_read_and_nothing_runs_twice(pattern, mosquitto, mqtt_gateway,
                                                                          modbus_device, backend):
    """History (4 messages delivered) and work (3 messages queued for a
    device that is down, so not yet acknowledged to the broker); SIGTERM;
    the journal's files are damaged; start. The gateway must start without
    a panic, either read the journal or move it aside with its loud line,
    deliver the queued messages once (from the journal, or from the broker,
    which still holds them), and deliver new ones."""
    live = modbus_device()
    late_port = free_port()
    gw = mqtt_gateway(devices(live.address, f"{HOST}:{late_port}"))
    history = Batch("hist", 4, base=100)
    for mid in history.ids:
        backend.publish("boiler", {"id": mid, **history.body(mid)})
    backend.wait_reports(history.ids)
    queued = Batch("q", 3, base=200)
    for mid in queued.ids:
        backend.publish("pump", {"id": mid, **queued.body(mid)})
    for mid in queued.ids:
        gw.wait_log(rf"received message_id={mid}\b")
    gw.wait_log(r"cannot reach the device|connection refused|Connection refused", timeout=10)
    assert gw.terminate() == 0
    journal = gw.state_dir / "journal"
    before = state_files(gw.state_dir)
    what = corrupt(journal, pattern)

    late = modbus_device(tcp=f"{HOST}:{late_port}")
    gw.restart_subscribed()
    assert gw.alive, gw.log_text()[-3000:]
    log = gw.log_text()
    moved = MOVED_ASIDE in log
    aside = sorted(p.name for p in gw.state_dir.iterdir() if p.name.startswith("journal.corrupt-"))
    if moved:
        line = next(line for line in log.splitlines() if MOVED_ASIDE in line)
        assert " ERROR " in line and "moved_to=" in line and "reason=" in line, line
        assert len(aside) == 1 and aside[0] in line, (aside, line)

    # the queued work: from the journal, or redelivered by the broker
    backend.wait_reports(queued.ids, timeout=30)
    late.wait_writes(3, timeout=10)
    assert_exactly_once(late, queued, gw)
    # new messages go through
    fresh = Batch("new", 3, base=300)
    for mid in fresh.ids:
        backend.publish("boiler", {"id": mid, **fresh.body(mid)})
    reports = backend.wait_reports(fresh.ids, timeout=20)
    assert all(r["status"] == "delivered" for r in reports.values()), reports
    # an old id comes again: recognised if the journal was read; run again
    # only when the journal was moved aside (its history is gone, and the log said so)
    backend.publish("boiler", {"id": "hist-0", **history.body("hist-0")})
    backend.wait_report("hist-0", count=2, timeout=20)
    def outcome():
        rerun = write_counts(live)[history.value["hist-0"]] == 2
        seen = re.search(r"redelivered message: not executed again message_id=hist-0\b", gw.log_text())
        return (rerun, bool(seen)) if rerun or seen else None
    try:
        rerun, recognised = wait_until(outcome, 5, what="hist-0 run again or recognised")
    except AssertionError:
        rerun, recognised = False, False
    counts = write_counts(live)
    print(f"{pattern}: {what}; before: {before}; moved aside: {moved} {aside}; hist-0 "
          f"{'recognised' if recognised else 'run again' if rerun else '?'}; "
          f"dropped entries logged: {gw.log_text().count('dropped an unreadable journal entry')}")
    assert recognised or (rerun and moved), (
        f"the journal lost its history without saying so (not moved aside, hist-0 not recognised)\n"
        + "\n".join(gw.log_text().splitlines()[-40:]))
    assert [counts[v] for v in fresh.value.values()] == [1, 1, 1]
    assert_no_panic(gw)
    assert gw.terminate() == 0


# ============================================== 6. the journal at its bound

def test_journal_full_rejects_and_completes_new_messages_and_keeps_the_old(emulator, make_proxy, modbus_device,
                                                                           gateway):
    """max_messages = 3 and a device that is down: three messages fill the
    journal; the next ones are rejected with `journal full`, each reported
    under its own id and completed at the hub (not left hanging); the store
    does not grow while they keep coming; when the device comes back the
    three are delivered once."""
    emu = emulator()
    proxy = make_proxy(emu.mqtt_port)
    live = modbus_device()
    late_port = free_port()
    gw = gateway("[gateway]\nmax_messages = 3\n\n" + azure_hub(emu, proxy.port)
                 + devices(live.address, f"{HOST}:{late_port}"))
    wait_until(lambda: proxy.subacks() >= 1, 15, what="the gateway's subscription")
    queued = Batch("jq", 3, base=100)
    for mid in queued.ids:
        emu.send(mid, "pump", queued.body(mid))
    for mid in queued.ids:
        gw.wait_log(rf"received message_id={mid}\b")
    full = Batch("jf", 5, base=200)
    for mid in full.ids:
        emu.send(mid, "boiler", full.body(mid))
    wait_until(lambda: gw.log_text().count("journal full: rejecting a new message") >= len(full.ids), 20,
               what="the journal-full rejections")
    state_before = sum(p.stat().st_size for p in gw.state_dir.rglob("*") if p.is_file())
    more = Batch("jm", 40, base=400)
    for mid in more.ids:
        emu.send(mid, "boiler", more.body(mid))
    wait_until(lambda: gw.log_text().count("journal full: rejecting a new message") >= len(full.ids) + 40, 30,
               what="40 more journal-full rejections")
    time.sleep(1.5)  # sled writes on its own every 500 ms: let anything pending land before measuring
    state_after = sum(p.stat().st_size for p in gw.state_dir.rglob("*") if p.is_file())
    print(f"state dir {state_before} B after the first rejections, {state_after} B after 40 more")
    assert state_after <= state_before + 64 * 1024, "the store grows with rejected messages"

    rejected = full.ids + more.ids
    problems = []
    # each rejected message: a report under its own id ...
    wait_until(lambda: len([r for r in emu.reports() if r["status"] == "rejected"]) >= len(rejected), 20,
               what="a report about each rejected message")
    full_reports = [r for r in emu.reports() if "journal full" in r.get("detail", "")]
    named = {r["message_id"] for r in full_reports} & set(rejected)
    if len(named) < len(rejected):
        problems.append(f"{len(rejected) - len(named)} of {len(rejected)} journal-full reports do not name their "
                        f"message (the back end cannot tell which command was refused), e.g. "
                        f"{[(r['message_id'], r['_props'].get('$.cid')) for r in full_reports[:2]]}")
    assert write_counts(live) == {}, "a rejected message was written"
    # ... and completed at the hub, without upsetting the messages before it
    out_of_order = emu.log_text().count("out of order")
    if out_of_order:
        problems.append(f"the emulator (strict, like IoT Hub) dropped the connection {out_of_order} times for a "
                        f"PUBACK out of order: a journal-full message is acknowledged at once, ahead of the "
                        f"earlier messages still waiting for their device; queue now: "
                        f"{[(q['message_id'], q['delivery_count']) for q in emu.queue()[:4]]}...")
    try:
        wait_emulator_done(emu, rejected, 20)
    except AssertionError as e:
        problems.append(str(e)[:300])
    assert not problems, "\n".join(problems)

    late = modbus_device(tcp=f"{HOST}:{late_port}")
    got = wait_reports_accepted(proxy, queued.ids, 30, gw)
    assert_exactly_once(late, queued, gw)
    assert_reports_consistent(got, queued.ids)
    wait_emulator_done(emu, queued.ids + rejected, 20)
    # room again: new messages are taken
    after = Batch("ja", 3, base=900)
    for mid in after.ids:
        emu.send(mid, "boiler", after.body(mid))
    got = wait_reports_accepted(proxy, after.ids, 20, gw)
    assert_reports_consistent(got, after.ids)
    assert_exactly_once(live, after, gw)
    assert_no_panic(gw)


# ==================================================== 7. the disk fills up

@pytest.fixture
def small_tmpfs():
    """A 16 MiB tmpfs (root only); unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="c2d-diskfull-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        os.rmdir(mount)
        pytest.skip(f"mount -t tmpfs failed: {r.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
    shutil.rmtree(mount, ignore_errors=True)


def fill(path: Path) -> int:
    """Writes `path` until ENOSPC; returns its size."""
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 65536, 4096, 512, 1):
            data = b"\0" * chunk
            while True:
                try:
                    size += os.write(fd, data)
                except OSError:
                    break
    finally:
        os.close(fd)
    return size


def test_disk_full_acks_nothing_it_could_not_journal(small_tmpfs, mosquitto, make_proxy, gateway, modbus_device,
                                                     backend):
    """state_dir on a 16 MiB tmpfs, filled to the last byte while messages
    keep coming: the gateway must not acknowledge (PUBACK) any message it
    could not journal, must not panic, must say why; once space is freed,
    every message is delivered exactly once."""
    proxy = make_proxy(mosquitto.port)
    device = modbus_device()
    client_id = f"c2d-gw-diskfull-{os.getpid()}"
    state_dir = small_tmpfs / "state"
    gw = gateway(f'[gateway]\nstate_dir = "{state_dir}"\n\n[hub]\nkind = "mqtt"\n'
                 f'url = "mqtt://{HOST}:{proxy.port}"\nclient_id = "{client_id}"\n\n'
                 + devices(device.address, f"{HOST}:{free_port()}"))
    wait_until(lambda: proxy.subacks() >= 1, 15, what="the gateway's subscription")
    warm = Batch("dw", 5, base=100)
    for mid in warm.ids:
        backend.publish("boiler", {"id": mid, **warm.body(mid)})
    backend.wait_reports(warm.ids)

    filler = small_tmpfs / "filler"
    filled = fill(filler)
    full = Batch("df", 10, base=200)
    for mid in full.ids:
        backend.publish("boiler", {"id": mid, **full.body(mid)})
    # 6 s with the disk full. The gateway may stop on the write error (never
    # with a panic); it is started again after 0.5 s, as systemd's
    # Restart=on-failure would.
    exits, end = [], time.monotonic() + 6
    while time.monotonic() < end:
        if not gw.alive:
            exits.append(gw.returncode)
            time.sleep(0.5)
            gw.start(wait_ready=False)
        time.sleep(0.05)
    assert "panicked" not in gw.log_text(), gw.log_text()[-3000:]
    assert all(rc not in (101, -6, -11) for rc in exits), f"exit statuses {exits}"  # 101 = a Rust panic
    errors = sorted({re.sub(r"^\S+\s+", "", line)[:150] for line in gw.log_text().splitlines()
                     if " ERROR " in line and ("disk full" in line or "No space" in line)})
    assert errors, "no log line says the journal cannot be written"
    acked_while_full = sorted(m for m in full.ids if m in proxy.completed_ids())
    print(f"tmpfs filled with {filled} B; {len(exits)} exits on its own (statuses {sorted(set(exits))}); "
          f"acknowledged while full: {acked_while_full}; errors: {errors[:2]}")

    filler.unlink()
    if not gw.alive:
        gw.start(wait_ready=False)
    started = time.monotonic()
    try:
        reports = backend.wait_reports(full.ids, timeout=60)
    except AssertionError as e:
        stuck = [m for m in full.ids if not backend.reports_for(m)]
        raise AssertionError(
            f"{e}\nafter the space was freed, {stuck} never got through; not acknowledged (the broker still "
            f"holds them): {[m for m in stuck if m not in proxy.completed_ids()]}; connections: "
            f"{proxy.connacks()}\n" + "\n".join(gw.log_text().splitlines()[-30:]))
    redelivered = sorted(m for m, n in proxy.delivered_ids().items() if m in full.ids and n > 1)
    print(f"after the space was freed: all through in {time.monotonic() - started:.1f}s; redelivered by the "
          f"broker: {redelivered}; {proxy.connacks()} connections")
    assert all(r["status"] == "delivered" for r in reports.values()), reports
    counts = write_counts(device)
    assert all(counts[v] == 1 for v in warm.value.values()), counts
    # A write whose outcome could not be recorded (the disk filled while it
    # was on the wire, and the gateway stopped) is sent again after the
    # restart, as for any stop mid-send: allowed once for an idempotent
    # device, and the report must say so.
    resent = {m: counts[v] for m, v in full.value.items() if counts[v] != 1}
    assert all(n == 2 and reports[m].get("resent_after_crash") is True for m, n in resent.items()), (
        resent, {m: reports[m] for m in resent})
    print(f"written twice, flagged resent_after_crash: {sorted(resent)}")
    assert all(m in proxy.completed_ids() for m in full.ids)
    assert_no_panic(gw)
