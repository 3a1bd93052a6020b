"""`c2d-gateway hub-emulator` in a process of its own, for the peer suites:
plain MQTT and HTTP always, TLS, MQTT over WebSockets (`wss`) and X.509
devices when asked; the back end's HTTP calls (send, queue, feedback,
reports)."""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import re
import time
from pathlib import Path

import pytest

from util import HOST, Proc, wait_until

DEVICE_ID = "gw"  # the gateway's identity at the emulator


class HubEmulator:
    """`c2d-gateway hub-emulator` in a process of its own, plain MQTT and HTTP on
    free ports that stay the same across `restart()`; one device `gw` whose key
    is fixed here, so a restarted emulator accepts the gateway again."""

    def __init__(self, binary, workdir: Path, lock_timeout: str = "60s", args=()):
        self.binary = str(binary)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.key = base64.b64encode(os.urandom(32)).decode()
        self.lock_timeout = lock_timeout
        self.mqtt_port = 0
        self.http_port = 0
        self.proc = Proc([], workdir / "emulator.log")
        self.cs_file = workdir / "connection-string"
        self.cs_file.write_text(f"HostName=localhost;DeviceId={DEVICE_ID};SharedAccessKey={self.key}\n",
                                encoding="utf-8")
        self.cs_file.chmod(0o600)
        self.lives = 0
        self.args = list(args)  # more listeners (--wss ...), devices (--device ID:x509=...)
        self.ca_file = workdir / "emulator-ca.pem"  # the TLS listeners' CA
        self.tls_port = self.wss_port = 0

    def start(self) -> "HubEmulator":
        self.proc.argv = [self.binary, "hub-emulator", "--mqtt", f"{HOST}:{self.mqtt_port}",
                          "--tls", f"{HOST}:0", "--http", f"{HOST}:{self.http_port}",
                          "--device", f"{DEVICE_ID}:{self.key}", "--lock-timeout", self.lock_timeout,
                          "--ca-out", str(self.ca_file), *self.args]
        self.lives += 1
        marker = f"hub emulator running"
        before = self.proc.log_text().count(marker)
        self.proc.start()
        self.proc.wait_ready(lambda: self.proc.log_text().count(marker) > before, 20, "hub emulator")
        text = self.proc.log_text()
        self.mqtt_port = int(re.findall(r"^MQTT\s+mqtt://[\d.]+:(\d+)", text, re.M)[-1])
        self.http_port = int(re.findall(r"^HTTP\s+http://[\d.]+:(\d+)", text, re.M)[-1])
        self.tls_port = int(re.findall(r"^MQTT/TLS\s+mqtts://[\d.]+:(\d+)", text, re.M)[-1])
        wss = re.findall(r"^MQTT/WSS\s+wss://[\d.]+:(\d+)", text, re.M)
        self.wss_port = int(wss[-1]) if wss else 0
        return self

    def kill9(self) -> None:
        self.proc.kill9()

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> "HubEmulator":
        """Start again on the same ports (after a kill9 or stop). A port the
        dead emulator held can be busy for a moment more (seen once in CI:
        "Address already in use"): tried again for up to 10 s."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.start()
            except AssertionError as e:
                if "Address already in use" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def log_text(self) -> str:
        return self.proc.log_text()

    def connections(self) -> int:
        """Connections the emulator accepted for `gw`, over all its lives."""
        return self.log_text().count("emulator: device connected")

    def request(self, method: str, path: str, body: bytes = b"", headers=()):
        conn = http.client.HTTPConnection(HOST, self.http_port, timeout=10)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            data = r.read()
            return r.status, (json.loads(data) if data else None)
        finally:
            conn.close()

    def send(self, message_id: str, device: str, body: dict, ack: str = "full") -> None:
        """POST a C2D message (waits while the 50-message queue is full)."""
        headers = [("iothub-messageid", message_id), ("iothub-app-device", device), ("iothub-ack", ack)]
        payload = json.dumps(body).encode()

        def sent():
            status, reply = self.request("POST", f"/devices/{DEVICE_ID}/messages", payload, headers)
            assert status in (201, 403), f"POST {message_id}: {status} {reply}"
            return status == 201
        wait_until(sent, 30, interval=0.05, what=f"room in the emulator's queue for {message_id}")

    def queue(self) -> list[dict]:
        status, q = self.request("GET", f"/devices/{DEVICE_ID}/messages")
        assert status == 200, (status, q)
        return q

    def feedback(self) -> list[dict]:
        status, f = self.request("GET", "/feedback")
        assert status == 200, (status, f)
        return f

    def reports(self) -> list[dict]:
        """The gateway's result reports in the event store (body + `_props`)."""
        status, events = self.request("GET", f"/devices/{DEVICE_ID}/events")
        assert status == 200, (status, events)
        out = []
        for ev in events:
            try:
                body = json.loads(ev.get("body") or "")
            except ValueError:
                continue
            if isinstance(body, dict) and "message_id" in body:
                body["_props"] = {k: v for k, v in ev.get("properties", [])}
                out.append(body)
        return out


@pytest.fixture
def emulator(tmp_path, gateway_bin):
    """Factory: `emulator(lock_timeout="60s", args=())` -> a started HubEmulator."""
    emus, counter = [], itertools.count()

    def start(lock_timeout: str = "60s", args=()) -> HubEmulator:
        emu = HubEmulator(gateway_bin, tmp_path / f"emulator{next(counter)}", lock_timeout, args)
        emus.append(emu)
        return emu.start()

    yield start
    for emu in reversed(emus):
        emu.stop()


