#!/usr/bin/env python3
"""kill -9 of dotspool during delivery under load, restart on the same spool (issue 14, points 1,
6, 7): at least once, duplicates counted.

4 client threads send for ~5 s (1-3 recipients per message) into dotspool (2 threads) that
delivers to the scripted peer, which waits 50 ms before each reply to the final dot so that
deliveries are in flight. After ~2.5 s dotspool gets SIGKILL (the clients see their connections
die and carry on with the restarted server). It restarts on the same spool with ONE thread (the
lanes of the earlier run with two must be drained too). Checked:
- every recipient that got its 250 from dotspool reaches the peer at least once (strict);
- recipients the peer got twice (duplicates) are at most the recipients recovery found cut short
  in delivery (ATTEMPT records without an outcome, from the recovery line), and the restarted
  server's dotspool_redeliveries_total + dotspool_delivery_possible_duplicates_total account for
  them (>= duplicates); the numbers are printed;
- the restarted server logs redelivery=true on such deliveries, and nothing stays queued.
"""

import os
import random
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402

LOAD_S = 5.0
KILL_AT_S = 2.5
THREADS = 4


def main(t):
    peer = dlvlib.Peer(args=["--stall", "dot=0.05", "--max-connections", "64"])
    peer.start()
    port = dslib.free_port()
    # --reclaim false: the accounting below maps the queue ids of the redelivery lines to their
    # senders through `list`, which no longer shows a delivered message once its segment is
    # reclaimed (kill -9 with reclamation on: powercut_deliver_reclaim_*, delivery_compact).
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2, listen=port,
                         extra=["--deliver-connections", "16", "--reclaim", "false"])
    srv.start()
    accepted = []  # (sender, [rcpts]) that got 250 for DATA
    refused = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def client(k):
        rnd = random.Random(k)
        i = 0
        while not stop.is_set():
            sender = "k%d.%d@client.test" % (k, i)
            rcpts = ["r%d.%d.%d@dest.test" % (k, i, j) for j in range(1 + rnd.randrange(3))]
            body = dlvlib.body("k%d_%d" % (k, i), 500 + rnd.randrange(20000))
            i += 1
            try:
                dlvlib.send_ex(srv.port, sender, rcpts, body)
            except Exception:  # noqa: BLE001  (killed server: refused, reset, 4xx...)
                with lock:
                    refused[0] += 1
                time.sleep(0.05)
                continue
            with lock:
                accepted.append((sender, rcpts))
            time.sleep(0.02)  # ~40 messages/s per client: the backlog stays what the peer drains in seconds

    th = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(THREADS)]
    t0 = time.monotonic()
    for x in th:
        x.start()
    time.sleep(KILL_AT_S)
    before = len(peer.index())
    srv.kill()
    with lock:
        n_acc_at_kill = len(accepted)
    print("  killed after %.1f s: %d messages accepted, %d recipients at the peer"
          % (time.monotonic() - t0, n_acc_at_kill, before))
    t.check(before > 0, "deliveries were under way at the kill (%d at the peer)" % before)
    t.check(n_acc_at_kill > before / 3.0, "ingest was under way at the kill")
    # Restart on the same spool and port, one thread.
    srv2 = dlvlib.DServer(t.build, [peer.url()], threads=1, listen=port, spool=srv.spool,
                          extra=["--deliver-connections", "16", "--reclaim", "false"])
    srv2.start()
    while time.monotonic() - t0 < LOAD_S:
        time.sleep(0.1)
    stop.set()
    for x in th:
        x.join(30)
    try:
        want = {}
        for s, rc in accepted:
            for r in rc:
                want[(s, r)] = 0
        print("  load over: %d messages (%d recipients) accepted, %d sends failed (the kill)"
              % (len(accepted), len(want), refused[0]))

        def missing():
            got = set((e["mail_from"], e["rcpt"]) for e in peer.index())
            return [k for k in want if k not in got]
        dlvlib.wait_for("every accepted recipient at the peer", lambda: not missing(), 30, step_s=0.3)
        dlvlib.wait_for("the restarted server's queue empty",
                        lambda: srv2.metric("dotspool_queue_recipients_open") == 0, 15, step_s=0.3)
        time.sleep(1.0)
        t.eq(missing(), [], "every recipient that got 250 was delivered at least once (%d)" % len(want))
        counts = {}
        for e in peer.index():
            k = (e["mail_from"], e["rcpt"])
            counts[k] = counts.get(k, 0) + 1
        dups = sum(c - 1 for c in counts.values() if c > 1)
        extra = [k for k in counts if k not in want]
        rec = re.search(r"(\d+) messages queued \((\d+) recipients, (\d+) cut short in delivery\)",
                        srv2.log_text() or "")
        t.check(rec is not None, "the recovery line reports what it queued", (srv2.log_text() or "")[:2000])
        q_msgs, q_rcpts, cut = int(rec.group(1)), int(rec.group(2)), int(rec.group(3))
        redeliv = srv2.metric("dotspool_redeliveries_total")
        posdup = srv2.metric("dotspool_delivery_possible_duplicates_total")
        posdup1 = 0  # the killed server's counter is gone with it
        red_lines = [e for e in srv2.events("delivery") if e.get("redelivery") == "true"]
        print("  recovery: %d messages queued (%d recipients), %d recipients cut short in delivery"
              % (q_msgs, q_rcpts, cut))
        print("  peer: %d recipient deliveries, %d duplicates, %d for messages whose 250 the client never saw"
              % (sum(counts.values()), dups, len(extra)))
        print("  restarted server: redeliveries_total %d, possible_duplicates_total %d, %d delivery lines with "
              "redelivery=true" % (redeliv, posdup, len(red_lines)))
        # The messages recovery found cut short in delivery are those the restarted server logs
        # with redelivery=true (all of them deliver at once here); their recipients are the ones
        # that were in flight (ATTEMPT without an outcome) when the first server died.
        ids = dict((e["id"], e["mail_from"]) for e in srv2.list())
        inflight_senders = set(ids.get(e["queue_id"]) for e in red_lines)
        inflight_rcpts = sum(int(e["rcpts"]) for e in red_lines)
        print("  in flight at the kill: %d messages, %d recipients" % (len(red_lines), inflight_rcpts))
        t.eq(len(red_lines), cut, "one redelivery=true line per message recovery found cut short")
        dup_keys = [k for k, c in counts.items() if c > 1]
        t.eq([k for k in dup_keys if k[0] not in inflight_senders], [],
             "every duplicate belongs to a message that was in flight at the kill")
        t.check(dups <= inflight_rcpts, "duplicates (%d) <= recipients in flight at the kill (%d)"
                % (dups, inflight_rcpts))
        t.check(redeliv + posdup + posdup1 >= dups,
                "redeliveries + possible duplicates (%d + %d) account for the duplicates (%d)"
                % (redeliv, posdup, dups))
        t.eq(redeliv, inflight_rcpts, "redeliveries_total = the in-flight recipients delivered again")
        t.eq(srv2.metric("dotspool_deliveries_total", {"outcome": "failed"}), 0, "nothing failed")
        st = dlvlib.list_states(srv2)
        if st is not None:
            open_ = {q: s for q, s in st.items() if set(s.values()) - {"delivered"}}
            t.eq(open_, {}, "list --json: every recipient delivered")
        else:
            print("  note: list --json has no per-recipient delivery state yet")
    finally:
        stop.set()
        srv2.stop()
        peer.stop()


if __name__ == "__main__":
    dlvlib.enter_netns()
    dslib.run(main)
