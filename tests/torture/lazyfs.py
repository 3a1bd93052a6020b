#!/usr/bin/env python3
"""lazyfs.py: a FUSE passthrough file system that loses what was not synced.

The idea is LazyFS's (the file system Jepsen uses for power-cut tests):
kill -9 keeps the kernel's page cache, so a write the program never synced
still reaches the disk, and a crash test with kill -9 cannot show what a
power cut does. Here every write since a file's last fsync/fdatasync is
held in this process's memory, not in the backing directory; a "cut" throws
it away (or applies a random prefix of it: a torn write), and what is left
in the backing directory is what a machine would find after a power cut.

Model (documented in the README's Reliability section):
- File data (write, truncate/ftruncate) is pending per file (per inode, so a
  renamed or unlinked-while-open file keeps its pending writes) until
  fsync or fdatasync on any handle of that file; both make all of it
  durable (the backing file is written and fsync'd). flush/close is not
  durability, nor is sync_file_range (it never reaches FUSE).
- Namespace operations (create, mkdir, rename, unlink, rmdir, chmod, ...)
  are durable at once, as LazyFS does by default: a file created and
  written without fsync is found empty after a cut; a tmp file written,
  fsync'd and renamed is found whole. (Directory fsync is accepted and has
  nothing left to do.)
- Reads see the pending state: the backing file's content with the pending
  writes and truncates applied in order.
- A cut (`--control` socket, command `cut MODE SEED`): `lose` drops every
  pending write of every file; `torn` applies, per file, a random prefix of
  its pending operations, and with probability 1/2 also a random prefix of
  the bytes of the next write (a write torn in the middle); `keep` (the
  control experiment) makes everything durable, as a kill -9 would. After a cut
  every operation fails with EIO until the file system is unmounted: the
  caller has killed the program using it before cutting, and remounts.
- Mounted with `direct_io`, so the kernel's page cache cannot serve or keep
  a write this process dropped; attribute and entry caching are turned off.

Control socket (unix, one JSON line per reply): `stats`, `cut lose SEED`,
`cut torn SEED`, `cut keep SEED`. Run as root (mount(2) of /dev/fuse); needs fusepy 3.0.1
and libfuse2 (Debian: libfuse2).

Usage: lazyfs.py BACKING_DIR MOUNTPOINT --control SOCKET [--log FILE]
       lazyfs.py --self-test   (mounts in a temp dir and checks the model)
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = 4096


class PendingFile:
    """One inode's writes and truncates since its last sync.

    `ops` is the ordered log: ("w", offset, bytes) or ("t", length). The
    logical view for reads: `size`, `pages` (page number -> bytearray of
    PAGE bytes, the pending content of that page) and `zero_from` (backing
    bytes at or past it read as zeros: a truncate cut them off)."""

    def __init__(self, fd: int, backing_size: int, path: str = "?"):
        self.fd = fd  # our own O_RDWR fd on the backing inode
        self.path = path  # the last path it was written through (for the cut's report)
        self.ops: list[tuple] = []
        self.size = backing_size
        self.zero_from = backing_size
        self.pages: dict[int, bytearray] = {}

    def _base_page(self, n: int) -> bytearray:
        page = self.pages.get(n)
        if page is None:
            start = n * PAGE
            if start >= self.zero_from:
                data = b""
            else:
                data = os.pread(self.fd, min(PAGE, self.zero_from - start), start)
            page = bytearray(data.ljust(PAGE, b"\0"))
            self.pages[n] = page
        return page

    def write(self, offset: int, data: bytes) -> None:
        self.ops.append(("w", offset, bytes(data)))
        pos, end = offset, offset + len(data)
        while pos < end:
            n, within = divmod(pos, PAGE)
            take = min(PAGE - within, end - pos)
            page = self._base_page(n)
            page[within:within + take] = data[pos - offset:pos - offset + take]
            pos += take
        self.size = max(self.size, end)

    def truncate(self, length: int) -> None:
        self.ops.append(("t", length))
        if length < self.size:
            n, within = divmod(length, PAGE)
            if within:
                page = self._base_page(n)
                page[within:] = bytes(PAGE - within)
                first_gone = n + 1
            else:
                first_gone = n
            for k in [k for k in self.pages if k >= first_gone]:
                del self.pages[k]
            self.zero_from = min(self.zero_from, length)
        self.size = length

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        out = bytearray()
        pos = offset
        while pos < end:
            n, within = divmod(pos, PAGE)
            take = min(PAGE - within, end - pos)
            page = self.pages.get(n)
            if page is not None:
                out += page[within:within + take]
            elif pos >= self.zero_from:
                out += bytes(take)
            else:
                avail = min(take, self.zero_from - pos)
                data = os.pread(self.fd, avail, pos)
                out += data.ljust(take, b"\0")
            pos += take
        return bytes(out)

    def apply(self, ops) -> None:
        """Writes `ops` to the backing file and syncs it."""
        for op in ops:
            if op[0] == "w":
                os.pwrite(self.fd, op[2], op[1])
            else:
                os.ftruncate(self.fd, op[1])
        os.fsync(self.fd)


class LazyFS:
    """fusepy Operations (built lazily: fusepy is imported only when mounting)."""

    def __init__(self, root: str, log=None):
        self._root = os.path.realpath(root)
        self._lock = threading.RLock()
        self._pending: dict[int, PendingFile] = {}  # backing st_ino -> pending state
        self._handles: dict[int, tuple[int, int]] = {}  # fh -> (backing fd, st_ino)
        self._next_fh = 1
        self._dead = False
        self._log = log
        self._stats = {"writes": 0, "bytes_written": 0, "fsyncs": 0, "fsync_bytes": 0, "truncates": 0}

    # ---- helpers
    def _p(self, path: str) -> str:
        return os.path.join(self._root, path.lstrip("/"))

    def _check(self):
        if self._dead:
            raise self._err(errno.EIO)

    @staticmethod
    def _err(code):
        from fuse import FuseOSError
        return FuseOSError(code)

    def _state(self, ino: int, fd: int, path: str = "?") -> PendingFile:
        st = self._pending.get(ino)
        if st is None:
            st = PendingFile(os.dup(fd), os.fstat(fd).st_size, path)
            self._pending[ino] = st
        st.path = path
        return st

    def _new_fh(self, fd: int) -> int:
        ino = os.fstat(fd).st_ino
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (fd, ino)
        return fh

    def __call__(self, op, *args):
        if not hasattr(self, op):
            raise self._err(errno.ENOSYS)
        with self._lock:
            self._check()
            try:
                return getattr(self, op)(*args)
            except OSError as e:
                if type(e).__name__ == "FuseOSError":
                    raise
                raise self._err(e.errno or errno.EIO) from None

    # ---- namespace (durable at once)
    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise self._err(errno.EACCES)
        return 0

    def getattr(self, path, fh=None):
        st = os.fstat(self._handles[fh][0]) if fh in self._handles else os.lstat(self._p(path))
        d = {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                          "st_nlink", "st_size", "st_uid", "st_ino")}
        pf = self._pending.get(st.st_ino)
        if pf is not None and stat.S_ISREG(st.st_mode):
            d["st_size"] = pf.size
        return d

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._p(path))

    def readlink(self, path):
        return os.readlink(self._p(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._p(path), mode, dev)
        return 0

    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)
        return 0

    def rmdir(self, path):
        os.rmdir(self._p(path))
        return 0

    def unlink(self, path):
        os.unlink(self._p(path))
        return 0

    def symlink(self, target, source):
        os.symlink(source, self._p(target))
        return 0

    def link(self, target, source):
        os.link(self._p(source), self._p(target))
        return 0

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))
        return 0

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)
        return 0

    def chown(self, path, uid, gid):
        os.chown(self._p(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        os.utime(self._p(path), times)
        return 0

    def statfs(self, path):
        sv = os.statvfs(self._p(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                             "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def fsyncdir(self, path, datasync, fh):
        return 0

    # ---- files
    def open(self, path, flags):
        # always read-write (we are root): an fsync on a read-only handle
        # must still be able to write the pending data
        fd = os.open(self._p(path), os.O_RDWR)
        fh = self._new_fh(fd)
        if flags & os.O_TRUNC:
            self._state(self._handles[fh][1], fd).truncate(0)
        return fh

    def create(self, path, mode, fi=None):
        fd = os.open(self._p(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        return self._new_fh(fd)

    def read(self, path, size, offset, fh):
        fd, ino = self._handles[fh]
        pf = self._pending.get(ino)
        if pf is None:
            return os.pread(fd, size, offset)
        return pf.read(offset, size)

    def write(self, path, data, offset, fh):
        fd, ino = self._handles[fh]
        self._state(ino, fd, path).write(offset, data)
        self._stats["writes"] += 1
        self._stats["bytes_written"] += len(data)
        return len(data)

    def truncate(self, path, length, fh=None):
        if fh is not None and fh in self._handles:
            fd, ino = self._handles[fh]
            self._state(ino, fd, path).truncate(length)
        else:
            fd = os.open(self._p(path), os.O_RDWR)
            try:
                self._state(os.fstat(fd).st_ino, fd, path).truncate(length)
            finally:
                os.close(fd)
        self._stats["truncates"] += 1
        return 0

    def flush(self, path, fh):
        return 0  # close(2) is not durability

    def release(self, path, fh):
        fd, _ino = self._handles.pop(fh)
        os.close(fd)
        return 0

    def fsync(self, path, datasync, fh):
        _fd, ino = self._handles[fh]
        pf = self._pending.pop(ino, None)
        self._stats["fsyncs"] += 1
        if pf is not None:
            pf.apply(pf.ops)
            self._stats["fsync_bytes"] += sum(len(op[2]) for op in pf.ops if op[0] == "w")
            os.close(pf.fd)
        return 0

    # ---- the cut
    def cut(self, mode: str, seed: int) -> dict:
        """Drops (lose) or tears (torn) every pending write; then refuses all I/O."""
        rng = random.Random(seed)
        with self._lock:
            self._dead = True
            out = {"mode": mode, "files": 0, "ops": 0, "ops_applied": 0, "bytes_lost": 0, "torn_writes": 0,
                   "per_file": {}}
            for ino, pf in sorted(self._pending.items()):
                out["files"] += 1
                out["ops"] += len(pf.ops)
                applied = []
                if mode == "keep":  # the control: a kill -9, the page cache survives
                    applied = list(pf.ops)
                    pf.apply(applied)
                elif mode == "torn" and pf.ops:
                    k = rng.randint(0, len(pf.ops))
                    applied = list(pf.ops[:k])
                    if k < len(pf.ops) and pf.ops[k][0] == "w" and len(pf.ops[k][2]) > 1 and rng.random() < 0.5:
                        off, data = pf.ops[k][1], pf.ops[k][2]
                        applied.append(("w", off, data[:rng.randint(1, len(data) - 1)]))
                        out["torn_writes"] += 1
                    pf.apply(applied)
                out["ops_applied"] += sum(1 for op in applied if op[0] == "t") + \
                    sum(1 for op in applied if op[0] == "w")
                written = sum(len(op[2]) for op in pf.ops if op[0] == "w")
                kept = sum(len(op[2]) for op in applied if op[0] == "w")
                out["bytes_lost"] += written - kept
                out["per_file"][pf.path] = {"ops": len(pf.ops), "applied": len(applied), "bytes_lost": written - kept}
                os.close(pf.fd)
            self._pending.clear()
            return out

    def snapshot_stats(self) -> dict:
        with self._lock:
            return {**self._stats, "pending_files": len(self._pending),
                    "pending_ops": sum(len(p.ops) for p in self._pending.values()),
                    "pending_bytes": sum(len(op[2]) for p in self._pending.values() for op in p.ops if op[0] == "w")}


def serve_control(fs: LazyFS, path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def loop():
        while True:
            conn, _ = srv.accept()
            with conn:
                line = conn.makefile("r").readline().split()
                try:
                    if line[:1] == ["stats"]:
                        reply = fs.snapshot_stats()
                    elif line[:1] == ["cut"] and len(line) == 3 and line[1] in ("lose", "torn", "keep"):
                        reply = {**fs.snapshot_stats(), **fs.cut(line[1], int(line[2]))}
                    else:
                        reply = {"error": f"unknown command {line!r}"}
                except Exception as e:  # noqa: BLE001 - reported to the caller
                    reply = {"error": f"{type(e).__name__}: {e}"}
                conn.sendall((json.dumps(reply) + "\n").encode())

    threading.Thread(target=loop, daemon=True).start()


def control(sock_path: str, command: str, timeout: float = 30.0) -> dict:
    """Sends one command to a mounted lazyfs; returns its JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall((command + "\n").encode())
        data = s.makefile("r").readline()
    reply = json.loads(data)
    if "error" in reply:
        raise RuntimeError(f"lazyfs {command}: {reply['error']}")
    return reply


