def test_smoke(mqtt_gateway, modbus_device, backend, mosquitto):
    dev = modbus_device(units=(1,))
    gw = mqtt_gateway(f'''
        [buses.plc]
        kind = "modbus-tcp"
        address = "{dev.address}"
        timeout = "500ms"
        [devices.boiler]
        bus = "plc"
        unit = 1
        idempotent = true
        points.setpoint = {{ table = "holding", address = 100, type = "f32" }}
        ''')
    backend.publish("boiler", {"id": "m1", "point": "setpoint", "value": 21.5})
    r = backend.wait_report("m1")
    print(r)
    print(dev.writes())
    gw.restart_subscribed()
    backend.publish("boiler", {"id": "m1", "point": "setpoint", "value": 21.5})
    backend.wait_report("m1", count=2)
    print(gw.log_text())
    print(mosquitto.log_text())
    assert 0
