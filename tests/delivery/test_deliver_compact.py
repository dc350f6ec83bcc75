#!/usr/bin/env python3
"""Compaction on the real server (issue 15, points 2 and 6): long-deferred messages must not pin
the disk, and a kill -9 during compaction loses nothing and duplicates nothing.

1. deferred load: 2 workers, --segment-size 1M, --reclaim true, --compact-age-s 1; 4 client
   threads send messages of 2-9 KB; 1% of them go to later-N@dest.test, which the next hop
   answers 450 for the whole run (retried every 1-4 s: their outcome records land in every later
   segment), the rest to ok-N@dest.test (delivered). After ingesting >= 20 x the segment size,
   the spool's segment bytes on disk, sampled every 0.25 s during the run, stay under
   2 x (bytes owed + one segment per lane + one spare per lane); every deferred message is still
   there, byte for byte (dotspool-ctl cat vs what was sent), deferred with attempts >= 1;
   dotspool_compacted_segments_total and dotspool_reclaimed_segments_total grew, and the log has
   event=compact and event=reclaim lines. Prints the samples (bytes on disk vs bytes owed).
2. kill -9 during compaction: the same load with more deferred messages; SIGKILL right after the
   server logged compaction of a segment (so copies are being written, moved, reclaimed around
   it); restart on the same spool: every deferred message there exactly once, byte for byte;
   verify clean; every other message delivered at least once, and duplicates only for messages
   recovery found cut short (dotspool_redeliveries_total), never because of a copy.
"""

import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402

SEG = 1 << 20


def seg_bytes(spool):
    """Bytes of the segment files in the lane directories (allocated: st_blocks)."""
    n = 0
    for d in os.listdir(spool):
        if not d.startswith("lane-"):
            continue
        for f in os.listdir(os.path.join(spool, d)):
            if f.endswith(".seg"):
                try:
                    n += os.stat(os.path.join(spool, d, f)).st_blocks * 512
                except FileNotFoundError:
                    pass
    return n


class Load:
    """Client threads sending messages; later-* recipients are deferred by the peer forever."""

    def __init__(self, srv, n_msgs, later_every, threads=4, tag="c"):
        self.srv, self.n, self.every, self.tag = srv, n_msgs, later_every, tag
        self.lock = threading.Lock()
        self.next = 0
        self.sent = {}  # qid -> (sender, rcpt, body, later)
        self.bytes_sent = 0
        self.owed_bytes = 0
        self.errors = []
        self.stop = False
        self.th = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def start(self):
        for t in self.th:
            t.start()
        return self

    def join(self, timeout_s):
        t0 = time.monotonic()
        for t in self.th:
            t.join(max(0.1, timeout_s - (time.monotonic() - t0)))

    def alive(self):
        return any(t.is_alive() for t in self.th)

    def run(self):
        while not self.stop:
            with self.lock:
                i = self.next
                if i >= self.n:
                    return
                self.next += 1
            later = i % self.every == self.every - 1
            sender = "%s%d@client.test" % (self.tag, i)
            rcpt = ("later-%d@dest.test" if later else "ok-%d@dest.test") % i
            body = dlvlib.body("%s%d" % (self.tag, i), 2000 + (i * 7919) % 7000)
            try:
                q = dlvlib.send_ex(self.srv.port, sender, [rcpt], body)
            except Exception as e:  # noqa: BLE001 (a killed server ends the load)
                with self.lock:
                    self.errors.append("%s: %s" % (sender, e))
                if self.stop:
                    return
                continue
            with self.lock:
                self.sent[q] = (sender, rcpt, body, later)
                self.bytes_sent += len(body)
                if later:
                    self.owed_bytes += len(body) + 200  # + the Received header


def owed_bytes(srv, load):
    """Bytes the server still owes: its delivery queue's (all lines; the gauge is refreshed every
    second, so the larger of it and the deferred messages sent so far)."""
    try:
        q = srv.metric("dotspool_queue_bytes")
    except Exception:  # noqa: BLE001
        q = 0
    return max(int(q), load.owed_bytes)


