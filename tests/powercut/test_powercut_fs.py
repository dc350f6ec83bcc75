#!/usr/bin/env python3
"""ds-powercut's own contract, checked with plain system calls (no dotspool).

- fsync'd data and fsyncdir'd entries survive a cut; O_DSYNC and RWF_DSYNC writes are durable;
- unsynced data is dropped, written or torn only at 512-byte sectors: after a cut every sector of an
  unsynced range holds either its old or its new bytes, never a mix; synced sectors keep their bytes;
- a new file (even fsync'd) whose directory was not fsync'd is gone; an unlink, a rename (also one that
  replaced a file) and a mkdir without fsyncdir are undone; with it they stay;
- ftruncate + fsync is durable; an unsynced ftruncate leaves the old or the new size;
- after a cut requests block until "release", then fail with EIO;
- EIO injection: the failing fsync reports EIO and drops its dirty data (reads then show the old bytes),
  every other file description open at the time reports it once on its next fsync, one opened later never;
- a clean unmount keeps everything.
Exit 0 pass, 1 fail, 77 skip (no /dev/fuse or no fusermount3).
"""
import os
import sys
import threading

sys.dont_write_bytecode = True  # importing test_powercut must not leave __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)
import dslib  # noqa: E402
from test_powercut import PowerFS, _cleanup  # noqa: E402  (mount helpers; its atexit cleanup)

SECT = 512


