#!/usr/bin/env python3
"""Scans what the suites left behind for secrets in the gateway's logs.

    tests/secrets_scan.py DIR...

Every secret the suites handed to a gateway is found in the configuration and
credential files under DIR (connection strings' SharedAccessKey, MQTT
passwords, proxy logins, password, key and connection-string files); every other text file
(gateway logs, captured stderr, reports) must contain none of them, nor
anything that looks like a SAS token signature (`sig=...`). Prints one line
per leak (the secret itself masked) and exits 1 when there is any; prints
what it scanned either way. Standard library only.
"""

import re
import sys
from pathlib import Path

# Where secrets are given to the gateway (not logs: these may hold them).
CONFIG_SUFFIXES = {".toml", ".conf", ".pem", ".key", ".passwd", ".secret"}
CREDENTIAL_NAMES = re.compile(r"(password|passwd|connection[-_]?string|credential|secret|\.key$)", re.I)
# Journals and other binary state: not text, never logged to.
SKIP_DIRS = {"state", "journal", "db", "snap.", "blobs", "__pycache__", "venv", ".git"}
# The hub emulator prints the keys of the devices it registers (that is its
# job, as a hub's portal shows them): its output is the hub's, not the
# gateway's, and is not scanned.
HUB_OUTPUT = re.compile(r"(^|[/_-])(emulator|hub)[^/]*$|/hub/[^/]+$")
MAX_BYTES = 64 * 1024 * 1024

KEY_RE = re.compile(r"SharedAccessKey=([^;\"'\s]+)")
PASSWORD_RE = re.compile(r"""^\s*password\s*=\s*["']([^"']+)["']""", re.M)
# A proxy's login in its url: proxy = "http://user:PASSWORD@host:port".
PROXY_RE = re.compile(r"""^\s*proxy\s*=\s*["']https?://[^:@/"']+:([^@"']+)@""", re.M)
# A SAS token's signature: never in a log, whatever key made it.
SIG_RE = re.compile(r"(?:sig=|SharedAccessSignature\s+sr=)[A-Za-z0-9%+/=._-]{16,}")


def is_config(path: Path) -> bool:
    return path.suffix in CONFIG_SUFFIXES or bool(CREDENTIAL_NAMES.search(path.name))


def skipped(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts[:-1]
    return any(p in SKIP_DIRS or p.startswith("snap.") or ".corrupt-" in p for p in parts)


def read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:4096]:
        return None  # binary
    return data.decode("utf-8", "replace")


def collect(roots):
    secrets, logs = set(), []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            if skipped(path, root) or HUB_OUTPUT.search(path.relative_to(root).as_posix()):
                continue
            text = read_text(path)
            if text is None:
                continue
            if is_config(path):
                secrets.update(KEY_RE.findall(text))
                secrets.update(PASSWORD_RE.findall(text))
                secrets.update(PROXY_RE.findall(text))
                if CREDENTIAL_NAMES.search(path.name) and path.suffix not in {".toml", ".conf"}:
                    secrets.update(line.strip() for line in text.splitlines() if line.strip())
            else:
                logs.append((path, text))
    # Short values would match by accident; the suites' secrets are long.
    return {s for s in secrets if len(s) >= 8}, logs


def mask(s: str) -> str:
    return s[:3] + "..." + f"({len(s)} chars)"


def scan(roots):
    secrets, logs = collect(roots)
    leaks = []
    for path, text in logs:
        for n, line in enumerate(text.splitlines(), 1):
            for s in secrets:
                if s in line:
                    leaks.append(f"{path}:{n}: secret {mask(s)} in a log line")
            m = SIG_RE.search(line)
            if m:
                leaks.append(f"{path}:{n}: SAS signature {mask(m.group(0))} in a log line")
    return secrets, logs, leaks


def main(argv):
    roots = [Path(a) for a in argv[1:] if Path(a).is_dir()]
    if not roots:
        print("secrets_scan: no directories to scan", file=sys.stderr)
        return 2
    secrets, logs, leaks = scan(roots)
    lines = sum(t.count("\n") for _, t in logs)
    print(f"secrets_scan: {len(secrets)} secrets from the suites' configs, "
          f"{len(logs)} log/text files ({lines} lines) scanned, {len(leaks)} leaks")
    for leak in leaks[:50]:
        print("  LEAK", leak)
    if not secrets:
        print("secrets_scan: found no secrets to look for: the scan proves nothing", file=sys.stderr)
        return 1
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
