"""IoT Hub's connection rules, as the emulator enforces them, with the
suite's raw MQTT client (it sends nothing it is not told to): keep-alive
(1.5 periods of silence end the connection), SUBSCRIBE only to the topics
IoT Hub has (anything else ends the connection; method and twin topics are
granted QoS 0, the device-bound one the QoS asked for up to 1), UNSUBACK,
no QoS 2, and strict PUBACK order judged by the order the PUBLISHes were
sent (a message whose lock ran out goes again after those sent before)."""

from __future__ import annotations

import struct
import time

from hub import API_VERSION, PINGREQ, PINGRESP, RawMqtt, parse_bag, sas_token, wait_until
from hub import _utf8

DEVICEBOUND = "devices/dev1/messages/devicebound/"
UNSUBSCRIBE, UNSUBACK = 10, 11


def session(h, *, keepalive: int = 60) -> RawMqtt:
    c = RawMqtt(h.tls_port, h.ca_pem)
    token = sas_token("localhost", "dev1", h.key("dev1"), int(time.time()) + 3600)
    _, rc = c.connect("dev1", f"localhost/dev1/?api-version={API_VERSION}", token, keepalive=keepalive)
    assert rc == 0, f"CONNACK return code {rc}"
    return c


def test_a_silent_connection_ends_after_one_and_a_half_keep_alive_periods(hub):
    h = hub(sdk=False)
    quiet = session(h, keepalive=2)
    t0 = time.monotonic()
    assert quiet.wait_closed(6), "still open after 6 s of silence with keep-alive 2 s"
    took = time.monotonic() - t0
    assert 2.5 <= took < 5, f"closed after {took:.1f} s (1.5 x 2 s expected)"
    wait_until(lambda: "1.5 keep-alive periods" in h.log_text(), 5, what="the reason in the log")
    # Pinging keeps it open.
    alive = session(h, keepalive=2)
    for _ in range(4):
        time.sleep(1.0)
        alive.send(PINGREQ, 0, b"")
        assert alive.read(5).type == PINGRESP
    alive.disconnect()


def test_subscriptions_iot_hub_has_are_granted_and_others_end_the_connection(hub):
    h = hub(sdk=False)
    c = session(h)
    assert c.subscribe("$iothub/methods/POST/#", qos=1) == [0], "methods: QoS 0"
    assert c.subscribe("$iothub/twin/res/#", qos=1) == [0]
    assert c.subscribe("$iothub/twin/PATCH/properties/desired/#", qos=1) == [0]
    assert c.subscribe(DEVICEBOUND + "#", qos=0) == [0], "QoS 0 asked: QoS 0 granted"
    assert c.subscribe(DEVICEBOUND + "#", qos=1) == [1]
    # UNSUBSCRIBE is answered.
    c.send(UNSUBSCRIBE, 0x2, struct.pack("!H", 77) + _utf8("$iothub/twin/res/#"))
    p = c.read(5)
    assert (p.type, struct.unpack("!H", p.body)[0]) == (UNSUBACK, 77), p
    # A topic IoT Hub does not have: the connection ends.
    pk = c.pkid()
    c.send(8, 0x2, struct.pack("!H", pk) + _utf8("devices/dev1/whatever/#") + bytes([1]))
    assert c.wait_closed(5), "an unsupported subscription must end the connection"
    wait_until(lambda: "does not support: devices/dev1/whatever/#" in h.log_text(), 5, what="the reason in the log")


def test_a_qos_2_publish_ends_the_connection(hub):
    h = hub(sdk=False)
    c = session(h)
    c.send(3, 2 << 1, _utf8("devices/dev1/messages/events/") + struct.pack("!H", 5) + b"x")
    assert c.wait_closed(5)
    assert h.events("dev1") == [], "not stored"


def test_strict_order_is_judged_by_the_order_publishes_were_sent(hub):
    h = hub(sdk=False, args=["--lock-timeout", "2s"])
    c = session(h)
    assert c.subscribe(DEVICEBOUND + "#", qos=1) == [1]

    def mid(p) -> str:
        return dict(parse_bag(p.topic, DEVICEBOUND))["$.mid"]

    assert h.post_c2d("dev1", b"a", [("iothub-messageid", "a")]).status == 201
    a1 = c.next_publish(5)
    time.sleep(1.0)
    assert h.post_c2d("dev1", b"b", [("iothub-messageid", "b")]).status == 201
    b = c.next_publish(5)
    a2 = c.next_publish(5)  # a's lock ran out first: it comes again, after b
    assert [mid(a1), mid(b), mid(a2)] == ["a", "b", "a"]
    # Acked in the order received: a's first copy (stale, ignored), b, a again.
    for p in (a1, b, a2):
        c.puback(p.pkid)
    wait_until(lambda: h.queue("dev1") == [], 5, what="both completed")
    assert not c.wait_closed(1.0), "a correct client was taken for out of order"
    assert h.feedback() == [], "no iothub-ack was asked for"
    c.disconnect()
