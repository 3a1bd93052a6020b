"""The Debian package on a booted Debian 12, step by step, in file order:
lint, install (unconfigured), a broken config, configure, deliver, serial,
device allow-list, log, reload, crash, watchdog, stop, upgrade, sandbox
score, remove, purge. Each step records its
success in `tb.done`; a step that needs an earlier one that failed skips,
naming it.

The gateway in the container talks to the hub emulator (MQTT over TLS, its
own CA) and a pymodbus Modbus TCP device on the host's 127.0.0.1, and to a
serial panel on a pty made by socat inside the container.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import time

import pytest

from bed import note, wait_until

UNIT = "c2d-gateway.service"
CONFIG = "/etc/c2d-gateway/config.toml"
PANEL_LINK = "/run/c2d-panel"


def f32_registers(value: float) -> list[int]:
    """An f32 point as the gateway writes it (high word first)."""
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def config_text(tb, extra_devices: str = "") -> str:
    e = tb.emulator
    return f"""# written by tests/package
[gateway]
state_dir = "/var/lib/c2d-gateway"
log_level = "info"
control = "/run/c2d-gateway/control.sock"

[hub]
kind = "azure"
port = {e.tls_port}
ca_file = "/etc/c2d-gateway/ca.pem"
handover_after = "40s"

[routing]
device_property = "device"