def mount_main(backing: str, mountpoint: str, control_path: str) -> None:
    from fuse import FUSE
    fs = LazyFS(backing)
    serve_control(fs, control_path)
    FUSE(fs, mountpoint, foreground=True, nothreads=False, direct_io=True, attr_timeout=0,
         entry_timeout=0, negative_timeout=0, fsname="lazyfs", subtype="lazyfs")


# ------------------------------------------------------------------ harness side

class Mount:
    """One lazyfs process over `backing`, mounted at `mountpoint`."""

    def __init__(self, backing: Path, mountpoint: Path, control_path: Path, log_path: Path):
        self.backing, self.mountpoint = Path(backing), Path(mountpoint)
        self.control_path, self.log_path = Path(control_path), Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.mounts = 0

    def start(self, timeout: float = 15.0) -> "Mount":
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.control_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, __file__, str(self.backing), str(self.mountpoint),
                                          "--control", str(self.control_path)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self.mounted() and self.control_path.exists()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"lazyfs exited with {self.proc.returncode}: "
                                   + self.log_path.read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("lazyfs: not mounted in time")
            time.sleep(0.02)
        self.mounts += 1
        return self

    def command(self, cmd: str) -> dict:
        return control(str(self.control_path), cmd)

    def cut(self, mode: str, seed: int) -> dict:
        """The power cut (the program on it must be dead already), then unmount."""
        reply = self.command(f"cut {mode} {seed}")
        self.unmount()
        return reply

    def mounted(self) -> bool:
        target = str(self.mountpoint.resolve())
        with open("/proc/self/mounts", encoding="utf-8") as f:
            return any(line.split()[1] == target for line in f if len(line.split()) > 1)

    def unmount(self) -> None:
        if self.proc is None and not self.mounted():
            return
        if self.mounted():
            subprocess.run(["umount", str(self.mountpoint)], capture_output=True)
            if self.mounted():
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        if self.proc is None:
            return
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def fuse_available() -> str | None:
    """None when lazyfs can mount here, else why not."""
    if os.geteuid() != 0:
        return "not root (mounting /dev/fuse needs root here)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError, EnvironmentError) as e:
        return f"fusepy cannot load libfuse ({e}); install the Debian package libfuse2"
    return None


