"""Telemetry through hub outages, against Mosquitto (stopped and started
again on its port) and pymodbus: readings taken while the broker is down
are kept on disk and published after the reconnect, in order, each with its
`read_at`; a gateway restarted meanwhile keeps them; at the buffer's bound
the oldest go first, counted in /metrics. Checked from what a subscriber of
the telemetry topic receives."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, require_program
from operator_surface import Ops
from util import modbus_tcp_bus, wait_until

pytestmark = pytest.mark.timeout(120)

INTERVAL = 0.2


@pytest.fixture
def mosquitto(tmp_path):
    """This module's broker keeps its sessions across a restart (persistence
    on; stopped with SIGTERM it saves them): the subscriber misses nothing
    the gateway publishes while it reconnects, whoever comes back first."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = Broker(require_program("mosquitto"), workdir)
    text = broker.conf_path.read_text().replace("persistence false\n", "")
    # (started as root, Mosquitto would run as user mosquitto, who cannot
    # write the test's directory)
    broker.conf_path.write_text(text + f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
                                + ("user root\n" if os.geteuid() == 0 else ""))
    broker.start()
    yield broker
    broker.stop()


class Subscriber:
    """Receives `gateway/+/telemetry` (QoS 1) on a persistent session (the
    broker queues what comes while it is away); `.readings()` in arrival
    order."""

    def __init__(self, broker):
        self._got: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"telemetry-{id(self)}",
                                  clean_session=False)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_connect = lambda c, *_: c.subscribe("gateway/+/telemetry", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, message):
        with self._lock:
            self._got.append(json.loads(message.payload))

    def readings(self) -> list[dict]:
        with self._lock:
            return list(self._got)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def at(r: dict) -> float:
    return datetime.fromisoformat(r["read_at"].replace("Z", "+00:00")).timestamp()


def boiler(device) -> str:
    return modbus_tcp_bus("plc", device.address) + f"""
[devices.boiler]
bus = "plc"
unit = 1
points.sp = {{ table = "holding", address = 10, type = "u16" }}
telemetry = {{ interval = "{int(INTERVAL * 1000)}ms", points = ["sp"] }}
"""


def distinct(readings: list[dict]) -> list[float]:
    """read_at of each reading in arrival order, repeats (at least once) left out."""
    out = []
    for r in readings:
        if at(r) not in out:
            out.append(at(r))
    return out


def test_readings_taken_while_the_broker_is_down_arrive_after_it_in_order(mosquitto, mqtt_gateway, modbus_device):
    device = modbus_device()
    ops = Ops()
    sub = Subscriber(mosquitto)
    try:
        mqtt_gateway(ops.section + boiler(device))
        wait_until(lambda: len(sub.readings()) >= 3, 10, what="readings before the outage")
        mosquitto.stop()
        down = time.time()
        time.sleep(2.5)
        assert ops.metric("c2d_gateway_telemetry_buffered") >= 5, "kept while the broker is down"
        mosquitto.start()
        up = time.time()
        wait_until(lambda: any(at(r) > up + 1.0 for r in sub.readings()), 20, what="readings after the outage")
        times = distinct(sub.readings())
        assert times == sorted(times), f"out of order: {times}"
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert max(gaps) < 4 * INTERVAL, f"readings missing (largest gap {max(gaps):.2f} s; outage {up - down:.1f} s)"
        assert sum(1 for t in times if down < t < up) >= 8, "the outage's readings arrived"
        assert all(r["time"] == r["read_at"] for r in sub.readings())
        wait_until(lambda: ops.metric("c2d_gateway_telemetry_buffered") == 0, 10, what="the buffer drained")
        assert ops.metric("c2d_gateway_telemetry_dropped_total") == 0
    finally:
        sub.close()
        ops.close()


def test_the_buffer_survives_a_restart_and_drops_the_oldest_at_its_bound(mosquitto, mqtt_gateway, modbus_device):
    device = modbus_device()
    ops = Ops()
    sub = Subscriber(mosquitto)
    try:
        # About six readings fit in 1 KiB.
        gw = mqtt_gateway(ops.section.replace("[gateway]\n", '[gateway]\ntelemetry_buffer = "1KiB"\n')
                          + boiler(device))
        wait_until(lambda: len(sub.readings()) >= 2, 10, what="readings before the outage")
        mosquitto.stop()
        down = time.time()
        time.sleep(3.0)
        dropped = ops.metric("c2d_gateway_telemetry_dropped_total")
        kept = ops.metric("c2d_gateway_telemetry_buffered")
        assert dropped >= 5 and 3 <= kept <= 8, (dropped, kept)
        assert "the telemetry buffer is full: dropping the oldest readings" in gw.log_text()
        gw.terminate()
        stopped = time.time()
        mosquitto.start()
        gw.start_subscribed()
        wait_until(lambda: sum(1 for t in distinct(sub.readings()) if down < t < stopped) >= kept, 20,
                   what=f"the {kept:.0f} readings kept through the restart")
        during = [t for t in distinct(sub.readings()) if down < t < stopped]
        assert during == sorted(during)
        assert min(during) > down + 1.0, "the oldest of the outage were the ones dropped"
        assert max(during) > stopped - 1.0, "the newest were kept"
    finally:
        sub.close()
        ops.close()