[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:{tb.modbus.port}"
timeout = "1s"

[buses.display]
kind = "serial"
port = "{PANEL_LINK}"
baud = 115200
framing = "line"
line_ending = "\\r\\n"
ack = "^OK"
nack = "^ERR"
timeout = "2s"

[devices.boiler]
bus = "plc"
unit = 3
idempotent = true
max_attempts = 1000
max_age = "10m"
points.setpoint = {{ table = "holding", address = 100, type = "f32", min = 5.0, max = 90.0 }}

[devices.panel]
bus = "display"
max_attempts = 3
{extra_devices}"""


PUMP = """
[devices.pump]
bus = "plc"
unit = 4
idempotent = true
points.speed = { table = "holding", address = 200, type = "u16" }
"""


def main_pid(tb) -> int:
    return int(tb.c.show(UNIT, "MainPID") or 0)


def wait_active(tb, timeout: float = 60, not_pid: int | None = None) -> int:
    """Waits for the unit to be active (for Type=notify: READY=1 was sent),
    with a main PID other than `not_pid`; returns the PID."""
    def ready():
        state = tb.c.show(UNIT, "ActiveState")
        pid = main_pid(tb)
        return pid if state == "active" and pid and pid != not_pid else None

    return wait_until(f"{UNIT} active" + (f" with a PID other than {not_pid}" if not_pid else ""), ready, timeout)


def deliver(tb, body: str, device: str, message_id: str | None = None, timeout: float = 30) -> str:
    """Sends a C2D message and waits for its result report; returns its id."""
    mid = tb.emulator.send(body, device, message_id)
    wait_until(f"a result report for {mid}", lambda: tb.emulator.reports(mid), timeout)
    return mid


def report_status(tb, mid: str) -> str:
    return tb.emulator.reports(mid)[-1]["properties"].get("c2d-status", "")


def unit_journal(tb, *args: str) -> str:
    return tb.c.run(["journalctl", "--no-pager", "-u", UNIT, "-o", "cat", *args], check=False).stdout


# ----------------------------------------------------------------- package

def test_lintian_has_no_errors(debs):
    """`lintian --fail-on error`, warnings shown (printed, not fatal)."""
    if subprocess.run(["sh", "-c", "command -v lintian"], capture_output=True).returncode != 0:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("lintian is not installed")
    r = subprocess.run(["lintian", "--fail-on", "error", "--display-info", str(debs["main"])], capture_output=True,
                       text=True, timeout=300)
    print(r.stdout, r.stderr)
    tags = r.stdout.splitlines()
    shown = [t for t in tags if t[:2] in ("E:", "W:")]
    for t in shown:
        note(f"lintian {t}")
    if not shown:
        note(f"lintian: no errors, no warnings ({sum(t.startswith('I:') for t in tags)} info tags)")
    assert r.returncode == 0, f"lintian found errors:\n{r.stdout}"


def test_package_contents(debs):
    deb = str(debs["main"])
    files = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/bin/c2d-gateway", "./etc/c2d-gateway/config.toml",
                 "./usr/lib/systemd/system/c2d-gateway.service", "./usr/lib/sysusers.d/c2d-gateway.conf",
                 "./usr/share/man/man8/c2d-gateway.8.gz", "./usr/share/doc/c2d-gateway/copyright",
                 "./usr/share/doc/c2d-gateway/changelog.Debian.gz",
                 "./usr/share/doc/c2d-gateway/examples/config.toml"):
        assert f" {path}\n" in files + "\n", f"{path} missing from the package:\n{files}"
    depends = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True).stdout
    assert "procps" in depends and "systemd" in depends, depends
    ctl = subprocess.run(["sh", "-c", f"dpkg-deb --ctrl-tarfile {deb} | tar -xO ./conffiles"],
                         capture_output=True, text=True, check=True).stdout
    assert ctl.split() == ["/etc/c2d-gateway/config.toml"]


# ----------------------------------------------------------------- install

def test_install_unconfigured_stays_down(tb):
    """apt installs it, creates the user (in dialout), enables the unit; the
    shipped config is valid but has no connection string: the daemon exits
    78 with "not configured", and systemd does not restart it."""
    c = tb.c
    r = c.run(["apt-get", "install", "-y", f"/var/tmp/{tb.debs['main'].name}"], check=False, timeout=300)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, "apt-get install failed"
    tb.done.add("install")
    groups = c.run(["id", "-nG", "c2d-gateway"]).stdout.split()
    assert "dialout" in groups, groups
    assert c.run(["getent", "passwd", "c2d-gateway"]).stdout.split(":")[6].strip() == "/usr/sbin/nologin"
    assert c.run(["systemctl", "is-enabled", UNIT], check=False).stdout.strip() == "enabled"
    assert c.run(["c2d-gateway", "check-config"], check=False).returncode == 0, "the shipped config must be valid"
    tb.shipped_config = c.path(CONFIG).read_text()

    wait_until("the unconfigured service to give up", lambda: c.show(UNIT, "ActiveState") == "failed", 30)
    time.sleep(7)  # longer than RestartSec=: a restart would show now
    state = {p: c.show(UNIT, p) for p in ("ActiveState", "ExecMainStatus", "NRestarts", "Result")}
    print(state)
    print(c.run(["systemctl", "status", "--no-pager", UNIT], check=False).stdout)
    assert state["ExecMainStatus"] == "78", state
    assert state["NRestarts"] == "0", f"crash loop: {state}"
    assert state["ActiveState"] == "failed", state
    assert "not configured" in unit_journal(tb)


def test_broken_config_at_start_one_attempt_then_down(tb):
    """A config with a problem: check-config lists it (ExecStartPre=, its
    failure ignored), `run` refuses it with 78, and there is no retry."""
    tb.need("install")
    c = tb.c
    before = int(c.show(UNIT, "NRestarts"))
    c.put(CONFIG, "[gateway]\nstate_dir = 42\n")
    try:
        r = c.run(["systemctl", "restart", UNIT], check=False, timeout=60)
        assert r.returncode != 0, "started with a broken config"
        time.sleep(7)  # longer than RestartSec=
        state = {p: c.show(UNIT, p) for p in ("ActiveState", "ExecMainStatus", "NRestarts")}
        print(state)
        assert state["ActiveState"] == "failed" and state["ExecMainStatus"] == "78", state
        assert int(state["NRestarts"]) == before, f"restarted: {state}"
        assert "config.toml:2:" in unit_journal(tb, "-n", "20"), "no problem with its line in the journal"
    finally:
        c.put(CONFIG, tb.shipped_config)


def test_configured_service_becomes_ready(tb):
    """Connection string in /etc/c2d-gateway/connection-string (root, 0600,
    handed over by LoadCredential=), the emulator's CA, a config with a
    Modbus TCP bus and a serial panel: restart, and Type=notify makes
    `active` mean READY=1 arrived."""
    tb.need("install")
    c = tb.c
    # the serial panel: a pty (socat) answering OK to each line, group dialout
    c.put("/var/tmp/panel.sh", "#!/bin/sh\nwhile IFS= read -r line; do printf 'OK\\r\\n'; "
                               "printf '%s\\n' \"$line\" >> /var/tmp/panel.log; done\n", 0o755)
    c.run(["systemd-run", "--unit=c2d-test-panel", "socat",
           f"PTY,link={PANEL_LINK},raw,echo=0,group=dialout,mode=660", "EXEC:/var/tmp/panel.sh"])
    wait_until("the panel pty", lambda: c.run(["test", "-e", PANEL_LINK], check=False).returncode == 0, 10)
    c.put("/etc/c2d-gateway/ca.pem", tb.emulator.ca.read_bytes())
    c.put("/etc/c2d-gateway/connection-string", tb.emulator.connection_string + "\n", 0o600)
    c.put(CONFIG, config_text(tb))
    c.run(["systemctl", "daemon-reload"])
    r = c.run(["systemctl", "restart", UNIT], check=False, timeout=90)
    if r.returncode != 0:
        print(unit_journal(tb, "-n", "40"))
    assert r.returncode == 0, f"systemctl restart failed: {r.stderr}"
    wait_active(tb)
    assert c.show(UNIT, "Type") == "notify"
    tb.done.add("configured")


def test_status_shows_hub_state_and_queue(tb):
    tb.need("configured")
    status = wait_until("STATUS= with the hub connected",
                        lambda: (lambda s: s if "connected" in s and "disconnected" not in s else None)(
                            tb.c.show(UNIT, "StatusText")), 30)
    print(f"StatusText={status!r}")
    assert "queued" in status
    out = tb.c.run(["systemctl", "status", "--no-pager", UNIT], check=False).stdout
    print(out)
    assert re.search(r"^\s*Status: \".*queued", out, re.M), "systemctl status shows no Status: line"


# ---------------------------------------------------------------- messages

def test_c2d_message_delivered_and_reported(tb):
    tb.need("configured")
    mid = deliver(tb, json.dumps({"point": "setpoint", "value": 21.5}), "boiler")
    assert report_status(tb, mid) == "delivered", tb.emulator.reports(mid)
    writes = [w for w in tb.modbus.writes() if w["unit"] == 3 and w["address"] == 100]
    assert writes and writes[-1]["values"] == f32_registers(21.5), writes
    fb = wait_until("hub feedback", lambda: tb.emulator.feedback(mid), 15)
    assert fb[0]["status_code"] == "Success", fb
    tb.first_message = mid
    tb.done.add("delivered")


def test_operator_verbs_over_the_control_socket(tb):
    """`c2d-gateway status` and `queue` talk to the running service over
    /run/c2d-gateway/control.sock (RuntimeDirectory=, mode 0660): root and
    a member of the group c2d-gateway may, another user is refused. A
    queued message is dropped by the group member, and the daemon logs who
    (its user namespace hides the uid: the name the client gives, marked)."""
    tb.need("delivered")
    c = tb.c
    out = c.run(["c2d-gateway", "status", "--config", CONFIG]).stdout
    print(out)
    assert re.search(r"^hub: +azure connected", out, re.M), out
    st = json.loads(c.run(["c2d-gateway", "status", "--json", "--config", CONFIG]).stdout)
    assert st["hub"]["connected"] is True and set(st["devices"]) >= {"boiler", "panel"}, st
    owner = c.run(["stat", "-c", "%a %U %G", "/run/c2d-gateway/control.sock"]).stdout.split()
    assert owner == ["660", "c2d-gateway", "c2d-gateway"], owner
    assert c.run(["stat", "-c", "%a", "/run/c2d-gateway"]).stdout.strip() == "750"
    c.run("id alice >/dev/null 2>&1 || useradd --no-create-home --groups c2d-gateway alice")
    c.run("id mallory >/dev/null 2>&1 || useradd --no-create-home mallory")
    as_user = lambda user, *argv: c.run(["runuser", "-u", user, "--", "c2d-gateway", *argv, "--config", CONFIG],
                                         check=False)
    r = as_user("alice", "queue", "list", "--state", "all")
    assert r.returncode == 0 and tb.first_message in r.stdout, (r.stdout, r.stderr)
    r = as_user("mallory", "status")
    assert r.returncode == 1 and "permission denied" in r.stderr, (r.returncode, r.stderr)

    # An action is logged with who asked, even when refused (a delivered
    # message is not retried); the service's user namespace hides alice's
    # uid, so the log gives the name her client sent, marked as such.
    r = as_user("alice", "queue", "retry", tb.first_message)
    assert r.returncode == 1 and "it is delivered" in r.stderr, (r.returncode, r.stderr)
    refused = wait_until("the refusal in the journal", lambda: [
        e for e in tb.c.journal("-u", UNIT, "-n", "100") if e.get("MESSAGE") == "operator: refused"], 10)
    by = refused[-1].get("F_BY", "")
    assert re.fullmatch(r"alice \(uid \d+\) \(as the client says; the service cannot see its uid\)", by), refused[-1]
    assert refused[-1].get("F_MESSAGE_ID") == tb.first_message


def test_serial_port_usable_in_the_sandbox(tb):
    """A serial device under the unit's sandbox (User=, PrivateUsers=,
    SupplementaryGroups=dialout, DevicePolicy=closed, syscall filter). A
    pty: DevicePolicy=closed always lets ptys through; the allow-list of
    real serial devices is checked below."""
    tb.need("configured")
    mid = deliver(tb, "SHOW 42", "panel")
    assert report_status(tb, mid) == "delivered", tb.emulator.reports(mid)
    assert "SHOW 42" in tb.c.path("/var/tmp/panel.log").read_text()


def test_device_allow_list_is_enforced(tb):
    """The unit's DevicePolicy=closed + DeviceAllow= in force: under the
    unit's user, groups and device settings, a ttyS node passes the device
    check (the open then fails in the driver, ENXIO: there is no such UART)
    and a node outside the list (10:200, tun) is refused (EPERM)."""
    tb.need("install")
    c = tb.c
    c.run("mknod -m 666 /dev/c2d-probe-ttyS c 4 255 && mknod -m 666 /dev/c2d-probe-tun c 10 200")
    try:
        base = c.run(["sh", "-c", "exec 3<>/dev/c2d-probe-tun && echo opened"], check=False)
        if "opened" not in base.stdout:
            pytest.skip(f"the container itself cannot open a tun node: {base.stderr.strip()}")
        unit_file = c.path("/usr/lib/systemd/system/" + UNIT).read_text()
        own = [a for line in unit_file.splitlines()
               if line.startswith(("DevicePolicy=", "DeviceAllow=", "User=", "SupplementaryGroups=",
                                   "PrivateUsers=", "ProtectClock="))
               for a in ("-p", line)]

        def probe(node):
            r = c.run(["systemd-run", "--wait", "--pipe", "--quiet", *own, "sh", "-c",
                       f"exec 3<>{node} && echo opened"], check=False)
            return r.stdout + r.stderr

        tty, tun = probe("/dev/c2d-probe-ttyS"), probe("/dev/c2d-probe-tun")
    finally:
        c.run("rm -f /dev/c2d-probe-ttyS /dev/c2d-probe-tun", check=False)
    print(f"ttyS: {tty.strip()}\ntun: {tun.strip()}")
    if "opened" in tun:
        pytest.skip("this container cannot enforce device allow-lists (no BPF device control); "
                    "DeviceAllow= unverified here")
    assert "not permitted" in tun, tun
    assert "not permitted" not in tty and "denied" not in tty, f"ttyS refused: {tty}"


def test_journal_has_structured_entries_and_no_secret(tb):
    tb.need("delivered")
    entries = tb.c.journal("-u", UNIT)
    delivered = [e for e in entries if e.get("MESSAGE") == "delivered" and e.get("F_MESSAGE_ID") == tb.first_message]
    assert delivered, "no structured 'delivered' entry with F_MESSAGE_ID"
    e = delivered[0]
    print({k: v for k, v in e.items() if not k.startswith("_")})
    assert e.get("SYSLOG_IDENTIFIER") == "c2d-gateway"
    assert e.get("PRIORITY") in ("5", "6")
    assert e.get("_SYSTEMD_UNIT") == UNIT
    # no secret anywhere in the container's journal, any unit, any field
    everything = tb.c.run(["journalctl", "--no-pager", "-o", "export"], check=False, timeout=60).stdout
    key = tb.emulator.key
    for secret in (key, key.rstrip("="), "SharedAccessKey=", "SharedAccessSignature", "sig="):
        assert secret not in everything, f"the journal contains {secret[:12]}..."


# ------------------------------------------------------------------ reload

def test_reload_with_a_changed_device_map(tb):
    tb.need("configured")
    c = tb.c
    pid = main_pid(tb)
    before = tb.emulator.send(json.dumps({"point": "speed", "value": 1}), "pump")
    wait_until("a report", lambda: tb.emulator.reports(before), 30)
    assert report_status(tb, before) == "rejected", "pump is not in the config yet"

    c.put(CONFIG, config_text(tb, PUMP))
    r = c.run(["systemctl", "reload", UNIT], check=False, timeout=60)
    assert r.returncode == 0, f"systemctl reload failed: {r.stderr}\n{unit_journal(tb, '-n', '20')}"
    wait_until("'configuration reloaded' in the journal", lambda: "configuration reloaded" in unit_journal(tb), 20)
    assert main_pid(tb) == pid, "reload must not restart the process"
    mid = deliver(tb, json.dumps({"point": "speed", "value": 1234}), "pump")
    assert report_status(tb, mid) == "delivered", tb.emulator.reports(mid)
    assert any(w["unit"] == 4 and w["address"] == 200 and w["values"] == [1234] for w in tb.modbus.writes())
    tb.done.add("reload")


def test_reload_with_a_broken_config_is_refused(tb):
    tb.need("reload")
    c = tb.c
    pid = main_pid(tb)
    good = config_text(tb, PUMP)
    c.put(CONFIG, good.replace('unit = 4', 'unit = "four"'))
    try:
        r = c.run(["systemctl", "reload", UNIT], check=False, timeout=60)
        print(r.stdout, r.stderr)
        assert r.returncode != 0, "systemctl reload accepted a broken config"
        journal = unit_journal(tb, "-n", "30")
        print(journal)
        assert "devices.pump.unit" in journal, "the problem is not in the journal"
        assert c.show(UNIT, "ActiveState") == "active" and main_pid(tb) == pid
        # the daemon's own guard, for a SIGHUP that bypasses ExecReload=
        c.run(["sh", "-c", f"kill -HUP {pid}"])
        wait_until("the daemon to refuse the file on SIGHUP",
                   lambda: "keeping the running one" in unit_journal(tb, f"_PID={pid}"), 20)
        assert c.show(UNIT, "ActiveState") == "active" and main_pid(tb) == pid
        mid = deliver(tb, json.dumps({"point": "speed", "value": 4321}), "pump")
        assert report_status(tb, mid) == "delivered", "the running config was not kept"
    finally:
        c.put(CONFIG, good)  # the same as the running one


# ------------------------------------------------------------------- crash

def test_kill_9_restarts_and_delivers_the_queued_message_once(tb):
    """The Modbus device is down, a message is journaled (queued), the main
    process is SIGKILLed; systemd restarts it, the device comes back, and the
    message is written exactly once (the hub's redelivery is recognised)."""
    tb.need("configured")
    c = tb.c
    pid = main_pid(tb)
    restarts = int(c.show(UNIT, "NRestarts"))
    value = 33.5
    tb.modbus.stop()
    try:
        mid = tb.emulator.send(json.dumps({"point": "setpoint", "value": value}), "boiler")
        wait_until("the message journaled ('received')",
                   lambda: any(e.get("MESSAGE") == "received" for e in c.journal(f"F_MESSAGE_ID={mid}")), 20)
        c.run(["sh", "-c", f"kill -9 {pid}"])
    finally:
        tb.modbus.start()
    new = wait_active(tb, 60, not_pid=pid)
    assert int(c.show(UNIT, "NRestarts")) == restarts + 1
    wait_until(f"the report for {mid}", lambda: tb.emulator.reports(mid), 60)
    time.sleep(3)  # room for a (wrong) second write or report
    regs = f32_registers(value)
    writes = [w for w in tb.modbus.writes() if w["unit"] == 3 and w["address"] == 100 and w["values"] == regs]
    reports = tb.emulator.reports(mid)
    statuses = [r["properties"].get("c2d-status") for r in reports]
    note(f"after kill -9 of {pid}: new PID {new}, {len(writes)} write(s) to the device, reports {statuses}")
    assert len(writes) == 1, f"written {len(writes)} times"
    # The hub redelivers the message (it was never acknowledged); the
    # gateway knows its id and reports its stored outcome again (README):
    # every report must say delivered.
    assert {r["properties"].get("c2d-status") for r in reports} == {"delivered"}, reports


def test_watchdog_restarts_a_stopped_process(tb):
    tb.need("configured")
    c = tb.c
    wd = c.show(UNIT, "WatchdogUSec")
    assert wd not in ("", "0", "infinity"), f"no WatchdogSec= ({wd})"
    pid = main_pid(tb)
    started = time.monotonic()
    c.run(["sh", "-c", f"kill -STOP {pid}"])
    try:
        new = wait_active(tb, 90, not_pid=pid)
    finally:
        c.run(["sh", "-c", f"kill -CONT {pid} 2>/dev/null"], check=False)
    note(f"watchdog ({wd}): SIGSTOPped PID {pid} replaced by {new} after {time.monotonic() - started:.0f}s")
    assert "Watchdog timeout" in c.run(["journalctl", "--no-pager", "-u", UNIT, "-n", "50"]).stdout
    mid = deliver(tb, json.dumps({"point": "setpoint", "value": 22.5}), "boiler")
    assert report_status(tb, mid) == "delivered"


def test_sigterm_stops_cleanly_with_status_0(tb):
    tb.need("configured")
    c = tb.c
    c.run(["systemctl", "stop", UNIT], timeout=60)
    state = {p: c.show(UNIT, p) for p in ("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")}
    print(state)
    c.run(["systemctl", "start", UNIT], timeout=90)
    wait_active(tb)
    assert state["ActiveState"] == "inactive" and state["Result"] == "success", state
    assert state["ExecMainStatus"] == "0", state


# ----------------------------------------------------------------- upgrade

def test_upgrade_keeps_config_and_journal_and_restarts(tb):
    tb.need("configured", "delivered")
    c = tb.c
    digest = lambda p: hashlib.sha256(c.path(p).read_bytes()).hexdigest()  # noqa: E731
    config_before, cs_before = digest(CONFIG), digest("/etc/c2d-gateway/connection-string")
    pid = main_pid(tb)
    writes_before = len(tb.modbus.writes())
    r = c.run(["apt-get", "install", "-y", f"/var/tmp/{tb.debs['upgrade'].name}"], check=False, timeout=300)
    print(r.stdout[-2000:], r.stderr[-2000:])
    assert r.returncode == 0, "the upgrade failed"
    version = c.run(["dpkg-query", "-W", "-f", "${Version}", "c2d-gateway"]).stdout
    assert version.endswith("-2"), version
    assert digest(CONFIG) == config_before, "the upgrade changed the config"
    assert digest("/etc/c2d-gateway/connection-string") == cs_before
    new = wait_active(tb, 60, not_pid=pid)
    note(f"upgraded to {version}: PID {pid} -> {new}")
    # the sled journal survived: the first message id is still known
    c.run(["ls", "/var/lib/c2d-gateway/journal"])
    tb.emulator.send(json.dumps({"point": "setpoint", "value": 21.5}), "boiler", message_id=tb.first_message)
    wait_until("the repeated id recognised",
               lambda: "not executed again" in unit_journal(tb, f"_PID={new}"), 30)
    assert len(tb.modbus.writes()) == writes_before, "a message from before the upgrade ran again"
    # and journald kept the entries from before the upgrade
    assert any(e.get("MESSAGE") == "delivered" for e in c.journal(f"F_MESSAGE_ID={tb.first_message}"))
    tb.done.add("upgrade")


def test_systemd_analyze_security(tb):
    tb.need("install")
    out = tb.c.run(["systemd-analyze", "security", "--no-pager", UNIT], check=False).stdout
    print("\n".join(line for line in out.splitlines() if not line.startswith("✓")))
    m = re.search(r"Overall exposure level for c2d-gateway\.service: ([0-9.]+) (\w+)", out)
    assert m, out[-2000:]
    note(f"systemd-analyze security {UNIT}: exposure {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= 2.0


# ------------------------------------------------------------ remove/purge

def test_remove_stops_and_keeps_config_and_data(tb):
    tb.need("install")
    c = tb.c
    c.run(["apt-get", "remove", "-y", "c2d-gateway"], timeout=300)
    assert c.show(UNIT, "ActiveState") in ("inactive", "failed")
    assert c.run(["pgrep", "-x", "c2d-gateway"], check=False).returncode == 1, "still running"
    assert c.path(CONFIG).is_file() and c.path("/etc/c2d-gateway/connection-string").is_file()
    assert c.path("/var/lib/c2d-gateway").is_dir()
    tb.done.add("remove")


def test_purge_removes_config_and_data(tb):
    tb.need("install")
    c = tb.c
    c.run(["apt-get", "purge", "-y", "c2d-gateway"], timeout=300)
    status = c.run(["dpkg-query", "-W", "-f", "${Status}", "c2d-gateway"], check=False).stdout
    assert "installed" not in status.replace("not-installed", ""), status
    for gone in ("/etc/c2d-gateway", "/var/lib/c2d-gateway", "/usr/lib/systemd/system/c2d-gateway.service",
                 "/etc/systemd/system/multi-user.target.wants/c2d-gateway.service"):
        assert not c.path(gone).exists() and not c.path(gone).is_symlink(), f"{gone} is still there"
    user = c.run(["getent", "passwd", "c2d-gateway"], check=False).stdout.strip()
    note(f"after purge the system user is {'kept' if user else 'gone'} (Debian practice: kept)")
