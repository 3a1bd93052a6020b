"""Device twins: Microsoft's Python device SDK (get_twin,
patch_twin_reported_properties, on_twin_desired_properties_patch_received)
against the emulator, the back end's side over the emulator's service API
(`GET` / `PATCH /twins/{id}`). IoT Hub's rules: each section has a
`$version` that grows by one per change, `null` deletes, desired changes
are pushed only while the device is connected (it GETs the twin to catch
up), 32 KB per section."""

from __future__ import annotations

import queue

from hub import wait_until


def connected(hub, sdk_client):
    h = hub()
    client = sdk_client(h.connection_strings["dev1"], h.ca_pem)
    client.connect()
    return h, client


def test_get_twin_and_reported_patches(hub, sdk_client):
    h, client = connected(hub, sdk_client)
    twin = client.get_twin()
    assert twin == {"desired": {"$version": 1}, "reported": {"$version": 1}}, twin
    client.patch_twin_reported_properties({"gateway": {"version": "0.1.0", "queued": 0}, "temp": 20})
    client.patch_twin_reported_properties({"temp": None, "gateway": {"queued": 3}})
    reported = client.get_twin()["reported"]
    assert reported == {"gateway": {"version": "0.1.0", "queued": 3}, "$version": 3}, reported
    # The back end sees the same.
    props = h.twin("dev1")["properties"]
    assert props["reported"] == reported and props["desired"] == {"$version": 1}


def test_desired_changes_are_pushed_while_connected_and_fetched_after(hub, sdk_client):
    h, client = connected(hub, sdk_client)
    patches: queue.Queue = queue.Queue()
    client.on_twin_desired_properties_patch_received = patches.put
    r = h.patch_desired("dev1", {"devices": {"boiler": {"setpoint": 21.5, "pump": True}}})
    assert r.status == 200, r
    assert r.json()["properties"]["desired"]["$version"] == 2
    got = patches.get(timeout=10)
    assert got == {"devices": {"boiler": {"setpoint": 21.5, "pump": True}}, "$version": 2}, got
    # Offline: nothing is pushed; the next GET has it all.
    client.disconnect()
    wait_until(lambda: "emulator: connection closed" in h.log_text(), 10, what="the disconnect")
    assert h.patch_desired("dev1", {"devices": {"boiler": {"pump": None, "setpoint": 22}}}).status == 200
    client.connect()
    twin = client.get_twin()
    assert twin["desired"] == {"devices": {"boiler": {"setpoint": 22}}, "$version": 3}, twin
    assert patches.empty(), "no push of a change made while the device was away"


def test_bad_twin_calls_are_refused(hub, sdk_client):
    h, _ = connected(hub, sdk_client)
    assert h.patch_desired("nobody", {"a": 1}).status == 404
    assert h.patch_desired("dev1", {"$version": 7}).status == 400
    assert h.patch_desired("dev1", {"big": "x" * (32 * 1024)}).status == 400
    r = h.request("PATCH", "/twins/dev1", b'{"desired": {"a": 1}}')
    assert r.status == 400, r
    assert h.twin("dev1")["properties"]["desired"] == {"$version": 1}, "nothing changed"


def test_the_twin_verb_shows_and_sets_desired_properties(hub, gateway_bin):
    import json
    import subprocess

    h = hub(sdk=False)

    def twin(*args):
        return subprocess.run([str(gateway_bin), "twin", "--hub", f"http://127.0.0.1:{h.http_port}", *args],
                              capture_output=True, text=True, timeout=30)

    out = twin("--device", "dev1", "set", '{"devices": {"boiler": {"setpoint": 21.5}}}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["properties"]["desired"] == {"devices": {"boiler": {"setpoint": 21.5}},
                                                                "$version": 2}
    out = twin("--device", "dev1")
    assert out.returncode == 0 and json.loads(out.stdout)["deviceId"] == "dev1", out
    out = twin("--device", "nobody")
    assert out.returncode == 1 and "404" in out.stderr, out.stderr
    out = twin("--device", "dev1", "set", "not json")
    assert out.returncode == 1 and "not JSON" in out.stderr, out.stderr


def test_the_send_verb_queues_a_c2d_message(hub, gateway_bin):
    import subprocess

    h = hub(sdk=False)
    out = subprocess.run([str(gateway_bin), "send", "--hub", f"http://127.0.0.1:{h.http_port}", "--device", "dev1",
                          "--message-id", "cli-1", "--property", "device=boiler", '{"point": "sp", "value": 1}'],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "cli-1", out
    assert [m["message_id"] for m in h.queue("dev1")] == ["cli-1"]
