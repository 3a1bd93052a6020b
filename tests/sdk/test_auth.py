"""Authentication: the SDK with a wrong key is refused and the emulator keeps
serving the right one; hand-made SAS tokens (expired, for another device,
wrong username) get the CONNACK refusals IoT Hub sends (0x05 not authorized)."""

from __future__ import annotations

import base64
import queue
import time

import pytest
from azure.iot.device.exceptions import CredentialError

from hub import API_VERSION, RawMqtt, sas_token

USER = f"localhost/dev1/?api-version={API_VERSION}"


def test_sas_helper_matches_the_reference_vector():
    # azure-iot-hub-mqtt.md, "Test vectors": the raw-client tests rely on this helper
    assert sas_token("myiothub.azure-devices.net", "my_device",
                     "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=", 1578941692) == (
        "SharedAccessSignature sr=myiothub.azure-devices.net%2Fdevices%2Fmy_device"
        "&sig=dIMMdDDBGFR8eqAfYkiMxoOphaFMPtMgj7Wg%2FYB1AvU%3D&se=1578941692")


def test_sdk_with_a_wrong_key_is_refused_and_the_right_key_still_works(hub, sdk_client):
    h = hub()
    good = h.connection_strings["dev1"]
    wrong_key = base64.b64encode(b"\x07" * 32).decode()
    assert wrong_key != h.key("dev1")
    bad = sdk_client(good.replace(h.key("dev1"), wrong_key), h.ca_pem)
    with pytest.raises(CredentialError):
        bad.connect()
    assert not bad.connected
    assert h.proc.alive

    ok = sdk_client(good, h.ca_pem)
    received: queue.Queue = queue.Queue()
    ok.on_message_received = received.put
    ok.connect()
    assert ok.connected
    assert h.post_c2d("dev1", b"after", [("iothub-messageid", "after-bad-key")]).status == 201
    assert received.get(timeout=10).message_id == "after-bad-key"


@pytest.mark.parametrize("case", ["expired", "other-device", "other-key", "not-a-token"])
def test_bad_sas_token_gets_connack_not_authorized(hub, case):
    h = hub(sdk=False, devices=("dev1", "dev2"))
    now = int(time.time())
    token = {
        "expired": sas_token("localhost", "dev1", h.key("dev1"), now - 60),
        "other-device": sas_token("localhost", "dev2", h.key("dev2"), now + 3600),
        "other-key": sas_token("localhost", "dev1", h.key("dev2"), now + 3600),
        "not-a-token": "hunter2",
    }[case]
    c = RawMqtt(h.tls_port, h.ca_pem)
    session_present, rc = c.connect("dev1", USER, token)
    assert rc == 5, f"CONNACK return code {rc}, IoT Hub answers 0x05 (not authorized)"
    assert not session_present
    assert c.wait_closed(5), "the hub must close the connection after refusing it"

    # the emulator is fine: the right token connects
    c2 = RawMqtt(h.tls_port, h.ca_pem)
    assert c2.connect("dev1", USER, sas_token("localhost", "dev1", h.key("dev1"), now + 3600))[1] == 0
    c2.disconnect()


def test_connect_refusals_for_username_and_unknown_device(hub):
    h = hub(sdk=False)
    token = sas_token("localhost", "dev1", h.key("dev1"), int(time.time()) + 3600)
    for user in ["dev1", "localhost/dev2/?api-version=2021-04-12", "otherhub/dev1/?api-version=2021-04-12"]:
        c = RawMqtt(h.tls_port, h.ca_pem)
        rc = c.connect("dev1", user, token)[1]
        assert rc in (4, 5), f"username {user!r}: CONNACK {rc}, expected a refusal (4 or 5)"
        assert c.wait_closed(5)
    c = RawMqtt(h.tls_port, h.ca_pem)
    rc = c.connect("nobody", "localhost/nobody/?api-version=2021-04-12", token)[1]
    assert rc != 0, "an unknown device id must be refused"
    assert c.wait_closed(5)


def test_connection_is_closed_when_its_token_expires(hub):
    h = hub(sdk=False)
    c = RawMqtt(h.tls_port, h.ca_pem)
    assert c.connect("dev1", USER, sas_token("localhost", "dev1", h.key("dev1"), int(time.time()) + 2))[1] == 0
    t0 = time.monotonic()
    assert c.wait_closed(6), "a connection must end when its SAS token expires"
    assert time.monotonic() - t0 < 5


def test_tls_certificate_names_localhost_and_loopback(hub):
    h = hub(sdk=False)
    for name in ("localhost", "127.0.0.1"):
        c = RawMqtt(h.tls_port, h.ca_pem, server_name=name)  # host name checked by ssl
        c.close()
    import ssl
    with pytest.raises(ssl.SSLCertVerificationError):
        RawMqtt(h.tls_port, h.ca_pem, server_name="myhub.azure-devices.net")
