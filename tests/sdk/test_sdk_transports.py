"""Microsoft's Python device SDK over the emulator's other ways in: MQTT over
WebSockets (`websockets=True`: the SDK only knows port 443 for it, so the
emulator listens on 127.0.0.1:443), and X.509 devices (a self-signed
certificate registered by its SHA-256 thumbprint, over TLS and over
WebSockets; a certificate that is not the device's is refused)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
from pathlib import Path

import pytest
from azure.iot.device import IoTHubDeviceClient, Message, X509

from hub import port_accepts

WSS_PORT = 443  # fixed in azure-iot-device's MQTT transport for websockets


def need_443():
    if port_accepts(WSS_PORT):
        message = f"127.0.0.1:{WSS_PORT} is taken; the SDK only connects to {WSS_PORT} over WebSockets"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def self_signed(dir: Path, cn: str) -> tuple[Path, Path, str]:
    """A self-signed EC certificate for `cn` made by openssl: (cert, key, SHA-256 thumbprint hex)."""
    cert, key = dir / f"{cn}.pem", dir / f"{cn}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-subj", f"/CN={cn}", "-days", "2"],
                   check=True, capture_output=True)
    out = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
                         check=True, capture_output=True, text=True).stdout
    return cert, key, re.sub(r"[^0-9A-F]", "", out.split("=", 1)[1].upper())


def x509_client(h, device: str, cert: Path, key: Path, **kwargs) -> IoTHubDeviceClient:
    return IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(str(cert), str(key)), hostname="localhost", device_id=device,
        server_verification_cert=h.ca_pem, connection_retry=False, **kwargs)


def round_trip(h, client, device: str, tag: str) -> None:
    """D2C reaches the event store; C2D reaches the client."""
    received: queue.Queue = queue.Queue()
    client.on_message_received = received.put
    client.connect()
    client.send_message(Message(f"d2c {tag}"))
    assert [e["body"] for e in h.events(device)][-1] == f"d2c {tag}"
    assert h.post_c2d(device, f"c2d {tag}".encode(), [("iothub-messageid", tag)]).status == 201
    m = received.get(timeout=10)
    assert (m.message_id, m.data) == (tag, f"c2d {tag}".encode())
    client.shutdown()


def test_sdk_over_websockets(hub, sdk_client):
    need_443()
    h = hub(args=["--wss", f"127.0.0.1:{WSS_PORT}"])
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem, websockets=True)
    round_trip(h, client, "dev1", "ws-1")
    assert "emulator: device connected" in h.log_text()


def test_sdk_x509_device_by_thumbprint_over_tls_and_websockets(hub, tmp_path):
    need_443()
    cert, key, thumb = self_signed(tmp_path, "devx")
    h = hub(devices=("dev1", f"devx:x509={thumb}"), args=["--wss", f"127.0.0.1:{WSS_PORT}"])
    assert h.connection_strings["devx"].endswith(";x509=true")
    round_trip(h, x509_client(h, "devx", cert, key), "devx", "x-tls")
    round_trip(h, x509_client(h, "devx", cert, key, websockets=True), "devx", "x-ws")


def test_sdk_x509_device_with_another_certificate_is_refused(hub, tmp_path):
    cert, key, thumb = self_signed(tmp_path, "devx")
    other_cert, other_key, _ = self_signed(tmp_path, "other")
    h = hub(devices=(f"devx:x509={thumb}",))
    client = x509_client(h, "devx", other_cert, other_key)
    with pytest.raises(Exception):  # the SDK raises its own ClientError/CredentialError on CONNACK 5
        client.connect()
    assert "X.509 certificate rejected" in h.log_text()
    client.shutdown()
