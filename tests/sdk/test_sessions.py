"""Persistent sessions (CleanSession 0, what every device SDK uses): IoT Hub
keeps the C2D subscription across connections ("If the device connects with
CleanSession flag set to 0, the subscription will be persisted across
different sessions", IoT Hub MQTT docs). The Python SDK relies on it: it
subscribes once, when the feature is enabled, and never again after a
reconnect (azure-iot-device 2.14 has no re-subscribe path; see also
Azure/iotedge#5048, which made edgeHub restore subscriptions for it)."""

from __future__ import annotations

import time

import pytest

from hub import API_VERSION, RawMqtt, sas_token

USER = f"localhost/dev1/?api-version={API_VERSION}"
DEVICEBOUND = "devices/dev1/messages/devicebound/"


def connect(h, *, clean_session: bool) -> tuple[RawMqtt, bool]:
    c = RawMqtt(h.tls_port, h.ca_pem)
    token = sas_token("localhost", "dev1", h.key("dev1"), int(time.time()) + 3600)
    session_present, rc = c.connect("dev1", USER, token, clean_session=clean_session)
    assert rc == 0, f"CONNACK {rc}"
    return c, session_present


def test_c2d_subscription_persists_across_a_clean_session_0_reconnect(hub):
    h = hub(sdk=False)
    c, _ = connect(h, clean_session=False)
    assert c.subscribe(DEVICEBOUND + "#") == [1]
    c.disconnect()

    c, _ = connect(h, clean_session=False)  # no SUBSCRIBE this time
    assert h.post_c2d("dev1", b"x", [("iothub-messageid", "after-reconnect")]).status == 201
    p = c.publish_or_none(3)
    assert p is not None, "no C2D delivery on the resumed session"
    assert "after-reconnect" in p.topic and p.qos == 1
    c.puback(p.pkid)
    c.disconnect()


def test_clean_session_1_reconnect_needs_a_new_subscription(hub):
    h = hub(sdk=False)
    c, _ = connect(h, clean_session=False)
    assert c.subscribe(DEVICEBOUND + "#") == [1]
    c.disconnect()

    c, session_present = connect(h, clean_session=True)  # session discarded
    assert session_present is False, "CONNACK session-present must be 0 with CleanSession=1"
    assert h.post_c2d("dev1", b"x", [("iothub-messageid", "clean")]).status == 201
    assert c.publish_or_none(1.5) is None, "delivered without a subscription on a clean session"
    assert c.subscribe(DEVICEBOUND + "#") == [1]
    p = c.next_publish(5)
    assert "clean" in p.topic
    c.puback(p.pkid)
    c.disconnect()


def test_connack_session_present_only_when_a_session_was_kept(hub):
    h = hub(sdk=False)
    flags = []
    for clean in (False, False, True, False):
        c, session_present = connect(h, clean_session=clean)
        flags.append(session_present)
        c.disconnect()
        time.sleep(0.1)
    # first ever: none; again: kept; clean session: never; after a clean one: none kept
    assert flags == [False, True, False, False]
