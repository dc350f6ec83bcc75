#!/usr/bin/env python3
"""Deferrals and retries (issue 14, points 1, 3, 6): the next hop down then up, a next hop that
stalls mid-DATA, a connection dropped after the final dot, fallback next hops, the queue
lifetime. Short back-offs (--retry-min-s 1, --deliver-hop-backoff-min-s 1).

1. down/up: 4 messages while nothing listens on the hop's port: each attempt logged as
   deferred (and list --json says deferred when it can), hop_down logged, nothing lost; the peer
   starts on that port: every recipient delivered exactly once, bytes equal to the spool's.
2. stall in DATA: the peer stops reading after the first data line (`--stall in_data=30@1`) of a
   6 MB message; with --deliver-timeout-data-block-s 2 the attempt is deferred with a timeout
   reply, then delivered on the retry (the stall fires once).
3. drop after the dot (`--drop-after-dot 1`): the peer stores the message and closes without a
   reply: deferred as a possible duplicate, delivered again, counted in
   dotspool_delivery_possible_duplicates_total.
4. fallback: --deliver-to a refusing port, then the peer: all delivered through the second.
5. lifetime: a recipient the peer always answers 450, --queue-lifetime-s 2: it fails (4.4.7)
   with one DSN to the sender (through the same hop), the other recipient delivered once.
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402


def delivered_once(t, peer, srv, sent, what):
    """sent: [(qid, sender, rcpts, body)]: each recipient exactly once (not counting entries the
    peer marks dropped), with the stored bytes."""
    idx = [e for e in peer.index() if not e.get("dropped")]
    for qid, sender, rcpts, body in sent:
        got = [e for e in idx if e["mail_from"] == sender]
        t.eq(sorted(e["rcpt"] for e in got), sorted(rcpts), "%s: %s: each recipient once" % (what, qid))
        stored = srv.cat(qid)
        _, data = dslib.split_received(stored)
        dlvlib.check_bytes(t, data, body, "%s: %s: spooled as sent" % (what, qid))
        dlvlib.check_bytes(t, peer.data(got[0]), stored, "%s: %s: the peer got the stored bytes" % (what, qid))


def all_at_peer(peer, n):
    return lambda: len([e for e in peer.index() if not e.get("dropped")]) >= n


def case_down_up(t):
    print("-- next hop down, then up")
    port = dslib.free_port()
    peer = dlvlib.Peer(port=port)
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2)
    srv.start()
    try:
        sent = []
        for i in range(4):
            s = "du%d@client.test" % i
            rc = ["a%d@dest.test" % i, "b%d@dest.test" % i]
            b = dlvlib.body("du%d" % i, 2000 + 5000 * i, dots=True)
            sent.append((dlvlib.send_ex(srv.port, s, rc, b), s, rc, b))
        ids = set(q for q, _, _, _ in sent)
        dlvlib.wait_for("a deferred attempt logged for every message",
                        lambda: ids <= set(e["queue_id"] for e in srv.events("delivery")
                                           if e.get("outcome") == "deferred"), 10)
        evs = [e for e in srv.events("delivery") if e["queue_id"] in ids]
        t.check(all(e["outcome"] == "deferred" for e in evs), "every attempt while down is deferred",
                repr(evs[:3]))
        t.check(all(e["code"].startswith("4") for e in evs), "with a 4xx code", repr(evs[:3]))
        t.check(any(e.get("hop") == peer.url() for e in srv.events("hop_down")), "hop_down logged",
                repr(srv.events("hop_down")))
        st = dlvlib.list_states(srv)
        if st is not None:
            for q in ids:
                t.check(set(st[q].values()) <= {"deferred", "attempt"},
                        "list --json: %s deferred while the hop is down" % q, repr(st[q]))
        t.check(srv.metric("dotspool_deliveries_total", {"outcome": "deferred"}) >= 8,
                "deliveries_total{deferred} counts the deferred recipients")
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}), 0, "nothing delivered yet")
        t.check(srv.metric("dotspool_deliver_connect_failures_total") >= 1, "connect failures counted")
        t.eq(srv.metric("dotspool_deliver_hop_up"), 0, "hop_up gauge 0 while down")
        n_def = len(evs)
        t.check(n_def <= 4 * 4, "hop backed off as a whole: %d deferred attempts for 4 messages" % n_def)
        t0 = time.monotonic()
        peer.start()
        dlvlib.wait_for("all delivered after the hop came back", all_at_peer(peer, 8), 15)
        took = time.monotonic() - t0
        print("  delivered %.1f s after the peer started" % took)
        dlvlib.wait_for("delivered lines", lambda: len([e for e in srv.events("delivery")
                                                        if e["outcome"] == "delivered"]) >= 4, 5)
        time.sleep(0.3)
        delivered_once(t, peer, srv, sent, "down/up")
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}), 8, "delivered = 8 recipients")
        t.check(any(e.get("hop") == peer.url() for e in srv.events("hop_up")), "hop_up logged",
                repr(srv.events("hop_up")))
        # At once, not when the (reused, idle for 5 s) connection closes.
        t.eq(srv.metric("dotspool_deliver_hop_up"), 1, "hop_up gauge back to 1 while its connection is open")
        n_down = len([e for e in srv.events("hop_down") if e.get("hop") == peer.url()])
        t.check(1 <= n_down <= 2, "hop_down logged once per worker for the outage (2 workers), not per "
                "failed probe: %d" % n_down, repr(srv.events("hop_down")))
        st = dlvlib.list_states(srv)
        if st is not None:
            for q in ids:
                t.eq(set(st[q].values()), {"delivered"}, "list --json: %s delivered" % q)
    finally:
        srv.stop()
        peer.stop()


def set_tcp_buffers(wmem, rmem):
    """Per network namespace (this test's own): small socket buffers make a stalled reader
    block the sender after a few hundred KB instead of several MB."""
    old = []
    for name, val in (("tcp_wmem", wmem), ("tcp_rmem", rmem)):
        path = "/proc/sys/net/ipv4/" + name
        with open(path) as f:
            old.append(f.read().strip())
        with open(path, "w") as f:
            f.write(val)
    return old


def case_stall(t):
    print("-- next hop stalls in DATA")
    old = set_tcp_buffers("4096 16384 131072", "4096 65536 131072")
    try:
        stall_run(t)
    finally:
        set_tcp_buffers(*old)


def stall_run(t):
    peer = dlvlib.Peer(args=["--stall", "in_data=30@1", "--max-message-size", str(64 << 20)])
    peer.start()
    srv = dlvlib.DServer(t.build, [peer.url()], threads=1,
                         extra=["--deliver-timeout-data-block-s", "2", "--deliver-timeout-data-done-s", "20",
                                "--max-message-size", str(64 << 20)])
    srv.start()
    try:
        b = dlvlib.body("stall", 2 << 20)
        t0 = time.monotonic()
        q = dlvlib.send_ex(srv.port, "stall@client.test", ["st@dest.test"], b)
        dlvlib.wait_for("the stalled attempt deferred",
                        lambda: [e for e in srv.events("delivery") if e["outcome"] == "deferred"], 15)
        e = [e for e in srv.events("delivery") if e["outcome"] == "deferred"][0]
        took = time.monotonic() - t0
        print("  deferred after %.1f s: %r" % (took, e.get("reply")))
        t.check("timed out while sending the message body" in e.get("reply", ""),
                "the deferral names the data-block timeout", repr(e))
        t.check(e["code"].startswith("4"), "4xx", repr(e))
        t.check(took < 10, "data-block timeout (2 s) fired, not a default one (%.1f s)" % took)
        dlvlib.wait_for("delivered on retry", all_at_peer(peer, 1), 30)
        time.sleep(0.3)
        delivered_once(t, peer, srv, [(q, "stall@client.test", ["st@dest.test"], b)], "stall")
        lines = [e for e in srv.events("delivery") if e["queue_id"] == q]
        t.eq([x["outcome"] for x in lines], ["deferred", "delivered"], "deferred then delivered")
    finally:
        srv.stop()
        peer.stop()


def case_drop(t):
    print("-- connection dropped after the final dot")
    peer = dlvlib.Peer(args=["--drop-after-dot", "1"])
    peer.start()
    srv = dlvlib.DServer(t.build, [peer.url()], threads=1)
    srv.start()
    try:
        rc = ["d1@dest.test", "d2@dest.test", "d3@dest.test"]
        b = dlvlib.body("drop", 3000)
        q = dlvlib.send_ex(srv.port, "drop@client.test", rc, b)
        dlvlib.wait_for("delivered again after the drop", all_at_peer(peer, 3), 15)
        dlvlib.wait_for("delivered line", lambda: [e for e in srv.events("delivery")
                                                   if e["outcome"] == "delivered"], 5)
        time.sleep(0.3)
        idx = peer.index()
        t.eq(len([e for e in idx if e.get("dropped")]), 3, "the peer stored the dropped copy (3 rcpts)")
        t.eq(len([e for e in idx if not e.get("dropped")]), 3, "and the delivered copy once")
        delivered_once(t, peer, srv, [(q, "drop@client.test", rc, b)], "drop")
        lines = [e for e in srv.events("delivery") if e["queue_id"] == q]
        t.eq([(x["outcome"], x["possible_duplicate"]) for x in lines], [("deferred", "true"), ("delivered", "false")],
             "logged: deferred as a possible duplicate, then delivered", repr(lines))
        t.eq(srv.metric("dotspool_delivery_possible_duplicates_total"), 3, "possible duplicates counted (3 rcpts)")
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}), 3, "3 delivered")
    finally:
        srv.stop()
        peer.stop()


def case_fallback(t):
    print("-- fallback: the first next hop refuses connections")
    dead = "smtp://127.0.0.1:%d" % dslib.free_port()
    peer = dlvlib.Peer()
    peer.start()
    srv = dlvlib.DServer(t.build, [dead, peer.url()], threads=2)
    srv.start()
    try:
        sent = []
        for i in range(6):
            s = "fb%d@client.test" % i
            rc = ["f%d@dest.test" % i]
            b = dlvlib.body("fb%d" % i, 1000 + 300 * i)
            sent.append((dlvlib.send_ex(srv.port, s, rc, b), s, rc, b))
        dlvlib.wait_for("all delivered through the fallback", all_at_peer(peer, 6), 15)
        dlvlib.wait_for("delivered lines", lambda: len(srv.events("delivery")) >= 6, 5)
        time.sleep(0.3)
        delivered_once(t, peer, srv, sent, "fallback")
        evs = srv.events("delivery")
        t.check(all(e["hop"] == peer.url() and e["outcome"] == "delivered" for e in evs),
                "every logged attempt went to the fallback and delivered", repr(evs))
        t.eq(srv.metric("dotspool_deliveries_total", {"hop": peer.url(), "outcome": "delivered"}), 6,
             "deliveries_total{hop=fallback,delivered} = 6")
        t.check(srv.metric("dotspool_deliver_connect_failures_total", {"hop": dead}) >= 1,
                "the first hop's refused connection counted")
        t.eq(srv.metric("dotspool_deliveries_total", {"hop": dead}), 0, "nothing recorded against the dead hop")
    finally:
        srv.stop()
        peer.stop()


def case_lifetime(t):
    print("-- queue lifetime: a recipient always 450")
    peer = dlvlib.Peer(args=["--rule", "rcpt:^slow@=450 4.2.1 come back later"])
    peer.start()
    srv = dlvlib.DServer(t.build, [peer.url()], threads=1, extra=["--queue-lifetime-s", "2"])
    srv.start()
    try:
        b = dlvlib.body("life", 1500)
        q = dlvlib.send_ex(srv.port, "life@client.test", ["ok@dest.test", "slow@dest.test"], b,
                           rcpt_opts={"slow@dest.test": ["NOTIFY=FAILURE", "ORCPT=rfc822;Slow@Dest.test"]})
        dlvlib.wait_for("the DSN at the peer",
                        lambda: [e for e in peer.index() if e["rcpt"] == "life@client.test"], 15)
        time.sleep(0.5)
        idx = peer.index()
        t.eq(len([e for e in idx if e["rcpt"] == "ok@dest.test"]), 1, "ok@ delivered once")
        t.eq(len([e for e in idx if e["rcpt"] == "slow@dest.test"]), 0, "slow@ never accepted")
        dsns = [e for e in idx if e["rcpt"] == "life@client.test"]
        t.eq(len(dsns), 1, "one DSN")
        t.eq(dsns[0]["mail_from"], "", "DSN from <>")
        data = peer.data(dsns[0])
        t.check(b"multipart/report" in data and b"report-type=delivery-status" in data, "multipart/report")
        t.check(re.search(rb"(?m)^Final-Recipient: rfc822; ?slow@dest\.test\r$", data), "Final-Recipient slow@",
                data[:3000])
        t.check(re.search(rb"(?m)^Original-Recipient: rfc822; ?Slow@Dest\.test\r$", data),
                "Original-Recipient from ORCPT", data[:3000])
        t.check(b"Status: 4.4.7" in data or b"Status: 5.4.7" in data, "Status x.4.7 (expired)",
                data[:3000])
        t.check(b"Action: failed" in data, "Action: failed")
        lines = [e for e in srv.events("delivery") if e["queue_id"] == q]
        t.check(len(lines) >= 2 and lines[-1]["failed"] == "1", "the last attempt fails slow@", repr(lines))
        t.check(all(e["outcome"] != "delivered" or e["queue_id"] != q for e in lines[1:]),
                "ok@ delivered only at the first attempt", repr(lines))
        t.eq(srv.metric("dotspool_dsn_total"), 1, "dotspool_dsn_total 1")
    finally:
        srv.stop()
        peer.stop()


def main(t):
    t0 = time.monotonic()
    for case in (case_down_up, case_stall, case_drop, case_fallback, case_lifetime):
        c0 = time.monotonic()
        case(t)
        print("  (%s: %.1f s)" % (case.__name__, time.monotonic() - c0))
    print("  total %.1f s" % (time.monotonic() - t0))


if __name__ == "__main__":
    dlvlib.enter_netns()
    dslib.run(main)