def check_deferred(t, srv, load, what):
    """Every deferred message there once, byte for byte, deferred with its attempts."""
    listing = srv.list()
    ids = [m["id"] for m in listing]
    t.eq(len(ids), len(set(ids)), "%s: every message listed once (never two copies)" % what)
    states = {m["id"]: m for m in listing}
    later = [(q, v) for q, v in load.sent.items() if v[3]]
    for q, (sender, rcpt, body, _) in later:
        st = states.get(q)
        t.check(st is not None, "%s: deferred message %s still in the spool" % (what, q))
        if st is None:
            continue
        _, data = dslib.split_received(srv.cat(q))
        dlvlib.check_bytes(t, data, body, "%s: %s byte for byte" % (what, q))
    return later, states


def case_deferred_load(t):
    print("-- 1% deferred for the whole run, >= 20 x the segment size ingested")
    peer = dlvlib.Peer(args=["--rule", "rcpt:^later-=450 4.2.0 try again later", "--max-connections", "256"]).start()
    # Buffered: the on-disk bound counts message bytes; direct mode pads every group to a 4 KiB block
    # (up to ~2x the bytes for these small groups), which the bound does not model.
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2,
                         extra=["--segment-size", str(SEG), "--spool-buffer-size", str(256 << 10), "--reclaim", "true",
                                "--compact-age-s", "1",
                                "--compact-live-max-pct", "25", "--spool-io", "buffered"])
    srv.start()
    samples = []
    try:
        n = 4400  # ~5.5 KB each: ~24 MB
        load = Load(srv, n, 100).start()
        t0 = time.monotonic()
        while load.alive() and time.monotonic() - t0 < 90:
            time.sleep(0.25)
            samples.append((time.monotonic() - t0, seg_bytes(srv.spool), owed_bytes(srv, load), load.bytes_sent))
        load.stop = True
        load.join(10)
        t.check(not load.errors, "every message accepted", repr(load.errors[:5]))
        # let the delivered ones drain (a loaded machine's peer lags) and compaction catch up, still sampling
        t1, calm = time.monotonic(), None
        while time.monotonic() - t1 < 45 and (calm is None or time.monotonic() - calm < 4):
            time.sleep(0.25)
            owed = owed_bytes(srv, load)
            samples.append((time.monotonic() - t0, seg_bytes(srv.spool), owed, load.bytes_sent))
            if calm is None and owed <= load.owed_bytes * 1.2 + 20000:
                calm = time.monotonic()
        ingested = load.bytes_sent
        t.check(ingested >= 20 * SEG, "ingested %d bytes >= 20 segments" % ingested)
        bound = lambda owed: 2 * (owed + 2 * SEG + 2 * SEG)  # noqa: E731 (segment + spare per lane, 2 lanes)
        # The queue's gauge is refreshed once a second, so a sample only knows what was owed within
        # 1.25 s of it either way: the disk still holds what was owed a moment ago (by design), and in
        # the first second of a burst the gauge still shows the queue from before it (seen in CI: at
        # t=1.0 s the gauge said 0.99 MB while the next refresh said ~9 MB). A sample's owed bytes are
        # the most the queue held from 1.25 s before it to 1.25 s after it.
        samples = [(s[0], s[1], max(o[2] for o in samples if s[0] - 1.25 <= o[0] <= s[0] + 1.25), s[3])
                   for s in samples]
        worst = max(samples, key=lambda s: s[1] / bound(s[2]))
        print("  %d samples over %.1f s; bytes on disk vs owed (every 8th):" % (len(samples), samples[-1][0]))
        for s in samples[::8]:
            print("    t=%5.1f s  on disk %6.2f MB  owed %6.3f MB  ingested %6.2f MB" %
                  (s[0], s[1] / 1e6, s[2] / 1e6, s[3] / 1e6))
        print("  worst: t=%.1f s on disk %.2f MB, bound %.2f MB (owed %.3f MB); max on disk %.2f MB; ingested %.1f MB"
              % (worst[0], worst[1] / 1e6, bound(worst[2]) / 1e6, worst[2] / 1e6,
                 max(s[1] for s in samples) / 1e6, ingested / 1e6))
        t.check(all(s[1] <= bound(s[2]) for s in samples),
                "bytes on disk always under 2 x (owed + a segment and a spare per lane)",
                "worst t=%.1f on disk %d bound %d" % (worst[0], worst[1], bound(worst[2])))
        later, states = check_deferred(t, srv, load, "deferred load")
        t.check(len(later) >= n // 100 - 1, "%d deferred messages" % len(later))
        t.check(all(states[q]["state"] == "queued" and states[q]["attempts"] >= 1 for q, _ in later if q in states),
                "each deferred message queued with its attempts",
                repr([(q, states.get(q)) for q, _ in later][:3]))
        comp = srv.metric("dotspool_compacted_segments_total")
        recl = srv.metric("dotspool_reclaimed_segments_total")
        moved = srv.metric("dotspool_compacted_messages_total")
        print("  compacted %d segments (%d messages moved), reclaimed %d; %d compact and %d reclaim log lines" %
              (comp, moved, recl, len(srv.events("compact")), len(srv.events("reclaim"))))
        t.check(comp > 0 and moved > 0 and recl >= 15, "segments compacted and reclaimed")
        t.check(len(srv.events("compact")) == comp and len(srv.events("reclaim")) > 0,
                "one event=compact line per segment compacted, event=reclaim lines")
        v = srv.verify()
        t.eq(v.returncode, 0, "dotspool-ctl verify exits 0 beside the running server", (v.stdout + v.stderr)[-2000:])
    finally:
        srv.stop()
        peer.stop()


def case_kill(t):
    print("-- kill -9 during compaction")
    peer = dlvlib.Peer(args=["--rule", "rcpt:^later-=450 4.2.0 try again later", "--max-connections", "256"]).start()
    # Buffered (as case_deferred_load): see there.
    extra = ["--segment-size", str(SEG), "--spool-buffer-size", str(256 << 10), "--reclaim", "true", "--compact-age-s", "1", "--compact-live-max-pct", "40",
             "--spool-io", "buffered"]
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2, extra=extra)
    srv.start()
    try:
        load = Load(srv, 6000, 20, tag="k").start()
        dlvlib.wait_for("a segment compacted", lambda: len(srv.events("compact")) >= 2, 60, 0.02)
        time.sleep(0.05)
        srv.kill()
        load.stop = True
        load.join(10)
        comp_before = len(srv.events("compact"))
        print("  killed after %d compacted segments, %d messages accepted" % (comp_before, len(load.sent)))
        srv2 = dlvlib.DServer(t.build, [peer.url()], threads=2, extra=extra, spool=srv.spool)
        srv2.start()
        try:
            later, states = check_deferred(t, srv2, load, "after kill -9")
            okq = {v[0]: q for q, v in load.sent.items() if not v[3]}
            dlvlib.wait_for("every ok message at the peer",
                            lambda: okq.keys() <= {e["mail_from"] for e in peer.index()}, 60)
            got = {}
            for e in peer.index():
                if e["mail_from"] in okq:
                    got[e["mail_from"]] = got.get(e["mail_from"], 0) + 1
            dups = sum(c - 1 for c in got.values())
            redeliv = srv2.metric("dotspool_redeliveries_total")
            posdup = srv2.metric("dotspool_delivery_possible_duplicates_total")
            print("  after restart: %d deferred there, %d ok delivered, %d duplicates, redeliveries_total %d" %
                  (len(later), len(got), dups, redeliv))
            t.check(dups <= redeliv + posdup, "duplicates only for attempts cut short by the kill, none by a copy")
            v = srv2.verify()
            t.eq(v.returncode, 0, "verify clean after restart", (v.stdout + v.stderr)[-2000:])
        finally:
            srv2.stop()
    finally:
        if srv.running():
            srv.kill()
        peer.stop()


def main(t):
    t0 = time.monotonic()
    for case in (case_deferred_load, case_kill):
        c0 = time.monotonic()
        case(t)
        print("  (%s: %.1f s)" % (case.__name__, time.monotonic() - c0))
    print("  total %.1f s" % (time.monotonic() - t0))


if __name__ == "__main__":
    dlvlib.enter_netns()
    dslib.run(main)
