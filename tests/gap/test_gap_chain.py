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
import re
import socket
import struct
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


copies = dslib.message_copies


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


def reclaim_leg(t, keep_s=None):
    """--reclaim with delivery on: a client reads nothing after its 250 for 2 s (the message is
    delivered, final, meanwhile), then resets: the message is at risk only now. The provisional
    keep from its 250 held it, so the AT_RISK record can keep it for the window although it is
    already final; compaction (--compact-age-s 1) moves it forward with a fresh AT_RISK record, so
    segments are reclaimed meanwhile (without compaction its segment and, through its neighbours'
    records, the later ones would wait for it: whether any was reclaimed depended on timing), and
    the retry is compared with the copy and suppressed (test_gap_compact.py adds restarts).
    With --gap-dedup-keep-s 1 the keep ends a second later: the delivered original's segment is
    reclaimed and the retry, with nothing to compare against, is stored (never suppressed on a
    guess)."""
    tag = "reclaim" if keep_s is None else "reclaim keep %ds" % keep_s
    extra = ["--reclaim", "true", "--segment-size", "1048576", "--spool-buffer-size", "262144"]
    if keep_s is not None:
        extra += ["--gap-dedup-keep-s", str(keep_s)]
    else:
        extra += ["--compact-age-s", "1"]
    down = dlvlib.DServer(t.build, [], threads=1)
    down.start()
    srv = dlvlib.DServer(t.build, ["smtp://127.0.0.1:%d" % down.port], threads=1, extra=extra)
    srv.start()
    try:
        mid = "<reclaim.%s@gap.test>" % uuid.uuid4().hex[:8]
        body = ("From: s@src.test\r\nMessage-ID: %s\r\nSubject: kept\r\n\r\nkept\r\n" % mid).encode()
        c, orig_text = dslib.send_original(t, srv.port, body, "reclaim: the original")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}) < 1:
            time.sleep(0.1)
        time.sleep(0.5)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()  # RST, never a byte after the 250: at risk, although delivered
        filler = ("x" * 998 + "\r\n") * 60  # ~60 KiB each: 40 of them roll the 1 MiB segments
        for i in range(40):
            dlvlib.send_ex(srv.port, "f@src.test", ["r@dest.test"],
                           ("Subject: filler %d\r\n\r\n%s" % (i, filler)).encode())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}) < 41:
            time.sleep(0.2)
        # The reclaimer runs at least once a second; on a loaded machine it may take longer.
        time.sleep(2.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and srv.metric("dotspool_reclaimed_segments_total") < 1:
            time.sleep(0.2)
        if keep_s is not None:
            # The original's own segment must be gone before the retry (its keep ended after keep_s).
            ot = orig_text.decode() if isinstance(orig_text, bytes) else orig_text
            qid = re.search(r"queued as ([0-9A-F]{16})", ot)
            t.check(qid is not None, "%s: the original's queue id in its 250" % tag, orig_text)
            while time.monotonic() < deadline and any(e["id"] == qid.group(1) for e in srv.list()):
                time.sleep(0.2)
        reclaimed = srv.metric("dotspool_reclaimed_segments_total")
        s = dlvlib.smtplib.SMTP("127.0.0.1", srv.port, timeout=10)
        s.ehlo("client.test")
        s.mail("s@src.test")
        s.rcpt("r@dest.test")
        code, text = s.data(body)
        s.quit()
        print("  %s: segments reclaimed %s before the retry" % (tag, reclaimed))
        t.check(reclaimed >= 1, "%s: segments were reclaimed meanwhile" % tag)
        if keep_s is None:
            t.check("already queued" in text.decode(), "reclaim: the delivered original was kept for the "
                    "window: its retry is suppressed", text)
            t.eq(copies(down).get(mid, 0), 1, "reclaim: the next hop has it once")
        else:
            t.check("already queued" not in text.decode(), "%s: the original's copy went with its segment "
                    "after the keep: the retry is stored" % tag, text)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and copies(down).get(mid, 0) < 2:
                time.sleep(0.2)
            t.eq(copies(down).get(mid, 0), 2, "%s: the next hop has the original and the retry" % tag)
    finally:
        srv.stop()
        down.stop()


def main(t):
    leg(t, "smtp")
    leg(t, "lmtp")
    reclaim_leg(t)
    reclaim_leg(t, keep_s=1)


if __name__ == "__main__":
    dslib.run(main, "gap_chain")
