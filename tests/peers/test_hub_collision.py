"""The real gateway (`kind = "mqtt"`) against a small scripted MQTT 3.1.1
broker that acknowledges result reports out of order: it never acknowledges
the first report on the first connection and acknowledges the rest at once.
The MQTT client inside the gateway (rumqttc) numbers its publishes 1..=100
and comes round to the first report's number while that one is still
unacknowledged: a packet id collision, after which it sends nothing else,
C2D acknowledgements included, until the missing PUBACK comes. The broker
then drops the connection, as a hub would after a while.

After the reconnect the collision must be gone: every message is completed
(PUBACKed) at the broker, every report acknowledged, every write done once;
and each report maps to its own journal entry: after a restart the gateway
sends no report again that the broker already acknowledged.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from test_hub_faults import BOILER, Batch, assert_exactly_once, parse_packet
from util import HOST, modbus_tcp_bus, wait_until

pytestmark = pytest.mark.timeout(120)

C2D_TOPIC = "gateway/boiler/c2d"


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


def publish_qos1(topic: str, pkid: int, payload: bytes, dup: bool = False) -> bytes:
    t = topic.encode()
    return packet(0x32 | (0x08 if dup else 0), len(t).to_bytes(2, "big") + t + pkid.to_bytes(2, "big") + payload)


class ScriptedBroker:
    """One client at a time. C2D messages queued with `send` are delivered
    (QoS 1) after each SUBACK until the client acknowledges them; a report
    PUBLISH is acknowledged unless `withhold(conn, body)` says otherwise;
    connection `drop_conn` is closed `drop_after` s after its
    `drop_at_report`-th report."""

    def __init__(self, withhold, drop_conn=1, drop_at_report=100, drop_after=1.0):
        self.withhold, self.drop_conn = withhold, drop_conn
        self.drop_at_report, self.drop_after = drop_at_report, drop_after
        self.lock = threading.Lock()
        self.pending: dict[str, bytes] = {}  # C2D id -> payload, until the client acks it
        self.reports: list[tuple[int, dict, bool]] = []  # (conn, body, acknowledged)
        self.conns = 0
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closed = True
        self.lsock.close()

    def send(self, mid: str, body: dict) -> None:
        with self.lock:
            self.pending[mid] = json.dumps(body).encode()

    def acked_reports(self, from_conn: int = 1) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for conn, body, acked in self.reports:
                if acked and conn >= from_conn:
                    out[body["message_id"]] = out.get(body["message_id"], 0) + 1
            return out

    def published_reports(self, from_conn: int) -> list[str]:
        with self.lock:
            return [b["message_id"] for c, b, _ in self.reports if c >= from_conn]

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                conn = self.conns
            threading.Thread(target=self._serve, args=(s, conn), daemon=True).start()

    def _serve(self, s: socket.socket, conn: int):
        buf = b""
        by_pkid: dict[int, str] = {}
        next_pkid = 0
        reports_here = 0
        wlock = threading.Lock()

        def write(data: bytes):
            with wlock:
                s.sendall(data)
        try:
            while True:
                got = parse_packet(buf)
                if got is None:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                pkt, n = got
                buf = buf[n:]
                kind = pkt["type"]
                if kind == "CONNECT":
                    write(b"\x20\x02\x00\x00")
                elif kind == "SUBSCRIBE":
                    write(packet(0x90, pkt["pkid"].to_bytes(2, "big") + b"\x01"))
                    with self.lock:
                        todo = list(self.pending.items())
                    for mid, payload in todo:
                        next_pkid += 1
                        by_pkid[next_pkid] = mid
                        write(publish_qos1(C2D_TOPIC, next_pkid, payload))
                elif kind == "PUBACK":
                    with self.lock:
                        self.pending.pop(by_pkid.pop(pkt["pkid"], None), None)
                elif kind == "PUBLISH":
                    body = json.loads(pkt["payload"])
                    ack = not self.withhold(conn, body)
                    reports_here += 1
                    with self.lock:
                        self.reports.append((conn, body, ack))
                    if ack:
                        write(packet(0x40, pkt["pkid"].to_bytes(2, "big")))
                    if conn == self.drop_conn and reports_here == self.drop_at_report:
                        threading.Timer(self.drop_after, lambda: s.shutdown(socket.SHUT_RDWR)).start()
                elif kind == "PINGREQ":
                    write(b"\xd0\x00")
                elif kind == "DISCONNECT":
                    return
        except OSError:
            return
        finally:
            s.close()


@pytest.fixture
def scripted_broker():
    brokers = []

    def start(**kw) -> ScriptedBroker:
        b = ScriptedBroker(**kw)
        brokers.append(b)
        return b
    yield start
    for b in brokers:
        b.close()


def test_reports_and_acks_flow_again_after_a_packet_id_collision_and_a_reconnect(scripted_broker, modbus_device,
                                                                                gateway):
    first = {}

    def withhold(conn, body):
        # The first report of connection 1, whichever it is, never gets its PUBACK there.
        if conn == 1 and not first:
            first["id"] = body["message_id"]
        return conn == 1 and body["message_id"] == first["id"]

    broker = scripted_broker(withhold=withhold)
    device = modbus_device()
    batch = Batch("col", 110)
    for mid in batch.ids:
        broker.send(mid, {"id": mid, **batch.body(mid)})
    gw = gateway(f'[hub]\nkind = "mqtt"\nurl = "mqtt://{HOST}:{broker.port}"\nclient_id = "gw-collision"\n\n'
                 + modbus_tcp_bus("plc", device.address) + BOILER)
    try:
        wait_until(lambda: broker.conns >= 2 and not broker.pending and set(batch.ids) <= set(broker.acked_reports()),
                   30, interval=0.2, what="every message completed and every report acknowledged after the reconnect")
    except AssertionError as e:
        missing = sorted(set(batch.ids) - set(broker.acked_reports()))
        raise AssertionError(f"{e}: {broker.conns} connections; {len(broker.pending)} C2D messages never acked; "
                             f"no acknowledged report about {missing[:10]}... ({len(missing)})\n"
                             + gw.log_text()[-3000:]) from None
    assert_exactly_once(device, batch, gw)
    # Each report maps to its own entry: after a restart, nothing the broker
    # acknowledged is reported again.
    assert gw.terminate() == 0
    restarted_on = broker.conns + 1
    gw.start()
    wait_until(lambda: broker.conns >= restarted_on, 15, what="the restarted gateway at the broker")
    time.sleep(1.5)
    again = broker.published_reports(restarted_on)
    assert again == [], f"reports the broker had acknowledged were sent again after a restart: {again}"
    assert "panicked" not in gw.log_text()
