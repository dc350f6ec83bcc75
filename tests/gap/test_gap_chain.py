#!/usr/bin/env python3
"""Our own side of the gap (issue 16 point 5): dotspool delivering to dotspool through the cutting proxy.

An upstream dotspool delivers (--deliver-to smtp://, then lmtp://) to a downstream dotspool
through cutproxy.py, which swallows the reply to the final dot (LMTP: every per-recipient
reply) of a seeded fraction of the messages and resets both sides. The upstream counts each
such recipient in dotspool_delivery_possible_duplicates_total and logs possible_duplicate=true,
and delivers it again; the downstream's gap dedup answers the retry "already queued" and keeps
each message once. Copies are counted per Message-ID in the downstream spool.
"""
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "delivery"))
sys.path.insert(0, HERE)

import dslib  # noqa: E402
import dlvlib  # noqa: E402
from cutproxy import CutProxy  # noqa: E402

N = 24


def copies(srv):
    out = {}
    for e in srv.list():
        mid = dslib.find_message_id(srv.cat(e["id"]))
        out["<%s>" % mid] = out.get("<%s>" % mid, 0) + 1
    return out


def leg(t, kind):
    down_lmtp = dslib.free_port()
    down = dlvlib.DServer(t.build, [], threads=2, extra=["--lmtp-listen", "127.0.0.1:%d" % down_lmtp])
    down.start()
    px = CutProxy(("127.0.0.1", down_lmtp if kind == "lmtp" else down.port), fraction=0.25, seed=11,
                  lmtp=kind == "lmtp").start()
    up = dlvlib.DServer(t.build, ["%s://127.0.0.1:%d" % (kind, px.port)], threads=2)
    up.start()
    try:
        mids = []
        for i in range(N):
            mid = "<chain.%s.%d.%s@gap.test>" % (kind, i, uuid.uuid4().hex[:8])
            rcpts = ["r@dest.test", "q@dest.test"] if i % 3 == 0 else ["r@dest.test"]
            body = ("From: s@src.test\r\nMessage-ID: %s\r\nSubject: chain %d\r\n\r\nbody %d\r\n" % (mid, i, i))
            dlvlib.send_ex(up.port, "s@src.test", rcpts, body.encode())
            mids.append(mid)
        want_rcpts = sum(2 if i % 3 == 0 else 1 for i in range(N))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if up.metric("dotspool_deliveries_total", {"outcome": "delivered"}) >= want_rcpts:
                break
            time.sleep(0.2)
        t.eq(int(up.metric("dotspool_deliveries_total", {"outcome": "delivered"})), want_rcpts,
             "%s: every recipient delivered" % kind)
        k = len(px.cuts)
        pd = int(up.metric("dotspool_delivery_possible_duplicates_total"))
        t.check(k > 0, "%s: the proxy cut %d deliveries" % (kind, k))
        t.check(pd >= k, "%s: upstream counted %d possible duplicates for %d cuts" % (kind, pd, k))
        t.check("possible_duplicate=true" in (up.log_text() or ""), "%s: and logged them" % kind)
        got = copies(down)
        dups = sum(max(got.get(m, 0) - 1, 0) for m in mids)
        t.eq([m for m in mids if got.get(m, 0) == 0], [], "%s: every message downstream" % kind)
        t.eq(dups, 0, "%s: downstream holds each message once (%d cuts)" % (kind, k))
        print("  %s: N=%d, cuts %d, upstream possible duplicates %d, downstream duplicates %d"
              % (kind, N, k, pd, dups))
    finally:
        up.stop()
        px.stop()
        down.stop()


def main(t):
    leg(t, "smtp")
    leg(t, "lmtp")


if __name__ == "__main__":
    dslib.run(main, "gap_chain")
