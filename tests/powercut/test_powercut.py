#!/usr/bin/env python3
"""Power cuts under the real server.

dotspool runs on ds-powercut (powercut_fs.c: a FUSE pass-through file system
that keeps everything not yet fsynced in memory), with dotspool-bench sending
small pipelined messages with unique Message-IDs on many connections.

--mode cut (default): cycles of
    mount the "disk" -> start dotspool (its recovery runs) -> check every message
    acknowledged so far on this disk -> load -> at a random moment "cut": the
    file system freezes (no request completes from then on) and drops, writes
    whole or tears at 512-byte sectors every unsynced dirty range and undoes
    every namespace change whose directory was not fsynced -> SIGKILL the
    server -> unmount.
  The check after each reboot: every Message-ID the bench got a 250 for is in
  the spool exactly once and byte for byte what the bench sent (the bench's
  generator rebuilds it: ds-powercut-check), no Message-ID is there twice,
  every stored message is one the bench sent, intact; `dotspool-ctl list
  --json` lists the same ids, `dotspool-ctl cat` agrees for a sample, and
  `dotspool-ctl verify` exits 0. A disk lives for DISK_CYCLES cycles, then its
  last check ends with a clean stop (exit 0) and a fresh disk starts.
--mode eio: under load, fsyncs of segment files fail with EIO (Linux
  semantics: the dirty pages are dropped, the error reported once per open
  file). The server must count the flush errors, keep taking mail (on fresh
  segments), and after a power cut every acknowledged message must be there
  byte for byte: no message whose covering flush failed got a 250.

Knobs (by hand): DS_POWERCUT_CYCLES (cut mode; default: as many as fit in
DS_POWERCUT_BUDGET_S, 110 s; 10 cycles at most in a sanitizer build unless
set), DS_POWERCUT_SEED (base seed; each cycle's seed is printed, and a
failure says how to repeat it), DS_BIN_DIR (take dotspool, and dotspool-ctl /
dotspool-bench if there, from another build, e.g. an older commit),
DS_POWERCUT_ARGS (extra server options, e.g. "--spool-io direct"),
DS_POWERCUT_PIPELINING=0|1 (default: each cycle draws), DS_POWERCUT_AUDIT=0
(only what survives the cuts is checked, not the durable-before-accepted audit),
DS_KEEP=1 (keep the temporary directories).

Exit 0 pass, 1 fail, 77 skip (no /dev/fuse or no fusermount3).
"""
import argparse
import atexit
import bisect
import calendar
import json
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import dslib  # noqa: E402

SIZES = [220, 600, 1500, 4000, 9000]  # bench --size-file: headers only .. a few sectors/pages
FROM = "bench@localhost"
TO = "u@localhost"
CONNECTIONS = 24
# Buffered unless DS_POWERCUT_ARGS says otherwise (a later --spool-io wins): these cycles and the
# EIO mode were written for write + fdatasync; powercut_cut_direct runs the cycles in direct mode.
SERVER_ARGS = ["--threads", "2", "--segment-size", "1M", "--spool-buffer-size", "256K", "--ring-entries", "8",
               "--spool-io", "buffered"]
DISK_CYCLES = 3  # cycles on one disk before a fresh one (bounds the spool each check reads)
CUT_AT_S = (0.2, 1.5)  # cut this long after the load starts
CAT_SAMPLE = 4  # acked messages per check compared with `dotspool-ctl cat`
ACK_RE = re.compile(r"^<bench\.(\d+)\.(\d+)@dotspool-bench>$")
SEG_RE = re.compile(r"/spool/lane-(\d+)/(\d+)\.seg")

_filesystems = []  # mounted PowerFS, released and unmounted at exit
_procs = []        # bench processes still running, killed at exit


def _cleanup():
    for fs in list(_filesystems):
        try:
            fs.cmd("release", timeout_s=2)
        except Exception:
            pass
    dslib.kill_servers()
    for p in list(_procs):
        if p.poll() is None:
            p.kill()
            p.wait(10)
    for fs in list(_filesystems):
        fs.stop(check=False)


