"""Point encoding as a third-party Modbus stack reads it: the real gateway,
a Mosquitto broker (`[hub] kind = "mqtt"`) and pymodbus as the device, over
Modbus TCP and over Modbus RTU on a socat pty pair.

Every C2D body below is checked against the device's own log of what it
applied (function code, address, values) and against the result report.
Expected register values are worked out by hand in the comments, not by
the gateway's code.
"""

from __future__ import annotations

import pytest

from util import modbus_rtu_bus, modbus_tcp_bus, without_t

UNIT = 3

DEVICE = f"""
[devices.boiler]
bus = "field"
unit = {UNIT}
idempotent = true
allow_raw = true
points.setpoint = {{ table = "holding", address = 100, type = "f32" }}
points.mode = {{ table = "holding", address = 102, type = "u16" }}
points.offset = {{ table = "holding", address = 103, type = "i16" }}
points.setpoint_le = {{ table = "holding", address = 110, type = "f32", word_order = "little" }}
points.total = {{ table = "holding", address = 120, type = "u32", scale = 0.1 }}
points.speed = {{ table = "holding", address = 130, type = "i32", scale = 0.1, word_order = "little" }}
points.position = {{ table = "holding", address = 140, type = "i32" }}
points.pump = {{ table = "coil", address = 7, type = "bool" }}
"""

# (message id, body without the id, [(fc, address, values) the device must log])
CASES = [
    # 21.5 as IEEE 754 single = 0x41AC0000: high word 0x41AC = 16812 first
    ("enc-f32", {"point": "setpoint", "value": 21.5}, [(16, 100, [16812, 0])]),
    # word_order = "little": low word first
    ("enc-f32-le", {"point": "setpoint_le", "value": 21.5}, [(16, 110, [0, 16812])]),
    # one register: FC6
    ("enc-u16", {"point": "mode", "value": 65535}, [(6, 102, [65535])]),
    # -300 in two's complement: 65536 - 300 = 65236
    ("enc-i16", {"point": "offset", "value": -300}, [(6, 103, [65236])]),
    # 123456.7 / 0.1 = raw 1234567 = 0x0012D687 -> [0x0012, 0xD687]
    ("enc-u32-scale", {"point": "total", "value": 123456.7}, [(16, 120, [18, 54919])]),
    # -123.4 / 0.1 = raw -1234 = 0xFFFFFB2E; little: [0xFB2E, 0xFFFF]
    ("enc-i32-scale-le", {"point": "speed", "value": -123.4}, [(16, 130, [64302, 65535])]),
    # -70000 = 0xFFFEEE90 -> [0xFFFE, 0xEE90]
    ("enc-i32", {"point": "position", "value": -70000}, [(16, 140, [65534, 61072])]),
    # a coil: FC5
    ("enc-bool", {"point": "pump", "value": True}, [(5, 7, [True])]),
    # several points: written in document order (not sorted by name);
    # 5.0 = 0x40A00000 -> [16544, 0]
    ("enc-points", {"points": {"setpoint": 5.0, "pump": False, "mode": 2}},
     [(16, 100, [16544, 0]), (5, 7, [False]), (6, 102, [2])]),
    # raw bodies (allow_raw = true)
    ("enc-raw16", {"fc": 16, "address": 200, "values": [1, 2, 65535]}, [(16, 200, [1, 2, 65535])]),
    ("enc-raw15", {"fc": 15, "address": 20, "values": [True, False, True]},
     [(15, 20, [True, False, True])]),
    ("enc-raw6", {"fc": 6, "address": 210, "value": 7}, [(6, 210, [7])]),
]


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
def test_encoding_lands_on_the_device_exactly(kind, request, mqtt_gateway, modbus_device, backend):
    if kind == "tcp":
        device = modbus_device(units=(UNIT,))
        bus = modbus_tcp_bus("field", device.address)
    else:
        pair = request.getfixturevalue("socat_pair")
        device = modbus_device(pair.a, units=(UNIT,))
        bus = modbus_rtu_bus("field", pair.b)
    gw = mqtt_gateway(bus + DEVICE)

    for message_id, body, _ in CASES:
        backend.publish("boiler", {"id": message_id, **body})
    reports = backend.wait_reports([c[0] for c in CASES], timeout=15)

    expected = [{"unit": UNIT, "fc": fc, "address": address, "values": values}
                for _, _, writes in CASES for fc, address, values in writes]
    assert without_t(device.wait_writes(len(expected))) == expected

    for message_id, _, _ in CASES:
        r = reports[message_id]
        assert (r["status"], r["attempts"], r["device"]) == ("delivered", 1, "boiler"), r
        assert "id_generated" not in r and "resent_after_crash" not in r, r
        assert backend.topics_for(message_id) == ["gateway/boiler/result"]
    # the README's example detail, word for word
    assert reports["enc-f32"]["detail"] == "holding 100..101 = [16812, 0]"
    for message_id in ("enc-f32", "enc-points"):
        assert reports[message_id]["received_at"] <= reports[message_id]["completed_at"]
    assert gw.alive
    # nothing more arrives: a last message lands right after the others
    backend.publish("boiler", {"id": "enc-last", "point": "mode", "value": 1})
    assert backend.wait_report("enc-last")["status"] == "delivered"
    assert without_t(device.wait_writes(len(expected) + 1)) == expected + [
        {"unit": UNIT, "fc": 6, "address": 102, "values": [1]}]
