"""The status page in a real browser: Debian's Chromium, headless, loads
`/` from a running gateway (Mosquitto as the hub, pymodbus as the device,
one unit of it dead), lets the page's script fetch `status` and draw, and
dumps the DOM it built; a screenshot is taken at phone width. The checks
read the DOM Chromium dumps (device rows, the isolated device marked, the
message waiting for an operator called out), not the HTTP body, which
holds no data at all."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import require_program
from operator_surface import Ops
from test_gateway_faults import sp_point
from util import modbus_tcp_bus, wait_until

pytestmark = pytest.mark.timeout(180)


class Rows(HTMLParser):
    """The `data-*` attributes of every element, and the page's text."""

    def __init__(self):
        super().__init__()
        self.elements: list[dict] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append({"tag": tag, **dict(attrs)})

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def chromium(url: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    program = require_program("chromium")
    argv = [program, "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={workdir / 'profile'}", "--virtual-time-budget=8000", *args, url]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=workdir)


def test_the_status_page_in_chromium(tmp_path, mqtt_gateway, modbus_device, backend):
    ops = Ops()
    try:
        device = modbus_device(dead_units=(2, 3))
        devices = "".join(
            f'[devices.{name}]\nbus = "plc"\nunit = {unit}\nidempotent = {idem}\nmax_attempts = 1000\n'
            f'max_age = "10m"\n{sp_point()}\n'
            for name, unit, idem in (("boiler", 1, "true"), ("pump", 2, "true"), ("valve", 3, "false")))
        bus = modbus_tcp_bus("plc", device.address, timeout="200ms", extra="breaker_after = 2")
        gw = mqtt_gateway(ops.section + bus + devices)
        backend.publish("boiler", {"id": "b-1", "point": "sp", "value": 1})
        backend.publish("valve", {"id": "v-1", "point": "sp", "value": 2})
        backend.publish("pump", {"id": "p-1", "point": "sp", "value": 3})
        assert backend.wait_report("b-1")["status"] == "delivered"
        # units 2 and 3 never answer: v-1 ends uncertain (not idempotent);
        # p-1 is tried again and again, and the breaker isolates its device
        assert backend.wait_report("v-1")["status"] == "uncertain"
        wait_until(lambda: ops.status()["devices"]["pump"]["isolated"], 15, what="pump isolated")

        code, ctype, body = ops.get("/")
        assert code == 200 and ctype.startswith("text/html"), (code, ctype)
        assert "boiler" not in body, "the page's data comes from the browser's fetch, not the HTML"

        r = chromium(ops.url + "/", tmp_path, "--dump-dom")
        assert r.returncode == 0, r.stderr[-2000:]
        dom = Rows()
        dom.feed(r.stdout)
        assert any(e.get("data-loaded") == "true" for e in dom.elements), f"the script did not draw:\n{r.stdout[:3000]}"
        rows = {e["data-device"]: e for e in dom.elements if "data-device" in e}
        assert set(rows) == {"boiler", "pump", "valve"}, rows
        assert rows["pump"]["data-isolated"] == "true" and "isolated" in rows["pump"].get("class", "")
        assert rows["boiler"]["data-isolated"] == "false" and rows["valve"]["data-isolated"] == "false"
        attention = [e["data-message"] for e in dom.elements if "data-message" in e]
        assert attention == ["v-1"], attention
        assert "connected" in dom.text and "Messages waiting for an operator" in dom.text
        assert any(e.get("data-bus") == "plc" for e in dom.elements)

        shot = tmp_path / "status-page.png"
        r = chromium(ops.url + "/", tmp_path, f"--screenshot={shot}", "--window-size=412,1400")
        assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, len(png)
        keep = os.environ.get("C2D_SCREENSHOT_DIR")
        if keep:
            shutil.copy(shot, Path(keep) / "status-page.png")
        assert gw.alive
    finally:
        ops.close()
