#!/usr/bin/env python3
"""Start-up time after many restarts under load (issue 15 point 1: "start-up within 2x of the
first after 1,000 restarts").

The server (2 workers, 1 MiB segments, reclamation and compaction on, --compact-age-s 1) runs under
load from 2 client threads (1% of messages to a recipient the next hop defers for the whole run);
every --run-s seconds it is killed (SIGKILL, or SIGTERM every 4th time) and started again on the
same spool. Start-up time = from exec to the SMTP port accepting (recovery, the reclamation table,
the first segment of each lane). Printed per restart; at the end first vs last (median of the first
and of the last 10) and the segment files on disk. Fails if the last median is over 2x the first
(plus 50 ms of slack for a loaded machine) or if a deferred message went missing.

  ctest delivery_restarts: --restarts 6 (a few; ~15 s)
  by hand: test_deliver_restarts.py --build BUILD --restarts 1000 --run-s 0.5 --rate 100 [--max-minutes 12]
  (without --rate and with a short --run-s the ingest outruns delivery in 0.3 s lives: the backlog and
  the spool grow, and start-up with them: that measures the backlog, not reclamation)
"""

import argparse
import os
import signal
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402

ARGS = None


def seg_files(spool):
    n = 0
    for d in os.listdir(spool):
        if d.startswith("lane-"):
            n += sum(1 for f in os.listdir(os.path.join(spool, d)) if f.endswith(".seg"))
    return n


class Load:
    def __init__(self):
        self.port = None
        self.stop = False
        self.n = 0
        self.later = {}  # qid -> body
        self.lock = threading.Lock()
        self.th = [threading.Thread(target=self.run, args=(k,), daemon=True) for k in range(2)]

    def run(self, k):
        i = 0
        while not self.stop:
            port = self.port
            if port is None:
                time.sleep(0.01)
                continue
            i += 1
            later = i % 100 == 0
            rcpt = ("later-%d-%d@dest.test" if later else "ok-%d-%d@dest.test") % (k, i)
            body = dlvlib.body("r%d-%d" % (k, i), 1000 + (i * 7919) % 6000)
            if ARGS.rate:
                time.sleep(len(self.th) / ARGS.rate)
            try:
                q = dlvlib.send_ex(port, "s%d-%d@client.test" % (k, i), [rcpt], body)
            except Exception:  # noqa: BLE001 (the server is being restarted)
                time.sleep(0.005)
                continue
            with self.lock:
                self.n += 1
                if later:
                    self.later[q] = body


def main(t):
    peer = dlvlib.Peer(args=["--rule", "rcpt:^later-=450 4.2.0 try again later", "--max-connections", "256"]).start()
    extra = ["--segment-size", str(1 << 20), "--spool-buffer-size", str(256 << 10), "--reclaim", "true",
             "--compact-age-s", "1", "--gap-dedup-window-s", "0"]
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2, extra=extra, metrics=False)
    load = Load()
    for th in load.th:
        th.start()
    times = []
    t_end = time.monotonic() + ARGS.max_minutes * 60
    try:
        for k in range(ARGS.restarts + 1):
            t0 = time.monotonic()
            srv.start()
            dt = time.monotonic() - t0
            times.append(dt)
            load.port = srv.port
            print("  restart %4d: start-up %6.1f ms, %d segment files, %d messages accepted" %
                  (k, dt * 1000, seg_files(srv.spool), load.n), flush=True)
            time.sleep(ARGS.run_s)
            load.port = None
            if k % 4 == 3:
                srv.stop()
            else:
                srv.kill()
            if time.monotonic() > t_end:
                print("  stopping after %d restarts: --max-minutes %g reached" % (k, ARGS.max_minutes))
                break
        load.stop = True
        srv.start()
        head = statistics.median(times[:10])
        tail = statistics.median(times[-10:])
        print("  %d restarts, %d messages: start-up first %.1f ms (median of the first 10), last %.1f ms "
              "(median of the last 10), max %.1f ms; %d segment files now"
              % (len(times) - 1, load.n, head * 1000, tail * 1000, max(times) * 1000, seg_files(srv.spool)))
        t.check(tail <= 2 * head + 0.05, "start-up after %d restarts within 2x of the first" % (len(times) - 1))
        listing = {m["id"]: m for m in srv.list()}
        missing = [q for q in load.later if q not in listing]
        t.check(not missing, "every deferred message still there (%d)" % len(load.later), repr(missing[:5]))
        for q, body in list(load.later.items())[:50]:
            _, data = dslib.split_received(srv.cat(q))
            dlvlib.check_bytes(t, data, body, "deferred %s byte for byte" % q)
    finally:
        load.stop = True
        if srv.running():
            srv.stop()
        peer.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--restarts", type=int, default=6)
    ap.add_argument("--run-s", type=float, default=1.0)
    ap.add_argument("--max-minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=0,
                    help="messages per second, all threads (0: as fast as they go; with short --run-s the "
                         "backlog, and the spool with it, grows when delivery cannot keep up)")
    ARGS, rest = ap.parse_known_args()
    sys.argv = [sys.argv[0]] + rest
    dlvlib.enter_netns()
    dslib.run(main)
