"""Microsoft's Python device SDK over the emulator's other ways in: MQTT over
WebSockets (`websockets=True`: the SDK only knows port 443 for it, so the
emulator listens on 127.0.0.1:443), and X.509 devices (a self-signed
certificate registered by its SHA-256 thumbprint, over TLS and over
WebSockets; a certificate that is not the device's is refused); and the
SDK's ProvisioningDeviceClient against the emulator's DPS (an individual
symmetric key, a group member's derived key, an X.509 certificate over
WebSockets), each device then used on the hub DPS assigned."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import queue
import re
import subprocess
from pathlib import Path

import pytest
from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient, X509

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


# ----------------------------------------------------------------- provisioning

SCOPE = "0ne00SDK1"
DEVICE_KEY = base64.b64encode(b"an individual enrollment's key!!").decode()
GROUP_KEY = base64.b64encode(b"the enrollment group's own key..").decode()


def derived_key(group_key: str, registration_id: str) -> str:
    """What Microsoft's docs compute for a group member (HMAC-SHA256 of the registration id)."""
    return base64.b64encode(hmac.new(base64.b64decode(group_key), registration_id.encode(),
                                     hashlib.sha256).digest()).decode()


def dps_hub(hub, *extra_args):
    return hub(args=["--id-scope", SCOPE, "--enrollment", f"sdk-dev:{DEVICE_KEY}",
                     "--enrollment-group", f"line-1:{GROUP_KEY}", *extra_args])


def provision_and_use(h, prov, key: str | None = None, x509=None) -> str:
    """register() with the SDK, then an IoTHubDeviceClient on the assigned hub."""
    result = prov.register()
    state = result.registration_state
    assert (result.status, state.assigned_hub) == ("assigned", "localhost"), result
    if x509 is not None:
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=x509, hostname=state.assigned_hub, device_id=state.device_id,
            server_verification_cert=h.ca_pem, connection_retry=False)
    else:
        client = IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id,
            server_verification_cert=h.ca_pem, connection_retry=False)
    round_trip(h, client, state.device_id, f"after-dps-{state.device_id}")
    return state.device_id


def test_sdk_provisions_with_an_individual_symmetric_key(hub):
    h = dps_hub(hub)
    prov = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host="localhost", registration_id="sdk-dev", id_scope=SCOPE,
        symmetric_key=DEVICE_KEY, server_verification_cert=h.ca_pem)
    assert provision_and_use(h, prov, DEVICE_KEY) == "sdk-dev"


def test_sdk_provisions_a_group_member_with_its_derived_key(hub):
    h = dps_hub(hub)
    key = derived_key(GROUP_KEY, "line-1-gw-17")
    prov = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host="localhost", registration_id="line-1-gw-17", id_scope=SCOPE,
        symmetric_key=key, server_verification_cert=h.ca_pem)
    assert provision_and_use(h, prov, key) == "line-1-gw-17"
    # The group's key itself, or another member's, is not this member's proof.
    wrong = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host="localhost", registration_id="line-1-gw-18", id_scope=SCOPE,
        symmetric_key=key, server_verification_cert=h.ca_pem)
    with pytest.raises(Exception):
        wrong.register()
    assert "DPS registration refused" in h.log_text()


def test_sdk_provisions_an_x509_device_over_websockets(hub, tmp_path):
    need_443()
    cert, key, thumb = self_signed(tmp_path, "sdk-x509")
    h = dps_hub(hub, "--enrollment", f"sdk-x509:x509={thumb}", "--wss", f"127.0.0.1:{WSS_PORT}")
    x509 = X509(str(cert), str(key))
    prov = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host="localhost", registration_id="sdk-x509", id_scope=SCOPE, x509=x509,
        server_verification_cert=h.ca_pem, websockets=True)
    assert provision_and_use(h, prov, x509=x509) == "sdk-x509"
