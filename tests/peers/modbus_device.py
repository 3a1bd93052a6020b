#!/usr/bin/env python3
"""An independent Modbus device (TCP or RTU) for the outside-peer suites.

Why it exists: the gateway's own simulator (`src/sim`) is written by us and
would share our misreadings of the spec. This device frames, decodes and
encodes with pymodbus, a third party, so a suite that passes against it shows
the gateway speaks Modbus the way other implementations understand it.

What it does:
- serves Modbus TCP (`--tcp HOST:PORT`, port 0 picks a free one) or Modbus
  RTU on a serial path (`--rtu PATH`, e.g. one end of a socat pty pair);
- answers only the unit ids in `--units` minus `--dead-units`; a frame for
  any other unit gets no answer at all, as on a real RS-485 line (over TCP
  too), so a dead unit is simulated by leaving it out;
- gives each unit four tables (coils, discrete inputs, holding and input
  registers) of `--size` addresses, zero unless `--preset`; a request that
  touches an address >= `--size` or listed in `--exception-at` answers
  exception 2 (ILLEGAL DATA ADDRESS) and changes nothing;
- appends one JSON line to `--log` per write it applied, e.g.
  `{"t": 1700000000.5, "unit": 3, "fc": 16, "address": 100, "values": [16812, 0]}`
  (FC5/FC15 values are booleans; FC22 and FC23 log the registers stored);
- `--delay-ms N` answers every request N ms late (a slow device); with
  `--delay-units` only the requests to those units;
- `--pace-baud` makes an RTU device take each frame's time on the wire at
  `--baud` (a pty passes bytes instantly, see shared/crates.md);
- `--request-log PATH` appends one JSON line per request that reached the
  device, answered or not: `{"t": ..., "unit": 2, "fc": 6, "served": false}`
  (to count how often a dead unit was tried on the wire);
- `--garbage MODE` makes the units in `--garbage-units` (default: all
  served) apply the request as usual and then answer with a broken frame:
  `wrong-unit`, `wrong-fc` (6<->16, 5<->15), `bad-crc` (RTU), `truncated`
  (the first half of the frame, then silence), `random` (seeded bytes),
  `echo-value` (FC5/FC6 value, FC15/FC16 quantity off), `echo-address`,
  `wrong-tid` (TCP transaction id); `--garbage-count N` garbles only the
  first N answers, then answers properly;
- `--exception ADDR:CODE[:N]` (may repeat) makes a write touching ADDR
  answer Modbus exception CODE (e.g. 6 busy, 0x0B gateway target failed to
  respond), the first N times or (without N) always; such a write changes
  nothing, except with CODE 5 (acknowledge: the device accepted the write and
  is still carrying it out), which applies and logs it;
- `--exit-after-writes N` (TCP) makes the device drop off the network once
  it has answered its N-th applied write: it stops listening first (a
  reconnect is refused), the answer and the end of the connection leave
  together (TCP_CORK, then FIN), and the process exits at once; restart it
  on the same port to bring it back;
- writes its listening address to `--ready-file` once it serves.

pymodbus is pinned in tests/requirements.txt (3.16.1). This file subclasses
that version's per-connection `ServerRequestHandler` so that it alone
answers each request: pymodbus would answer an unknown unit with exception 4,
and its own handler re-reads the request after awaiting the datastore, which
a delayed answer would race.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

from pymodbus import FramerType, pymodbus_apply_logging_config
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

log = logging.getLogger("modbus_device")

TABLES = ("coil", "discrete", "holding", "input")
BIT_TABLES = ("coil", "discrete")
TABLE_OF_FC = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input"}
TABLE_OF_FC.update({fc: "holding" for fc in (3, 6, 16, 22, 23)})


class Store:
    """The memory of every served unit, in the shape pymodbus PDUs call.

    A request PDU's `datastore_update(context, unit)` calls only
    `async_getValues` / `async_setValues` on its context, so this plain object
    stands in for pymodbus's datastore, and every write that passes the
    address checks is logged here, at the moment it is applied.
    """

    def __init__(self, units, size, exception_at, log_path, exceptions=()):
        self.size = size
        self.exception_at = set(exception_at)
        # address -> [code, answers left or None for always]
        self.exceptions = {address: [code, count] for address, code, count in exceptions}
        self.applied = 0  # writes applied so far
        self.units = {
            u: {t: [False if t in BIT_TABLES else 0] * size for t in TABLES}
            for u in units
        }
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path else None

    def check(self, address, count):
        """Exception code for [address, address+count), or None if valid."""
        if address < 0 or count < 1 or address + count > self.size:
            return ExcCodes.ILLEGAL_ADDRESS
        if any(a in self.exception_at for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    async def async_getValues(self, device_id, func_code, address, count=1):
        if rc := self.check(address, count):
            return rc
        return self.units[device_id][TABLE_OF_FC[func_code]][address : address + count]

    def scripted_exception(self, address, count):
        """The `--exception` code for a write to [address, address+count), if one is due."""
        for a in range(address, address + count):
            rule = self.exceptions.get(a)
            if rule and (rule[1] is None or rule[1] > 0):
                if rule[1] is not None:
                    rule[1] -= 1
                return ExcCodes(rule[0])
        return None

    async def async_setValues(self, device_id, func_code, address, values):
        if rc := self.check(address, len(values)):
            return rc
        scripted = self.scripted_exception(address, len(values))
        if scripted is not None and scripted != ExcCodes.ACKNOWLEDGE:
            log.info("exception %s instead of the write at %s", scripted.name, address)
            return scripted
        table = TABLE_OF_FC[func_code]
        kind = bool if table in BIT_TABLES else int
        values = [kind(v) for v in values]
        self.units[device_id][table][address : address + len(values)] = values
        self.record(device_id, func_code, address, values)
        self.applied += 1
        return scripted  # None, or ACKNOWLEDGE: applied, answered with exception 5

    def preset(self, table, address, values):
        kind = bool if table in BIT_TABLES else int
        for unit in self.units.values():
            unit[table][address : address + len(values)] = [kind(v) for v in values]

    def record(self, unit, fc, address, values):
        entry = {"t": time.time(), "unit": unit, "fc": fc, "address": address, "values": values}
        log.info("write %s", entry)
        if self.log_file:
            self.log_file.write(json.dumps(entry) + "\n")
            self.log_file.flush()


def crc16(data: bytes) -> bytes:
    """Modbus RTU CRC, little endian on the wire."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