atexit.register(_cleanup)  # runs before dslib's (atexit is LIFO): servers die before their disk goes


def mounted(path):
    """True if path is a mount point (from /proc/self/mountinfo: stat() on a frozen FUSE mount fails)."""
    path = os.path.abspath(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = line.split(b" ")[4].decode("utf-8", "replace")
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp)
            if mp == path:
                return True
    return False


class PowerFS:
    """ds-powercut over backing, mounted on mnt, started and stopped by its own PID."""

    def __init__(self, exe, backing, mnt, workdir, seed, tag):
        self.exe, self.backing, self.mnt, self.seed = exe, backing, mnt, seed
        self.sock = os.path.join(workdir, "ctl.%s.sock" % tag)
        self.log_path = os.path.join(workdir, "fs.%s.log" % tag)
        self.out_path = os.path.join(workdir, "fs.%s.out" % tag)
        self.proc = None

    def start(self):
        os.makedirs(self.mnt, exist_ok=True)
        argv = [self.exe, "--backing", self.backing, "--ctl", self.sock, "--seed", str(self.seed),
                "--log", self.log_path, "--trace", "/spool/lane-*.seg", self.mnt, "-o", "fsname=ds-powercut"]
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _filesystems.append(self)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise dslib.Fail("ds-powercut exited %s at start:\n%s" % (self.proc.returncode, self.output()))
            if mounted(self.mnt) and os.path.exists(self.sock):
                return self
            time.sleep(0.02)
        raise dslib.Fail("ds-powercut did not mount %s within 10 s\n%s" % (self.mnt, self.output()))

    def output(self):
        try:
            with open(self.out_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-3000:]
        except OSError:
            return ""

    def log_lines(self, pattern=""):
        try:
            with open(self.log_path, "rb") as f:
                return [l for l in f.read().decode("utf-8", "replace").splitlines() if pattern in l]
        except OSError:
            return []

    def cmd(self, line, timeout_s=30):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(self.sock)
            s.sendall(line.encode() + b"\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data.decode())
        if "error" in reply:
            raise dslib.Fail("ds-powercut %r: %s" % (line, reply["error"]))
        return reply

    def stop(self, check=True):
        """Unmount (fusermount3 -u, lazily if busy) and wait for the process (by its PID); with check,
        anything but exit 0 (e.g. a sanitizer report) fails the test."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            for attempt in range(20):
                if not mounted(self.mnt):
                    break
                lazy = ["-z"] if attempt >= 10 else []
                subprocess.run(["fusermount3", "-u"] + lazy + [self.mnt], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                if mounted(self.mnt):
                    time.sleep(0.1)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        if mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", self.mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self in _filesystems:
            _filesystems.remove(self)
        rc, self.proc = self.proc.returncode, None
        if check and rc != 0:
            raise dslib.Fail("ds-powercut on %s exited %s\n%s" % (self.mnt, rc, self.output()))
        return rc


class Tools:
    def __init__(self, build):
        self.build = build
        bindir = os.environ.get("DS_BIN_DIR")
        self.server_dir = os.path.abspath(bindir) if bindir else build

        def pick(name):
            if bindir and os.access(os.path.join(bindir, name), os.X_OK):
                return os.path.join(os.path.abspath(bindir), name)
            return os.path.join(build, name)

        self.server = os.path.join(self.server_dir, "dotspool")
        self.ctl_dir = os.path.dirname(pick("dotspool-ctl"))
        self.bench = pick("dotspool-bench")
        self.fs = os.path.join(build, "ds-powercut")
        self.check = os.path.join(build, "ds-powercut-check")
        for exe in (self.server, self.bench, self.fs, self.check, os.path.join(self.ctl_dir, "dotspool-ctl")):
            if not os.access(exe, os.X_OK):
                raise dslib.Fail("missing binary %s (build it first)" % exe)


class Disk:
    """A backing directory ("the disk") and what was acknowledged on it."""

    def __init__(self, workdir, no):
        self.no = no
        self.dir = os.path.join(workdir, "disk%d" % no)
        self.backing = os.path.join(self.dir, "backing")
        self.mnt = os.path.join(self.dir, "mnt")
        os.makedirs(os.path.join(self.backing, "spool"))  # an installed system has its spool directory
        os.makedirs(self.mnt)
        self.acked = {}   # Message-ID -> cycle
        self.pids = set()  # bench PIDs (Message-IDs carry them: must not repeat on one disk)
        self.cycles = 0
        self.mounts = 0
        self.runs = []  # (label, server log, file system log) of server runs to audit at the next check
        self.own = {}   # Message-ID -> bytes of messages the test sent itself (not the bench)

    @property
    def spool(self):
        return os.path.join(self.mnt, "spool")


def sizes_arg():
    return ",".join(str(s) for s in SIZES)


def start_server(t, tools, disk, extra=()):
    args = SERVER_ARGS + os.environ.get("DS_POWERCUT_ARGS", "").split() + list(extra)
    srv = dslib.Server(tools.ctl_dir, spool=disk.spool, binary=tools.server, extra=args)
    srv.START_TIMEOUT_S = 30
    srv.start()
    log = srv.log_text() or ""
    m = (re.search(r"dotspool: recovered (\d+) messages .*torn tails (\d+), quarantined (\d+)", log) or
         re.search(r"spool recovery: .*?(\d+) messages .*?(\d+) torn tails, (\d+) quarantined", log))
    if not m:
        raise dslib.Fail("no recovery line in the server log\n%s" % srv.log())
    srv.recovered = tuple(int(x) for x in m.groups())
    modes = [args[i + 1] for i in range(len(args) - 1) if args[i] == "--spool-io"]
    if modes and modes[-1] == "direct":
        # Direct mode must really write through O_DIRECT here, not fall back to buffered.
        t.check("O_DIRECT refused" not in log, "spool-io direct: the server writes with O_DIRECT")
    return srv


def scan(t, tools, disk):
    """{Message-ID: [(queue id, status)]} of the whole spool, through the mount."""
    cp = subprocess.run([tools.check, "scan", disk.spool, sizes_arg(), FROM, TO], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=300)
    if cp.returncode != 0:
        raise dslib.Fail("ds-powercut-check scan failed (%d): %s" % (cp.returncode, cp.stderr.decode()[-2000:]))
    out = {}
    for line in cp.stdout.decode().splitlines():
        qid, lane, seq, off, mid, status = line.split(" ", 5)
        out.setdefault(mid, []).append((qid, status, int(lane), int(seq), int(off)))
    return out


def check_disk(t, tools, disk, srv, what):
    """Every acked message of this disk exactly once and intact; the spool holds only intact bench messages
    (and the test's own, disk.own: Message-ID -> bytes)."""
    t0 = time.monotonic()
    found = scan(t, tools, disk)
    ids = [e[0] for v in found.values() for e in v]
    dups = {m: v for m, v in found.items() if len(v) > 1}
    bad = {m: v for m, v in found.items() if any(e[1] != "ok" for e in v) and m.strip("<>") not in disk.own}
    missing = sorted((m for m in disk.acked if m not in found), key=lambda m: (disk.acked[m], m))
    detail = ""
    if missing:
        by_cycle = {}
        for m in missing:
            by_cycle.setdefault(disk.acked[m], []).append(m)
        detail = "; ".join("cycle %d: %d lost, e.g. %s" % (c, len(v), v[:3]) for c, v in sorted(by_cycle.items()))
    t.check(not missing, "%s: all %d acknowledged messages recovered" % (what, len(disk.acked)), detail)
    t.check(not dups, "%s: each Message-ID stored once (%d messages)" % (what, len(ids)),
            repr(list(dups.items())[:5]))
    t.check(not bad, "%s: every stored message is byte for byte what the bench sent" % what,
            repr(list(bad.items())[:5]))
    listed = [e["id"] for e in srv.list()]
    t.eq(sorted(listed), sorted(ids), "%s: dotspool-ctl list --json lists the same %d ids" % (what, len(ids)))
    sample = random.Random(len(ids)).sample(sorted(disk.acked), min(CAT_SAMPLE, len(disk.acked)))
    for mid in sample:
        pid, seq = ACK_RE.match(mid).groups()
        want = subprocess.run([tools.check, "gen", sizes_arg(), FROM, TO, pid, seq], stdout=subprocess.PIPE,
                              check=True, timeout=30).stdout
        _, data = dslib.split_received(srv.cat(found[mid][0][0]))
        t.check(data == want, "%s: dotspool-ctl cat %s (%s) is what was sent" % (what, found[mid][0][0], mid),
                "stored %d bytes, sent %d" % (len(data), len(want)))
    runs, disk.runs = disk.runs, []
    for run in runs if os.environ.get("DS_POWERCUT_AUDIT", "1") != "0" else []:
        audit(t, found, run, what)
    v = srv.verify()
    t.eq(v.returncode, 0, "%s: dotspool-ctl verify exits 0" % what, (v.stdout + v.stderr).decode()[-2000:])
    return len(ids), time.monotonic() - t0


def log_ts_us(text):
    """2026-12-07T04:37:27.170079Z -> microseconds since the epoch."""
    whole, frac = text.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) * 1000000 + int(frac.ljust(6, "0")[:6])


def audit(t, found, run, what):
    """Durable before acknowledged, from the logs of one server run on one mount.

    The server logs "event=accepted queue_id=ID" when a flush completed and it is about to send 250;
    ds-powercut --trace logs every write ("W") and every fsync with the extents it made durable ("S"),
    stamped before its reply. For each accepted message found in the spool, the first and the last byte
    of its commit record header must have been made durable by an fsync after they were last written,
    and before the server accepted it. Every accepted message must also still be in the spool (it
    outlived a power cut only if it was durable). A lucky cut is not needed to see a flush that
    completed before its write reached the file.
    """
    label, srv_log, fs_log = run
    loc = {e[0]: (e[2], e[3], e[4]) for v in found.values() for e in v}
    accepted = {}
    with open(srv_log, "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            if "event=accepted" in line:
                m = re.search(r"ts=(\S+) .*queue_id=([0-9A-F]+)", line)
                accepted[m.group(2)] = log_ts_us(m.group(1))
    missing = sorted(q for q in accepted if q not in loc)
    t.check(not missing, "%s: audit of %s: every message the server accepted (%d) is in the spool"
            % (what, label, len(accepted)), "%d missing, e.g. %s" % (len(missing), missing[:10]))
    # Queries: (path, byte) -> the accepted ids that need it durable.
    queries = {}
    for q, acc_us in accepted.items():
        lane, seq, off = loc[q]
        path = "/spool/lane-%02d/%012d.seg" % (lane, seq)
        for x in (off, off + 39):
            queries.setdefault(path, {}).setdefault(x, []).append(q)
    events = {}
    with open(fs_log, "rb") as f:
        for n, line in enumerate(f.read().decode("utf-8", "replace").splitlines()):
            parts = line.split(" ")
            if len(parts) < 3 or parts[1] not in ("W", "S", "E"):
                continue
            sec, usec = parts[0].split(".")
            ext = []
            for e in parts[3:]:
                a, ln = e.split("+")
                ext.append((int(a), int(a) + int(ln)))
            events.setdefault(parts[2], []).append((n, parts[1], int(sec) * 1000000 + int(usec), ext))
    durable = {}  # (path, x) -> microseconds, when it became durable after its last write
    for path, qs in queries.items():
        xs = sorted(qs)
        last_w = {}
        for n, kind, ts, ext in events.get(path, []):
            for a, b in ext:
                lo, hi = bisect.bisect_left(xs, a), bisect.bisect_left(xs, b)
                for x in xs[lo:hi]:
                    if kind == "W":
                        last_w[x] = n
                        durable.pop((path, x), None)
                    elif kind == "S" and x in last_w and (path, x) not in durable:
                        durable[(path, x)] = ts
    late = []
    for q, acc_us in accepted.items():
        lane, seq, off = loc[q]
        path = "/spool/lane-%02d/%012d.seg" % (lane, seq)
        d = [durable.get((path, x)) for x in (off, off + 39)]
        if None in d or max(d) > acc_us:
            late.append((q, path, off, acc_us, d))
    late.sort(key=lambda e: e[3])
    t.check(not late, "%s: audit of %s: all %d accepted messages were durable before the server accepted them"
            % (what, label, len(accepted)),
            "%d accepted before their commit record was durable, e.g.\n%s" % (len(late), "\n".join(
                "  %s %s@%d accepted %d us, durable %s" % (q, p, o, a, ["never" if x is None else "%+d us" % (x - a)
                                                                       for x in d]) for q, p, o, a, d in late[:10])))


def start_bench(tools, workdir, port, duration_s, tag, pipelining=True):
    sizefile = os.path.join(workdir, "sizes.txt")
    if not os.path.exists(sizefile):
        with open(sizefile, "w") as f:
            f.write("".join("%d\n" % s for s in SIZES))
    acklog = os.path.join(workdir, "acks.%s.txt" % tag)
    out = os.path.join(workdir, "bench.%s.json" % tag)
    argv = [tools.bench, "--server", "127.0.0.1:%d" % port, "--connections", str(CONNECTIONS)]
    argv += ["--pipelining"] if pipelining else []
    argv += ["--size-file", sizefile, "--from", FROM, "--to", TO, "--duration", "%.1f" % duration_s,
             "--timeout-ms", "20000", "--ack-log", acklog, "--json"]
    with open(out, "wb") as f:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    _procs.append(p)
    p.acklog, p.out = acklog, out
    return p


def finish_bench(p, timeout_s=30):
    """Wait for the bench (it stops at the end of --duration), kill it if it hangs; its acks and JSON."""
    note = ""
    try:
        p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        note = "bench still running %d s after the cut: killed (its ack log may be incomplete)" % timeout_s
    if p in _procs:
        _procs.remove(p)
    acks = []
    with open(p.acklog, "rb") as f:
        for line in f.read().decode("ascii", "replace").splitlines():
            if ACK_RE.match(line):  # a line torn by a kill is not an ack
                acks.append(line)
    try:
        with open(p.out) as f:
            res = json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        res = {}
    return acks, res, note


def cut_and_kill(fs, srv):
    """Power off, SIGKILL the server while every file system request blocks, then let the blocked fail."""
    t0 = time.monotonic()
    reply = fs.cmd("cut")
    os.kill(srv.pid, signal.SIGKILL)
    fs.cmd("release")
    srv.kill()  # waits (bounded) for the exit
    if srv.running():
        raise dslib.Fail("server %d still alive 10 s after SIGKILL" % srv.pid)
    reply["ms"] = round((time.monotonic() - t0) * 1000, 1)
    return reply


def cut_summary(r):
    return ("runs %d: dropped %d, whole %d, torn %d (prefix %d, subset %d), sectors written %d lost %d; "
            "sizes kept %d lost %d; namespace undone %d" %
            (r["runs"], r["dropped"], r["whole"], r["torn_prefix"] + r["torn_subset"], r["torn_prefix"],
             r["torn_subset"], r["sectors_written"], r["sectors_lost"], r["sizes_kept"], r["sizes_lost"],
             r["ns_undone"]))


def mount(tools, workdir, disk, seed):
    disk.mounts += 1
    return PowerFS(tools.fs, disk.backing, disk.mnt, disk.dir, seed, "m%d" % disk.mounts).start()


def reboot_and_check(t, tools, workdir, disk, seed, what):
    """Mount the disk after its crash, start the server (recovery), check it. Returns (fs, srv)."""
    fs = mount(tools, workdir, disk, seed)
    srv = start_server(t, tools, disk)
    n, dt = check_disk(t, tools, disk, srv, what)
    return fs, srv, n, dt


def add_acks(t, disk, acks, cycle, pid_of):
    """Record a bench run's acks; its Message-IDs carry its PID, which must be new on this disk."""
    if pid_of in disk.pids:
        raise dslib.Fail("bench PID %d used twice on disk %d: its Message-IDs are not unique (run again)"
                         % (pid_of, disk.no))
    for mid in acks:
        if int(ACK_RE.match(mid).group(1)) != pid_of:
            raise dslib.Fail("ack %s is not from the bench run with PID %d" % (mid, pid_of))
        if mid in disk.acked:
            raise dslib.Fail("Message-ID %s acknowledged twice (cycles %d and %d)" % (mid, disk.acked[mid], cycle))
        disk.acked[mid] = cycle
    disk.pids.add(pid_of)


def cut_mode(t, tools, workdir):
    sanitized = dslib.sanitized_build(tools.build) or dslib.sanitized_build(tools.server_dir)
    cycles_env = os.environ.get("DS_POWERCUT_CYCLES")
    cycles = int(cycles_env) if cycles_env else (10 if sanitized else 1000)
    budget = float(os.environ.get("DS_POWERCUT_BUDGET_S", "110" if not cycles_env else "1e9"))
    base = int(os.environ.get("DS_POWERCUT_SEED", str(int(time.time()) % 100000)))
    print("  base seed %d (DS_POWERCUT_SEED=%d repeats the schedule), server %s%s" %
          (base, base, tools.server, ", sanitizer build" if sanitized else ""))
    rnd = random.Random(base)
    t_start = time.monotonic()
    disk, fs, srv = None, None, None
    done = 0
    totals = {"acked": 0, "runs": 0, "torn": 0, "ns": 0}
    disk_no = 0
    for cycle in range(cycles):
        if time.monotonic() - t_start > budget:
            print("  time budget (%.0f s) reached after %d cycles" % (budget, done))
            break
        seed = rnd.randrange(1 << 30)
        tc = time.monotonic()
        if disk is None or disk.cycles >= DISK_CYCLES:
            if disk is not None:
                finish_disk(t, tools, workdir, disk, seed, base)
            disk_no += 1
            disk = Disk(workdir, disk_no)
        what = "cycle %d (seed %d, disk %d)" % (cycle, seed, disk.no)
        try:
            fs = mount(tools, workdir, disk, seed)
            srv = start_server(t, tools, disk)
            n_stored, t_check = check_disk(t, tools, disk, srv, what + " after reboot") if disk.cycles else (0, 0.0)
            crnd = random.Random(seed)
            cut_at = crnd.uniform(*CUT_AT_S)
            pipelining = os.environ.get("DS_POWERCUT_PIPELINING", str(crnd.randrange(2))) == "1"
            bench = start_bench(tools, disk.dir, srv.port, cut_at + 1.0, "c%d" % cycle, pipelining)
            time.sleep(cut_at)
            if bench.poll() is not None:
                raise dslib.Fail("%s: the bench exited before the cut (%s)" % (what, open(bench.out).read()[-500:]))
            st = fs.cmd("status")
            reply = cut_and_kill(fs, srv)
            acks, res, note = finish_bench(bench)
            fs.stop()
        except dslib.Fail as e:
            raise dslib.Fail("%s\n  repeat: DS_POWERCUT_SEED=%d (this cycle's seed %d); file system log: %s"
                             % (e, base, seed, fs.log_path if fs else "-"))
        add_acks(t, disk, acks, cycle, bench.pid)
        disk.runs.append(("cycle %d's server" % cycle, srv.log_path, fs.log_path))
        disk.cycles += 1
        done += 1
        totals["acked"] += len(acks)
        totals["runs"] += reply["runs"]
        totals["torn"] += reply["torn_prefix"] + reply["torn_subset"]
        totals["ns"] += reply["ns_undone"]
        print("  cycle %d seed %d disk %d: recovered %d at start (torn tails %d, quarantined %d), %d stored, "
              "checked in %.1f s; %s load, cut after %.2f s (%d fsyncs so far); acked %d of %d sent%s; cut: %s; "
              "cycle %.1f s" %
              (cycle, seed, disk.no, srv.recovered[0], srv.recovered[1], srv.recovered[2], n_stored, t_check,
               "pipelined" if pipelining else "unpipelined", cut_at, st["fsyncs"], len(acks), res.get("messages_ok", 0) + res.get("messages_failed", 0),
               " (" + note + ")" if note else "", cut_summary(reply), time.monotonic() - tc))
    if disk is not None:
        finish_disk(t, tools, workdir, disk, rnd.randrange(1 << 30), base)
    t.check(done >= min(cycles, 3), "ran %d power-cut cycles" % done)
    t.check(totals["acked"] > 0, "messages were acknowledged (%d)" % totals["acked"])
    print("  summary: %d cycles, %d acknowledged messages all recovered; the cuts tore %d of %d dirty runs and "
          "undid %d namespace changes; base seed %d" % (done, totals["acked"], totals["torn"], totals["runs"],
                                                        totals["ns"], base))


def finish_disk(t, tools, workdir, disk, seed, base):
    """The last reboot of a disk: check, then a clean stop (exit 0) and unmount."""
    what = "disk %d final check (seed %d)" % (disk.no, seed)
    try:
        fs, srv, n, dt = reboot_and_check(t, tools, workdir, disk, seed, what)
    except dslib.Fail as e:
        raise dslib.Fail("%s\n  repeat: DS_POWERCUT_SEED=%d" % (e, base))
    print("  %s: recovered %d at start (torn tails %d, quarantined %d); %d stored, %d acknowledged over %d "
          "cycles, all there; checked in %.1f s" % (what, srv.recovered[0], srv.recovered[1], srv.recovered[2], n,
                                                   len(disk.acked), disk.cycles, dt))
    t.eq(srv.stop(), 0, "%s: server exits 0 on SIGTERM" % what)
    fs.stop()


def metric_sum(port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def eio_mode(t, tools, workdir):
    base = int(os.environ.get("DS_POWERCUT_SEED", str(int(time.time()) % 100000)))
    print("  seed %d (DS_POWERCUT_SEED=%d repeats it), server %s" % (base, base, tools.server))
    disk = Disk(workdir, 1)
    fs = mount(tools, workdir, disk, base)
    mport = dslib.free_port()
    srv = start_server(t, tools, disk, extra=["--metrics", "127.0.0.1:%d" % mport])
    load_s = 6.0
    bench = start_bench(tools, disk.dir, srv.port, load_s, "eio")
    time.sleep(0.5)
    failed = []  # (lane, seq) of segments whose fsync failed
    data_failed = 0  # of them, the lane's data flushes (fdatasync)
    # Two data flushes (fdatasync) and then any fsync of a segment file (a data flush, or a
    # segment's preparation by the spare thread).
    for k, kind in enumerate(["data", "data", "any"]):
        fs.cmd("eio-next-fsync /spool/lane-*.seg %s" % kind)
        deadline = time.monotonic() + 10
        while fs.cmd("status")["eio_injected"] < k + 1:
            if time.monotonic() > deadline or bench.poll() is not None:
                raise dslib.Fail("injection %d: no fsync of a segment within 10 s" % (k + 1))
            time.sleep(0.01)
        line = fs.log_lines(" fails; ")[-1]
        m = SEG_RE.search(line.split(" fails")[0])
        failed.append((int(m.group(1)), int(m.group(2))))
        # The lane's data flushes are fdatasyncs; an "any" injection may hit a spare segment's
        # preparation (fsync), which the spare thread retries and is no flush error.
        data_failed += "eio: fdatasync of " in line
        print("  injected: %s" % line.split(" ", 1)[1])
        time.sleep(0.4)
    t.check(srv.running(), "server still running after %d failed fsyncs" % len(failed))
    errors = metric_sum(mport, "dotspool_flush_errors_total")  # checked at the end, after the durability checks
    # Later mail is taken, on a fresh segment of its lane.
    sent = {}
    for i in range(6):
        mid = "after-eio-%d.%d@powercut" % (i, base)
        data = ("From: a@localhost\r\nTo: u@localhost\r\nSubject: after eio\r\nMessage-ID: <%s>\r\n\r\n"
                % mid).encode() + dslib.body_lines(700 + 900 * i, "eio%d" % i)
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=20) as s:
            s.ehlo("powercut.example")
            s.mail(FROM)
            s.rcpt(TO)
            code, resp = s.data(data)
        t.eq(code, 250, "message %d after the failed fsyncs: 250" % i, resp)
        qid = dslib.queued_id(resp)
        lane, seg = int(qid[:2], 16), int(qid[2:10], 16)
        older = [fseq for fl, fseq in failed if fl == lane and seg <= fseq]
        t.check(not older, "message %d (%s): lane %d segment %d, none whose fsync failed (%s)"
                % (i, qid, lane, seg, failed), "")
        sent[mid] = (qid, data)
        disk.own[mid] = data
    # Power cut while the load still runs; every acknowledged message must survive.
    time.sleep(0.3)
    t.check(bench.poll() is None, "load still running at the cut")
    reply = cut_and_kill(fs, srv)
    print("  cut: %s" % cut_summary(reply))
    acks, res, note = finish_bench(bench)
    fs.stop()
    print("  bench: %d acknowledged, %d failed, errors %s%s" % (len(acks), res.get("messages_failed", -1),
                                                                 res.get("errors_by_code"), " " + note if note else ""))
    codes = res.get("errors_by_code", {})
    t.check(sum(v for k, v in codes.items() if k.startswith("4")) > 0,
            "the messages of the failed flushes got 4xx replies, not 250 (%s)" % codes)
    add_acks(t, disk, acks, 0, bench.pid)
    disk.runs.append(("the server under EIO", srv.log_path, fs.log_path))
    # From here on every check runs and the failures are reported together at the end.
    failures = []
    fs = mount(tools, workdir, disk, base + 1)
    srv = start_server(t, tools, disk)
    try:
        check_disk(t, tools, disk, srv, "after EIO and power cut")
    except dslib.Fail as e:
        failures.append(str(e))
    entries = srv.list()
    for mid, (qid, data) in sent.items():
        e = dslib.entry_by_id(entries, qid)
        t.check_stored(srv, e, data, "smtplib message %s after the failed fsyncs" % qid)
    t.eq(srv.stop(), 0, "server exits 0 on SIGTERM")
    fs.stop()
    if errors >= data_failed:
        print("  ok: dotspool_flush_errors_total counted the failed flushes (%d of %d data flushes failed, "
              "%d injections)" % (errors, data_failed, len(failed)))
    else:
        failures.append("dotspool_flush_errors_total counted %d failed flushes, %d data flushes (fdatasync) "
                        "were made to fail" % (errors, data_failed))
    if failures:
        raise dslib.Fail("%d problem(s):\n- %s" % (len(failures), "\n- ".join(failures)))


def main(t, mode):
    if not os.path.exists("/dev/fuse"):
        raise dslib.Skip("/dev/fuse is missing (FUSE not available here)")
    dslib.need_tool("fusermount3")
    tools = Tools(t.build)
    workdir = dslib.mkdtemp("ds-powercut-")
    try:
        if mode == "cut":
            cut_mode(t, tools, workdir)
        else:
            eio_mode(t, tools, workdir)
    finally:
        _cleanup()
        for d in sorted(os.listdir(workdir)):
            mnt = os.path.join(workdir, d, "mnt")
            if mounted(mnt):
                raise dslib.Fail("left mounted: %s" % mnt)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--mode", choices=["cut", "eio"], default="cut")
    args, rest = ap.parse_known_args()
    sys.argv = [sys.argv[0]] + rest
    dslib.run(lambda t: main(t, args.mode), name="test_powercut.py --mode %s" % args.mode)
