#!/usr/bin/env python3
"""Power cuts under the delivery stage (issue 14, point 1).

dotspool runs on ds-powercut (powercut_fs.c) with --deliver-to the scripted
next hop tests/peer/peer.py, which runs on the ordinary file system (outside
the mount) for the whole test and writes every recipient it accepts to its
index.jsonl (flushed before its 250). Clients send mail continuously, 2..4
recipients a message, each with a unique Message-ID.

--mode cut (default): on one disk, cycles of
    mount -> ds-powercut-dlvstate reads what survived the last cut (the state
    recovery will fold: per recipient P pending, A attempt without outcome,
    D delivered, R deferred, F failed) -> start dotspool (recovery queues what
    is owed and delivery starts at once) -> dotspool-ctl verify -> load ->
    at a random moment "cut" (ds-powercut freezes and drops what was not
    fsynced) -> scrape /metrics (nothing can become durable any more) ->
    SIGKILL -> unmount;
  then a last reboot drains: no load, wait until the peer has every
  recipient and the queue is empty, stop (exit 0), read the final state.
--mode eio: one cycle whose segment fsyncs fail with EIO under load (Linux
  semantics, as test_powercut.py --mode eio), then the cut, then the drain.

Each server run k owns the peer's index lines written while it ran (the peer
index length is taken before the start and after the kill). S_k is the
state read after run k's cut. Checks:
- at-least-once: every recipient of every message that got a 250 in any run
  is in the peer's index (by the queue id of the Received: header the server
  put on the message, and the recipient), and the final state has every
  recipient of every message D;
- ATTEMPT before hand-over: a recipient the peer got in run k is A or D in
  S_k (its attempt record was durable before the message left), and the
  message is in the spool;
- D only after the peer's 250: a recipient D in S_k was received by the
  peer in a run <= k;
- no resurrection: a recipient D in S_k is never received again in a later
  run; every extra receipt (a duplicate) is of a recipient that was A in the
  state before the run that received it again (the RFC 1047 gap on our
  client side); none within one run (cut mode);
- the metric: dotspool_redeliveries_total of run k (scraped after the cut)
  counts only such recipients (<= those A in S_{k-1} received in run k),
  and in the drain run exactly those A after the last cut; duplicates and
  metrics are printed;
- the server's recovery line agrees with ds-powercut-dlvstate (messages,
  messages owed, recipients owed, messages cut short in delivery);
- `dotspool-ctl verify` exits 0 after each restart;
- no message whose client got a 4xx/5xx at DATA (eio: 451 after a failed
  flush, whose bytes may be intact: the abort record must stop it) is ever
  received by the peer, in the run or after the restart (by Message-ID).

--reclaim (or DS_POWERCUT_RECLAIM=1): the server runs with --reclaim true
  (segment reclamation, spool/FORMAT.md "Reclamation"; segments stay 1 MiB as
  in test_powercut.py so each cycle seals several), and the checks that
  assumed every message stays visible become:
  - a message that should be on the disk after run k (acknowledged in a run
    <= k, or in the state after an earlier run) and is not in S_k is
    acceptable only if every one of its recipients (the client's list, or
    the state's) had been received by the peer by the end of run k: its
    commit segment was reclaimed because it was final. Anything else is
    "lost by reclamation" (this check runs without --reclaim too, where no
    absence is acceptable);
  - a recipient received in run k whose message is gone from S_k passes the
    ATTEMPT check only under that same condition;
  - no resurrection is unchanged: a recipient received again in run k+1
    must have been A in S_k, and a gone message has no A;
  - `dotspool-ctl verify` after a restart may report commits without their
    body (a final message's chunk segment reclaimed before its commit
    segment, as FORMAT.md allows), and nothing else; each must be gone from
    the fold with all of its recipients at the peer;
  - about one message in ten gets one more recipient, later-TAG@localhost,
    which the peer defers (450) for the first LATER_TIMES attempts of the
    run's such recipients (DS_POWERCUT_LATER_TIMES, default 150): segments
    that hold owed messages beside final ones, across cuts (without it the
    rule that a final message's outcome records outlive its commit went
    untested: reclaiming them early passed 2 of 2 seeds; with it, 5 of 5
    seeds fail on resurrection or recipients left A);
  - reclamation really happened: the segment files in the lane directories
    at the end are at most half of those ever created (the sum of each
    lane's highest sequence, since sequences start at 1 and never repeat);
    both are printed after every cut and at the end, with the server's
    "reclaimed at start-up" count.

Knobs (also): DS_POWERCUT_RECLAIM_ARGS (more server options with --reclaim).
Knobs: DS_POWERCUT_CYCLES (cut mode, default 4), DS_POWERCUT_DISK_CYCLES
(cycles per disk before its drain, default all on one disk), DS_POWERCUT_SEED
(printed; repeats the schedule), DS_POWERCUT_ARGS (extra server options, e.g.
"--spool-io direct"), DS_BIN_DIR (as test_powercut.py), DS_KEEP=1 (keep the
temporary directories).

Exit 0 pass, 1 fail, 77 skip (no /dev/fuse or no fusermount3).
"""
import argparse
import json
import os
import random
import re
import signal
import smtplib
import struct
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "delivery"))
import dlvlib  # noqa: E402
import test_powercut as pc  # noqa: E402
from dlvlib import dslib  # noqa: E402

CLIENTS = 6          # sending threads
PAUSE_S = 0.01       # between a client's messages: about what delivery to the Python peer keeps up with
RCPTS = 8            # recipient addresses r0..r7@localhost, 2..4 per message
CUT_AT_S = (0.6, 2.0)  # cut this long after the load starts
DRAIN_S = 45         # the drain run must deliver everything within this
EIO_MAX = 10         # failed fsyncs at most in eio mode
SCRAPE_S = 0.5       # /metrics after the cut: a worker blocked on the frozen mount does not answer
METRICS = ("dotspool_redeliveries_total", "dotspool_delivery_possible_duplicates_total",
           "dotspool_outcome_records_total", "dotspool_outcome_record_errors_total",
           "dotspool_flush_errors_total", "dotspool_queue_messages", "dotspool_queue_recipients_open",
           "dotspool_compacted_segments_total", "dotspool_compacted_messages_total",
           "dotspool_reclaimed_segments_total", "dotspool_recycled_segments_total",
           "dotspool_spool_segments_recycled_total", "dotspool_spool_segments_fresh_total")