GARBAGE_MODES = ("wrong-unit", "wrong-fc", "bad-crc", "truncated", "random", "echo-value", "echo-address",
                 "wrong-tid")
SWAPPED_FC = {5: 15, 15: 5, 6: 16, 16: 6}


def garble(mode, frame: bytes, rtu: bool, rng) -> bytes:
    """A broken version of the well-formed reply `frame` (RTU or MBAP)."""
    head = 1 if rtu else 7  # RTU: unit | MBAP: tid(2) pid(2) len(2) unit(1)
    body = bytearray(frame[:-2] if rtu else frame)  # RTU: without the CRC
    if mode == "truncated":
        return frame[: len(frame) // 2]
    if mode == "random":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(3, 24)))
    if mode == "bad-crc":
        if not rtu:
            raise ValueError("bad-crc needs --rtu")
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
    if mode == "wrong-unit":
        body[head - 1] = (body[head - 1] + 1) % 256
    elif mode == "wrong-tid":
        if rtu:
            raise ValueError("wrong-tid needs --tcp")
        body[0:2] = ((int.from_bytes(body[0:2], "big") + 1) % 65536).to_bytes(2, "big")
    elif mode == "wrong-fc":
        body[head] = SWAPPED_FC.get(body[head], body[head] ^ 0x01)
    elif mode == "echo-address":
        body[head + 1 : head + 3] = ((int.from_bytes(body[head + 1 : head + 3], "big") + 1) % 65536).to_bytes(2, "big")
    elif mode == "echo-value":
        # FC5: 0xFF00 <-> 0x0000; FC6: value + 1; FC15/FC16: quantity + 1
        old = int.from_bytes(body[head + 3 : head + 5], "big")
        new = (0xFF00 if old == 0 else 0) if body[head] == 5 else (old + 1) % 65536
        body[head + 3 : head + 5] = new.to_bytes(2, "big")
    else:
        raise ValueError(f"unknown garbage mode {mode!r}")
    return bytes(body) + (crc16(body) if rtu else b"")


