#!/usr/bin/env python3
"""Delivery over SMTP to the scripted next hop (issue 14, points 1, 2, 6, 7).

30 messages (a few hundred bytes to ~300 KB, lines starting with '.', 8-bit bodies sent with
BODY=8BITMIME, one to five recipients, DSN parameters on some) go into dotspool with
--deliver-to smtp://peer. Checked: every recipient reaches the peer exactly once; the bytes the
peer received are byte for byte what `dotspool-ctl cat ID` shows (the stored message, Received:
header included); MAIL/RCPT parameters (BODY, RET, ENVID, NOTIFY, ORCPT) are passed on as
stored (the peer offers DSN); one `event=delivery outcome=delivered` log line per message (each
delivered on its first attempt); dotspool_deliveries_total{outcome="delivered"} equals the
recipients, attempts the messages; list --json per-recipient state when the listing has it.
Then, with a peer that does NOT offer DSN or 8BITMIME, the DSN parameters are dropped.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402

N_MSGS = 30


def make_messages():
    msgs = []
    sizes = [300, 1200, 5000, 20000, 64000, 120000, 300000, 800, 3000, 150000]
    for i in range(N_MSGS):
        tag = "m%02d" % i
        size = sizes[i % len(sizes)]
        dots = i % 3 == 0
        eight = i % 4 == 1
        nrcpt = 1 + i % 5
        rcpts = ["u%02d.%d@dest.test" % (i, k) for k in range(nrcpt)]
        mail_opts = []
        rcpt_opts = {}
        if eight:
            mail_opts.append("BODY=8BITMIME")
        if i % 2 == 0:
            mail_opts += ["RET=%s" % ("HDRS" if i % 4 == 0 else "FULL"), "ENVID=env-%s" % tag]
            for k, r in enumerate(rcpts):
                if k == 0:
                    rcpt_opts[r] = ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig-%s@dest.test" % tag]
                elif k == 1:
                    rcpt_opts[r] = ["NOTIFY=NEVER"]
        msgs.append({"tag": tag, "sender": "%s@client.test" % tag, "rcpts": rcpts,
                     "body": dlvlib.body(tag, size, dots=dots, eight_bit=eight),
                     "mail_opts": mail_opts, "rcpt_opts": rcpt_opts})
    return msgs


def params_dict(s):
    out = {}
    for w in (s or "").split():
        k, _, v = w.partition("=")
        out[k.upper()] = v
    return out


def main(t):
    peer = dlvlib.Peer()
    peer.start()
    # Fewer connections than the peer's 16: a 421 "too many connections" greeting would defer
    # (correctly) and spoil the one-attempt-per-message count.
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2, extra=["--deliver-connections", "8"])
    try:
        srv.start()
        msgs = make_messages()
        for m in msgs:
            m["id"] = dlvlib.send_ex(srv.port, m["sender"], m["rcpts"], m["body"], m["mail_opts"],
                                     m["rcpt_opts"])
        total_rcpts = sum(len(m["rcpts"]) for m in msgs)
        t.eq(len(set(m["id"] for m in msgs)), N_MSGS, "30 distinct queue ids")
        dlvlib.wait_for("%d recipients at the peer" % total_rcpts,
                        lambda: len(peer.index()) >= total_rcpts, 30)
        # Let anything extra (a duplicate) arrive before counting exactly.
        dlvlib.wait_for("every message logged as delivered",
                        lambda: len(srv.events("delivery")) >= N_MSGS, 15)
        idx = peer.index()
        t.eq(len(idx), total_rcpts, "the peer accepted each recipient exactly once")
        by_sender = {}
        for e in idx:
            by_sender.setdefault(e["mail_from"], []).append(e)
        for m in msgs:
            got = by_sender.get(m["sender"], [])
            t.eq(sorted(e["rcpt"] for e in got), sorted(m["rcpts"]),
                 "%s: every recipient delivered once" % m["tag"])
            stored = srv.cat(m["id"])
            _, data = dslib.split_received(stored)
            dlvlib.check_bytes(t, data, m["body"], "%s: what was spooled is what was sent" % m["tag"])
            files = set(e["file"] for e in got)
            t.eq(len(files), 1, "%s: one transaction at the peer" % m["tag"])
            dlvlib.check_bytes(t, peer.data(got[0]), stored,
                               "%s: the peer got the stored bytes (%d)" % (m["tag"], len(stored)))
            # MAIL parameters.
            mp = params_dict(got[0]["mail_params"])
            want_mp = params_dict(" ".join(m["mail_opts"]))
            for k in ("RET", "ENVID"):
                t.eq(mp.get(k), want_mp.get(k), "%s: MAIL %s passed on" % (m["tag"], k))
            if "BODY" in want_mp:
                t.eq(mp.get("BODY"), "8BITMIME", "%s: BODY=8BITMIME passed on" % m["tag"])
            t.check(not mp.get("SIZE") or int(mp["SIZE"]) >= len(stored),
                    "%s: SIZE= (if any) is at least the stored size" % m["tag"],
                    repr(got[0]["mail_params"]))
            for e in got:
                rp = params_dict(e["rcpt_params"])
                want = params_dict(" ".join(m["rcpt_opts"].get(e["rcpt"], ())))
                t.eq({k: rp.get(k) for k in ("NOTIFY", "ORCPT")},
                     {k: want.get(k) for k in ("NOTIFY", "ORCPT")},
                     "%s: RCPT %s NOTIFY/ORCPT passed on" % (m["tag"], e["rcpt"]), e["rcpt_params"])
        # The log: one delivery line per message (each delivered at its first attempt).
        evs = dlvlib.by_queue_id(srv.events("delivery"))
        for m in msgs:
            lines = evs.get(m["id"], [])
            t.eq(len(lines), 1, "%s: one event=delivery line" % m["tag"], repr(lines))
            e = lines[0]
            t.eq((e.get("outcome"), e.get("attempt"), e.get("rcpts"), e.get("delivered"), e.get("hop")),
                 ("delivered", "1", str(len(m["rcpts"])), str(len(m["rcpts"])), peer.url()),
                 "%s: delivery line outcome/attempt/rcpts/delivered/hop" % m["tag"], repr(e))
            t.check(e.get("code") == "250" and e.get("possible_duplicate") == "false",
                    "%s: code 250, no possible duplicate" % m["tag"], repr(e))
        t.eq(len(evs), N_MSGS, "no delivery lines for other queue ids")
        # Metrics.
        dlvlib.wait_for("metrics caught up",
                        lambda: srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}) == total_rcpts,
                        5)
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}), total_rcpts,
             "dotspool_deliveries_total{outcome=delivered} = recipients")
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "deferred"}), 0, "none deferred")
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "failed"}), 0, "none failed")
        t.eq(srv.metric("dotspool_delivery_attempts_total"), N_MSGS, "one attempt per message")
        t.eq(srv.metric("dotspool_delivery_latency_seconds_count"), N_MSGS, "latency observed per message")
        t.eq(srv.metric("dotspool_dsn_total"), 0, "no DSN")
        t.eq(srv.metric("dotspool_redeliveries_total") + srv.metric("dotspool_delivery_possible_duplicates_total"),
             0, "no re-deliveries, no possible duplicates")
        dlvlib.wait_for("queue gauge empty", lambda: srv.metric("dotspool_queue_recipients_open") == 0, 5)
        t.check(srv.metric("dotspool_deliver_connections_total") < N_MSGS,
                "connections reused (%d opened for %d messages)"
                % (srv.metric("dotspool_deliver_connections_total"), N_MSGS))
        st = dlvlib.list_states(srv)
        if st is None:
            t.notes.append("list --json has no per-recipient state yet: not checked")
            print("  note: list --json has no per-recipient delivery state yet")
        else:
            for m in msgs:
                t.eq(set(st.get(m["id"], {}).values()), {"delivered"}, "%s: list --json delivered" % m["tag"])

        # A next hop without DSN and 8BITMIME: DSN parameters are not passed on (RFC 3461 4.1:
        # relaying to a non-DSN server drops them); the 8-bit body still goes (as Postfix does).
        peer2 = dlvlib.Peer(args=["--ext", "PIPELINING", "--ext", "SIZE"])
        peer2.start()
        try:
            srv.stop()
            srv2 = dlvlib.DServer(t.build, [peer2.url()], threads=1)
            srv2.start()
            for m in msgs[0:2]:  # m00: DSN parameters; m01: 8-bit body (sent as is, as Postfix does)
                qid = dlvlib.send_ex(srv2.port, m["sender"], m["rcpts"], m["body"], m["mail_opts"],
                                     m["rcpt_opts"])
                dlvlib.wait_for("plain peer got %s" % m["tag"],
                                lambda: len([e for e in peer2.index() if e["mail_from"] == m["sender"]])
                                >= len(m["rcpts"]), 15)
                got = [e for e in peer2.index() if e["mail_from"] == m["sender"]]
                t.eq(len(got), len(m["rcpts"]), "plain peer, %s: each recipient once" % m["tag"])
                t.eq([w for w in got[0]["mail_params"].upper().split() if not w.startswith("SIZE=")], [],
                     "plain peer, %s: MAIL carries no RET/ENVID/BODY" % m["tag"], got[0]["mail_params"])
                t.check(all(not e["rcpt_params"] for e in got),
                        "plain peer, %s: RCPT carries no NOTIFY/ORCPT" % m["tag"],
                        repr([e["rcpt_params"] for e in got]))
                dlvlib.check_bytes(t, peer2.data(got[0]), srv2.cat(qid), "plain peer, %s: stored bytes" % m["tag"])
            srv2.stop()
        finally:
            peer2.stop()
    finally:
        srv.stop()
        peer.stop()


if __name__ == "__main__":
    dlvlib.enter_netns()
    dslib.run(main)
