"""The SDK's connection upkeep against the emulator: keep-alive pings, and SAS
token renewal (the SDK reconnects with a fresh token 120 s before expiry)."""

from __future__ import annotations

import queue
import re
import time

import pytest
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
    time.sleep(3.5)  # paho drops the connection when a PINGRESP does not come in time
    assert client.connected
    assert len(connections(h)) == 1, connections(h)
    client.send_message(Message("still here"))
    assert [e["body"] for e in h.events("dev1")] == ["still here"]


def renewing_client(hub, sdk_client):
    """dev1 on the SDK with a 123 s token: renewed 120 s before expiry, so after about 3 s."""
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem, sastoken_ttl=123)
    received: queue.Queue = queue.Queue()
    client.on_message_received = received.put
    client.connect()
    assert len(connections(h)) == 1
    wait_until(lambda: len(connections(h)) >= 2, 15, what="the SDK to reconnect with a renewed token")
    wait_until(lambda: client.connected, 10, what="the SDK to be connected again")
    assert "SAS token rejected" not in ANSI.sub("", h.log_text())
    return h, client, received


def test_sdk_renews_its_sas_token_by_reconnecting_and_keeps_sending(hub, sdk_client):
    h, client, _ = renewing_client(hub, sdk_client)
    client.send_message(Message("d2c after renewal"))
    assert [e["body"] for e in h.events("dev1")] == ["d2c after renewal"]


def test_sdk_still_receives_c2d_after_renewing_its_token(hub, sdk_client):
    h, client, received = renewing_client(hub, sdk_client)
    assert h.post_c2d("dev1", b"after renewal", [("iothub-messageid", "renewed")]).status == 201
    m = received.get(timeout=5)
    assert m.message_id == "renewed" and m.data == b"after renewal"