class Device:
    """Answers requests: unit filter, delay, wire pacing, one at a time."""

    def __init__(self, store, delay_s, pace_char_s, request_log=None, garbage=None, garbage_units=(),
                 garbage_count=0, rtu=False, seed=1, delay_units=None, exit_after_writes=0):
        self.store = store
        self.exit_after_writes = exit_after_writes
        self.server = None  # set once serving (to stop listening for --exit-after-writes)
        self.delay_units = None if delay_units is None else set(delay_units)
        self.delay_s = delay_s
        self.pace_char_s = pace_char_s  # seconds per character on the wire, 0 = off
        self.lock = asyncio.Lock()  # one request at a time, like a real device
        self.tasks = set()
        self.request_log = open(request_log, "a", encoding="utf-8") if request_log else None
        self.garbage = garbage
        self.garbage_units = set(garbage_units)
        self.garbage_left = garbage_count or None  # None = every answer
        self.rtu = rtu
        self.rng = random.Random(seed)

    def log_request(self, pdu, served):
        if self.request_log:
            entry = {"t": time.time(), "unit": pdu.dev_id, "fc": pdu.function_code, "served": served}
            self.request_log.write(json.dumps(entry) + "\n")
            self.request_log.flush()

    def garbled(self, handler, response):
        """The broken reply to send instead of `response`, or None to answer properly."""
        if not self.garbage or response.dev_id not in self.garbage_units:
            return None
        if self.garbage_left is not None:
            if self.garbage_left <= 0:
                return None
            self.garbage_left -= 1
        bad = garble(self.garbage, handler.framer.buildFrame(response), self.rtu, self.rng)
        log.info("garbage (%s) instead of the answer to unit %s: %s", self.garbage, response.dev_id, bad.hex())
        return bad

    async def answer(self, handler, pdu, addr):
        served = pdu.dev_id in self.store.units
        self.log_request(pdu, served)
        if not served:
            log.info("silent: unit %s not served (fc %s)", pdu.dev_id, pdu.function_code)
            return
        async with self.lock:
            if self.pace_char_s:
                # the request's own time on the wire, then the 3.5-char gap
                frame = handler.framer.buildFrame(pdu)
                await asyncio.sleep((len(frame) + 3.5) * self.pace_char_s)
            if self.delay_s and (self.delay_units is None or pdu.dev_id in self.delay_units):
                await asyncio.sleep(self.delay_s)
            try:
                response = await pdu.datastore_update(self.store, pdu.dev_id)
            except Exception:  # pylint: disable=broad-except
                log.exception("request failed: %s", pdu)
                response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
            response.transaction_id = pdu.transaction_id
            response.dev_id = pdu.dev_id
            if self.pace_char_s:
                frame = handler.framer.buildFrame(response)
                await asyncio.sleep(len(frame) * self.pace_char_s)
            bad = self.garbled(handler, response)
            if bad is not None:
                if handler.transport:
                    handler.send(bad, addr)
                return
            if self.exit_after_writes and self.store.applied >= self.exit_after_writes and handler.transport:
                self.drop_off(handler, response, addr)
            if handler.transport:
                handler.server_send(response, addr)

    def drop_off(self, handler, response, addr):
        """--exit-after-writes: answer, and be gone before anything else can arrive."""
        self.server.transport.close()  # listening socket closed now: a reconnect is refused
        sock = handler.transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # hold the answer ...
        handler.server_send(response, addr)
        sock.shutdown(socket.SHUT_WR)  # ... and send it with the FIN
        log.info("dropped off after %d writes", self.store.applied)
        logging.shutdown()
        os._exit(0)


class DeviceRequestHandler(ServerRequestHandler):
    """pymodbus's per-connection handler, with answers given by `Device`.

    The base `callback_data` decodes a frame into `last_pdu` and schedules
    `handle_later` once per decoded request; the request is queued here at
    once, before the next chunk of bytes can overwrite `last_pdu`.
    """

    def __init__(self, owner, *args):
        super().__init__(owner, *args)
        self.device = owner.device
        self.queued = deque()

    def callback_data(self, data, addr=None):
        used_len = super().callback_data(data, addr)
        if self.last_pdu:
            self.queued.append((self.last_pdu, self.last_addr))
        return used_len

    def handle_later(self):
        pdu, addr = self.queued.popleft()
        task = self.loop.create_task(self.device.answer(self, pdu, addr))
        self.device.tasks.add(task)
        task.add_done_callback(self.device.tasks.discard)


class DeviceServerMixin:
    """Makes a pymodbus server hand each connection a `DeviceRequestHandler`."""

    def __init__(self, device, **kwargs):
        self.device = device
        # pymodbus wants a datastore; requests never reach it (see Store).
        unused = SimDevice(id=0, simdata=SimData(0, values=0, datatype=DataType.REGISTERS))
        super().__init__(unused, **kwargs)

    def callback_new_connection(self):
        return DeviceRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class TcpDeviceServer(DeviceServerMixin, ModbusTcpServer):
    """Modbus TCP (MBAP framing)."""


class RtuDeviceServer(DeviceServerMixin, ModbusSerialServer):
    """Modbus RTU on a serial path."""


