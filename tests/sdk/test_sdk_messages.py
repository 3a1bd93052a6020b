"""Microsoft's Python device SDK (azure-iot-device 2.14) against the emulator:
cloud-to-device messages with their properties, completion and feedback, and
device-to-cloud messages as the back end sees them."""

from __future__ import annotations

import base64
import json
import queue
from datetime import datetime, timedelta, timezone

import pytest
from azure.iot.device import Message

from hub import wait_until

C2D_HEADERS = [
    ("iothub-messageid", "msg-1"),
    ("iothub-correlationid", "corr-1"),
    ("iothub-ack", "full"),
    ("iothub-contenttype", "application/json"),
    ("iothub-contentencoding", "utf-8"),
    ("iothub-app-color", "blue"),
    ("iothub-app-temperatureAlert", "true"),
    ("iothub-expiry", "3600"),
]
C2D_BODY = b'{"point": "setpoint", "value": 21.5}'


def connected_receiver(hub, sdk_client, **hub_args):
    """A started hub, and an SDK client for dev1 (connection string as printed) with a message queue."""
    h = hub(**hub_args)
    cs = h.connection_strings["dev1"]
    assert cs.startswith("HostName=localhost;DeviceId=dev1;SharedAccessKey="), cs
    client = sdk_client(cs, h.ca_pem)
    received: queue.Queue = queue.Queue()
    client.on_message_received = received.put  # before connect: subscribed right after CONNACK
    client.connect()
    assert client.connected
    return h, client, received


def test_sdk_receives_c2d_with_system_and_custom_properties_and_completes_it(hub, sdk_client):
    h, client, received = connected_receiver(hub, sdk_client)
    sent_at = datetime.now(timezone.utc)

    r = h.post_c2d("dev1", C2D_BODY, C2D_HEADERS)
    assert r.status == 201, r
    assert r.json() == {"message_id": "msg-1"}

    m = received.get(timeout=10)
    assert m.data == C2D_BODY
    assert m.message_id == "msg-1"
    assert m.correlation_id == "corr-1"
    assert m.content_type == "application/json"
    assert m.content_encoding == "utf-8"
    assert m.ack == "full"
    assert m.user_id is None
    # $.exp: absolute UTC expiry, 1 h as set by iothub-expiry (IoT Hub's format, 7 fractional digits)
    assert m.expiry_time_utc.endswith("Z"), m.expiry_time_utc
    exp = datetime.fromisoformat(m.expiry_time_utc)
    assert timedelta(minutes=59) < exp - sent_at < timedelta(minutes=61), m.expiry_time_utc
    # $.to is a system property the SDK drops; the rest are the application properties.
    # Names compared case-insensitively here; exact case: test_custom_property_names_keep_their_case
    assert {k.lower(): v for k, v in m.custom_properties.items()} == \
        {"color": "blue", "temperaturealert": "true"}, m.custom_properties
    assert received.empty()

    # The SDK completes (PUBACK) on receipt: the message leaves the queue, feedback says Success.
    wait_until(lambda: h.queue("dev1") == [], 10, what="dev1's queue to be empty")
    fb = wait_until(lambda: [f for f in h.feedback() if f["original_message_id"] == "msg-1"], 10,
                    what="feedback for msg-1")
    assert len(fb) == 1, fb
    assert fb[0]["device_id"] == "dev1"
    assert fb[0]["status_code"] == "Success"
    # completed once: not delivered again
    with pytest.raises(queue.Empty):
        received.get(timeout=1.0)


def test_a_message_the_back_end_gave_no_id_or_expiry_arrives_without_them(hub, sdk_client):
    """The seeds' back end sets neither a message id nor an expiry: IoT Hub then
    sends no `$.mid` and no `$.exp` (the message still ends after the default
    TTL), and its feedback names no message."""
    h, client, received = connected_receiver(hub, sdk_client)
    r = h.post_c2d("dev1", C2D_BODY, [("iothub-ack", "full"), ("iothub-app-device", "boiler")])
    assert r.status == 201, r
    assert r.json() == {"message_id": None}
    m = received.get(timeout=10)
    assert m.data == C2D_BODY
    assert m.message_id is None
    assert m.expiry_time_utc is None
    assert m.custom_properties == {"device": "boiler"}
    fb = wait_until(lambda: h.feedback(), 10, what="feedback")
    assert [(f["original_message_id"], f["status_code"]) for f in fb] == [("", "Success")]