# With --reclaim. The gap dedup (issue 16) keeps every message whose 250 a cut left unread for its window
# (default a day: by design nothing of them is reclaimed meanwhile); this test is about reclamation, so
# the window is off. DS_POWERCUT_ARGS comes later and may override.
RECLAIM_ARGS = ["--reclaim", "true", "--gap-dedup-window-s", "0"] + \
    os.environ.get("DS_POWERCUT_RECLAIM_ARGS", "").split()
# --compact (with --reclaim): compaction forced (1 s old, half live): copies, summaries and MOVED records
# written between the cuts, and at least one segment compacted over the run.
COMPACT = False
COMPACT_ARGS = ["--compact-age-s", "1", "--compact-live-max-pct", "50"]
RECLAIM = False       # set by --reclaim / DS_POWERCUT_RECLAIM=1
# With --reclaim, a message has one more recipient later-TAG@localhost (TAG: the run's Load tag) with this
# probability, which the peer answers 450 at RCPT for the first LATER_TIMES attempts of that run's such
# recipients: deferred recipients (R, retried 1-4 s later) keep their commit segment on the disk while final
# neighbours' segments around it may go, the mix that the rule "a final message's outcome records stay while its
# commit does" (waiting(S), FORMAT.md) is about. Without it nearly every message is final within milliseconds.
LATER_P = 0.1
LATER_TIMES = int(os.environ.get("DS_POWERCUT_LATER_TIMES", "150"))
RECLAIM_RE = re.compile(r"spool reclamation: (\d+) segment\(s\) reclaimed at start-up, (\d+) on disk")
SEG_NAME_RE = re.compile(r"\A(\d{12})\.seg\Z")
RECOVERY_RE = re.compile(r"spool recovery: .*?(\d+) messages \(.*?(\d+) refused commits .*?(\d+) outcome records, "
                         r"(\d+) messages queued \((\d+) recipients, (\d+) cut short")

_peers = []


def _stop_peers():
    for p in _peers:
        p.stop()


class Load:
    """CLIENTS threads sending over smtplib until stopped; every message's fate is recorded.

    fate: ("ok", queue id) for a 250 after the data; ("refused", code) for any other reply to DATA or
    after the data; ("unknown", why) when the connection broke before the reply (never told).
    """

    def __init__(self, port, tag, seed, msgs, clients=CLIENTS, pause_s=PAUSE_S):
        self.port, self.tag, self.rnd_seed, self.pause_s = port, tag, seed, pause_s
        self.msgs = msgs  # shared: Message-ID -> {"rcpts", "fate", "run"}
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]

    def start(self):
        for th in self.threads:
            th.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(30)
            if th.is_alive():
                raise dslib.Fail("a load client still runs 30 s after the stop")

    def record(self, mid, rcpts, fate):
        with self.lock:
            self.msgs[mid] = {"rcpts": rcpts, "fate": fate, "run": self.tag}

    def client(self, no):
        rnd = random.Random("%s.%s.%d" % (self.rnd_seed, self.tag, no))
        n = 0
        s = None
        while not self.stop_ev.is_set():
            if s is None:
                try:
                    s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
                    s.ehlo("load%d.powercut" % no)
                except (OSError, smtplib.SMTPException):
                    s = None
                    time.sleep(0.05)
                    continue
            n += 1
            mid = "pcd.%s.%s.%d.%d@powercut" % (self.rnd_seed, self.tag, no, n)
            rcpts = ["r%d@localhost" % i for i in sorted(rnd.sample(range(RCPTS), rnd.randint(2, 4)))]
            if RECLAIM and rnd.random() < LATER_P:
                rcpts.append("later-%s@localhost" % self.tag)  # deferred by the peer (LATER_TIMES)
            data = ("From: load@localhost\r\nTo: %s\r\nSubject: power cut %s\r\nMessage-ID: <%s>\r\n\r\n"
                    % (", ".join(rcpts), n, mid)).encode() + dslib.body_lines(rnd.choice((200, 900, 3000, 7000)), mid)
            fate, started = None, False
            try:
                code, resp = s.mail("load@localhost")
                if code != 250:
                    raise smtplib.SMTPResponseException(code, resp)
                for r in rcpts:
                    code, resp = s.rcpt(r)
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, resp)
                started = True
                code, resp = s.data(data)  # smtplib raises only for the reply to DATA, not for the one after the dot
                if code != 250:
                    raise smtplib.SMTPDataError(code, resp)
                fate = ("ok", dslib.queued_id(resp))
                if not fate[1] or not re.fullmatch(r"[0-9A-F]{16}", fate[1]):
                    fate = ("bad-250", resp)
            except smtplib.SMTPDataError as e:
                fate = ("refused", e.smtp_code)
            except smtplib.SMTPResponseException as e:
                fate = ("refused-early", e.smtp_code)  # MAIL/RCPT: no data was ever sent
            except (OSError, smtplib.SMTPException) as e:
                fate = ("unknown", type(e).__name__) if started else ("refused-early", 0)
                try:
                    s.close()
                except Exception:
                    pass
                s = None
            if fate[0] != "refused-early":
                self.record(mid, rcpts, fate)
            if self.pause_s:
                self.stop_ev.wait(self.pause_s)
            if fate[0] == "refused" and s is not None:
                try:
                    s.rset()
                except (OSError, smtplib.SMTPException):
                    s.close()
                    s = None
        if s is not None:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                s.close()


