#!/usr/bin/env python3
"""Power-cut torture: the crash torture (torture.py) with the gateway's
state_dir on lazyfs (lazyfs.py), so that each "crash" is a power cut: the
gateway is SIGKILLed, then every write it did not fsync/fdatasync is dropped
(or a random prefix of them is kept, per file: a torn write), and the
gateway starts again on what a machine would find after the power came back.

kill -9 alone keeps the kernel's page cache: what the gateway wrote but never
synced still reaches the disk. This torture finds what that hides.

What it runs (all on loopback, each in its own process; the processes, the
message stream, the refill-as-it-drains sender and the drain are torture.py's):
- Mosquitto (`kind = "mqtt"` hub): C2D on gateway/{device}/c2d, reports on
  gateway/{device}/result, a back end (paho) publishing QoS 1;
- pymodbus devices (tests/peers/modbus_device.py) logging every write they
  apply: `idem1` (unit 1) and `nonidem` (unit 2, idempotent = false) on bus
  `a`, `idem2` on bus `b`, `dead` (never answers) on bus `c`; each has two
  u32 points, `v` (holding 100) and `w` (holding 102);
- a line-oriented serial device (tests/peers/serial_device.py) on a socat
  pty pair, `panel` (not idempotent), logging every frame it receives;
- lazyfs mounted at the gateway's state_dir, remounted after every cut;
- the gateway (`$C2D_GATEWAY_BIN`), READY=1 awaited after most starts.

The messages (ids `mqtt-N`, each value unique to its message and step):
- single-point `{"point": "v", "value": V}` and multi-point
  `{"points": {"v": V, "w": W}}` bodies (two FC16 writes, journaled step by
  step) to the Modbus devices; about 2 % with a value above `max` (must be
  `rejected`, nothing written), about 0.5 % to `dead` (must be `expired`);
- large bodies (160 to 250 KiB, `max_body = 262144`, the most the gateway
  accepts): multi-point Modbus bodies padded with JSON whitespace, and
  serial commands `{"id": ..., "text": "S<id>:xxxx...:E"}` (the text is
  sent as one line); small serial commands too.

Accounting per message, from the devices' own logs (Modbus writes, serial
frames) and the result reports:
  lost               no final report and nothing on the device      must be 0
  executed_twice     a step written more than once on a non-
                     idempotent device (or on an idempotent one
                     without resent_after_crash in the report)      must be 0
  unreported         something on the device, no report ever        must be 0
  delivered_not_on_device  reported delivered, a step missing       must be 0
  rejected_but_written, conflicting_reports (two different final
  outcomes), unexpected_status, stray_writes, panics                must be 0
  accounted          every sent message is in exactly one of
                     delivered/rejected/expired/uncertain/lost/
                     unreported                                     == sent

Modes: full (default: 5,000 messages, 100 cuts) and quick (--quick or
C2D_QUICK=1: 1,000 messages, 20 cuts). Cuts are `lose` or `torn` (half each,
`--cut-mode` to force one; `--cut-mode keep` is the control experiment: the
same run with nothing dropped, i.e. kill -9, which must pass). lazyfs's own self-test runs first (it fails the
run when it fails). Needs root and /dev/fuse, fusepy (tests/requirements.txt)
and libfuse2 (Debian). Exit status 1 on any must-be-0 figure, 2 when it
cannot run (no binary, no FUSE). The JSON goes to --json or
$C2D_POWERCUT_JSON; logs stay in --logs / $C2D_POWERCUT_LOGS (else a temp dir).

Usage: ~/.cache/c2d-gateway-tests/venv/bin/python tests/torture/powercut.py [--quick]
       C2D_GATEWAY_BIN=/path/to/c2d-gateway ... powercut.py   (another binary)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lazyfs  # noqa: E402
import torture  # noqa: E402  (puts tests/peers on sys.path)
from torture import HOST, MAX_VALUE, REJECT_BASE, Scenario, TortureError, log  # noqa: E402
from util import Proc, find_gateway_bin, peer_argv, read_jsonl  # noqa: E402

ADDR_V, ADDR_W = 100, 102
W_OFFSET = 500_000_000  # W = V + W_OFFSET: both unique, both under MAX_VALUE
MODBUS_DEVICES = ("idem1", "nonidem", "idem2")
IDEMPOTENT = {"idem1": True, "nonidem": False, "idem2": True, "dead": True, "panel": False}
UNIT_DEVICE = {("a", 1): "idem1", ("a", 2): "nonidem", ("b", 1): "idem2", ("c", 1): "dead"}
MAX_BODY = 262_144


LARGE_KIB = (160, 250)  # --large-kib


def large_size(rng: random.Random) -> int:
    return rng.randint(LARGE_KIB[0] * 1024, LARGE_KIB[1] * 1024)


class PowerPlan:
    """Messages n -> {id, device, kind, steps, body, expect}; `steps` are what
    the device must see: ("mb", address, value) or ("serial", text)."""

    def __init__(self, prefix: str, count: int, value_base: int, rng: random.Random, large: bool = True):
        self.items = []
        self.by_step: dict[tuple, tuple[dict, int]] = {}
        for n in range(count):
            mid = f"{prefix}-{n}"
            v, w = value_base + n, value_base + n + W_OFFSET
            r = rng.random()
            if r < 0.02:
                device, expect = rng.choice(MODBUS_DEVICES), "rejected"
                if rng.random() < 0.5:
                    kind, body = "reject-single", {"id": mid, "point": "v", "value": REJECT_BASE + v}
                else:  # the second point is out of range: nothing at all may be written
                    kind, body = "reject-multi", {"id": mid, "points": {"v": v, "w": REJECT_BASE + v}}
                steps = []
            elif r < 0.025:
                device, kind, expect = "dead", "dead", "expired"
                body, steps = {"id": mid, "point": "v", "value": v}, [("mb", ADDR_V, v)]
            elif r < 0.045 and large:
                device, kind, expect = "panel", "serial-large", "delivered"
                text = f"S{mid}:" + "x" * large_size(rng) + ":E"
                body, steps = {"id": mid, "text": text}, [("serial", text)]
            elif r < 0.065:
                device, kind, expect = "panel", "serial", "delivered"
                text = f"S{mid}:" + "y" * rng.randint(1, 200) + ":E"
                body, steps = {"id": mid, "text": text}, [("serial", text)]
            elif r < 0.085 and large:
                device, kind, expect = rng.choice(MODBUS_DEVICES), "modbus-large", "delivered"
                body, steps = {"id": mid, "points": {"v": v, "w": w}}, [("mb", ADDR_V, v), ("mb", ADDR_W, w)]
            elif r < 0.335:
                device, kind, expect = rng.choice(MODBUS_DEVICES), "multi", "delivered"
                body, steps = {"id": mid, "points": {"v": v, "w": w}}, [("mb", ADDR_V, v), ("mb", ADDR_W, w)]
            else:
                device, kind, expect = rng.choice(MODBUS_DEVICES), "single", "delivered"
                body, steps = {"id": mid, "point": "v", "value": v}, [("mb", ADDR_V, v)]
            payload = json.dumps(body).encode()
            if kind == "modbus-large":
                pad = large_size(rng) - len(payload)
                payload = payload[:-1] + b" " * pad + b"}"  # still one JSON object
            if len(payload) > MAX_BODY:
                raise AssertionError(f"{mid}: {len(payload)} bytes > max_body")
            m = {"n": n, "id": mid, "device": device, "kind": kind, "expect": expect, "steps": steps,
                 "payload": payload}
            self.items.append(m)
            for i, step in enumerate(steps):
                key = (device, step[1], step[2]) if step[0] == "mb" else (device, "serial", step[1])
                self.by_step[key] = (m, i)
        self.by_id = {m["id"]: m for m in self.items}


def device_section(name: str, bus: str, unit: int, idempotent: bool, max_attempts: int) -> str:
    pt = f"table = \"holding\", type = \"u32\", min = 0, max = {MAX_VALUE}"
    return (f"[devices.{name}]\nbus = \"{bus}\"\nunit = {unit}\nidempotent = {str(idempotent).lower()}\n"
            f"max_attempts = {max_attempts}\nmax_age = \"1h\"\n"
            f"points.v = {{ address = {ADDR_V}, {pt} }}\npoints.w = {{ address = {ADDR_W}, {pt} }}\n\n")


class PowerCutScenario(Scenario):
    """torture.Scenario on Mosquitto, with every kill turned into a power cut."""

    def __init__(self, name, binary, workdir: Path, count: int, cuts: int, rng, value_base: int,
                 cut_mode: str = "mixed", large: bool = True, startup_share: float = 0.3):
        workdir = Path(workdir)
        self.mount = lazyfs.Mount(workdir / "lazyfs-backing", workdir / "state", workdir / "lazyfs.sock",
                                  workdir / "lazyfs.log")
        super().__init__(name, "mqtt", binary, workdir, count, cuts, rng, value_base,
                         state_dir=workdir / "state")
        self.plan = PowerPlan(name, count, value_base, rng, large=large)
        self.cut_mode = cut_mode
        self.startup_share = startup_share  # cuts right after a start (journal open, recovery)
        self.cuts: list[dict] = []
        self.serial = None
        self.socat = None
        self.serial_log = workdir / "serial" / "frames.jsonl"
        self.sent_at: dict[str, float] = {}

    # ---- set-up: lazyfs, the serial device, the config
    def start_peers(self) -> None:
        self.mount.start()
        d = self.workdir
        (d / "serial").mkdir(parents=True, exist_ok=True)
        a, b = d / "serial" / "pty-gw", d / "serial" / "pty-dev"
        import shutil
        self.socat = Proc([shutil.which("socat") or "socat", "-d", "-d", f"pty,raw,echo=0,link={a}",
                           f"pty,raw,echo=0,link={b}"], d / "serial" / "socat.log").start()
        self.socat.wait_ready(lambda: a.exists() and b.exists(), 10, "socat pty links")
        ready = d / "serial" / "ready"
        self.serial = Proc(peer_argv("serial_device.py", "--port", b, "--framing", "line",
                                     "--log", self.serial_log, "--ready-file", ready),
                           d / "serial" / "stderr.log").start()
        self.serial.wait_ready(ready.exists, 15, "serial device ready")
        super().start_peers()
        cfg = self.gw.config_text
        cfg = cfg.replace('[hub]\nkind = "mqtt"\n', f'[hub]\nkind = "mqtt"\nmax_body = {MAX_BODY}\n', 1)
        cfg = cfg[:cfg.index("[devices.")]
        cfg += (f"[buses.display]\nkind = \"serial\"\nport = \"{a}\"\nbaud = 115200\nframing = \"line\"\n"
                "ack = \"^OK\"\nnack = \"^ERR\"\ntimeout = \"5s\"\n\n"
                + device_section("idem1", "a", 1, True, 50)
                + device_section("nonidem", "a", 2, False, 50)
                + device_section("idem2", "b", 1, True, 50)
                + device_section("dead", "c", 1, True, 2)
                + "[devices.panel]\nbus = \"display\"\nmax_attempts = 50\nmax_age = \"1h\"\n\n")
        self.gw.write_config(cfg)

    # ---- the stream
    def in_flight(self) -> int:
        """Sent, not reported yet, and sent less than 20 s ago: a message the
        gateway lost for good must not hold the window shut forever."""
        if self.sent - len(self.backend.ids) <= 300:
            return self.sent - len(self.backend.ids)
        ids, now = self.reported_ids(), time.monotonic()
        return sum(1 for m in self.plan.items[:self.sent]
                   if m["id"] not in ids and now - self.sent_at.get(m["id"], 0) < 20)

    def send_one(self, m: dict) -> None:
        # refill-as-it-drains, like torture.py: at most 300 in flight
        deadline = time.monotonic() + 120
        while self.in_flight() > 300:
            if time.monotonic() > deadline or self.stop_sender.is_set():
                raise TortureError("300 messages stayed unreported for 120 s")
            time.sleep(0.05)
        self.backend.publish(f"gateway/{m['device']}/c2d", m["payload"])
        self.sent_at[m["id"]] = time.monotonic()

    # ---- the cuts
    def cut(self) -> None:
        """SIGKILL, then the power cut on lazyfs, then remount."""
        if self.gw.alive:
            self.gw.kill9()
            self.kills += 1
        else:
            self.check_alive()
        mode = self.cut_mode if self.cut_mode != "mixed" else self.rng.choice(("lose", "torn"))
        r = self.mount.cut(mode, self.rng.randrange(1 << 30))
        r["t"] = round(time.monotonic() - self.t0, 2)
        self.cuts.append(r)
        self.mount.start()

    def catch_up(self, limit: float = 10.0) -> None:
        """Spreads the cuts over the whole stream: lets the sender reach
        `allowed` (bounded) before the next cut's clock starts."""
        deadline = time.monotonic() + limit
        while self.sent < self.allowed and time.monotonic() < deadline and not self.sender_error:
            time.sleep(0.02)

    def kill_loop(self) -> None:  # called by Scenario.run
        per_life = self.count / max(1, self.kills_wanted)
        for k in range(self.kills_wanted):
            self.allowed = min(self.count, int((k + 1) * per_life + 0.999))
            r = self.rng.random()
            if self.gw.alive:  # the first life, started by run()
                self.catch_up()
                time.sleep(self.rng.uniform(0.2, 1.6))
            elif r < self.startup_share:
                self.start_gateway(wait_ready=False)  # during journal recovery / start-up
                time.sleep(self.rng.uniform(0.0, 0.15))
            else:
                self.start_gateway(wait_ready=True)
                self.catch_up()
                time.sleep(self.rng.uniform(0.0, 0.2) if r < self.startup_share + 0.25
                           else self.rng.uniform(0.2, 1.6))
            if self.sender_error:
                raise self.sender_error
            self.cut()
            if (k + 1) % 10 == 0:
                lost = sum(c["bytes_lost"] for c in self.cuts)
                log(f"{self.name}: {len(self.cuts)} cuts ({lost} unsynced bytes dropped so far), "
                    f"{self.sent}/{self.count} sent, {len(self.reported_ids())} reported")

    def run(self) -> dict:
        self.t0 = time.monotonic()
        try:
            result = super().run()
        finally:
            self.mount.unmount()
        return result

    def stop_all(self) -> None:
        super().stop_all()
        for p in (self.serial, self.socat):
            if p is not None:
                p.stop()

    # ---- accounting
    def analyse(self) -> dict:
        plan = self.plan
        reports = defaultdict(list)
        all_reports = self.backend.all_reports() if self.backend else []
        with open(self.workdir / "reports.jsonl", "w", encoding="utf-8") as f:
            for r in all_reports:
                reports[r.get("message_id")].append(r)
                f.write(json.dumps(r) + "\n")
        hits = defaultdict(Counter)  # message id -> Counter(step index -> times written)
        stray = []
        for bus, dev in self.devs.items():
            for w in dev.writes():
                name = UNIT_DEVICE.get((bus, w.get("unit")))
                vals = w.get("values") or []
                key = None
                if w.get("fc") == 16 and len(vals) == 2:
                    key = (name, w.get("address"), vals[0] * 65536 + vals[1])
                found = plan.by_step.get(key) if key else None
                if found is None or found[0]["n"] >= self.sent:
                    stray.append({"bus": bus, **w})
                else:
                    hits[found[0]["id"]][found[1]] += 1
        garbled_frames = 0
        for e in read_jsonl(self.serial_log):
            frame = e.get("frame")
            if frame is None:
                continue
            # a frame cut off by a SIGKILL stays in the device's buffer and is
            # glued to the next one: count the last complete command in it
            i = frame.rfind("S" + self.name + "-")
            found = plan.by_step.get(("panel", "serial", frame[i:])) if i >= 0 else None
            if i > 0:
                garbled_frames += 1
            if found is None or found[0]["n"] >= self.sent:
                stray.append({"serial_frame": frame[:80] + ("..." if len(frame) > 80 else ""), "len": len(frame)})
            else:
                hits[found[0]["id"]][found[1]] += 1
        c = Counter()
        bad = defaultdict(list)
        by_kind = defaultdict(Counter)
        for m in plan.items[:self.sent]:
            mid = m["id"]
            rs = [r for r in reports.get(mid, []) if "status" in r]
            h = hits.get(mid, Counter())
            n_steps = len(m["steps"])
            written = sum(1 for i in range(n_steps) if h[i] > 0)
            if len({(r["status"], r.get("completed_at")) for r in rs}) > 1:
                bad["conflicting_reports"].append(mid)
            if len(rs) > 1:
                c["duplicate_reports"] += 1
            status = rs[0]["status"] if rs else None
            resent = any(r.get("resent_after_crash") or r.get("resent") for r in rs)
            if status:
                c[status] += 1
                by_kind[m["kind"]][status] += 1
            elif written:
                bad["unreported"].append(mid)
                by_kind[m["kind"]]["unreported"] += 1
            else:
                bad["lost"].append(mid)
                by_kind[m["kind"]]["lost"] += 1
            if any(n > 1 for n in h.values()):
                if IDEMPOTENT[m["device"]] and resent:
                    c["resent_after_crash"] += 1
                else:
                    bad["executed_twice"].append(mid)
            if status == "delivered" and written < n_steps:
                bad["delivered_not_on_device"].append(mid)
            if m["expect"] == "rejected" and sum(h.values()):
                bad["rejected_but_written"].append(mid)
            if status and status != m["expect"]:
                if not (m["expect"] == "delivered" and status == "uncertain" and not IDEMPOTENT[m["device"]]):
                    bad["unexpected_status"].append(mid)
            if 0 < written < n_steps:
                c["partially_written"] += 1
        accounted = sum(c[s] for s in ("delivered", "rejected", "expired", "uncertain")) \
            + len(bad["lost"]) + len(bad["unreported"])
        torn = [x for x in self.cuts if x["mode"] == "torn"]
        result = {
            "dialect": "mqtt", "sent": self.sent, "planned": self.count,
            "cuts": len(self.cuts), "cuts_lose": sum(1 for x in self.cuts if x["mode"] == "lose"), "cuts_torn": len(torn),
            "torn_writes": sum(x["torn_writes"] for x in self.cuts),
            "unsynced_ops_dropped": sum(x["ops"] - x["ops_applied"] for x in self.cuts),
            "unsynced_bytes_dropped": sum(x["bytes_lost"] for x in self.cuts),
            "cuts_with_loss": sum(1 for x in self.cuts if x["bytes_lost"]),
            "kills": self.kills, "starts": self.starts, "mounts": self.mount.mounts,
            "delivered": c["delivered"], "rejected": c["rejected"], "expired": c["expired"],
            "uncertain": c["uncertain"], "resent_after_crash": c["resent_after_crash"],
            "lost": len(bad["lost"]), "executed_twice": len(bad["executed_twice"]),
            "unreported": len(bad["unreported"]),
            "delivered_not_on_device": len(bad["delivered_not_on_device"]),
            "rejected_but_written": len(bad["rejected_but_written"]),
            "conflicting_reports": len(bad["conflicting_reports"]),
            "unexpected_status": len(bad["unexpected_status"]),
            "stray_writes": len(stray), "accounted": accounted,
            "duplicate_reports": c["duplicate_reports"], "partially_written": c["partially_written"],
            "garbled_serial_frames": garbled_frames,
            "large_messages": sum(1 for m in plan.items[:self.sent] if m["kind"].endswith("large")),
            "multi_point_messages": sum(1 for m in plan.items[:self.sent] if len(m["steps"]) > 1),
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "self_exits": self.self_exits,
            "examples": {k: v[:20] for k, v in bad.items() if v},
            "stray_examples": stray[:10],
            "failures": list(self.failures),
            "logs": str(self.workdir),
        }
        gw_log = self.gw.log_path.read_text(encoding="utf-8", errors="replace") if self.gw else ""
        result["panics"] = len(re.findall(r"panicked", gw_log))
        result["journal_moved_aside"] = gw_log.count("the journal is unreadable: moving it aside")
        result["moved_aside_evidence"] = self.moved_aside_evidence(gw_log)
        result["log_errors"] = len(re.findall(r"\bERROR\b", gw_log))
        try:
            fs_log = self.mount.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            fs_log = ""
        # an exception inside lazyfs is the test's own fault, never the gateway's
        result["lazyfs_errors"] = fs_log.count("Traceback") + fs_log.count("Uncaught exception")
        for key in ("lost", "executed_twice", "unreported", "delivered_not_on_device", "rejected_but_written",
                    "conflicting_reports", "unexpected_status", "stray_writes", "panics", "journal_moved_aside"):
            if result[key]:
                result["failures"].append(f"{key} = {result[key]}")
        for ev in result["moved_aside_evidence"]:
            # What a CI log must show, since the logs go with its machine: why
            # the gateway found the journal unreadable, and what the cut before
            # that start dropped or tore, file by file.
            result["failures"].append(f"moved aside at start {ev['start']}: {ev['reason']}; the cut before: "
                                      f"{json.dumps(ev['cut'], sort_keys=True)}")
        if result["lazyfs_errors"]:
            result["failures"].append(f"lazyfs itself failed {result['lazyfs_errors']} times (see lazyfs.log)")
        if accounted != self.sent:
            result["failures"].append(f"accounted {accounted} != sent {self.sent}")
        if self.self_exits:
            result["failures"].append(f"the gateway exited on its own {len(self.self_exits)} times")
        if self.sent < self.count:
            result["failures"].append(f"only {self.sent} of {self.count} messages were sent")
        return result


    def moved_aside_evidence(self, gw_log: str) -> list[dict]:
        """Each "moving it aside" line of the gateway's log with the cut
        before the start it happened in (start N follows cut N-1)."""
        out, start = [], 0
        for line in gw_log.splitlines():
            if line.startswith("--- start"):
                start += 1
            elif "moving it aside" in line:
                cut = self.cuts[start - 2] if 2 <= start <= len(self.cuts) + 1 else None
                keep = ("mode", "torn_writes", "per_file", "t")
                out.append({"start": start, "reason": line.strip()[-600:],
                            "cut": {k: cut[k] for k in keep if k in cut} if cut else None})
        return out


