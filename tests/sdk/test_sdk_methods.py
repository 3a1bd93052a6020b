"""Direct methods: Microsoft's Python device SDK (on_method_request_received,
send_method_response) against the emulator, the calls made over the
emulator's service API (`POST /twins/{id}/methods`) as the service SDK makes
them. IoT Hub's rules: requests at QoS 0 with a `$rid`, 404 for a device
that is not online, 504 when the device does not answer in time, nothing
redelivered."""

from __future__ import annotations

import threading
import time

from azure.iot.device import MethodResponse

from hub import wait_until


def answering_client(hub, sdk_client, answer=None):
    """A hub and a connected SDK client whose method handler answers with
    `answer(request)` -> (status, payload), or never when it returns None."""
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem)
    calls = []

    def on_method(request):
        calls.append(request)
        out = answer(request) if answer else (200, {"name": request.name, "echo": request.payload})
        if out is not None:
            client.send_method_response(MethodResponse.create_from_method_request(request, *out))

    client.on_method_request_received = on_method  # subscribes to $iothub/methods/POST/#
    client.connect()
    return h, client, calls


def test_a_method_call_reaches_the_sdk_and_its_answer_comes_back(hub, sdk_client):
    h, _, calls = answering_client(hub, sdk_client)
    r = h.invoke("dev1", "read", {"device": "boiler", "points": ["temperature"]})
    assert r.status == 200, r
    assert r.json() == {"status": 200, "payload": {"name": "read",
                                                    "echo": {"device": "boiler", "points": ["temperature"]}}}
    assert [c.name for c in calls] == ["read"]
    # Each call has its own request id; a payload may be any JSON value.
    assert h.invoke("dev1", "write", "just text").json()["payload"]["echo"] == "just text"
    assert h.invoke("dev1", "status").json()["payload"]["echo"] is None
    assert len({c.request_id for c in calls}) == 3


def test_the_devices_status_is_passed_through(hub, sdk_client):
    h, _, _ = answering_client(hub, sdk_client, lambda req: (409, {"why": "id reused"}))
    r = h.invoke("dev1", "write", {"id": "x"})
    assert r.status == 200, "the call worked; the device's status is in the body"
    assert r.json() == {"status": 409, "payload": {"why": "id reused"}}


def test_a_device_that_is_not_online_is_a_404(hub, sdk_client):
    h, client, _ = answering_client(hub, sdk_client)
    client.disconnect()
    wait_until(lambda: h.invoke("dev1", "read").status == 404, 10, what="the device counted as offline")
    r = h.invoke("dev1", "read")
    assert r.json()["errorCode"] == 404103, r
    r = h.invoke("nobody", "read")
    assert (r.status, r.json()["errorCode"]) == (404, 404001), r


def test_a_device_connected_without_a_method_handler_is_not_online(hub, sdk_client):
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem)
    client.connect()
    r = h.invoke("dev1", "read")
    assert (r.status, r.json()["errorCode"]) == (404, 404103), r


def test_the_connect_timeout_waits_for_the_device(hub, sdk_client):
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem)

    def come_online():  # setting the handler connects and subscribes (the SDK's way)
        client.on_method_request_received = lambda req: client.send_method_response(
            MethodResponse.create_from_method_request(req, 200, "late but there"))

    timer = threading.Timer(1.0, come_online)
    timer.start()
    t0 = time.monotonic()
    r = h.invoke("dev1", "read", connect_timeout=20)
    timer.join()
    assert r.status == 200 and r.json()["payload"] == "late but there", r
    assert 0.9 <= time.monotonic() - t0 < 15


def test_a_device_that_does_not_answer_in_time_is_a_504_and_its_late_answer_is_dropped(hub, sdk_client):
    late = []

    def slow(request):
        late.append(request)
        return None  # answered below, after the call timed out

    h, client, _ = answering_client(hub, sdk_client, slow)
    t0 = time.monotonic()
    r = h.invoke("dev1", "write", {"id": "m1"}, response_timeout=5)
    took = time.monotonic() - t0
    assert (r.status, r.json()["errorCode"]) == (504, 504101), r
    assert 4.5 <= took < 9, took
    client.send_method_response(MethodResponse.create_from_method_request(late[0], 200, "too late"))
    wait_until(lambda: "nobody waits for" in h.log_text(), 10, what="the late answer dropped")
    # The connection stays, and the next call works (nothing was redelivered).
    assert len(late) == 1
    assert h.invoke("dev1", "write", {"id": "m1"}, response_timeout=5).status == 504
    assert len(late) == 2


def test_bad_calls_are_a_400(hub, sdk_client):
    h, _, calls = answering_client(hub, sdk_client)
    for body in (b"not json", b'{"payload": 1}', b'{"methodName": "read", "responseTimeoutInSeconds": 1}',
                 b'{"methodName": "a/b"}'):
        r = h.invoke("dev1", "", raw=body)
        assert r.status == 400, (body, r)
        assert r.json()["errorCode"] == 400027
    assert calls == []


def test_the_invoke_verb_prints_the_status_and_the_answer(hub, sdk_client, gateway_bin):
    import json
    import subprocess

    h, _, _ = answering_client(hub, sdk_client, lambda req: (201, {"got": req.payload}))

    def invoke(*args):
        return subprocess.run([str(gateway_bin), "invoke", "--hub", f"http://127.0.0.1:{h.http_port}",
                               "--timeout", "5s", *args], capture_output=True, text=True, timeout=30)

    out = invoke("--device", "dev1", "read", '{"device": "boiler", "points": ["temperature"]}')
    assert out.returncode == 0, out.stderr
    status, _, body = out.stdout.partition("\n")
    assert status == "status: 201"
    assert json.loads(body) == {"got": {"device": "boiler", "points": ["temperature"]}}
    out = invoke("--device", "nobody", "read")
    assert out.returncode == 1
    assert "404" in out.stderr and "not registered" in out.stderr, out.stderr