def fsync_path(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(p, data, sync=True, mode=os.O_CREAT | os.O_RDWR | os.O_TRUNC):
    fd = os.open(p, mode, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def pattern(tag, n):
    return (tag * (n // len(tag) + 1))[:n]


def sectors_ok(got, old, new):
    """Every 512-byte sector of got is the one of old or of new (torn only at sector boundaries)."""
    bad = []
    for i in range(0, max(len(old), len(new)), SECT):
        g, o, n = got[i:i + SECT], old[i:i + SECT], new[i:i + SECT]
        if g != o and g != n:
            bad.append(i)
    return bad


def run_cut(t, exe, work, seed):
    """One scenario per seed: build a state, cut, check the backing directory."""
    backing, mnt = os.path.join(work, "b%d" % seed), os.path.join(work, "m%d" % seed)
    os.makedirs(backing)
    fs = PowerFS(exe, backing, mnt, work, seed, "s%d" % seed).start()
    M = lambda *p: os.path.join(mnt, *p)  # noqa: E731
    B = lambda *p: os.path.join(backing, *p)  # noqa: E731
    try:
        os.mkdir(M("d"))
        fsync_path(mnt)
        old = pattern(b"old-", 64 * 1024 + 300)
        new = pattern(b"NEW+", 64 * 1024 + 300)
        write_file(M("d", "data"), old)          # durable content
        write_file(M("d", "keep"), b"keep me")
        write_file(M("d", "gone"), b"unlink me")
        write_file(M("d", "renamed"), b"rename me")
        write_file(M("d", "target"), b"replaced target")
        write_file(M("d", "trunc"), b"t" * 10000)
        write_file(M("d", "trunc2"), b"u" * 10000)
        fsync_path(M("d"))
        # unsynced data over the whole file (plus a tail past the old size)
        fd = os.open(M("d", "data"), os.O_RDWR)
        os.pwrite(fd, new, 0)
        os.close(fd)
        # durable via O_DSYNC and RWF_DSYNC
        write_file(M("d", "dsync"), b"o-dsync data", sync=False, mode=os.O_CREAT | os.O_RDWR | os.O_DSYNC)
        fd = os.open(M("d", "rwf"), os.O_CREAT | os.O_RDWR, 0o644)
        os.pwritev(fd, [b"rwf-dsync data"], 0, os.RWF_DSYNC)
        os.close(fd)
        fsync_path(M("d"))  # their entries
        # namespace changes without fsyncdir
        write_file(M("d", "new-unsynced-dir"), b"file fsynced, dir not")
        os.unlink(M("d", "gone"))
        os.rename(M("d", "renamed"), M("d", "renamed2"))
        os.rename(M("d", "keep"), M("d", "target"))  # replaces target
        os.mkdir(M("d", "sub"))
        # ftruncate: synced and not
        fd = os.open(M("d", "trunc"), os.O_RDWR)
        os.ftruncate(fd, 1000)
        os.fsync(fd)
        os.close(fd)
        fd = os.open(M("d", "trunc2"), os.O_RDWR)
        os.ftruncate(fd, 1000)
        os.close(fd)
        t.eq(read(M("d", "data"))[:len(new)], new, "seed %d: reads see the unsynced data" % seed)
        reply = fs.cmd("cut")
        # frozen: a request blocks until release, then fails
        box = {}

        def stat_it():
            try:
                os.stat(M("d", "data"))
                box["r"] = "ok"
            except OSError as e:
                box["r"] = e.errno
        th = threading.Thread(target=stat_it, daemon=True)
        th.start()
        th.join(0.3)
        t.check(th.is_alive(), "seed %d: after the cut a request blocks" % seed)
        fs.cmd("release")
        th.join(5)
        t.check(not th.is_alive() and box.get("r") == 5, "seed %d: after release it fails with EIO (%r)"
                % (seed, box.get("r")))
        fs.stop()
        print("  seed %d cut: %s" % (seed, reply))
        got = read(B("d", "data"))
        bad = sectors_ok(got, old, new)
        t.eq(len(got), len(old), "seed %d: size unchanged" % seed)
        t.check(not bad, "seed %d: every sector of the unsynced range is old or new" % seed, repr(bad[:10]))
        t.eq(read(B("d", "dsync")), b"o-dsync data", "seed %d: O_DSYNC write durable" % seed)
        t.eq(read(B("d", "rwf")), b"rwf-dsync data", "seed %d: RWF_DSYNC write durable" % seed)
        t.check(not os.path.exists(B("d", "new-unsynced-dir")),
                "seed %d: a file fsync'd but not its directory is gone" % seed)
        t.eq(read(B("d", "gone")), b"unlink me", "seed %d: unsynced unlink undone" % seed)
        t.check(os.path.exists(B("d", "renamed")) and not os.path.exists(B("d", "renamed2")),
                "seed %d: unsynced rename undone" % seed)
        t.eq((read(B("d", "keep")), read(B("d", "target"))), (b"keep me", b"replaced target"),
             "seed %d: unsynced rename over a file undone, the replaced file back" % seed)
        t.check(not os.path.exists(B("d", "sub")), "seed %d: unsynced mkdir undone" % seed)
        t.eq(os.path.getsize(B("d", "trunc")), 1000, "seed %d: ftruncate + fsync durable" % seed)
        t.check(os.path.getsize(B("d", "trunc2")) in (1000, 10000), "seed %d: unsynced ftruncate: old or new size"
                % seed)
        t.check(not os.path.exists(B(".powercut-graveyard")), "seed %d: no graveyard left behind" % seed)
        return reply
    finally:
        fs.stop(check=False)


def run_synced_namespace(t, exe, work):
    backing, mnt = os.path.join(work, "ns"), os.path.join(work, "mns")
    os.makedirs(backing)
    fs = PowerFS(exe, backing, mnt, work, 1, "ns").start()
    M = lambda *p: os.path.join(mnt, *p)  # noqa: E731
    try:
        os.mkdir(M("d"))
        write_file(M("d", "a"), b"a")
        write_file(M("d", "b"), b"b")
        write_file(M("d", "c"), b"c")
        fsync_path(M("d"))
        fsync_path(mnt)
        os.unlink(M("d", "a"))
        os.rename(M("d", "b"), M("d", "b2"))
        os.mkdir(M("d", "sub"))
        write_file(M("d", "sub", "x"), b"x")
        fsync_path(M("d", "sub"))
        fsync_path(M("d"))
        fs.cmd("cut")
        fs.cmd("release")
        fs.stop()
        t.eq(sorted(os.listdir(os.path.join(backing, "d"))), ["b2", "c", "sub"],
             "fsyncdir makes unlink, rename and mkdir durable")
        t.eq(read(os.path.join(backing, "d", "sub", "x")), b"x", "a file in a synced new directory stays")
        # a clean unmount keeps everything, synced or not
        fs = PowerFS(exe, backing, mnt, work, 2, "ns2").start()
        write_file(M("d", "late"), b"never synced", sync=False)
        os.unlink(M("d", "c"))
        fs.stop()
        t.eq(sorted(os.listdir(os.path.join(backing, "d"))), ["b2", "late", "sub"],
             "clean unmount: unsynced changes kept")
        t.eq(read(os.path.join(backing, "d", "late")), b"never synced", "clean unmount: unsynced data kept")
    finally:
        fs.stop(check=False)


def run_eio(t, exe, work):
    backing, mnt = os.path.join(work, "eio"), os.path.join(work, "meio")
    os.makedirs(backing)
    fs = PowerFS(exe, backing, mnt, work, 1, "eio").start()
    p = os.path.join(mnt, "f")
    try:
        write_file(p, b"A" * 8192)
        fsync_path(mnt)
        fd1 = os.open(p, os.O_RDWR)
        fd2 = os.open(p, os.O_RDWR)
        os.pwrite(fd1, b"B" * 4096, 0)
        fs.cmd("eio-next-fsync /f")
        try:
            os.fsync(fd1)
            t.check(False, "the injected fsync fails")
        except OSError as e:
            t.eq(e.errno, 5, "the injected fsync fails with EIO")
        t.eq(os.pread(fd1, 8192, 0), b"A" * 8192, "its dirty data was dropped: reads see the old bytes")
        os.fsync(fd1)
        print("  ok: the same file description does not see the error again")
        fd3 = os.open(p, os.O_RDWR)
        os.pwrite(fd2, b"C" * 512, 4096)
        try:
            os.fsync(fd2)
            t.check(False, "another open file description sees the error on its next fsync")
        except OSError as e:
            t.eq(e.errno, 5, "another open file description sees the error on its next fsync (EIO)")
        os.fsync(fd2)
        print("  ok: ... once")
        os.fsync(fd3)
        print("  ok: a file description opened after the error never sees it")
        st = fs.cmd("status")
        t.eq((st["eio_injected"], st["eio_reported"]), (1, 2), "status counts 1 injected, 2 reported")
        for fd in (fd1, fd2, fd3):
            os.close(fd)
        fs.cmd("cut")
        fs.cmd("release")
        fs.stop()
        t.eq(read(os.path.join(backing, "f")), b"A" * 4096 + b"C" * 512 + b"A" * 3584,
             "after a cut: the failed fsync's data is not there, the later synced data is")
    finally:
        fs.stop(check=False)


def main(t):
    if not os.path.exists("/dev/fuse"):
        raise dslib.Skip("/dev/fuse is missing (FUSE not available here)")
    dslib.need_tool("fusermount3")
    exe = os.path.join(t.build, "ds-powercut")
    if not os.access(exe, os.X_OK):
        raise dslib.Fail("missing %s" % exe)
    work = dslib.mkdtemp("ds-powercut-fs-")
    try:
        kinds = set()
        for seed in range(1, 9):
            r = run_cut(t, exe, work, seed)
            kinds |= {k for k in ("dropped", "whole", "torn_prefix", "torn_subset") if r[k]}
        t.check(len(kinds) >= 3, "the cuts dropped, wrote whole and tore ranges (%s)" % sorted(kinds))
        run_synced_namespace(t, exe, work)
        run_eio(t, exe, work)
    finally:
        _cleanup()


if __name__ == "__main__":
    dslib.run(main)