# ------------------------------------------------------------------ self-test

def self_test(workdir: Path | None = None, quiet: bool = False) -> list[str]:
    """Checks the model on a real mount; returns the checks that passed (raises on failure)."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="lazyfs-selftest-"))
    backing, mnt, ctl = tmp / "backing", tmp / "mnt", tmp / "control.sock"
    m = Mount(backing, mnt, ctl, tmp / "lazyfs.log").start()
    passed = []

    def check(name, cond, detail=""):
        if not cond:
            m.unmount()
            raise AssertionError(f"lazyfs self-test: {name} FAILED {detail}")
        passed.append(name)
        if not quiet:
            print(f"lazyfs self-test: ok  {name}", flush=True)

    def remount():
        m.start()

    def wfile(name, data, sync=None, mode="wb"):
        with open(mnt / name, mode, buffering=0) as f:
            f.write(data)
            if sync == "fsync":
                os.fsync(f.fileno())
            elif sync == "fdatasync":
                os.fdatasync(f.fileno())

    try:
        # 1. reads see unsynced writes; nothing reaches the backing file before fsync
        wfile("a", b"hello world")
        check("unsynced write is readable through the mount", (mnt / "a").read_bytes() == b"hello world")
        check("unsynced write is not in the backing dir", (backing / "a").read_bytes() == b"")
        check("stat shows the unsynced size", (mnt / "a").stat().st_size == 11)
        wfile("b", b"durable", sync="fsync")
        wfile("c", b"data-synced", sync="fdatasync")
        wfile("b", b" + more", mode="ab")  # appended, never synced
        # a tmp file written, fsync'd, renamed: durable (metadata at once)
        wfile("mark.tmp", b"42\n", sync="fsync")
        os.rename(mnt / "mark.tmp", mnt / "mark")
        # a truncate without sync is lost; an fsync'd one survives
        wfile("t", b"0123456789", sync="fsync")
        os.truncate(mnt / "t", 4)
        check("an unsynced truncate is visible", (mnt / "t").read_bytes() == b"0123")
        wfile("u", b"0123456789", sync="fsync")
        with open(mnt / "u", "r+b", buffering=0) as f:
            f.truncate(3)
            f.seek(6)
            f.write(b"X")
            check("truncate then extend reads zeros in between",
                  (mnt / "u").read_bytes() == b"012\0\0\0X")
            os.fsync(f.fileno())
        os.makedirs(mnt / "d" / "e")
        r = m.cut("lose", 1)
        check("the cut reports the dropped writes", r["files"] >= 3 and r["bytes_lost"] >= 18, json.dumps(r))
        remount()
        check("a write without fsync is lost at a cut", (mnt / "a").read_bytes() == b"")
        check("a write with fsync survives a cut", (mnt / "b").read_bytes() == b"durable")
        check("a write with fdatasync survives a cut", (mnt / "c").read_bytes() == b"data-synced")
        check("tmp + fsync + rename survives a cut", (mnt / "mark").read_bytes() == b"42\n"
              and not (mnt / "mark.tmp").exists())
        check("an unsynced truncate is undone by a cut", (mnt / "t").read_bytes() == b"0123456789")
        check("an fsync'd truncate + write survives", (mnt / "u").read_bytes() == b"012\0\0\0X")
        check("mkdir is durable at once", (mnt / "d" / "e").is_dir())
        # 2. torn: a prefix of the pending writes, per file, in order
        seen_k = set()
        torn_seen = False
        for seed in range(1, 41):
            chunks = [bytes([65 + i]) * 100 for i in range(8)]
            with open(mnt / "torn", "wb", buffering=0) as f:
                os.fsync(f.fileno())  # empty and durable
                for c in chunks:
                    f.write(c)
            r = m.cut("torn", seed)
            remount()
            got = (mnt / "torn").read_bytes()
            full = b"".join(chunks)
            if not full.startswith(got):
                check("torn cut leaves a prefix of the writes", False, f"seed {seed}: {got[:50]!r}...")
            seen_k.add(len(got))
            torn_seen |= len(got) % 100 != 0
            (mnt / "torn").unlink()
        check("a torn cut leaves a prefix of the writes (40 seeds)", True)
        check("torn cuts keep different prefixes, some torn inside a write",
              len(seen_k) > 5 and torn_seen, str(sorted(seen_k)))
        # 3. a renamed file keeps its pending writes (they follow the inode)
        wfile("r1", b"x")
        os.rename(mnt / "r1", mnt / "r2")
        check("pending writes follow a rename", (mnt / "r2").read_bytes() == b"x")
        with open(mnt / "r2", "r+b", buffering=0) as f:
            os.fsync(f.fileno())
        m.cut("lose", 2)
        remount()
        check("fsync after rename makes the data durable", (mnt / "r2").read_bytes() == b"x")
    finally:
        m.unmount()
    return passed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backing", nargs="?")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--control", help="unix socket for stats / cut commands")
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args(argv)
    if args.self_test:
        why = fuse_available()
        if why:
            print(f"lazyfs self-test: cannot run: {why}", file=sys.stderr)
            return 2
        passed = self_test()
        print(f"lazyfs self-test passed: {len(passed)} checks")
        return 0
    if not (args.backing and args.mountpoint and args.control):
        p.error("BACKING MOUNTPOINT --control SOCKET are required")
    mount_main(args.backing, args.mountpoint, args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
