"""Fixtures for the device-SDK suite (tests/sdk): Microsoft's Python device SDK
(azure-iot-device) and a raw MQTT client against `c2d-gateway hub-emulator`.

- `hub(sdk=True, ...)`: the emulator as a child process, TLS on 127.0.0.1:8883
  (the SDK has the port built in: mqtt_transport.py connects to 8883, or 443
  with websockets) and HTTP on a free port. `sdk=False` puts TLS on a free
  port too, for tests that use only the raw client. If 8883 is taken by
  something else the test is skipped (failed under CI=true).
- `sdk_client(connection_string, ca_pem)`: an IoTHubDeviceClient trusting the
  emulator's CA, without automatic reconnects, shut down at teardown.

Runs in its own venv (tests/requirements-sdk.txt): the SDK needs paho-mqtt<2.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from hub import Hub, HubStartError, free_port, port_accepts
from util import find_gateway_bin

REPO = Path(__file__).resolve().parents[2]
SDK_PORT = 8883  # fixed in azure-iot-device's MQTT transport


def _unavailable(message: str):
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    """`$C2D_GATEWAY_BIN`, else the release build under the cargo target dir."""
    binary, why = find_gateway_bin()
    if binary is None:
        (pytest.fail if os.environ.get("C2D_GATEWAY_BIN") else pytest.skip)(why)
    return binary


@pytest.fixture
def hub(tmp_path, gateway_bin):
    """Factory: `hub(*, sdk=True, devices=("dev1",), args=())` -> a started Hub."""
    hubs, counter = [], itertools.count()

    def start(*, sdk: bool = True, devices=("dev1",), args=()) -> Hub:
        workdir = tmp_path / f"hub{next(counter)}"
        for attempt in range(2):
            if sdk and port_accepts(SDK_PORT):
                _unavailable(f"127.0.0.1:{SDK_PORT} is taken by another program; the Python device SDK "
                             f"can only connect to port {SDK_PORT}, so the emulator must listen there")
            h = Hub(gateway_bin, workdir, tls_port=SDK_PORT if sdk else free_port(), devices=devices, args=args)
            hubs.append(h)
            try:
                return h.start()
            except HubStartError as e:
                if not e.port_in_use:
                    raise AssertionError(str(e)) from None
                if sdk:
                    _unavailable(f"cannot listen on 127.0.0.1:{SDK_PORT} (taken by another program); the "
                                 f"Python device SDK can only connect to port {SDK_PORT}:\n{e}")
                if attempt:  # a free port was taken in between, twice
                    raise AssertionError(str(e)) from None
        raise AssertionError("unreachable")

    yield start
    for h in reversed(hubs):
        h.stop()


@pytest.fixture
def sdk_client():
    """Factory: `sdk_client(connection_string, ca_pem, **kwargs)` -> IoTHubDeviceClient."""
    from azure.iot.device import IoTHubDeviceClient

    clients = []

    def make(connection_string: str, ca_pem: str, **kwargs):
        kwargs.setdefault("connection_retry", False)  # a refused or dropped connection stays so
        client = IoTHubDeviceClient.create_from_connection_string(
            connection_string, server_verification_cert=ca_pem, **kwargs)
        clients.append(client)
        return client

    yield make
    for c in reversed(clients):
        try:
            c.shutdown()
        except Exception:  # noqa: BLE001 - teardown of a client whose connection may be gone
            pass
