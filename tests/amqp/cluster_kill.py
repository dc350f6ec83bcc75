#!/usr/bin/env python3
"""By hand (not in CI: ~60-90 s, three broker starts): a 3-node RabbitMQ cluster, one node
killed -9 in the middle of a sustained load and brought back (issue 18 point 4).

    python3 tests/amqp/cluster_kill.py --build build [--seconds 20] [--senders 4]

A quorum queue with 3 members (leader on ds1, where it was declared); dotspool (2 workers,
--reclaim, small segments) with --deliver-to for each of the three nodes (worker 0 starts on
ds1, worker 1 on ds2). SMTP senders run for --seconds; at a third of it ds1 (the queue leader
and worker 0's broker) is killed -9, at two thirds it is started again on the same data.
Afterwards: dotspool's queue drains; the quorum queue is read from ds2. Checked: every message
that got a 250 is in the queue at least once; duplicates only as repeated message_ids; nothing
unknown; dotspool's reclaimed-segments counter moved. Printed: the figures of the report
(accepted, in the queue, duplicates, fail-over time, restart time, drain time).
"""

import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "delivery"))
sys.path.insert(0, HERE)
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402
import rabbit  # noqa: E402


def main(t):
    dlvlib.enter_netns()
    seconds = 20
    senders = 4
    for i, arg in enumerate(sys.argv):
        if arg == "--seconds":
            seconds = int(sys.argv[i + 1])
        if arg == "--senders":
            senders = int(sys.argv[i + 1])
    tmp = dslib.mkdtemp("ds-amqp3-")
    c = rabbit.Cluster(tmp, nodes=3)
    t0 = time.monotonic()
    try:
        c.start()
        print("  3 nodes up in %.1f s (%s)" % (time.monotonic() - t0, ", ".join("%.1f" % n.start_s for n in c.nodes)))
        rabbit.declare(c.nodes[0].port, "dotspool", "mail", "mail", quorum_size=3)
        urls = ["amqp://guest:guest@127.0.0.1:%d/?exchange=dotspool&routing_key=mail" % n.port for n in c.nodes]
        srv = dlvlib.DServer(t.build, urls, threads=2,
                             extra=["--deliver-timeout-confirm-s", "10", "--reclaim", "true",
                                    "--segment-size", str(1 << 20), "--spool-buffer-size", str(256 << 10)]).start()
        accepted, failed = [], []
        lock = threading.Lock()
        stop = threading.Event()

        def sender(k):
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    qid = dlvlib.send(srv.port, "s%d.%d@client.test" % (k, i), ["r@dest.test"],
                                      dlvlib.body("k%d-%d" % (k, i), 2000))
                    with lock:
                        accepted.append(qid)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        failed.append(str(e))

        th = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
        tl = time.monotonic()
        for x in th:
            x.start()
        time.sleep(seconds / 3)
        n_before = len(accepted)
        c.nodes[0].kill()
        t_kill = time.monotonic()
        print("  %.1f s: ds1 killed -9 (%d accepted so far)" % (t_kill - tl, n_before))
        time.sleep(seconds / 3)
        c.nodes[0].start()
        print("  %.1f s: ds1 back after %.1f s of start-up" % (time.monotonic() - tl, c.nodes[0].start_s))
        time.sleep(max(0.0, seconds - (time.monotonic() - tl)))
        stop.set()
        for x in th:
            x.join()
        load_s = time.monotonic() - tl
        print("  load: %d accepted in %.1f s (%.0f msg/s), %d refused/failed" % (
            len(accepted), load_s, len(accepted) / load_s, len(failed)))
        td = time.monotonic()
        dlvlib.wait_for("dotspool queue empty", lambda: srv.metric("dotspool_queue_messages") == 0, 120, 0.5)
        print("  dotspool drained %.1f s after the load" % (time.monotonic() - td))
        ev = srv.events()
        downs = [e for e in ev if e.get("event") == "hop_down"]
        ups = [e for e in ev if e.get("event") == "hop_up" and e.get("broker")]
        for e in downs + ups:
            print("   ", e.get("ts"), e.get("event"), e.get("broker", ""), e.get("reason", "")[:100])
        res = {k: srv.metric("dotspool_handoff_results_total", {"result": k})
               for k in ("confirmed", "nacked", "returned", "timeout", "connection_lost", "no_connection")}
        print("  hand-off results: %s" % res)
        got = rabbit.drain(c.nodes[1].port, "mail", want=None, timeout=120, idle_s=3.0)
        ids = [p.message_id for p, _ in got]
        uniq = set(ids)
        missing = sorted(set(accepted) - uniq)
        unknown = sorted(uniq - set(accepted))
        dups = len(ids) - len(uniq)
        print("  queue: %d messages, %d distinct, %d duplicates (by message_id), %d missing, %d unknown" % (
            len(ids), len(uniq), dups, len(missing), len(unknown)))
        t.check(not missing, "every 250'd message is in the quorum queue (%d missing: %s)" % (len(missing), missing[:5]))
        t.check(not unknown, "nothing unknown in the queue (%s)" % unknown[:5])
        t.check(len(accepted) > 0 and not failed or len(failed) < len(accepted) // 10,
                "senders mostly accepted (%d failures: %s)" % (len(failed), failed[:3]))
        t.check(downs and ups, "hop_down and hop_up logged")
        rec = srv.metric("dotspool_reclaimed_segments_total")
        print("  reclaimed segments: %d" % rec)
        t.check(rec > 0, "dotspool reclaimed segments after the hand-off")
        srv.stop()
    finally:
        c.stop()
        print("  total %.1f s" % (time.monotonic() - t0))


if __name__ == "__main__":
    dslib.run(main)
