"""One report per outcome, outside a crash: a SIGHUP while reports wait for
their PUBACK does not publish them again, and a message that ends
`uncertain` when the gateway starts again after a kill -9 is reported once
(both were reported twice before the pipeline's core kept track of the
reports on their way)."""

from __future__ import annotations

import os
import signal
import time

from util import modbus_tcp_bus, wait_until


def boiler(device, idempotent: bool) -> str:
    return modbus_tcp_bus("plc", device.address, timeout="3s") + f"""
        [devices.boiler]
        bus = "plc"
        unit = 1
        idempotent = {str(idempotent).lower()}
        points.sp = {{ table = "holding", address = 10, type = "u16" }}
        """


def test_sighup_while_reports_wait_for_their_puback_sends_none_twice(mqtt_gateway, mosquitto, modbus_device, backend):
    device = modbus_device(delay_ms=300)
    gw = mqtt_gateway(boiler(device, idempotent=True))
    ids = [f"hup-{i}" for i in range(4)]
    for i, message_id in enumerate(ids):
        backend.publish("boiler", {"id": message_id, "point": "sp", "value": i})
    gw.wait_log(r"received .*message_id=hup-3\b")
    # The broker freezes: the connection stays up, no PUBACK comes back, so
    # the reports of what the device does meanwhile stay on their way.
    os.kill(mosquitto.proc.pid, signal.SIGSTOP)
    try:
        device.wait_writes(4, timeout=10)
        wait_until(lambda: gw.log_text().count(" delivered") >= 4, 10, what="4 outcomes in the gateway log")
        gw.reload()
        gw.wait_log("configuration reloaded")
    finally:
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
    backend.wait_reports(ids, timeout=20)
    time.sleep(2)  # a second copy would follow the first at once
    for message_id in ids:
        assert len(backend.reports_for(message_id)) == 1, (message_id, backend.reports_for(message_id))


def test_a_message_ended_uncertain_at_start_is_reported_once(mqtt_gateway, modbus_device, backend):
    device = modbus_device(delay_ms=1500)
    gw = mqtt_gateway(boiler(device, idempotent=False))
    backend.publish("boiler", {"id": "wire-1", "point": "sp", "value": 5})
    gw.wait_log(r"sending message_id=wire-1\b")
    time.sleep(0.3)
    assert gw.kill9() == -9
    gw.restart_subscribed()
    report = backend.wait_report("wire-1", timeout=15)
    assert report["status"] == "uncertain", report
    time.sleep(2)
    assert len(backend.reports_for("wire-1")) == 1, backend.reports_for("wire-1")