COLUMNS = ("sent", "cuts", "cuts_torn", "torn_writes", "unsynced_ops_dropped", "unsynced_bytes_dropped",
           "large_messages", "multi_point_messages", "delivered", "rejected", "expired", "uncertain",
           "resent_after_crash", "lost", "executed_twice", "unreported", "delivered_not_on_device",
           "rejected_but_written", "conflicting_reports", "unexpected_status", "stray_writes", "accounted",
           "duplicate_reports", "partially_written", "garbled_serial_frames", "journal_moved_aside", "panics",
           "lazyfs_errors",
           "duration_s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", default=os.environ.get("C2D_QUICK") == "1",
                   help="about 1,000 messages and 20 cuts (also C2D_QUICK=1)")
    p.add_argument("--messages", type=int)
    p.add_argument("--cuts", type=int)
    p.add_argument("--cut-mode", choices=("mixed", "lose", "torn", "keep"), default="mixed",
                   help="mixed: lose or torn at random; keep: the control experiment, nothing dropped "
                   "(a plain kill -9 on the same set-up)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("C2D_POWERCUT_SEED", "0")) or None)
    p.add_argument("--json", default=os.environ.get("C2D_POWERCUT_JSON"))
    p.add_argument("--logs", default=os.environ.get("C2D_POWERCUT_LOGS"))
    p.add_argument("--no-large", action="store_true",
                   help="no 160-250 KiB bodies (they become sled blob files; see the README)")
    p.add_argument("--large-kib", default="160,250", metavar="LO,HI",
                   help="size range of the large bodies in KiB (default 160,250; max_body is 256 KiB)")
    p.add_argument("--startup-share", type=float, default=0.3,
                   help="share of the cuts that hit a gateway just started (journal open and recovery, where sled once left a half-written snapshot behind; 0.3)")
    p.add_argument("--self-test-only", action="store_true", help="only lazyfs's self-test")
    args = p.parse_args(argv)

    global LARGE_KIB
    LARGE_KIB = tuple(int(x) for x in args.large_kib.split(","))
    why = lazyfs.fuse_available()
    if why:
        print(f"powercut: cannot run: {why}", file=sys.stderr)
        return 2
    binary, why = find_gateway_bin()
    if binary is None and not args.self_test_only:
        print(f"powercut: {why}", file=sys.stderr)
        return 2
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="c2d-powercut-"))
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        checks = lazyfs.self_test(logs / "lazyfs-selftest", quiet=True)
    except AssertionError as e:
        print(f"powercut: {e}", file=sys.stderr)
        return 1
    log(f"lazyfs self-test passed: {len(checks)} checks ({time.monotonic() - t0:.1f} s)")
    if args.self_test_only:
        return 0
    seed = args.seed or random.SystemRandom().randrange(1, 2**31)
    rng = random.Random(seed)
    count = args.messages or (1000 if args.quick else 5000)
    cuts = args.cuts or (20 if args.quick else 100)
    log(f"binary {binary}, mode {'quick' if args.quick else 'full'}, seed {seed}, logs {logs}")
    scn = PowerCutScenario("mqtt", binary, logs / "mqtt", count, cuts, rng, value_base=1, cut_mode=args.cut_mode,
                           large=not args.no_large, startup_share=args.startup_share)
    try:
        result = scn.run()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        result = {"failures": [f"{type(e).__name__}: {e}"]}
    result["duration_s"] = round(time.monotonic() - t0, 1)
    result["lazyfs_self_test"] = checks
    width = max(len(c) for c in COLUMNS) + 2
    print()
    for col in COLUMNS:
        print(col.ljust(width) + str(result.get(col, "")).rjust(14))
    print(f"by kind: {json.dumps(result.get('by_kind', {}))}")
    failures = result.get("failures", [])
    if result.get("examples"):
        print(f"example message ids: {json.dumps(result['examples'])}")
    if result.get("stray_examples"):
        print(f"stray writes: {json.dumps(result['stray_examples'])}")
    out = {"mode": "quick" if args.quick else "full", "binary": str(binary), "seed": seed, "logs": str(logs),
           "cut_mode": args.cut_mode, "large_bodies": not args.no_large, "large_kib": LARGE_KIB, "results": {"mqtt": result}, "cuts": scn.cuts, "failures": failures,
           "ok": not failures}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON written to {args.json}")
    print(f"\nlogs (gateway, lazyfs, broker, devices): {logs}")
    if failures:
        print("\nPOWERCUT FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"\npowercut passed: {result['sent']} messages, {result['cuts']} power cuts "
          f"({result['cuts_torn']} torn), {result['unsynced_bytes_dropped']} unsynced bytes dropped, "
          "nothing lost or run twice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
