"""C2D locks: a message the device leaves un-acknowledged is delivered again
after the lock timeout (and after a reconnect); once acknowledged it is gone.

The SDK acknowledges every C2D message on receipt (paho 1.x sends the PUBACK
itself), so these tests use the suite's raw MQTT client, which sends nothing
it is not told to, with a SAS token made here as azure-iot-hub-mqtt.md says."""

from __future__ import annotations

import time

from hub import API_VERSION, RawMqtt, parse_bag, sas_token, wait_until

DEVICEBOUND = "devices/dev1/messages/devicebound/"


def raw_session(h, *, clean_session=False) -> RawMqtt:
    """dev1 connected over TLS (CONNACK 0) and subscribed to its device-bound topic (SUBACK QoS 1)."""
    c = RawMqtt(h.tls_port, h.ca_pem)
    token = sas_token("localhost", "dev1", h.key("dev1"), int(time.time()) + 3600)
    _, rc = c.connect("dev1", f"localhost/dev1/?api-version={API_VERSION}", token, clean_session=clean_session)
    assert rc == 0, f"CONNACK return code {rc}"
    assert c.subscribe(DEVICEBOUND + "#", qos=1) == [1], "SUBACK must grant QoS 1"
    return c


def mid(p) -> str:
    return dict(parse_bag(p.topic, DEVICEBOUND))["$.mid"]


def test_unacked_message_is_redelivered_after_the_lock_timeout_and_not_after_its_ack(hub):
    h = hub(sdk=False, args=["--lock-timeout", "2s"])
    c = raw_session(h)
    assert h.post_c2d("dev1", b"lock me", [("iothub-messageid", "lock-1"), ("iothub-ack", "full")]).status == 201

    first = c.next_publish(5)
    t_first = time.monotonic()
    assert first.qos == 1 and first.pkid is not None
    assert mid(first) == "lock-1" and first.payload == b"lock me"
    assert h.queue("dev1")[0] | {"enqueued_time_utc": None, "expiry_time_utc": None} == {
        "message_id": "lock-1", "state": "locked", "delivery_count": 1,
        "enqueued_time_utc": None, "expiry_time_utc": None}
    # no PUBACK: the lock (2 s) ends and the hub delivers it again on the same connection
    assert c.publish_or_none(1.0) is None, "delivered again before the lock ended"
    second = c.next_publish(6)
    waited = time.monotonic() - t_first
    assert 1.5 < waited < 5.0, f"redelivered after {waited:.2f}s with a 2s lock"
    assert second.qos == 1 and mid(second) == "lock-1" and second.payload == b"lock me"
    assert second.topic == first.topic
    q = h.queue("dev1")
    assert [(m["message_id"], m["state"], m["delivery_count"]) for m in q] == [("lock-1", "locked", 2)]
    assert h.feedback() == [], "no feedback while the message is still pending"

    c.puback(second.pkid)
    wait_until(lambda: h.queue("dev1") == [], 5, what="the acked message to leave the queue")
    fb = h.feedback()
    assert [(f["original_message_id"], f["status_code"]) for f in fb] == [("lock-1", "Success")]
    # completed: nothing comes back after another lock period, and the connection stays up
    assert c.publish_or_none(3.0) is None, "redelivered after its PUBACK"
    assert h.post_c2d("dev1", b"next", [("iothub-messageid", "lock-2")]).status == 201
    third = c.next_publish(5)
    assert mid(third) == "lock-2"
    c.puback(third.pkid)
    c.disconnect()


def test_unacked_message_is_redelivered_after_a_reconnect(hub):
    h = hub(sdk=False)  # default 60 s lock: only the reconnect brings it back
    c = raw_session(h)
    assert h.post_c2d("dev1", b"again", [("iothub-messageid", "rc-1"), ("iothub-ack", "full")]).status == 201
    p = c.next_publish(5)
    assert mid(p) == "rc-1"
    c.close()  # gone without a PUBACK (and without DISCONNECT)

    wait_until(lambda: h.queue("dev1")[0]["state"] == "enqueued", 5, what="the lock to be released")
    c2 = raw_session(h)
    p2 = c2.next_publish(5)
    assert mid(p2) == "rc-1" and p2.qos == 1 and p2.payload == b"again"
    assert h.queue("dev1")[0]["delivery_count"] == 2
    c2.puback(p2.pkid)
    wait_until(lambda: h.queue("dev1") == [], 5, what="the queue to be empty")
    assert [(f["original_message_id"], f["status_code"]) for f in h.feedback()] == [("rc-1", "Success")]
    c2.disconnect()


def test_acks_follow_arrival_order_and_an_out_of_order_ack_drops_the_connection(hub):
    """Strict mode (the default, like the C# SDK / protocol gateway): PUBACKs must follow the order
    of the PUBLISHes; acking the second first closes the connection and both come back."""
    h = hub(sdk=False)
    c = raw_session(h)
    for i in (1, 2):
        assert h.post_c2d("dev1", b"x", [("iothub-messageid", f"ord-{i}")]).status == 201
    p1, p2 = c.next_publish(5), c.next_publish(5)
    assert [mid(p1), mid(p2)] == ["ord-1", "ord-2"] and p1.pkid != p2.pkid
    c.puback(p2.pkid)
    assert c.wait_closed(5), "an out-of-order PUBACK must close the connection in strict mode"

    c2 = raw_session(h)
    again = [c2.next_publish(5), c2.next_publish(5)]
    assert [mid(p) for p in again] == ["ord-1", "ord-2"]
    for p in again:
        c2.puback(p.pkid)
    wait_until(lambda: h.queue("dev1") == [], 5, what="the queue to be empty")
    c2.disconnect()