def int_list(text):
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def parse_preset(text):
    """`holding:100=1,2` -> ("holding", 100, [1, 2])."""
    try:
        where, values = text.split("=", 1)
        table, address = where.split(":", 1)
        if table not in TABLES:
            raise ValueError(table)
        return table, int(address), int_list(values)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad --preset {text!r}: TABLE:ADDRESS=V[,V...]") from exc


def parse_exception(text):
    """`100:6` -> (100, 6, None); `100:0x0b:2` -> (100, 11, 2)."""
    try:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(text)
        address, code = int(parts[0], 0), ExcCodes(int(parts[1], 0))
        count = int(parts[2]) if len(parts) == 3 else None
        return address, int(code), count
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad --exception {text!r}: ADDRESS:CODE[:COUNT]") from exc


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", help="serve Modbus TCP here")
    where.add_argument("--rtu", metavar="PATH", help="serve Modbus RTU on this serial path")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--parity", choices=("N", "E", "O"), default="N")
    p.add_argument("--units", type=int_list, default=[1], help="unit ids answered, e.g. 1,3,5")
    p.add_argument("--dead-units", type=int_list, default=[], help="unit ids never answered")
    p.add_argument("--size", type=int, default=10000, help="addresses per table")
    p.add_argument("--exception-at", type=int_list, default=[], help="addresses answering exception 2")
    p.add_argument("--preset", type=parse_preset, action="append", default=[],
                   metavar="TABLE:ADDR=V,...", help="initial values (coil|discrete|holding|input)")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--delay-units", type=int_list, default=None, help="units --delay-ms applies to (default: all)")
    p.add_argument("--pace-baud", action="store_true", help="take wire time at --baud (RTU)")
    p.add_argument("--request-log", help="JSON lines, one per request received (answered or not)")
    p.add_argument("--garbage", choices=GARBAGE_MODES, help="answer with a broken frame (after applying)")
    p.add_argument("--garbage-units", type=int_list, default=None, help="units that garble (default: all)")
    p.add_argument("--garbage-count", type=int, default=0, help="garble only the first N answers (0 = all)")
    p.add_argument("--seed", type=int, default=1, help="for --garbage random")
    p.add_argument("--exception", type=parse_exception, action="append", default=[], metavar="ADDR:CODE[:N]",
                   help="a write at ADDR answers exception CODE (the first N times, default always)")
    p.add_argument("--exit-after-writes", type=int, default=0,
                   help="TCP: drop off (stop listening, close, exit) after answering the N-th applied write")
    p.add_argument("--log", help="JSON lines, one per applied write")
    p.add_argument("--ready-file", help="written with the listening address once serving")
    p.add_argument("--verbose", action="store_true", help="pymodbus debug log on stderr")
    return p.parse_args(argv)


async def serve(args):
    units = [u for u in args.units if u not in set(args.dead_units)]
    store = Store(units, args.size, args.exception_at, args.log, args.exception)
    for table, address, values in args.preset:
        store.preset(table, address, values)
    char_bits = 1 + 8 + (0 if args.parity == "N" else 1) + 1
    pace = char_bits / args.baud if args.pace_baud and args.rtu else 0.0
    garbage_units = units if args.garbage_units is None else args.garbage_units
    device = Device(store, args.delay_ms / 1000.0, pace, request_log=args.request_log, garbage=args.garbage,
                    garbage_units=garbage_units, garbage_count=args.garbage_count, rtu=bool(args.rtu),
                    seed=args.seed, delay_units=args.delay_units, exit_after_writes=args.exit_after_writes)
    if args.tcp:
        host, port = args.tcp.rsplit(":", 1)
        server = TcpDeviceServer(device, address=(host, int(port)), framer=FramerType.SOCKET)
        device.server = server
    else:
        server = RtuDeviceServer(device, port=args.rtu, framer=FramerType.RTU,
                                 baudrate=args.baud, parity=args.parity)
    # an RTU port is opened with an exclusive lock; a pty just handed out
    # may still be held by whoever had its number before, so retry briefly
    deadline = time.monotonic() + (5.0 if args.rtu else 0.0)
    while True:
        try:
            await server.serve_forever(background=True)
            break
        except RuntimeError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)
    if args.tcp:
        address = "%s:%d" % server.transport.sockets[0].getsockname()[:2]
    else:
        address = args.rtu
    log.info("serving units %s on %s", units, address)
    if args.ready_file:
        Path(args.ready_file).write_text(address + "\n", encoding="utf-8")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown()


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    if args.verbose:
        pymodbus_apply_logging_config(logging.DEBUG)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
