#!/usr/bin/env python3
"""Recycled segments on the real server (issue 19 point 1, spool format 5): a spool under delivery
(mail in, mail out) reuses the files of reclaimed segments instead of zero-filling new ones.

2 workers, --segment-size 1M, --reclaim true, --segment-recycle-max 2, delivery to a next hop that
takes everything; 4 client threads send ~40 MB of 16-48 KB messages in each I/O mode (buffered,
direct). Checks, per mode:
- every message delivered (peer lines), the queue empty at the end;
- reclaimed segments were renamed to free files (dotspool_recycled_segments_total) and most new
  segments came from them (dotspool_spool_segments_recycled_total > dotspool_spool_segments_fresh_total:
  the spool stopped zero-filling once the first reclamations ran);
- the lane directories stay bounded during the run: at most 2 free files per lane (sampled every
  0.25 s), and the .seg files never many more than what is owed needs;
- dotspool_spool_segments_free equals the free files on disk at the end, and
  dotspool_spool_bytes_on_disk counts them (segments + free files, segment size each);
- dotspool-ctl verify is clean beside the running server (no torn tail, no quarantine: the
  recycled segments' tails hold the old segments' records);
- a restart on the same spool: recovery reports 0 torn tails and 0 quarantined, the server keeps
  recycling (free files taken again), nothing is delivered twice.
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
RECYCLE_MAX = 2


def lane_files(spool):
    """{lane dir: (number of .seg files, number of .free files)}."""
    out = {}
    for d in sorted(os.listdir(spool)):
        if not re.fullmatch(r"lane-\d+", d):
            continue
        names = os.listdir(os.path.join(spool, d))
        out[d] = (sum(n.endswith(".seg") for n in names), sum(n.endswith(".free") for n in names))
    return out


def send_load(t, srv, n, tag, peer):
    """4 client threads; paced so that delivery keeps up (steady state: mail in, mail out): a thread
    waits while more than 40 messages are owed (sent, not yet at the peer)."""
    lock = threading.Lock()
    state = {"next": 0, "sent": 0, "errors": []}
    base = len(peer.index())

    def owed():
        try:
            with open(os.path.join(peer.outdir, "index.jsonl"), "rb") as f:
                return state["sent"] - (f.read().count(b"\n") - base)
        except OSError:
            return state["sent"]

    def run():
        while True:
            t0 = time.monotonic()
            while owed() > 40 and time.monotonic() - t0 < 10:
                time.sleep(0.02)
            with lock:
                i = state["next"]
                if i >= n:
                    return
                state["next"] += 1
            body = dlvlib.body("%s%d" % (tag, i), 16000 + (i * 7919) % 32000)
            try:
                dlvlib.send_ex(srv.port, "%s%d@client.test" % (tag, i), ["ok-%d@dest.test" % i], body)
            except Exception as e:  # noqa: BLE001
                with lock:
                    state["errors"].append("%s%d: %s" % (tag, i, e))
                continue
            with lock:
                state["sent"] += 1

    th = [threading.Thread(target=run, daemon=True) for _ in range(4)]
    for x in th:
        x.start()
    return th, state


def case_mode(t, io_mode):
    print("-- --spool-io %s, recycle max %d per lane" % (io_mode, RECYCLE_MAX))
    peer = dlvlib.Peer(args=["--max-connections", "256"]).start()
    extra = ["--segment-size", str(SEG), "--spool-buffer-size", str(256 << 10), "--reclaim", "true",
             "--segment-recycle-max", str(RECYCLE_MAX), "--spool-io", io_mode, "--gap-dedup-window-s", "0"]
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2, extra=extra)
    srv.start()
    srv2 = None
    try:
        n = 1300  # ~32 KB each: ~42 MB, 40+ segments of 1 MiB
        th, st = send_load(t, srv, n, "r", peer)
        samples = []
        t0 = time.monotonic()
        while any(x.is_alive() for x in th) and time.monotonic() - t0 < 90:
            time.sleep(0.25)
            samples.append(lane_files(srv.spool))
        t.check(not st["errors"], "every message accepted (%d)" % st["sent"], repr(st["errors"][:5]))
        dlvlib.wait_for("every message delivered",
                        lambda: len(peer.index()) >= n and srv.metric("dotspool_queue_messages") == 0, 60, 0.25)
        # Reclamation runs when something changed; let the last segments go.
        time.sleep(2)
        samples.append(lane_files(srv.spool))
        renamed = srv.metric("dotspool_recycled_segments_total")
        reused = srv.metric("dotspool_spool_segments_recycled_total")
        fresh = srv.metric("dotspool_spool_segments_fresh_total")
        reclaimed = srv.metric("dotspool_reclaimed_segments_total")
        max_free = max(f for s in samples for _, f in s.values())
        max_seg = max(sum(g for g, _ in s.values()) for s in samples)
        print("  %d messages delivered; reclaimed %d segments, %d of them renamed to free files; segments "
              "prepared from a free file %d, as a new file %d; at most %d free files in a lane, %d .seg files "
              "in all (%d samples)" % (len(peer.index()), reclaimed, renamed, reused, fresh, max_free, max_seg,
                                       len(samples)))
        t.check(renamed > 0 and reused > fresh,
                "most segments prepared from free files (%d recycled, %d new): no zero-fill in steady state"
                % (reused, fresh))
        t.check(max_free <= RECYCLE_MAX, "at most %d free files per lane at any sample" % RECYCLE_MAX)
        t.check(max_seg <= 16, "segment files stay bounded (at most %d of 40+ ever created)" % max_seg)
        end = lane_files(srv.spool)
        nfree = sum(f for _, f in end.values())
        nseg = sum(g for g, _ in end.values())
        dlvlib.wait_for("dotspool_spool_segments_free = free files on disk",
                        lambda: srv.metric("dotspool_spool_segments_free") == nfree, 10, 0.25)
        gauge_free = srv.metric("dotspool_spool_segments_free")
        on_disk = srv.metric("dotspool_spool_bytes_on_disk")
        segs = srv.metric("dotspool_spool_segments")
        print("  at the end: %s; gauges: %d free, %d segments, %d bytes on disk" % (end, gauge_free, segs, on_disk))
        t.eq(int(gauge_free), nfree, "dotspool_spool_segments_free counts the free files on disk")
        t.eq(int(on_disk), int(segs + gauge_free) * SEG, "dotspool_spool_bytes_on_disk counts free files too")
        v = srv.verify()
        out = (v.stdout + v.stderr).decode(errors="replace") if isinstance(v.stdout, bytes) else v.stdout + v.stderr
        t.eq(v.returncode, 0, "dotspool-ctl verify exits 0 beside the running server", out[-2000:])
        t.check(re.search(r" 0 quarantined regions .* 0 torn tails", out) is not None,
                "verify: no quarantined region, no torn tail (recycled segments end in old records)", out[-1500:])
        srv.stop()
        delivered_before = len(peer.index())
        # Restart on the same spool: recovery is clean, recycling goes on from the free files left.
        srv2 = dlvlib.DServer(t.build, [peer.url()], threads=2, extra=extra, spool=srv.spool)
        srv2.start()
        log = srv2.log_text() or ""
        m = re.search(r"(\d+) torn tails, (\d+) quarantined", log)
        t.check(m is not None and m.group(1) == "0" and m.group(2) == "0",
                "recovery after the restart: 0 torn tails, 0 quarantined", log[-1500:])
        th, st = send_load(t, srv2, 300, "s", peer)
        for x in th:
            x.join(60)
        dlvlib.wait_for("the second load delivered",
                        lambda: len(peer.index()) >= delivered_before + 300 and
                        srv2.metric("dotspool_queue_messages") == 0, 60, 0.25)
        reused2 = srv2.metric("dotspool_spool_segments_recycled_total")
        print("  after the restart: %d more delivered, %d segments prepared from free files" %
              (len(peer.index()) - delivered_before, reused2))
        t.check(reused2 > 0, "the restarted server prepares segments from the free files")
        t.eq(len(peer.index()) - delivered_before, 300, "nothing delivered twice after the restart")
    finally:
        if srv2:
            srv2.stop()
        if srv.running():
            srv.stop()
        peer.stop()


def main(t):
    t0 = time.monotonic()
    for mode in ("buffered", "direct"):
        c0 = time.monotonic()
        case_mode(t, mode)
        print("  (%s: %.1f s)" % (mode, time.monotonic() - c0))
    print("  total %.1f s" % (time.monotonic() - t0))


if __name__ == "__main__":
    dlvlib.enter_netns()
    dslib.run(main)
