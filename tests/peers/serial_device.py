#!/usr/bin/env python3
"""An independent line-oriented serial device for the outside-peer suites.

Why it exists: the gateway's `kind = "serial"` buses send a C2D body framed
by the bus's `framing` and match the device's reply against `ack` / `nack`
within `timeout`. This device is the other end of that conversation, written
with pyserial on a pty path (one end of a socat pair), apart from the
gateway's own simulator.

What it does, per received frame:
- framing `line`: a frame ends at "\\n" (a trailing "\\r" is dropped);
  `stx-etx`: a frame is the bytes between STX (0x02) and ETX (0x03), bytes
  outside a frame are dropped; `raw`: a frame is whatever arrived before
  `--idle-ms` of silence;
- appends `{"t": unix_float, "frame": "<text>", "reply": "OK"|"ERR"|null}`
  to `--log` (the frame decoded as UTF-8, undecodable bytes escaped);
- answers `--reply-ok` (default OK), or `--reply-nack` (default ERR) when the
  frame contains a `--nack-on` text, or nothing when it contains a
  `--silent-on` text (both may repeat; silent wins), after `--delay-ms`.
  The reply is framed like the request: "OK\\n", STX OK ETX, or bare.
  `--dribble-ms N` sends it one byte at a time, N ms apart (a slow device
  or a USB adapter handing on bytes in pieces);
- writes the port path to `--ready-file` once the port is open;
- `--reopen`: a port that fails (the pty pair went away: an unplugged
  device) is closed, and opened again once the path opens again, instead of
  ending the program; each reopening is logged as
  `{"t": ..., "event": "reopened"}`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import serial

STX, ETX = b"\x02", b"\x03"


class Framer:
    """Splits received bytes into frames and frames replies, per `framing`."""

    def __init__(self, framing, idle_s):
        self.framing = framing
        self.idle_s = idle_s
        self.buffer = b""
        self.last_byte_at = 0.0

    def feed(self, data, now):
        """Add received bytes; return the frames now complete."""
        if data:
            self.buffer += data
            self.last_byte_at = now
        frames = []
        if self.framing == "line":
            while b"\n" in self.buffer:
                frame, self.buffer = self.buffer.split(b"\n", 1)
                frames.append(frame[:-1] if frame.endswith(b"\r") else frame)
        elif self.framing == "stx-etx":
            while True:
                start = self.buffer.find(STX)
                if start < 0:
                    self.buffer = b""
                    break
                end = self.buffer.find(ETX, start + 1)
                if end < 0:
                    self.buffer = self.buffer[start:]
                    break
                frames.append(self.buffer[start + 1 : end])
                self.buffer = self.buffer[end + 1 :]
        elif self.buffer and now - self.last_byte_at >= self.idle_s:
            frames.append(self.buffer)
            self.buffer = b""
        return frames

    def wrap(self, reply):
        if self.framing == "line":
            return reply + b"\n"
        if self.framing == "stx-etx":
            return STX + reply + ETX
        return reply


def choose_reply(text, args):
    """The reply for a frame's text, or None for silence."""
    if any(s in text for s in args.silent_on):
        return None
    if any(s in text for s in args.nack_on):
        return args.reply_nack
    return args.reply_ok


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", required=True, help="serial path, e.g. one end of a socat pair")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--framing", choices=("line", "stx-etx", "raw"), default="line")
    p.add_argument("--reply-ok", default="OK")
    p.add_argument("--reply-nack", default="ERR")
    p.add_argument("--nack-on", action="append", default=[], metavar="TEXT")
    p.add_argument("--silent-on", action="append", default=[], metavar="TEXT")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--idle-ms", type=float, default=50.0, help="end of a raw frame")
    p.add_argument("--dribble-ms", type=float, default=0.0, help="send replies byte by byte, this far apart")
    p.add_argument("--reopen", action="store_true", help="survive the port going away (unplugged)")
    p.add_argument("--log", help="JSON lines, one per received frame")
    p.add_argument("--ready-file", help="written with the port path once open")
    return p.parse_args(argv)


def reopen(args, port, log_file, error):
    """Waits until the path opens again (the device was plugged back in)."""
    print(f"serial_device: port failed ({error}); waiting for {args.port} to come back", file=sys.stderr, flush=True)
    try:
        port.close()
    except (serial.SerialException, OSError):
        pass
    while True:
        time.sleep(0.05)
        try:
            port = serial.Serial(args.port, baudrate=args.baud, timeout=0.01)
            break
        except (serial.SerialException, OSError):
            continue
    print(f"serial_device: reopened {args.port}", file=sys.stderr, flush=True)
    if log_file:
        log_file.write(json.dumps({"t": time.time(), "event": "reopened"}) + "\n")
        log_file.flush()
    return port


def serve(args):
    port = serial.Serial(args.port, baudrate=args.baud, timeout=0.01)
    framer = Framer(args.framing, args.idle_ms / 1000.0)
    log_file = open(args.log, "a", encoding="utf-8") if args.log else None
    if args.ready_file:
        Path(args.ready_file).write_text(args.port + "\n", encoding="utf-8")
    print(f"serial_device: {args.framing} framing on {args.port}", file=sys.stderr, flush=True)
    while True:
        try:
            data = port.read(4096)
        except (serial.SerialException, OSError) as e:
            if not args.reopen:
                raise
            port = reopen(args, port, log_file, e)
            framer = Framer(args.framing, args.idle_ms / 1000.0)
            continue
        for frame in framer.feed(data, time.monotonic()):
            text = frame.decode("utf-8", errors="backslashreplace")
            reply = choose_reply(text, args)
            entry = {"t": time.time(), "frame": text, "reply": reply}
            print(f"serial_device: {entry}", file=sys.stderr, flush=True)
            if log_file:
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
            if reply is not None:
                if args.delay_ms:
                    time.sleep(args.delay_ms / 1000.0)
                try:
                    wire = framer.wrap(reply.encode("utf-8"))
                    pieces = [wire[i:i + 1] for i in range(len(wire))] if args.dribble_ms else [wire]
                    for n, piece in enumerate(pieces):
                        if n:
                            time.sleep(args.dribble_ms / 1000.0)
                        port.write(piece)
                        port.flush()
                except (serial.SerialException, OSError) as e:
                    if not args.reopen:
                        raise
                    port = reopen(args, port, log_file, e)
                    framer = Framer(args.framing, args.idle_ms / 1000.0)
                    break


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
