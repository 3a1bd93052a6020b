"""Fixtures of the package suite (tests/package): the .deb as built by
`cargo deb --locked`, installed with apt on a booted Debian 12 container, the
hub emulator and a Modbus TCP device on the host's loopback. See bed.py.

Needs root, systemd-nspawn (systemd-container), debootstrap, nsenter and,
for the lint test, lintian. Not root: the whole suite skips, saying so.
A missing tool skips it too, except under CI=true, where tests/run has
installed everything and a missing tool is a failure.

Environment: C2D_PACKAGE_DEB (the .deb; built with `cargo deb --locked` when
unset), C2D_GATEWAY_BIN (the host binary that runs the emulator; default
<target>/release/c2d-gateway), C2D_KEEP_WORK=1 keeps the work directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bed  # noqa: E402

TIMINGS: dict[str, float] = {}
_CLEANUPS: list = []


def _cleanup_all() -> None:
    while _CLEANUPS:
        fn = _CLEANUPS.pop()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - clean-up must go on
            print(f"[package] clean-up step failed: {e}", file=sys.stderr)


def _on_term(signum, _frame):
    # tests/run's timeout (or CI) stops us with SIGTERM: kill the container
    # now, then let pytest unwind.
    _cleanup_all()
    raise KeyboardInterrupt(f"signal {signum}")


def _unavailable(message: str):
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", bed.REPO / "target"))


def cargo_deb(*args: str) -> Path:
    """Runs `cargo deb --locked ARGS` in the repository; returns the .deb it wrote."""
    cmd = ["cargo", "deb", "--locked", *args]
    bed.log(f"+ {' '.join(cmd)}")
    r = subprocess.run(cmd, cwd=bed.REPO, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def debs(tmp_path_factory) -> dict[str, Path]:
    """{"main": the package under test, "upgrade": the same rebuilt as revision 2}."""
    if os.geteuid() != 0:
        pytest.skip("the package suite boots a container: run it as root (tests/run does when it is root)")
    if shutil.which("cargo-deb") is None and not (Path.home() / ".cargo/bin/cargo-deb").exists():
        _unavailable("cargo-deb is not installed (cargo install cargo-deb --locked; tests/run does it)")
    main = os.environ.get("C2D_PACKAGE_DEB")
    built = Path(main) if main else cargo_deb()
    out = tmp_path_factory.mktemp("debs")
    main_deb = out / built.name
    shutil.copy2(built, main_deb)
    # the same build, packaged again as a newer revision: what an upgrade
    # installs. (cargo deb deletes the other .debs in target/debian, even
    # with --output elsewhere: the one under test is put back.)
    (out / "upgrade").mkdir()
    upgrade = cargo_deb("--no-build", "--deb-revision", "2", "--output", str(out / "upgrade"))
    if not built.exists():
        shutil.copy2(main_deb, built)
    return {"main": main_deb, "upgrade": upgrade}


@pytest.fixture(scope="session")
def tb(request, debs):
    """The test bed: a booted container with both .debs in /var/tmp, the
    emulator and the Modbus device running on the host."""
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            _unavailable(f"{tool} is not installed (apt-get install systemd-container debootstrap util-linux)")
    old_term = signal.signal(signal.SIGTERM, _on_term)
    atexit.register(_cleanup_all)
    # runs however the set-up below ends (a failed boot included)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, old_term))
    request.addfinalizer(_cleanup_all)
    bed.clean_leftovers()

    started = time.monotonic()
    image = bed.rootfs()
    TIMINGS["rootfs (debootstrap or cache)"] = time.monotonic() - started

    work = Path(tempfile.mkdtemp(prefix="c2d-pkgtest.", dir="/var/tmp"))
    keep = os.environ.get("C2D_KEEP_WORK") == "1"
    _CLEANUPS.append(lambda: bed.STATE.unlink(missing_ok=True))
    _CLEANUPS.append(lambda: keep or subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False))
    if keep:
        _CLEANUPS.append(lambda: bed.log(f"C2D_KEEP_WORK=1: kept {work}"))
    t = time.monotonic()
    container = bed.Container(work, image)
    TIMINGS["copy rootfs"] = time.monotonic() - t
    _CLEANUPS.append(lambda: container.kill(keep_work=keep))
    t = time.monotonic()
    container.boot()
    TIMINGS["boot"] = time.monotonic() - t

    binary = os.environ.get("C2D_GATEWAY_BIN") or str(target_dir() / "release/c2d-gateway")
    emulator = bed.Emulator(binary, work)
    _CLEANUPS.append(emulator.proc.stop)
    emulator.start()
    modbus = bed.ModbusDevice(sys.executable, work)
    _CLEANUPS.append(modbus.stop)
    modbus.start()

    for path in debs.values():
        container.put(f"/var/tmp/{path.name}", path.read_bytes())
    return TestBed(container, emulator, modbus, debs, work)


class TestBed:
    __test__ = False  # not a test class

    def __init__(self, container, emulator, modbus, debs, work):
        self.c = container
        self.emulator = emulator
        self.modbus = modbus
        self.debs = debs
        self.work = work
        self.done: set[str] = set()  # steps that succeeded, for the steps after them

    def need(self, *steps: str) -> None:
        missing = [s for s in steps if s not in self.done]
        if missing:
            pytest.skip(f"needs the earlier step(s) {', '.join(missing)}, which failed")




def pytest_sessionstart(session):
    # a previous run killed hard (SIGKILL) may have left its container up
    if os.geteuid() == 0:
        bed.clean_leftovers()


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "package suite timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k:32s} {v:6.1f}s")
    if bed.NOTES:
        terminalreporter.write_sep("-", "package suite findings")
        for line in bed.NOTES:
            terminalreporter.write_line(line)
