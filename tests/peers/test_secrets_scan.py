"""The secrets scan that tests/run runs over every suite's logs can fail."""

import importlib.util
import tempfile
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("secrets_scan", Path(__file__).parents[1] / "secrets_scan.py")
scan_mod = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scan_mod)

KEY = "c2VjcmV0LWtleS1mb3ItdGhlLXNjYW4tdGVzdA=="


@pytest.fixture
def tmp_path():
    """Outside pytest's basetemp: tests/run scans that for real, and these
    logs leak on purpose."""
    with tempfile.TemporaryDirectory(prefix="c2d-secrets-scan-selftest-") as d:
        yield Path(d)


def layout(tmp_path: Path, log: str) -> Path:
    run = tmp_path / "test_x0"
    (run / "state" / "journal").mkdir(parents=True)
    (run / "config.toml").write_text(
        f'[hub]\nconnection_string = "HostName=h;DeviceId=d;SharedAccessKey={KEY}"\npassword = "broker-pass-123"\n')
    (run / "mqtt.passwd").write_text("gw:$7$hash\n")
    (run / "state" / "journal" / "db").write_bytes(KEY.encode())  # binary state is not a log
    (run / "gateway.log").write_text(log)
    return tmp_path


def test_clean_logs_pass(tmp_path):
    root = layout(tmp_path, "INFO connected to the hub as device d\n")
    # the hub emulator prints the keys it registers: the hub's output, not scanned
    (root / "test_x0" / "hub").mkdir()
    (root / "test_x0" / "hub" / "emulator.log").write_text(f"device d: SharedAccessKey={KEY}\n")
    secrets, logs, leaks = scan_mod.scan([root])
    assert KEY in secrets and "broker-pass-123" in secrets
    assert [p.name for p, _ in logs] == ["gateway.log"]
    assert leaks == []
    assert scan_mod.main(["scan", str(tmp_path)]) == 0


def test_a_key_a_password_or_a_signature_in_a_log_is_a_leak(tmp_path):
    log = (f"ERROR bad {KEY}\n"
           "WARN login broker-pass-123 refused\n"
           "DEBUG token SharedAccessSignature sr=h%2Fdevices%2Fd&sig=AbCdEfGhIjKlMnOpQrStUvWx%3D&se=1\n")
    _, _, leaks = scan_mod.scan([layout(tmp_path, log)])
    assert [leak.split(": ", 1)[0].rsplit(":", 1)[1] for leak in leaks] == ["1", "2", "3"], leaks
    assert all(KEY not in leak and "broker-pass-123" not in leak for leak in leaks), "the report masks secrets"
    assert scan_mod.main(["scan", str(tmp_path)]) == 1
