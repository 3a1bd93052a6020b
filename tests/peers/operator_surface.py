"""The operator's side of a running gateway, for the tests: its control
socket (through the `status` and `queue` verbs, run as an operator runs
them) and its HTTP surface (`/metrics` parsed by prometheus_client's own
text parser, `/status`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from util import HOST, free_port


class Ops:
    """`[gateway] control` (a short path: sun_path is 108 bytes) and `http`
    on a free port; `section` goes into the gateway's config."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="c2d-ops-"))
        self.socket = self.dir / "control.sock"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.section = f'[gateway]\ncontrol = "{self.socket}"\nhttp = "{HOST}:{self.port}"\n\n'

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------- HTTP side

    def get(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) of GET `path`."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode()

    def status(self) -> dict:
        code, _, body = self.get("/status")
        assert code == 200, body
        return json.loads(body)

    def metrics(self) -> dict:
        """{(sample name, frozenset of label items): value}, parsed by prometheus_client."""
        code, ctype, body = self.get("/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4"), (code, ctype)
        out = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def metric(self, name: str, **labels) -> float | None:
        return self.metrics().get((name, frozenset(labels.items())))


def verb(gw, *args, user: str | None = None, group: str | None = None) -> subprocess.CompletedProcess:
    """`c2d-gateway ARGS --config <the gateway's>` as an operator types it."""
    argv = [gw.binary, *args, "--config", str(gw.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, user=user, group=group)


def verb_json(gw, *args):
    """A verb with `--json`; its result (the verb must succeed)."""
    r = verb(gw, *args, "--json")
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stderr}"
    return json.loads(r.stdout)
