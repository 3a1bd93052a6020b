"""The emulator's back-end HTTP API: errors are JSON {"error": text, "status": code}
with a status that says why (404 unknown device, 403 queue full at 50,
400 bad header, 413 body over 64 KiB)."""

from __future__ import annotations

import pytest


def assert_error(r, status: int, *words: str):
    assert r.status == status, f"expected {status}, got {r.status}: {r.body!r}"
    body = r.json()
    assert set(body) == {"error", "status"}, body
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"], body
    for w in words:
        assert w in body["error"], body


@pytest.fixture
def h(hub):
    return hub(sdk=False)


@pytest.mark.parametrize("method,path", [
    ("POST", "/devices/nobody/messages"),
    ("GET", "/devices/nobody/messages"),
    ("DELETE", "/devices/nobody/messages"),
    ("GET", "/devices/nobody/events"),
])
def test_unknown_device_is_404(h, method, path):
    assert_error(h.request(method, path, b"{}" if method == "POST" else None), 404, "nobody")


def test_queue_full_is_403_after_50_messages_and_purge_frees_it(h):
    for i in range(50):
        r = h.post_c2d("dev1", b"{}", [("iothub-messageid", f"m{i}"), ("iothub-ack", "full")])
        assert r.status == 201, (i, r)
    assert_error(h.post_c2d("dev1", b"{}", [("iothub-messageid", "m50")]), 403, "full")
    q = h.queue("dev1")
    assert len(q) == 50 and "m50" not in {m["message_id"] for m in q}
    assert h.request("DELETE", "/devices/dev1/messages").json() == {"purged": 50}
    assert [f["status_code"] for f in h.feedback()] == ["Purged"] * 50
    assert h.post_c2d("dev1", b"{}", [("iothub-messageid", "m51")]).status == 201


@pytest.mark.parametrize("headers,words", [
    ([("iothub-ack", "sometimes")], ["iothub-ack"]),
    ([("iothub-ack", "FULL")], ["iothub-ack"]),
    ([("iothub-expiry", "0")], ["iothub-expiry"]),
    ([("iothub-expiry", "soon")], ["iothub-expiry"]),
    ([("iothub-expiry", "172801")], ["iothub-expiry"]),
])
def test_bad_header_is_400(h, headers, words):
    assert_error(h.post_c2d("dev1", b"{}", headers), 400, *words)
    assert h.queue("dev1") == [], "a refused message must not be queued"


def test_body_over_64_kib_is_413_and_64_kib_is_accepted(h):
    assert_error(h.post_c2d("dev1", b"x" * (64 * 1024 + 1)), 413)
    assert h.post_c2d("dev1", b"x" * (64 * 1024)).status == 201


def test_no_message_id_is_made_up_when_the_back_end_sets_none(h):
    """Like IoT Hub: a message sent without iothub-messageid has no id (the
    device gets no $.mid; see test_sdk_messages)."""
    a, b = h.post_c2d("dev1", b"{}"), h.post_c2d("dev1", b"{}")
    assert a.status == b.status == 201
    assert a.json() == b.json() == {"message_id": None}
    assert [m["message_id"] for m in h.queue("dev1")] == [None, None]
