"""Helpers for the device-SDK suite: the emulator process, its HTTP API, SAS
tokens, and a minimal hand-written MQTT 3.1.1 client over TLS.

The raw client exists because every MQTT library at hand (paho 1.x inside the
SDK, and the SDK itself) sends the PUBACK of a QoS 1 PUBLISH on its own; the
lock-timeout tests must be able to leave a message un-acknowledged, and the
refusal tests must see the CONNACK return code itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import socket
import ssl
import struct
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

# Process, port and polling helpers are shared with the peer suites.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
from util import HOST, Proc, free_port, port_accepts, wait_until  # noqa: E402

__all__ = ["HOST", "Hub", "HubStartError", "RawMqtt", "Publish", "sas_token", "free_port",
           "port_accepts", "wait_until", "parse_bag"]

API_VERSION = "2021-04-12"


# ------------------------------------------------------------------ SAS tokens

def sas_token(host: str, device_id: str, key_b64: str, expiry: int) -> str:
    """The device SAS token of azure-iot-hub-mqtt.md (strict URL encoding)."""
    resource = urllib.parse.quote(f"{host}/devices/{device_id}", safe="")
    to_sign = f"{resource}\n{expiry}".encode()
    sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), to_sign, hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}"


def parse_connection_string(cs: str) -> dict:
    return dict(part.split("=", 1) for part in cs.split(";") if part)


def parse_bag(topic: str, prefix: str) -> list[tuple[str, str | None]]:
    """A property bag, decoded as IoT Hub defines it (`+` stays a plus)."""
    assert topic.startswith(prefix), f"{topic!r} does not start with {prefix!r}"
    out = []
    for seg in filter(None, topic[len(prefix):].split("&")):
        k, sep, v = seg.partition("=")
        out.append((urllib.parse.unquote(k), urllib.parse.unquote(v) if sep else None))
    return out


# ------------------------------------------------------------------- emulator

class HubStartError(Exception):
    """The emulator did not come up; `.port_in_use` says whether a listener port was taken."""

    def __init__(self, message: str, port_in_use: bool):
        super().__init__(message)
        self.port_in_use = port_in_use


@dataclass
class HttpResult:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


class Hub:
    """`c2d-gateway hub-emulator` as a child process.

    `.tls_port`, `.http_port`, `.ca_pem`, `.ca_path`, `.connection_strings`
    (device id -> the string the emulator printed), `.key(device)`; HTTP API
    helpers `post_c2d`, `get`, `delete`, `request`.
    """

    def __init__(self, binary, workdir: Path, *, tls_port: int, devices=("dev1",), args=()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls_port = tls_port
        self.http_port = free_port()
        self.ca_path = self.workdir / "ca.pem"
        self.argv = [binary, "hub-emulator",
                     "--tls", f"{HOST}:{tls_port}", "--http", f"{HOST}:{self.http_port}",
                     "--ca-out", self.ca_path, "--host-name", "localhost"]
        for d in devices:
            self.argv += ["--device", d]
        self.argv += list(args)
        self.proc = Proc(self.argv, self.workdir / "emulator.log")
        self.connection_strings: dict[str, str] = {}
        self.ca_pem = ""

    def start(self) -> "Hub":
        self.proc.start()
        deadline = time.monotonic() + 15
        while "hub emulator running" not in self.proc.log_text():
            if not self.proc.alive:
                log = self.proc.log_text()
                in_use = "in use" in log.lower()
                raise HubStartError(f"the emulator exited with {self.proc.returncode}:\n{log[-3000:]}", in_use)
            if time.monotonic() > deadline:
                self.proc.stop()
                raise HubStartError(f"the emulator did not start in 15 s:\n{self.proc.log_text()[-3000:]}", False)
            time.sleep(0.02)
        for m in re.finditer(r"^device (\S+): (HostName=\S+)$", self.proc.log_text(), re.M):
            self.connection_strings[m.group(1)] = m.group(2)
        self.ca_pem = self.ca_path.read_text(encoding="ascii")
        wait_until(lambda: port_accepts(self.http_port), 10, what=f"emulator HTTP on {self.http_port}")
        return self

    def stop(self):
        return self.proc.stop()

    def log_text(self) -> str:
        return self.proc.log_text()

    def key(self, device: str) -> str:
        return parse_connection_string(self.connection_strings[device])["SharedAccessKey"]

    # HTTP API. http.client sends header names exactly as given (urllib
    # would capitalize them), so a property name keeps its case on the wire.
    def request(self, method: str, path: str, body: bytes | None = None, headers=()) -> HttpResult:
        conn = http.client.HTTPConnection(HOST, self.http_port, timeout=10)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            return HttpResult(r.status, r.read())
        finally:
            conn.close()

    def invoke(self, device: str, method: str, payload=None, *, response_timeout: int = 5,
               connect_timeout: int = 0, raw: bytes | None = None) -> HttpResult:
        """`POST /twins/{device}/methods`, as the service SDK's invoke_device_method."""
        body = raw if raw is not None else json.dumps({
            "methodName": method, "payload": payload,
            "responseTimeoutInSeconds": response_timeout, "connectTimeoutInSeconds": connect_timeout,
        }).encode()
        conn = http.client.HTTPConnection(HOST, self.http_port, timeout=response_timeout + connect_timeout + 10)
        try:
            conn.request("POST", f"/twins/{urllib.parse.quote(device, safe='')}/methods", body,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            return HttpResult(r.status, r.read())
        finally:
            conn.close()

    def twin(self, device: str = "dev1") -> dict:
        """`GET /twins/{device}`, as the service SDK's get_twin."""
        return self.get(f"/twins/{urllib.parse.quote(device, safe='')}")

    def patch_desired(self, device: str, desired: dict) -> HttpResult:
        """`PATCH /twins/{device}` with desired properties, as the service SDK's update_twin."""
        body = json.dumps({"properties": {"desired": desired}}).encode()
        return self.request("PATCH", f"/twins/{urllib.parse.quote(device, safe='')}", body,
                            [("Content-Type", "application/json")])

    def post_c2d(self, device: str, body: bytes = b"{}", headers=()) -> HttpResult:
        return self.request("POST", f"/devices/{urllib.parse.quote(device, safe='')}/messages", body, headers)

    def get(self, path: str):
        r = self.request("GET", path)
        assert r.status == 200, f"GET {path}: {r.status} {r.body!r}"
        return r.json()

    def queue(self, device: str = "dev1") -> list[dict]:
        return self.get(f"/devices/{device}/messages")

    def feedback(self) -> list[dict]:
        return self.get("/feedback")

    def events(self, device: str = "dev1") -> list[dict]:
        return self.get(f"/devices/{device}/events")


# ----------------------------------------------------------- raw MQTT client

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes


@dataclass
class Publish:
    topic: str
    qos: int
    dup: bool
    retain: bool
    pkid: int | None
    payload: bytes


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Closed(Exception):
    """The server closed the connection."""


class RawMqtt:
    """MQTT 3.1.1 over TLS, one packet at a time, nothing sent on its own."""

    def __init__(self, port: int, ca_pem: str, host: str = HOST, server_name: str = "localhost",
                 timeout: float = 10.0):
        ctx = ssl.create_default_context(cadata=ca_pem)  # verifies chain and host name
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_name)
        self.buf = b""
        self.next_pkid = 0
        self.early: list[Publish] = []  # PUBLISHes read while waiting for a SUBACK

    # -- framing
    def send(self, ptype: int, flags: int, body: bytes) -> None:
        self.sock.sendall(bytes([ptype << 4 | flags]) + _remaining_length(len(body)) + body)

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
            raise Closed(str(e)) from e
        if not data:
            raise Closed("EOF")
        self.buf += data

    def _take(self) -> Packet | None:
        b = self.buf
        if len(b) < 2:
            return None
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(b):
                return None
            n += (b[i] & 0x7F) * mult
            mult *= 128
            i += 1
            if not b[i - 1] & 0x80:
                break
        if len(b) < i + n:
            return None
        self.buf = b[i + n:]
        return Packet(b[0] >> 4, b[0] & 0x0F, b[i:i + n])

    def read(self, timeout: float = 10.0) -> Packet:
        """The next packet; socket.timeout if none within `timeout`, Closed on EOF."""
        deadline = time.monotonic() + timeout
        while (p := self._take()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"no packet within {timeout}s")
            self._fill(left)
        return p

    def read_or_none(self, timeout: float) -> Packet | None:
        try:
            return self.read(timeout)
        except socket.timeout:
            return None

    def wait_closed(self, timeout: float) -> bool:
        """True when the server closes the connection within `timeout` s (packets are skipped)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.read_or_none(max(0.01, deadline - time.monotonic()))
        except Closed:
            return True
        except OSError:
            return True
        return False

    def pkid(self) -> int:
        self.next_pkid = self.next_pkid % 65535 + 1
        return self.next_pkid

    # -- packets
    def connect(self, client_id: str, username: str | None, password: str | None, *,
                clean_session: bool = False, keepalive: int = 60) -> tuple[bool, int]:
        """Sends CONNECT; returns (session_present, return_code) from the CONNACK."""
        flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0) \
            | (0x40 if password is not None else 0)
        body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _utf8(client_id)
        if username is not None:
            body += _utf8(username)
        if password is not None:
            body += _utf8(password)
        self.send(CONNECT, 0, body)
        p = self.read()
        assert p.type == CONNACK and len(p.body) == 2, f"expected CONNACK, got {p}"
        return bool(p.body[0] & 1), p.body[1]

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """Sends SUBSCRIBE; returns the SUBACK return codes (PUBLISHes before it are kept)."""
        pk = self.pkid()
        self.send(SUBSCRIBE, 0x2, struct.pack("!H", pk) + _utf8(topic) + bytes([qos]))
        while True:
            p = self.read()
            if p.type == PUBLISH:
                self.early.append(self.decode_publish(p))
                continue
            assert p.type == SUBACK, f"expected SUBACK, got {p}"
            assert struct.unpack("!H", p.body[:2])[0] == pk, "SUBACK for another packet id"
            return list(p.body[2:])

    @staticmethod
    def decode_publish(p: Packet) -> Publish:
        qos = (p.flags >> 1) & 3
        n = struct.unpack("!H", p.body[:2])[0]
        topic = p.body[2:2 + n].decode()
        rest = p.body[2 + n:]
        pkid = None
        if qos:
            pkid, rest = struct.unpack("!H", rest[:2])[0], rest[2:]
        return Publish(topic, qos, bool(p.flags & 8), bool(p.flags & 1), pkid, rest)

    def next_publish(self, timeout: float = 10.0) -> Publish:
        if self.early:
            return self.early.pop(0)
        p = self.read(timeout)
        assert p.type == PUBLISH, f"expected PUBLISH, got {p}"
        return self.decode_publish(p)

    def publish_or_none(self, timeout: float) -> Publish | None:
        try:
            return self.next_publish(timeout)
        except socket.timeout:
            return None

    def puback(self, pkid: int) -> None:
        self.send(PUBACK, 0, struct.pack("!H", pkid))

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publishes; with QoS 1 waits for the PUBACK."""
        if qos:
            pk = self.pkid()
            self.send(PUBLISH, qos << 1, _utf8(topic) + struct.pack("!H", pk) + payload)
            p = self.read()
            assert p.type == PUBACK and struct.unpack("!H", p.body)[0] == pk, f"expected PUBACK {pk}, got {p}"
        else:
            self.send(PUBLISH, 0, _utf8(topic) + payload)

    def disconnect(self) -> None:
        try:
            self.send(DISCONNECT, 0, b"")
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