def metrics(port, timeout_s):
    """{name: sum over its samples} for METRICS, or None if /metrics does not answer in time."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {k: 0.0 for k in METRICS}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if name in out:
            out[name] += float(val)
    return out


def dlvstate(tools, disk):
    """{queue id: {rcpt: (state letter, attempt)}} as recovery will fold it (ds-powercut-dlvstate)."""
    cp = subprocess.run([tools.dlvstate, disk.spool], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if cp.returncode != 0:
        raise dslib.Fail("ds-powercut-dlvstate failed (%d): %s" % (cp.returncode, cp.stderr.decode()[-2000:]))
    out = {}
    for line in cp.stdout.decode().splitlines():
        parts = line.split(" ")
        st = {}
        for p in parts[2:]:
            addr, _, rest = p.rpartition("=")
            f = rest.split(":")
            st[addr] = (f[0], int(f[1]))
        out[parts[0]] = st
    return out


class Receipts:
    """The peer's index, each line with the queue id and Message-ID of the message it names."""

    def __init__(self, peer):
        self.peer = peer
        self.files = {}  # eml file -> (queue id, Message-ID)
        self.entries = []  # (queue id, rcpt, Message-ID, index line number)
        self.pos = 0  # bytes of index.jsonl read (complete lines only)

    def refresh(self):
        try:
            with open(os.path.join(self.peer.outdir, "index.jsonl"), "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1
        self.pos += end
        for line in data[:end].decode().splitlines():
            if not line.strip():
                continue
            e = json.loads(line)
            n = len(self.entries)
            if e["file"] not in self.files:
                data = self.peer.data(e)
                m = re.search(rb"\A(Received:[^\r]*\r\n(?:[ \t][^\r]*\r\n)*)", data)
                q = re.search(rb"\sid ([0-9A-F]{16})\b", m.group(1)) if m else None
                self.files[e["file"]] = (q.group(1).decode() if q else None, dslib.find_message_id(data))
            qid, mid = self.files[e["file"]]
            self.entries.append((qid, e["rcpt"], mid, n))
        return len(self.entries)


DELIVERY_RE = re.compile(r"^ts=\S+ level=info event=delivery queue_id=([0-9A-F]{16}) .*? rcpts=(\d+) delivered=(\d+) "
                         r".* reply=.*$")


def logged_delivered(log_path, rcpt_count):
    """Queue ids whose event=delivery line says all of the message's recipients (rcpt_count[id]) were delivered."""
    out = []
    with open(log_path, "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            m = DELIVERY_RE.match(line)
            if m and m.group(1) in rcpt_count and int(m.group(2)) == int(m.group(3)) == rcpt_count[m.group(1)]:
                out.append(m.group(1))
    return out


def recovery_line(srv):
    m = RECOVERY_RE.search(srv.log_text() or "")
    if not m:
        raise dslib.Fail("no recovery line in the server log\n%s" % srv.log())
    keys = ("messages", "aborted", "outcomes", "queued", "queued_rcpts", "in_flight")
    return dict(zip(keys, (int(x) for x in m.groups())))


def state_summary(st):
    """What recovery should report for state st."""
    owed = [q for q, rs in st.items() if any(s not in "DF" for s, _ in rs.values())]
    return {"messages": len(st), "queued": len(owed),
            "queued_rcpts": sum(1 for rs in st.values() for s, _ in rs.values() if s not in "DF"),
            "in_flight": sum(1 for rs in st.values() if any(s == "A" for s, _ in rs.values()))}


def count_states(st):
    c = {}
    for rs in st.values():
        for s, _ in rs.values():
            c[s] = c.get(s, 0) + 1
    return " ".join("%s %d" % (k, c[k]) for k in sorted(c))


def census(spool):
    """{lane directory: (segment files in it, highest sequence)}: sequences start at 1 and never repeat, so the
    highest is how many segments the lane ever created (one not yet durable at a cut may be reused)."""
    out = {}
    for d in sorted(os.listdir(spool)):
        if not re.fullmatch(r"lane-\d+", d):
            continue
        seqs = [int(m.group(1)) for m in (SEG_NAME_RE.match(f) for f in os.listdir(os.path.join(spool, d))) if m]
        out[d] = (len(seqs), max(seqs, default=0))
    return out


def gap_on():
    """The gap dedup window is on (the last --gap-dedup-window-s of the server's options is not 0)."""
    a = (RECLAIM_ARGS if RECLAIM else []) + os.environ.get("DS_POWERCUT_ARGS", "").split()
    v = [a[i + 1] for i in range(len(a) - 1) if a[i] == "--gap-dedup-window-s"]
    return bool(v) and v[-1] != "0"


def gap_moved(spool):
    """Messages with two or more AT_RISK gap records (type 7, kind 1) on disk: kept (at-risk) messages that
    compaction moved, each copy with a fresh record (issue 16; FORMAT.md "Kept messages and compaction")."""
    n = {}
    for d in sorted(os.listdir(spool)):
        if not re.fullmatch(r"lane-\d+", d):
            continue
        for f in sorted(os.listdir(os.path.join(spool, d))):
            if not SEG_NAME_RE.match(f):
                continue
            with open(os.path.join(spool, d, f), "rb") as fh:
                data = fh.read()
            off = 4096
            while off + 40 <= len(data):
                magic, typ, ln = struct.unpack_from("<IB3xI", data, off)
                if magic != 0x52535344:
                    off += 8
                    continue
                if typ == 7 and ln >= 24 and off + 44 <= len(data) and struct.unpack_from("<I", data, off + 40)[0] == 1:
                    txn = struct.unpack_from("<Q", data, off + 16)[0]
                    n[txn] = n.get(txn, 0) + 1
                off += 40 + ((ln + 7) & ~7)
    return sum(1 for v in n.values() if v > 1), len(n)


def census_text(c):
    return "%d of %d segments on disk (%s)" % (sum(n for n, _ in c.values()), sum(h for _, h in c.values()),
                                                 ", ".join("%s %d/%d" % (d, n, h) for d, (n, h) in c.items()))


class DiskRun:
    """One server run on the disk: its peer index lines [lo, hi), the state after its end, its metrics."""

    def __init__(self, label, lo, tag=None):
        self.label, self.lo, self.hi, self.tag = label, lo, None, tag  # tag: the Load's, for its acks
        self.state_after = None
        self.census_after = None  # census() of the disk after its end (reclaim mode)
        self.bad_bodies_after = []  # commits verify found without their body after its end (reclaim mode)
        self.reclaimed_at_start = None  # the server's "reclaimed at start-up" count
        self.metrics = None
        self.metrics_when = "-"
        self.log_path = None


def start_dserver(t, tools, disk, peer, mport):
    args = pc.SERVER_ARGS + dlvlib.deliver_args([peer.url()], retry_min_s=1)
    args += ["--deliver-connections", "8", "--metrics", "127.0.0.1:%d" % mport]
    args += RECLAIM_ARGS if RECLAIM else ["--reclaim", "false"]
    args += COMPACT_ARGS if RECLAIM and COMPACT else []
    args += os.environ.get("DS_POWERCUT_ARGS", "").split()
    srv = dslib.Server(tools.ctl_dir, spool=disk.spool, binary=tools.server, extra=args)
    srv.START_TIMEOUT_S = 30
    srv.start()
    return srv


def reboot(t, tools, workdir, disk, seed, peer, rc, what):
    """Mount after a cut, read what survived, start the server, compare its recovery line, verify."""
    fs = pc.mount(tools, workdir, disk, seed)
    st = dlvstate(tools, disk)
    cen = census(disk.spool)
    lo = rc.refresh()  # before the start: delivery begins as soon as recovery has queued what is owed
    mport = dslib.free_port()
    srv = start_dserver(t, tools, disk, peer, mport)
    got = recovery_line(srv)
    want = state_summary(st)
    t.eq({k: got[k] for k in want}, want, "%s: the server's recovery line agrees with the spool's folded state (%s)"
         % (what, count_states(st)))
    v = srv.verify()
    vout = (v.stdout + v.stderr).decode()
    # FORMAT.md "Reclamation": a final message's chunk segment may leave before its commit segment; until that
    # follows, verify reports the commit as final with its body reclaimed (no error) and recovery drops it.
    # Acceptable only as exactly that: check_disk requires each such message to be gone from the state with all of
    # it delivered. dotspool-ctl survives a segment failing under its map (SIGBUS guard: read again, said on stderr).
    got["bad_bodies"] = re.findall(r"^lane \d+ segment \d+ offset \d+: message ([0-9A-F]{16}): final, body reclaimed "
                                   r"\(not an error\)$", vout, re.M)
    if got["bad_bodies"]:
        t.check(RECLAIM, "%s: verify reports final commits without their body only with reclamation on" % what,
                vout[-2000:])
    if "changed under the reader (SIGBUS)" in vout:
        print("  NOTE: %s: dotspool-ctl verify read again after a SIGBUS beside the running server" % what)
    m = re.search(r" (\d+) final commits with body reclaimed$", vout, re.M)
    t.check(m is not None and int(m.group(1)) == len(got["bad_bodies"]),
            "%s: verify counts %d final commits with body reclaimed" % (what, len(got["bad_bodies"])), vout[-2000:])
    t.eq(v.returncode, 0, "%s: dotspool-ctl verify exits 0" % what, vout[-2000:])
    got["census"] = cen
    m = RECLAIM_RE.search(srv.log_text() or "")
    got["reclaimed_at_start"] = int(m.group(1)) if m else None
    if RECLAIM:
        t.check(m is not None, "%s: the server logged its start-up reclamation" % what)
        print("  %s: after the cut %s; the server reclaimed %s at start-up" % (what, census_text(cen), m.group(1)))
    return fs, srv, mport, st, got, lo


def cut_run(t, tools, fs, srv, mport, run):
    """The cut; /metrics read while the mount is frozen (nothing can settle); SIGKILL."""
    before = metrics(mport, 5)
    t0 = time.monotonic()
    reply = fs.cmd("cut")
    run.metrics = metrics(mport, SCRAPE_S)
    run.metrics_when = "after the cut"
    if run.metrics is None:
        run.metrics, run.metrics_when = before, "before the cut (no answer after it)"
    os.kill(srv.pid, signal.SIGKILL)
    fs.cmd("release")
    srv.kill()
    if srv.running():
        raise dslib.Fail("server %d still alive 10 s after SIGKILL" % srv.pid)
    reply["ms"] = round((time.monotonic() - t0) * 1000, 1)
    return reply


def settle_peer(rc, timeout_s=1.0):
    """The peer may still store a message whose final dot was in its socket when the server died."""
    n, t0 = rc.refresh(), time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        time.sleep(0.25)
        m = rc.refresh()
        if m == n:
            return m
        n = m
    return n


def drain(t, tools, workdir, disk, seed, peer, rc, runs, msgs, what):
    """The last reboot of a disk: no load, everything is delivered, clean stop; the final state."""
    fs, srv, mport, st, rep, lo = reboot(t, tools, workdir, disk, seed, peer, rc, what)
    runs[-1].state_after, runs[-1].census_after = st, rep["census"]
    runs[-1].bad_bodies_after = rep["bad_bodies"]
    run = DiskRun("drain", lo, "drain")
    run.reclaimed_at_start = rep["reclaimed_at_start"]
    run.log_path = srv.log_path
    runs.append(run)
    want = {(m["fate"][1], r) for m in msgs.values() if m["fate"][0] == "ok" for r in m["rcpts"]}
    owed = {(q, r) for q, rs in st.items() for r, (s, _) in rs.items() if s not in "DF"}
    t0 = time.monotonic()
    last, since = None, None
    while True:
        rc.refresh()
        have = {(q, r) for q, r, _, _ in rc.entries[runs[0].lo:]}
        again = {(q, r) for q, r, _, _ in rc.entries[lo:]}
        if want <= have and owed <= again:
            # The queue gauges are refreshed once a second: only a scrape well after the last receipt counts.
            since = since or time.monotonic()
            mt = metrics(mport, 5) if time.monotonic() - since > 1.3 else None
            if mt is not None and mt["dotspool_queue_messages"] == 0 and mt["dotspool_queue_recipients_open"] == 0:
                break
        else:
            since = None
        if time.monotonic() - t0 > DRAIN_S:
            last = metrics(mport, 5)
            break
        time.sleep(0.2)
    run.metrics, run.metrics_when = metrics(mport, 5), "at the end of the drain"
    t.check(last is None, "%s: drained in %.1f s (every acknowledged recipient at the peer, queue empty)"
            % (what, time.monotonic() - t0),
            "after %d s: %d acknowledged recipients missing, e.g. %s; %d owed after the last cut not received "
            "again, e.g. %s; metrics %s" % (DRAIN_S, len(want - have), sorted(want - have)[:5], len(owed - again),
                                           sorted(owed - again)[:5], last))
    t.eq(srv.stop(), 0, "%s: server exits 0 on SIGTERM" % what)
    run.hi = settle_peer(rc)
    run.state_after = dlvstate(tools, disk)
    run.census_after = census(disk.spool)
    run.gap_moved = gap_moved(disk.spool) if RECLAIM and COMPACT and gap_on() else None
    if run.gap_moved is not None:
        # Kept messages moved over all runs: the workers' cumulative kept_moved_total on event=compact lines.
        moved = 0
        for r in runs:
            per_lane = {}
            if r.log_path and os.path.exists(r.log_path):
                with open(r.log_path, "rb") as fh:
                    for line in fh.read().decode("utf-8", "replace").splitlines():
                        m = re.search(r"event=compact lane=(\d+) .*kept_moved_total=(\d+)", line)
                        if m:
                            per_lane[m.group(1)] = max(per_lane.get(m.group(1), 0), int(m.group(2)))
            moved += sum(per_lane.values())
        run.gap_moved = (moved,) + run.gap_moved
    fs.stop()
    return rep


def check_disk(t, tools, rc, runs, msgs, mode, what):
    """Every check over one disk's runs (the drain is the last run); returns numbers for the summary."""
    failures = []
    ents = rc.entries
    # Runs partition the peer's index: nothing arrived while no server ran.
    for a, b in zip(runs, runs[1:]):
        if a.hi != b.lo:
            failures.append("peer index lines %d..%d arrived between %s and %s" % (a.hi, b.lo, a.label, b.label))
    run_of = {}
    for k, r in enumerate(runs):
        for n in range(r.lo, r.hi):
            run_of[n] = k
    acked = {m["fate"][1]: (mid, m) for mid, m in msgs.items() if m["fate"][0] == "ok"}
    refused = {mid for mid, m in msgs.items() if m["fate"][0] == "refused"}
    bad = [(mid, m["fate"]) for mid, m in msgs.items() if m["fate"][0] == "bad-250"]
    if bad:
        failures.append("%d 250 replies without a queue id, e.g. %s" % (len(bad), bad[:3]))
    final = runs[-1].state_after
    seen = {}  # (qid, rcpt) -> [run index, ...] in index order
    for qid, rcpt, mid, n in ents:
        if n not in run_of:
            continue
        seen.setdefault((qid, rcpt), []).append(run_of[n])
        if qid in acked and acked[qid][0] != mid:
            failures.append("peer line %d: queue id %s carries Message-ID %s, the client was told %s"
                            % (n, qid, mid, acked[qid][0]))
        if mid in refused:
            failures.append("peer line %d: %s (%s) was delivered, but its client got %s"
                            % (n, mid, qid, msgs[mid]["fate"][1]))
    # at-least-once
    lost = [(q, r) for q, (mid, m) in acked.items() for r in m["rcpts"] if (q, r) not in seen]
    if lost:
        failures.append("%d acknowledged recipients never reached the peer, e.g. %s" % (len(lost), lost[:5]))
    not_final = [(q, r, s) for q, rs in final.items() for r, (s, _) in rs.items() if s != "D"]
    if not_final:
        failures.append("%d recipients not D after the drain, e.g. %s" % (len(not_final), not_final[:5]))
    if not RECLAIM:
        missing = [q for q in acked if q not in final]
        if missing:
            failures.append("%d acknowledged messages missing from the final spool, e.g. %s"
                            % (len(missing), missing[:5]))
    # Nothing lost by reclamation: a message that must be on the disk after run k (acknowledged in a run <= k, or
    # in the state after an earlier run) may be absent from S_k only with reclamation on, and only if every one of
    # its recipients had reached the peer by the end of run k (it was final, so its commit segment could go).
    run_no = {r.tag: k for k, r in enumerate(runs)}
    mid_of = {q: mid for q, _, mid, n in ents if n in run_of}
    rcpts_of = {}  # queue id -> its recipients: the client's list, else the first state that held it
    for q, (mid, m) in acked.items():
        rcpts_of[q] = set(m["rcpts"])
    for q, mid in mid_of.items():
        if q not in rcpts_of and mid in msgs:
            rcpts_of[q] = set(msgs[mid]["rcpts"])
    for r in runs:
        for q, rs in r.state_after.items():
            rcpts_of.setdefault(q, set(rs))
    first_got = {key: ks[0] for key, ks in seen.items()}

    def all_received_by(q, k):
        return all(first_got.get((q, a), k + 1) <= k for a in rcpts_of.get(q, ()))

    gone_by_run = []  # per run: messages gone from its state (reclaimed), that were there or acknowledged before
    for k, r in enumerate(runs):
        due = {q for q, (mid, m) in acked.items() if run_no.get(m["run"], k + 1) <= k}
        for j in range(k):
            due.update(runs[j].state_after)
        gone = sorted(q for q in due if q not in r.state_after)
        bad = [q for q in gone if not RECLAIM or not all_received_by(q, k)]
        for q in bad[:10]:
            owed = sorted(a for a in rcpts_of.get(q, ()) if first_got.get((q, a), k + 1) > k)
            failures.append("%s of %s is gone after %s, yet %s never reached the peer by then%s (%s)"
                            % ("acknowledged message" if q in acked else "message", q, r.label, owed or "all of it",
                               " (lost by reclamation)" if RECLAIM else " (lost)",
                               "; ".join("%s: %s" % (runs[j].label, count_states({q: runs[j].state_after[q]}))
                                         for j in range(k) if q in runs[j].state_after) or "never seen durable"))
        if len(bad) > 10:
            failures.append("... %d more messages gone after %s with recipients never received" % (len(bad) - 10, r.label))
        gone_by_run.append(len(gone))
        for q in r.bad_bodies_after:
            # Listed after the cut with every recipient D (final) is fine: the restarted server's
            # reclamation may take its chunk segment before verify looks (a race of the test, not a loss).
            # So is a message still owed at the cut whose every recipient the restarted server then
            # delivered (the peer has them by the end of the next run): verify runs beside that
            # server, which delivers what recovery queued at once; it can reclaim the chunk segment
            # after verify listed the lanes and write the D records after verify read that lane's
            # active segment (seen once in CI, 2026-12-07). Each recipient owed at the cut must have
            # reached the peer again in that next run: a body lost while owed could not be sent again.
            nxt = min(k + 1, len(runs) - 1)
            owed = [a for a, (s, _) in r.state_after.get(q, {}).items() if s != "D"]
            redelivered = nxt > k and all(nxt in seen.get((q, a), ()) for a in owed)
            if (owed and not redelivered) or q not in rcpts_of or not all_received_by(q, nxt):
                failures.append("after %s, verify found %s without its body, but %s" % (
                    r.label, q, "the fold still has it" if q in r.state_after else "it is no message the test knows"
                    if q not in rcpts_of else "not all of it had reached the peer (a body reclaimed too early)"))
    # per run: ATTEMPT before hand-over, D only after the peer's 250, no resurrection
    dups, same_run = [], []
    for key, ks in seen.items():
        q, r = key
        for i, k in enumerate(ks):
            st = runs[k].state_after.get(q)
            s = st.get(r, ("-", 0))[0] if st else "no message"
            if s == "no message" and RECLAIM and all_received_by(q, k):
                pass  # final and reclaimed within the run (checked above: nothing of it was owed)
            elif s not in ("A", "D"):
                failures.append("%s got %s for %s, but after that run's end the recipient is %s (no durable ATTEMPT "
                                "before the hand-over?%s)" % (runs[k].label, r, q, s,
                                                             " or lost by reclamation" if RECLAIM else ""))
            if i == 0:
                continue
            prev = runs[k - 1].state_after.get(q, {}).get(r, ("-", 0)) if k > 0 else ("-", 0)
            dups.append((q, r, ks[i - 1], k, prev))
            if k == ks[i - 1]:
                same_run.append((q, r, runs[k].label))
            elif prev[0] != "A":
                failures.append("%s delivered %s to %s again, but after the previous cut it was %s, not A "
                                "(resurrection%s)" % (runs[k].label, q, r, prev,
                                                      " of a reclaimed message" if k > 0 and q not in
                                                      runs[k - 1].state_after else ""))
    for k, r in enumerate(runs):
        for q, rs in r.state_after.items():
            for a, (s, _) in rs.items():
                if s == "D" and not any(j <= k for j in seen.get((q, a), [])):
                    failures.append("after %s, %s of %s is D but the peer never received it by then" % (r.label, a, q))
    # Independent of the fold (ds-powercut-dlvstate and recovery share it): in cut mode nothing fails
    # before the cut, so an event=delivery line saying every recipient of the message was delivered was
    # logged after that outcome record settled, i.e. was durable. Those messages must be D in S_k and never
    # received again. (A line the logger had not written at the SIGKILL is simply not seen.)
    logged = 0
    for k, r in enumerate(runs):
        if mode != "cut" or not r.log_path:
            continue
        for q in logged_delivered(r.log_path, {q: len(rs) for q, rs in rcpts_of.items()}):
            logged += 1
            if q not in r.state_after:
                if not RECLAIM:
                    failures.append("%s logged %s delivered (its outcome record settled), but after the cut the "
                                    "message is gone" % (r.label, q))
                continue  # reclaimed: whether all of it had reached the peer is checked above
            bad = {a: s for a, (s, _) in r.state_after[q].items() if s != "D"}
            if bad:
                failures.append("%s logged %s delivered (its outcome record settled), but after the cut it is %s"
                                % (r.label, q, bad))
            again = [(a, runs[j].label) for (qq, a), ks in seen.items() if qq == q for j in ks if j > k]
            if again:
                failures.append("%s logged %s delivered (settled), yet it was received again: %s (resurrection)"
                                % (r.label, q, again[:4]))
    if mode == "cut":
        print("  %d messages logged as delivered with a settled outcome: all D after their cut, none received again"
              % logged if not any("logged" in f for f in failures) else "")
    if same_run and mode != "cut":
        errs = sum(int(r.metrics["dotspool_outcome_record_errors_total"]) for r in runs if r.metrics)
        print("  %d recipients delivered twice within one run (outcome records that failed with the flush: %d): "
              "a failed outcome record means a new attempt; no metric counts these duplicates: %s"
              % (len(same_run), errs, same_run[:5]))
    if same_run and mode == "cut":
        failures.append("%d recipients delivered twice within one run (no flush failed), e.g. %s"
                        % (len(same_run), same_run[:5]))
    # the metric: redeliveries counted per run, against the recipients that were A before the run
    lines = []
    for k, r in enumerate(runs):
        if k == 0:
            continue
        prev = runs[k - 1].state_after
        was_a = {(q, a) for q, rs in prev.items() for a, (s, _) in rs.items() if s == "A"}
        got_a = {(q, a) for (q, a), ks in seen.items() if k in ks and (q, a) in was_a}
        dup_k = sum(1 for d in dups if d[3] == k)
        m = r.metrics
        red = int(m["dotspool_redeliveries_total"]) if m else None
        pdup = int(m["dotspool_delivery_possible_duplicates_total"]) if m else None
        lines.append("  %s: %d recipients A at its start, %d of them received again (%d duplicates at the peer); "
                     "dotspool_redeliveries_total %s, possible_duplicates %s (%s)"
                     % (r.label, len(was_a), len(got_a), dup_k, red, pdup, r.metrics_when))
        if m is None:
            continue
        if red > len(got_a):
            failures.append("%s: dotspool_redeliveries_total %d, but only %d recipients that were A were received"
                            % (r.label, red, len(got_a)))
        if r.label == "drain":
            # A later-* recipient (--reclaim) that was A may be deferred again by the peer, and is then no
            # re-delivery when it finally goes: only the others must all count.
            firm = {(q, a) for q, a in was_a if not a.startswith("later-")}
            if red + pdup < len(firm):
                failures.append("drain: dotspool_redeliveries_total %d + possible_duplicates %d < %d recipients "
                                "that were A after the last cut" % (red, pdup, len(firm)))
            if not was_a <= got_a:
                failures.append("drain: %d recipients A after the last cut were not delivered again"
                                % len(was_a - got_a))
    print("\n".join(lines))
    if dups:
        print("  duplicates (queue id, recipient, first run, again in run, state before): %s%s"
              % (dups[:20], " ..." if len(dups) > 20 else ""))
    nrc = sum(len(m["rcpts"]) for _, m in acked.values())
    res = {}
    if RECLAIM:
        # Reclamation really happened: far fewer segment files than were ever created.
        cen = runs[-1].census_after
        left, created = sum(n for n, _ in cen.values()), sum(h for _, h in cen.values())
        res = {"seg_left": left, "seg_created": created, "gone": gone_by_run[-1]}
        print("  reclamation: messages gone after each run (reclaimed, every recipient at the peer): %s; of them "
              "commits left without their body (verify): %s; at the end %s; reclaimed at each run's start-up: %s"
              % (", ".join("%s %d" % (r.label, g) for r, g in zip(runs, gone_by_run)),
                 [len(r.bad_bodies_after) for r in runs], census_text(cen), [r.reclaimed_at_start for r in runs]))
        comp = [int(r.metrics["dotspool_compacted_segments_total"]) for r in runs if r.metrics]
        moved = [int(r.metrics["dotspool_compacted_messages_total"]) for r in runs if r.metrics]
        print("  compaction: segments compacted per run %s (messages moved %s)" % (comp, moved))
        # Recycled segments (format 5, --segment-recycle-max, default 4): reclaimed segments renamed to free
        # files, and segments prepared from them instead of zero-filled new files, across the cuts.
        recycled = [int(r.metrics["dotspool_recycled_segments_total"]) for r in runs if r.metrics]
        reused = [int(r.metrics["dotspool_spool_segments_recycled_total"]) for r in runs if r.metrics]
        fresh = [int(r.metrics["dotspool_spool_segments_fresh_total"]) for r in runs if r.metrics]
        print("  recycling: segments renamed to free files per run %s, prepared from a free file %s, as a new "
              "file %s" % (recycled, reused, fresh))
        if "--segment-recycle-max 0" not in " ".join(RECLAIM_ARGS + os.environ.get("DS_POWERCUT_ARGS", "").split()):
            # eio mode has two runs: its drain makes the free files and needs no new segment after them.
            t.check(sum(recycled) > 0 and (mode != "cut" or sum(reused) > 0), "%s: reclaimed segments recycled "
                    "(%d renamed to free files, %d segments prepared from them, %d new)"
                    % (what, sum(recycled), sum(reused), sum(fresh)))
        if COMPACT:
            t.check(sum(comp) > 0, "%s: compaction copied messages forward between the cuts" % what)
        gm = getattr(runs[-1], "gap_moved", None)
        if gm is not None:
            # Messages at risk (the crash tails: their 250's fate unknown) are kept for the window and moved
            # with a fresh AT_RISK record; the at-least-once and never-again checks below cover their copies.
            t.check(gm[0] > 0, "%s: kept (at-risk) messages moved by compaction with a fresh AT_RISK record: %d "
                    "(logged); at the end %d messages with 2+ AT_RISK records, %d with any" % (what, gm[0], gm[1],
                                                                                              gm[2]))
        # With the gap window on, at-risk messages keep their segments until compaction moves them (a day's
        # window): fewer go. A third removed still shows reclamation at work; under parallel load the gap
        # variant once left 13 of 24 (2026-12-07), with every safety check passing.
        keep_n, keep_d = (2, 3) if gap_on() else (1, 2)
        t.check(created >= 4 * len(cen) and keep_d * left <= keep_n * created,
                "%s: reclamation removed segments: %d of %d left at the end (at most %d/%d may stay)"
                % (what, left, created, keep_n, keep_d), "too few segments created, or too many left: %s"
                % census_text(cen))
    t.check(not failures, "%s: %d acknowledged messages (%d recipients) all delivered at least once, %d peer lines, "
            "%d duplicates (%d within a run), every duplicate cut short by a power cut, nothing final delivered "
            "again, nothing refused delivered" % (what, len(acked), nrc, runs[-1].hi - runs[0].lo, len(dups), len(same_run)),
            "%d problem(s):\n- %s" % (len(failures), "\n- ".join(failures[:40])))
    reds = sum(int(r.metrics["dotspool_redeliveries_total"]) for r in runs if r.metrics)
    res.update({"acked": len(acked), "rcpts": nrc, "dups": len(dups), "same_run": len(same_run),
                "redeliveries": reds, "refused": len(refused),
                "unknown": sum(1 for m in msgs.values() if m["fate"][0] == "unknown")})
    return res


def cut_mode(t, tools, workdir, peer, rc, base):
    cycles = int(os.environ.get("DS_POWERCUT_CYCLES", "4"))
    per_disk = int(os.environ.get("DS_POWERCUT_DISK_CYCLES", str(cycles)))
    rnd = random.Random(base)
    totals = {}
    disk, runs, msgs = None, None, None
    disk_no = 0

    def finish():
        seed = rnd.randrange(1 << 30)
        what = "disk %d drain (seed %d)" % (disk.no, seed)
        drain(t, tools, workdir, disk, seed, peer, rc, runs, msgs, what)
        res = check_disk(t, tools, rc, runs, msgs, "cut", "disk %d" % disk.no)
        for k, v in res.items():
            totals[k] = totals.get(k, 0) + v

    for cycle in range(cycles):
        if disk is None or len(runs) >= per_disk:
            if disk is not None:
                finish()
            disk_no += 1
            disk = pc.Disk(workdir, disk_no)
            runs, msgs = [], {}
        seed = rnd.randrange(1 << 30)
        what = "cycle %d (seed %d, disk %d)" % (cycle, seed, disk.no)
        tc = time.monotonic()
        try:
            fs, srv, mport, st, rep, lo = reboot(t, tools, workdir, disk, seed, peer, rc, what)
            if runs:
                runs[-1].state_after, runs[-1].census_after = st, rep["census"]
                runs[-1].bad_bodies_after = rep["bad_bodies"]
            run = DiskRun("cycle %d" % cycle, lo, "c%d" % cycle)
            run.reclaimed_at_start = rep["reclaimed_at_start"]
            run.log_path = srv.log_path
            crnd = random.Random(seed)
            cut_at = crnd.uniform(*CUT_AT_S)
            load = Load(srv.port, "c%d" % cycle, base, msgs).start()
            time.sleep(cut_at)
            reply = cut_run(t, tools, fs, srv, mport, run)
            load.stop()
            run.hi = settle_peer(rc)
            runs.append(run)
            fs.stop()
        except dslib.Fail as e:
            raise dslib.Fail("%s\n  repeat: DS_POWERCUT_SEED=%d (this cycle's seed %d)" % (e, base, seed))
        ours = [m for m in msgs.values() if m["run"] == "c%d" % cycle]
        print("  %s: recovered %d messages, %d owed (%d recipients, %d cut short); load %.2f s: %d ok, %d unknown, "
              "%d refused; peer got %d recipients; cut: %s; redeliveries %s; cycle %.1f s"
              % (what, rep["messages"], rep["queued"], rep["queued_rcpts"], rep["in_flight"], cut_at,
                 sum(1 for m in ours if m["fate"][0] == "ok"), sum(1 for m in ours if m["fate"][0] == "unknown"),
                 sum(1 for m in ours if m["fate"][0] == "refused"), run.hi - run.lo, pc.cut_summary(reply),
                 run.metrics and int(run.metrics["dotspool_redeliveries_total"]), time.monotonic() - tc))
    finish()
    t.check(totals["acked"] > 0, "messages were acknowledged (%d)" % totals["acked"])
    return totals


def eio_mode(t, tools, workdir, peer, rc, base):
    disk = pc.Disk(workdir, 1)
    runs, msgs = [], {}
    what = "eio run (seed %d)" % base
    fs, srv, mport, st, rep, lo = reboot(t, tools, workdir, disk, base, peer, rc, what)
    run = DiskRun("eio run", lo, "eio")
    run.reclaimed_at_start = rep["reclaimed_at_start"]
    run.log_path = srv.log_path
    # Full speed, more clients: groups that hold commits, not only outcome records.
    load = Load(srv.port, "eio", base, msgs, clients=2 * CLIENTS, pause_s=0).start()
    time.sleep(0.6)
    failed = flushes = 0
    # Data flushes of segment files fail until some client got a 4xx for its message (a group of outcome
    # records only refuses nobody), then one more fsync of any kind (a flush or a spare's preparation).
    for k in range(EIO_MAX):
        refused = sum(1 for x in list(msgs.values()) if x["fate"][0] == "refused")
        kind = "any" if refused or k == EIO_MAX - 1 else "data"
        fs.cmd("eio-next-fsync /spool/lane-*.seg %s" % kind)
        deadline = time.monotonic() + 10
        while fs.cmd("status")["eio_injected"] < k + 1:
            if time.monotonic() > deadline:
                raise dslib.Fail("injection %d: no fsync of a segment within 10 s" % (k + 1))
            time.sleep(0.01)
        line = fs.log_lines(" fails; ")[-1]
        # An fsync of a segment being prepared (the spare thread's zero-fill) is no flush: not a flush error.
        flushes += "fdatasync of" in line
        failed += 1
        print("  injected: %s" % line.split(" ", 1)[1])
        time.sleep(0.4)
        if kind == "any":
            break
    t.check(srv.running(), "server still running after %d failed fsyncs" % failed)
    time.sleep(0.5)
    reply = cut_run(t, tools, fs, srv, mport, run)
    load.stop()
    run.hi = settle_peer(rc)
    runs.append(run)
    fs.stop()
    m = run.metrics or {}
    print("  eio run: %d messages ok, %d refused, %d unknown; flush errors %s, outcome record errors %s; cut: %s"
          % (sum(1 for x in msgs.values() if x["fate"][0] == "ok"),
             sum(1 for x in msgs.values() if x["fate"][0] == "refused"),
             sum(1 for x in msgs.values() if x["fate"][0] == "unknown"),
             m.get("dotspool_flush_errors_total"), m.get("dotspool_outcome_record_errors_total"), pc.cut_summary(reply)))
    t.check(m.get("dotspool_flush_errors_total", 0) >= flushes, "dotspool_flush_errors_total counted the %d failed "
            "data flushes (%s)" % (flushes, m.get("dotspool_flush_errors_total")))
    refused = sum(1 for x in msgs.values() if x["fate"][0] == "refused")
    t.check(refused > 0, "clients got 4xx for the messages of the failed flushes (%d)" % refused)
    rep2 = drain(t, tools, workdir, disk, base + 1, peer, rc, runs, msgs, "eio drain")
    # ds-powercut drops what a failed fsync covered (as Linux does), so a refused commit is seldom intact after
    # the cut; the abort records that do name an intact one are counted here (the spool simulator,
    # tests/spool spool_outcome_crash_flush_error, forces the intact case).
    print("  recovery: %d refused commits found intact and skipped by their abort records" % rep2["aborted"])
    return check_disk(t, tools, rc, runs, msgs, "eio", "eio disk")


def main(t, mode):
    if not os.path.exists("/dev/fuse"):
        raise dslib.Skip("/dev/fuse is missing (FUSE not available here)")
    dslib.need_tool("fusermount3")
    tools = pc.Tools(t.build)
    tools.dlvstate = os.path.join(t.build, "ds-powercut-dlvstate")
    if not os.access(tools.dlvstate, os.X_OK):
        raise dslib.Fail("missing binary %s (build it first)" % tools.dlvstate)
    base = int(os.environ.get("DS_POWERCUT_SEED", str(int(time.time()) % 100000)))
    print("  base seed %d (DS_POWERCUT_SEED=%d repeats the schedule), server %s" % (base, base, tools.server))
    workdir = dslib.mkdtemp("ds-powercut-dlv-")
    script = None
    if RECLAIM:
        tags = ["c%d" % k for k in range(int(os.environ.get("DS_POWERCUT_CYCLES", "4")))] + ["eio"]
        script = {"rules": [{"rcpt": "^later-%s@" % tag, "at": "rcpt", "reply": "450 4.2.0 try again later",
                             "times": LATER_TIMES} for tag in tags]}
    # the ordinary file system, not the mount
    peer = dlvlib.Peer(outdir=os.path.join(workdir, "peer"), script=script)
    os.makedirs(peer.outdir)
    _peers.append(peer)
    peer.start()
    rc = Receipts(peer)
    t0 = time.monotonic()
    try:
        res = cut_mode(t, tools, workdir, peer, rc, base) if mode == "cut" else eio_mode(t, tools, workdir, peer, rc,
                                                                                          base)
        print("  summary (%s, seed %d): %d acknowledged messages, %d recipients, all delivered; %d duplicates "
              "(%d within a run), dotspool_redeliveries_total %d over all runs; %d refused, %d never answered; "
              "%.1f s" % (mode, base, res["acked"], res["rcpts"], res["dups"], res["same_run"], res["redeliveries"],
                          res["refused"], res["unknown"], time.monotonic() - t0))
        if RECLAIM:
            print("  summary (reclaim): segments created %d, left at the end %d; messages gone (reclaimed) at the "
                  "end %d" % (res["seg_created"], res["seg_left"], res["gone"]))
    finally:
        pc._cleanup()
        _stop_peers()
        for d in sorted(os.listdir(workdir)):
            mnt = os.path.join(workdir, d, "mnt")
            if pc.mounted(mnt):
                raise dslib.Fail("left mounted: %s" % mnt)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--mode", choices=["cut", "eio"], default="cut")
    ap.add_argument("--reclaim", action="store_true", default=os.environ.get("DS_POWERCUT_RECLAIM") == "1")
    ap.add_argument("--compact", action="store_true", help="with --reclaim: compaction forced (1 s, 50%%)")
    args, rest = ap.parse_known_args()
    sys.argv = [sys.argv[0]] + rest
    RECLAIM = args.reclaim or args.compact
    COMPACT = args.compact
    dslib.run(lambda t: main(t, args.mode), name="test_powercut_deliver.py --mode %s%s"
              % (args.mode, " --reclaim" if RECLAIM else ""))
