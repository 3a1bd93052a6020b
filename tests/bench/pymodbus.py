#!/usr/bin/env python3
"""`c2d-gateway bench` against an independent device: pymodbus.

Starts tests/peers/modbus_device.py (pymodbus, Modbus TCP on loopback,
logging every write it applies), then runs

    c2d-gateway bench --only ceiling --device HOST:PORT --json PATH

which measures what a tight-loop Modbus client gets from that device (its
ceiling), then the gateway delivering C2D messages to it end to end (hub
emulator, journal durable, PUBACK after the device's answer), with the
gateway's CPU and journal flushes per message. Prints the bench's table and
one summary line; writes the JSON.

Asserts no speed (the machines are shared and noisy): only that the bench
ran without an error and that the device applied every message exactly
once (its own write log: the tight loop's writes plus the gateway's).

Usage: pymodbus.py --json PATH [--logs DIR] [--quick]; the gateway binary is
$C2D_GATEWAY_BIN (tests/run sets it to the release build).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = Path(__file__).resolve().parent.parent / "peers"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="where the bench writes its JSON")
    p.add_argument("--logs", help="keep the device's logs here (default: a temporary directory)")
    p.add_argument("--quick", action="store_true", help="the bench's short form")
    a = p.parse_args()
    binary = os.environ.get("C2D_GATEWAY_BIN")
    if not binary:
        print("pymodbus bench: set C2D_GATEWAY_BIN to the gateway binary", file=sys.stderr)
        return 2
    logs = Path(a.logs or tempfile.mkdtemp(prefix="c2d-bench-pymodbus-"))
    logs.mkdir(parents=True, exist_ok=True)
    ready, write_log = logs / "device.ready", logs / "device-writes.jsonl"
    ready.unlink(missing_ok=True)
    write_log.unlink(missing_ok=True)
    with open(logs / "device.log", "w", encoding="utf-8") as err:
        device = subprocess.Popen(
            [sys.executable, str(PEERS / "modbus_device.py"), "--tcp", "127.0.0.1:0", "--units", "1",
             "--log", str(write_log), "--ready-file", str(ready)],
            stdout=err, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 15
        while not (ready.exists() and ready.read_text(encoding="utf-8").strip()):
            if device.poll() is not None or time.monotonic() > end:
                print(f"pymodbus bench: the device did not start; see {logs / 'device.log'}", file=sys.stderr)
                return 1
            time.sleep(0.05)
        address = ready.read_text(encoding="utf-8").strip()
        argv = [binary, "bench", "--only", "ceiling", "--device", address, "--json", a.json]
        if a.quick:
            argv.append("--quick")
        print("+ " + " ".join(argv), flush=True)
        rc = subprocess.run(argv, check=False).returncode
    finally:
        device.terminate()
        device.wait(10)
    if rc != 0:
        print(f"pymodbus bench: the bench failed (exit {rc})", file=sys.stderr)
        return 1
    c = json.loads(Path(a.json).read_text(encoding="utf-8"))["ceiling"]
    applied = sum(1 for line in write_log.read_text(encoding="utf-8").splitlines() if line.strip())
    expected = c["ceiling_writes"] + c["gateway_messages"]
    print(f"pymodbus bench: ceiling {c['ceiling_per_s']:.0f} writes/s, gateway {c['gateway_per_s']:.0f} msg/s "
          f"({100 * c['share']:.1f} % of it), {c['cpu_us_per_msg']:.0f} us CPU and "
          f"{c['journal_flushes_per_msg']:.3f} journal flushes per message; the device applied {applied} writes "
          f"({c['ceiling_writes']} from the tight loop, {c['gateway_messages']} messages)")
    if c["delivered"] != c["messages"] or applied != expected:
        print(f"pymodbus bench: FAILED: {c['messages']} messages, {c['delivered']} delivered; "
              f"device applied {applied} writes, expected {expected} (each message exactly once)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
