"""IoT Hub keeps one connection per device id: a second one drops the first."""

from __future__ import annotations

import queue
import threading
import time

from hub import API_VERSION, RawMqtt, sas_token, wait_until

USER = f"localhost/dev1/?api-version={API_VERSION}"
DEVICEBOUND = "devices/dev1/messages/devicebound/"


def raw_connect(h) -> RawMqtt:
    c = RawMqtt(h.tls_port, h.ca_pem)
    assert c.connect("dev1", USER, sas_token("localhost", "dev1", h.key("dev1"), int(time.time()) + 3600))[1] == 0
    return c


def test_second_raw_connection_drops_the_first_and_takes_over_delivery(hub):
    h = hub(sdk=False)
    first = raw_connect(h)
    assert first.subscribe(DEVICEBOUND + "#") == [1]
    assert h.post_c2d("dev1", b"1", [("iothub-messageid", "to-first")]).status == 201
    p = first.next_publish(5)
    assert "to-first" in p.topic  # left un-acked on purpose

    second = raw_connect(h)
    assert first.wait_closed(5), "the first connection must be closed when the second one connects"
    assert second.subscribe(DEVICEBOUND + "#") == [1]
    # what the first held (un-acked) comes to the second, then new messages
    p2 = second.next_publish(5)
    assert "to-first" in p2.topic
    second.puback(p2.pkid)
    assert h.post_c2d("dev1", b"2", [("iothub-messageid", "to-second")]).status == 201
    p3 = second.next_publish(5)
    assert "to-second" in p3.topic
    second.puback(p3.pkid)
    wait_until(lambda: h.queue("dev1") == [], 5, what="the queue to be empty")
    # and the second stays up
    assert second.read_or_none(1.0) is None
    second.disconnect()


def test_raw_connection_with_the_same_id_disconnects_the_sdk_client(hub, sdk_client):
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem)  # connection_retry=False
    changed = threading.Event()
    client.on_connection_state_change = changed.set
    received: queue.Queue = queue.Queue()
    client.on_message_received = received.put
    client.connect()
    assert client.connected
    changed.clear()

    other = raw_connect(h)
    assert changed.wait(10), "the SDK was not told its connection ended"
    wait_until(lambda: not client.connected, 10, what="the SDK client to be disconnected")
    assert other.subscribe(DEVICEBOUND + "#") == [1]
    assert h.post_c2d("dev1", b"x", [("iothub-messageid", "to-raw")]).status == 201
    p = other.next_publish(5)
    assert "to-raw" in p.topic
    other.puback(p.pkid)
    assert received.empty()
    other.disconnect()
