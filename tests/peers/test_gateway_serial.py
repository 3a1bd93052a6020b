"""A line-oriented serial device (pyserial, on one end of a socat pty pair)
behind the real gateway, with Mosquitto as the hub: ack, nack, silence, a
body that would split into two frames, and the `{"id", "text"}` envelope
of the plain-MQTT dialect.
"""

from __future__ import annotations

from util import wait_until, without_t


def test_serial_ack_nack_silence_and_framing(socat_pair, serial_device, mqtt_gateway, backend):
    device = serial_device(socat_pair.a, reply_nack="ERR out of range", nack_on=["BAD"], silent_on=["QUIET"])
    gw = mqtt_gateway(f"""
        [buses.display]
        kind = "serial"
        port = "{socat_pair.b}"
        baud = 115200
        framing = "line"
        ack = "^OK"
        nack = "^ERR"
        timeout = "500ms"

        [devices.panel]
        bus = "display"
        max_attempts = 3
        """)
    messages = [
        ("s-ok", "HELLO WORLD"),
        ("s-nack", "BAD VALUE 7"),
        ("s-quiet", "QUIET PLEASE"),
        ("s-split", "TWO\nLINES"),
        ("s-after", "STILL HERE"),
    ]
    for message_id, text in messages:
        backend.publish("panel", {"id": message_id, "text": text})
    reports = backend.wait_reports([m for m, _ in messages], timeout=15)

    ok = reports["s-ok"]
    assert (ok["status"], ok["attempts"]) == ("delivered", 1), ok
    assert "OK" in ok["detail"], ok
    nack = reports["s-nack"]
    assert (nack["status"], nack["attempts"]) == ("rejected", 1), nack
    assert "ERR out of range" in nack["detail"], nack
    quiet = reports["s-quiet"]
    assert (quiet["status"], quiet["attempts"]) == ("uncertain", 1), quiet
    assert "no reply" in quiet["detail"] and "not idempotent" in quiet["detail"], quiet
    split = reports["s-split"]
    assert (split["status"], split["attempts"]) == ("rejected", 0), split
    assert "line break" in split["detail"], split
    assert reports["s-after"]["status"] == "delivered"

    # the device saw each text once, without the JSON envelope; the split
    # body never reached it; silence was not answered by a second try
    assert without_t(device.wait_frames(4)) == [
        {"frame": "HELLO WORLD", "reply": "OK"},
        {"frame": "BAD VALUE 7", "reply": "ERR out of range"},
        {"frame": "QUIET PLEASE", "reply": None},
        {"frame": "STILL HERE", "reply": "OK"},
    ]
    for message_id, _ in messages:
        assert len(backend.reports_for(message_id)) == 1
        assert backend.topics_for(message_id) == ["gateway/panel/result"]

    # a body that is not the envelope goes as it is (and gets an id of its own)
    before = len(backend.all_reports())
    backend.publish("panel", "PLAIN TEXT 1")
    wait_until(lambda: len(backend.all_reports()) > before, 10, what="the report of the plain body")
    r = backend.all_reports()[before]
    assert (r["status"], r.get("id_generated")) == ("delivered", True), r
    assert device.frames()[-1]["frame"] == "PLAIN TEXT 1"
    assert len(device.frames()) == 5
    assert gw.alive

