"""The SDK's connection upkeep against the emulator: keep-alive pings, and SAS
token renewal (the SDK reconnects with a fresh token 120 s before expiry)."""

from __future__ import annotations

import queue
import re
import time

from azure.iot.device import Message

from hub import wait_until

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def connections(h) -> list[str]:
    """The emulator's "device connected" log lines (one per accepted CONNECT)."""
    return [line for line in ANSI.sub("", h.log_text()).splitlines() if "emulator: device connected" in line]


def test_sdk_keep_alive_pings_are_answered(hub, sdk_client):
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem, keep_alive=1)
    client.connect()
    time.sleep(3.5)  # paho drops the connection after 1.5 keep-alives without PINGRESP
    assert client.connected
    assert len(connections(h)) == 1, connections(h)
    client.send_message(Message("still here"))
    assert [e["body"] for e in h.events("dev1")] == ["still here"]


def test_sdk_renews_its_sas_token_by_reconnecting_and_keeps_working(hub, sdk_client):
    h = hub()
    # a 123 s token: the SDK renews it 120 s before expiry, i.e. after about 3 s
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem, sastoken_ttl=123)
    received: queue.Queue = queue.Queue()
    client.on_message_received = received.put
    client.connect()
    assert len(connections(h)) == 1
    wait_until(lambda: len(connections(h)) >= 2, 15, what="the SDK to reconnect with a renewed token")
    wait_until(lambda: client.connected, 10, what="the SDK to be connected again")
    assert "SAS token rejected" not in ANSI.sub("", h.log_text())

    assert h.post_c2d("dev1", b"after renewal", [("iothub-messageid", "renewed")]).status == 201
    m = received.get(timeout=10)
    assert m.message_id == "renewed" and m.data == b"after renewal"
    client.send_message(Message("d2c after renewal"))
    assert [e["body"] for e in h.events("dev1")] == ["d2c after renewal"]