def test_custom_property_names_keep_their_case(hub, sdk_client):
    """HTTP lower-cases header names, so iothub-app-NAME cannot keep NAME's case; the
    iothub-properties header (a percent-encoded property bag) does."""
    h, client, received = connected_receiver(hub, sdk_client)
    headers = [("iothub-messageid", "case-1"),
               ("iothub-properties", "temperatureAlert=true&Device%20Name=Boiler%2F1")]
    assert h.post_c2d("dev1", C2D_BODY, headers).status == 201
    m = received.get(timeout=10)
    assert m.custom_properties == {"temperatureAlert": "true", "Device Name": "Boiler/1"}


def test_sdk_decodes_escaped_property_names_and_values(hub, sdk_client):
    """The emulator percent-encodes the bag; the SDK decodes it back (`+` is a plus, not a space)."""
    h, client, received = connected_receiver(hub, sdk_client)
    props = [("custom*", "value#"), ("custom&", "value$"), ("custom%", "value@"),
             ("a+b", "c+d"), ("eq", "x=1&y=2"), ("path", "/a b/?q")]
    r = h.post_c2d("dev1", b"\x00\x01binary\xff",
                   [("iothub-messageid", "id with spaces/and&amp=")]
                   + [(f"iothub-app-{k}", v) for k, v in props])
    assert r.status == 201, r
    m = received.get(timeout=10)
    assert m.message_id == "id with spaces/and&amp="
    assert m.data == b"\x00\x01binary\xff"
    assert m.custom_properties == dict(props)


def test_messages_queued_while_offline_arrive_in_order_on_connect(hub, sdk_client):
    h = hub()
    for i in range(3):
        assert h.post_c2d("dev1", f"body {i}".encode(),
                          [("iothub-messageid", f"queued-{i}"), ("iothub-ack", "positive")]).status == 201
    assert [q["message_id"] for q in h.queue("dev1")] == ["queued-0", "queued-1", "queued-2"]
    assert all(q["state"] == "enqueued" and q["delivery_count"] == 0 for q in h.queue("dev1"))

    client = sdk_client(h.connection_strings["dev1"], h.ca_pem)
    received: queue.Queue = queue.Queue()
    client.on_message_received = received.put
    client.connect()
    got = [received.get(timeout=10) for _ in range(3)]
    assert [(m.message_id, m.data) for m in got] == [(f"queued-{i}", f"body {i}".encode()) for i in range(3)]
    wait_until(lambda: h.queue("dev1") == [], 10, what="the queue to drain")
    fb = wait_until(lambda: len(h.feedback()) == 3 and h.feedback(), 10, what="3 feedback records")
    assert sorted((f["original_message_id"], f["status_code"]) for f in fb) == \
        [(f"queued-{i}", "Success") for i in range(3)]


def test_sdk_d2c_message_reaches_the_back_end_with_properties_and_body(hub, sdk_client):
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem)
    client.connect()
    body = json.dumps({"temperature": 91.5, "unit": "°C"})
    msg = Message(body, message_id="d2c-1", content_encoding="utf-8", content_type="application/json")
    msg.correlation_id = "corr-d2c"
    msg.custom_properties["temperatureAlert"] = "true"
    client.send_message(msg)  # returns once the hub's PUBACK came

    events = h.events("dev1")
    assert len(events) == 1, events
    ev = events[0]
    assert ev["device_id"] == "dev1"
    props = dict((k, v) for k, v in ev["properties"])
    assert props == {"$.mid": "d2c-1", "$.cid": "corr-d2c", "$.ct": "application/json",
                     "$.ce": "utf-8", "temperatureAlert": "true"}, ev["properties"]
    assert ev["body"] == body
    assert base64.b64decode(ev["body_base64"]) == body.encode("utf-8")
    assert datetime.fromisoformat(ev["received_time_utc"].replace("Z", "+00:00")) > \
        datetime.now(timezone.utc) - timedelta(minutes=1)


def test_sdk_d2c_escaped_properties_and_binary_body(hub, sdk_client):
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem)
    client.connect()
    msg = Message(b"\xff\x00raw")
    props = {"custom*": "value#", "a+b": "c+d", "eq": "x=1&y=2", "température": "élevée", "empty": ""}
    msg.custom_properties.update(props)
    client.send_message(msg)
    client.send_message(Message("second"))  # no properties at all: the topic ends with '/'

    events = h.events("dev1")
    assert len(events) == 2, events
    assert dict((k, v) for k, v in events[0]["properties"]) == props
    assert events[0]["body"] is None  # not UTF-8
    assert base64.b64decode(events[0]["body_base64"]) == b"\xff\x00raw"
    assert events[1]["properties"] == [] and events[1]["body"] == "second"
