#!/usr/bin/env python3
"""LMTP delivery with per-recipient outcomes and bounces (issue 14, points 2, 4, 6, 7).

The scripted peer speaks LMTP and answers each recipient after the data: 250, 450 (once, then
250) or 550. Checked, over TCP and over a unix socket (lmtp:/path):
- the 250 recipients are delivered once, the 450 ones deferred and delivered on the retry, the
  550 ones never accepted and failed;
- exactly ONE DSN per message with failed recipients that asked for one, sent through the same
  next hop from <> to the original sender: multipart/report; report-type=delivery-status with a
  message/delivery-status part naming every failed recipient (Final-Recipient, Original-Recipient
  from ORCPT, Action: failed, Status: 5.x.x, Diagnostic-Code with the peer's reply), and the
  original (headers only with RET=HDRS);
- NOTIFY=NEVER gets no DSN (and is left out of a DSN for the others); the null sender gets none;
- log lines (outcome mixed/delivered, dsn_id, event=dsn_queued), metrics by outcome, dsn_total,
  list --json per-recipient state when the listing has it.
"""

import email
import email.policy
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402


def messages(p):
    """p: a prefix that keeps the addresses of the two runs apart."""
    return [
        {"tag": "%sm0" % p, "sender": "%ss0@client.test" % p,
         "rcpts": ["ok-%sm0a@dest.test" % p, "r550-%sm0a@dest.test" % p, "r450-%sm0@dest.test" % p,
                   "ok-%sm0b@dest.test" % p, "r550-%sm0b@dest.test" % p],
         "rcpt_opts": {"r550-%sm0a@dest.test" % p: ["NOTIFY=FAILURE", "ORCPT=rfc822;Orig-%sm0a@Dest.test" % p]},
         "mail_opts": ["RET=FULL", "ENVID=env-%sm0" % p], "size": 4000, "dsn_for": ["r550-%sm0a@dest.test" % p,
                                                                              "r550-%sm0b@dest.test" % p]},
        {"tag": "%sm1" % p, "sender": "%ss1@client.test" % p,
         "rcpts": ["ok-%sm1@dest.test" % p, "r550-%sm1@dest.test" % p],
         "rcpt_opts": {"r550-%sm1@dest.test" % p: ["NOTIFY=NEVER"]}, "mail_opts": [], "size": 900,
         "dsn_for": []},
        {"tag": "%sm2" % p, "sender": "",
         "rcpts": ["ok-%sm2@dest.test" % p, "r550-%sm2@dest.test" % p], "rcpt_opts": {}, "mail_opts": [],
         "size": 700, "dsn_for": []},
        {"tag": "%sm3" % p, "sender": "%ss3@client.test" % p,
         "rcpts": ["r550-%sm3a@dest.test" % p, "r550-%sm3b@dest.test" % p, "r450-%sm3@dest.test" % p],
         "rcpt_opts": {"r550-%sm3a@dest.test" % p: ["NOTIFY=NEVER"],
                       "r550-%sm3b@dest.test" % p: ["NOTIFY=SUCCESS,FAILURE,DELAY"]},
         "mail_opts": ["RET=HDRS"], "size": 30000, "dsn_for": ["r550-%sm3b@dest.test" % p]},
    ]


def check_dsn(t, what, data, m, orig_stored):
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    t.eq(msg.get_content_type(), "multipart/report", "%s: multipart/report" % what)
    t.eq(msg.get_param("report-type"), "delivery-status", "%s: report-type=delivery-status" % what)
    t.eq(msg.get("To", "").strip("<> "), m["sender"], "%s: To: the original sender" % what)
    parts = msg.get_payload()
    types = [x.get_content_type() for x in parts]
    t.check(len(parts) >= 2 and types[0] == "text/plain" and types[1] == "message/delivery-status",
            "%s: text/plain then message/delivery-status" % what, repr(types))
    # message/delivery-status: per-message fields, then one block per recipient.
    ds = parts[1]
    raw = ds.as_bytes() if not ds.is_multipart() else b""
    text = data.decode("utf-8", "replace")
    blocks = re.split(r"\r?\n\r?\n", text[text.index("Content-Type: message/delivery-status"):])
    rblocks = [b for b in blocks if "Final-Recipient:" in b]
    finals = sorted(re.search(r"Final-Recipient:\s*rfc822;\s*(\S+)", b).group(1) for b in rblocks)
    t.eq(finals, sorted(m["dsn_for"]), "%s: the DSN names exactly the failed recipients that asked" % what,
         text[:3000])
    for b in rblocks:
        r = re.search(r"Final-Recipient:\s*rfc822;\s*(\S+)", b).group(1)
        unf = re.sub(r"\r?\n[ \t]+", " ", b)
        t.check(re.search(r"(?m)^Action: failed\s*$", unf), "%s: %s Action: failed" % (what, r), b)
        st = re.search(r"(?m)^Status: (\S+)", unf)
        t.check(st and st.group(1) == "5.1.1", "%s: %s Status: 5.1.1" % (what, r), b)
        dc = re.search(r"(?m)^Diagnostic-Code: (.*)$", unf)
        t.check(dc and re.match(r"smtp;\s*550 5\.1\.1 no such user here", dc.group(1)),
                "%s: %s Diagnostic-Code carries the peer's reply" % (what, r), b)
        orcpt = [o for o in m["rcpt_opts"].get(r, []) if o.startswith("ORCPT=")]
        if orcpt:
            want = orcpt[0].split(";", 1)[1]
            t.check(re.search(r"(?m)^Original-Recipient:\s*rfc822;\s*%s\s*$" % re.escape(want), unf),
                    "%s: %s Original-Recipient from ORCPT" % (what, r), b)
    t.check(re.search(r"(?m)^Reporting-MTA: dns;\s*ds\.test", text), "%s: Reporting-MTA" % what)
    env = [o for o in m["mail_opts"] if o.startswith("ENVID=")]
    if env:
        t.check(re.search(r"(?m)^Original-Envelope-Id: %s" % re.escape(env[0][6:]), text),
                "%s: Original-Envelope-Id from ENVID" % what, text[:2000])
    # The original: headers only for RET=HDRS, else the whole message (cut at 64 KiB).
    hdr_end = orig_stored.index(b"\r\n\r\n") + 4
    if "RET=HDRS" in m["mail_opts"]:
        t.eq(types[2] if len(types) > 2 else None, "text/rfc822-headers", "%s: RET=HDRS: headers only" % what)
        t.check(orig_stored[:hdr_end - 2] in data, "%s: the original headers included" % what)
        t.check(orig_stored[hdr_end:hdr_end + 200] not in data, "%s: not the body" % what)
    else:
        t.eq(types[2] if len(types) > 2 else None, "message/rfc822", "%s: the whole message attached" % what)
        t.check(orig_stored in data, "%s: the original, byte for byte" % what)


def run(t, peer, label, p, threads):
    srv = dlvlib.DServer(t.build, [peer.url()], threads=threads)
    srv.start()
    try:
        msgs = messages(p)
        for m in msgs:
            m["body"] = dlvlib.body(m["tag"], m["size"], dots=True)
            m["id"] = dlvlib.send_ex(srv.port, m["sender"], m["rcpts"], m["body"], m["mail_opts"], m["rcpt_opts"])
        ok_rcpts = [r for m in msgs for r in m["rcpts"] if not r.startswith("r550-")]
        n_dsn = len([m for m in msgs if m["dsn_for"]])
        senders = set(m["sender"] for m in msgs if m["sender"])

        def accepted():
            return [e for e in peer.index() if e["rcpt"] in ok_rcpts]

        def dsns():
            return [e for e in peer.index() if e["rcpt"] in senders]
        dlvlib.wait_for("%s: 250/450 recipients delivered" % label, lambda: len(accepted()) >= len(ok_rcpts), 20)
        dlvlib.wait_for("%s: DSNs delivered" % label, lambda: len(dsns()) >= n_dsn, 10)
        time.sleep(1.5)  # anything extra (a second DSN, a duplicate) would show up now
        idx = peer.index()
        t.eq(sorted(e["rcpt"] for e in accepted()), sorted(ok_rcpts), "%s: each 250/450 recipient once" % label)
        t.eq([e for e in idx if e["rcpt"].startswith("r550-")], [], "%s: no 550 recipient accepted" % label)
        for m in msgs:
            stored = srv.cat(m["id"])
            for e in accepted():
                if e["mail_from"] == m["sender"] and e["rcpt"] in m["rcpts"]:
                    dlvlib.check_bytes(t, peer.data(e), stored, "%s: %s -> %s bytes" % (label, m["tag"], e["rcpt"]))
                    t.eq(e["proto"], "LMTP", "%s: over LMTP" % label)
            mine = [e for e in dsns() if e["rcpt"] == m["sender"]]
            t.eq(len(mine), len(m["sender"] and m["dsn_for"] and [1] or []),
                 "%s: %s: %s DSN" % (label, m["tag"], "one" if m["dsn_for"] else "no"))
            if mine:
                t.eq(mine[0]["mail_from"], "", "%s: %s: DSN from <>" % (label, m["tag"]))
                check_dsn(t, "%s: %s DSN" % (label, m["tag"]), peer.data(mine[0]), m, stored)
        t.eq(len(dsns()), n_dsn, "%s: %d DSNs in all" % (label, n_dsn))
        # The log.
        evs = dlvlib.by_queue_id(srv.events("delivery"))
        for m in msgs:
            lines = evs.get(m["id"], [])
            n450 = len([r for r in m["rcpts"] if r.startswith("r450-")])
            n550 = len([r for r in m["rcpts"] if r.startswith("r550-")])
            t.check(len(lines) == (2 if n450 else 1), "%s: %s: %d attempt line(s)" % (label, m["tag"], len(lines)),
                    repr(lines))
            first = lines[0]
            t.eq((first["failed"], first["deferred"], first["delivered"]),
                 (str(n550), str(n450), str(len(m["rcpts"]) - n550 - n450)),
                 "%s: %s: first attempt counts" % (label, m["tag"]), repr(first))
            t.eq(bool(first["dsn_id"]), bool(m["dsn_for"] and m["sender"]),
                 "%s: %s: dsn_id on the line iff a DSN is owed" % (label, m["tag"]), repr(first))
            if n450:
                t.eq((lines[1]["rcpts"], lines[1]["outcome"]), (str(n450), "delivered"),
                     "%s: %s: the retry is for the 450 recipients only, delivered" % (label, m["tag"]), repr(lines[1]))
        dq = srv.events("dsn_queued")
        t.eq(sorted(e["queue_id"] for e in dq), sorted(m["id"] for m in msgs if m["dsn_for"] and m["sender"]),
             "%s: event=dsn_queued once per bounced message" % label)
        n550 = len([r for m in msgs for r in m["rcpts"] if r.startswith("r550-")])
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "failed"}), n550, "%s: failed = 550s" % label)
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}), len(ok_rcpts) + n_dsn,
             "%s: delivered = 250s + 450s + DSNs" % label)
        t.eq(srv.metric("dotspool_dsn_total"), n_dsn, "%s: dotspool_dsn_total" % label)
        st = dlvlib.list_states(srv)
        if st is not None:
            for m in msgs:
                want = {r: ("failed" if r.startswith("r550-") else "delivered") for r in m["rcpts"]}
                t.eq(st.get(m["id"]), want, "%s: list --json %s" % (label, m["tag"]))
        else:
            print("  note: list --json has no per-recipient delivery state yet")
    finally:
        srv.stop()


def rules(p):
    """550 always for r550-*; 450 once (then 250) for each r450-* recipient."""
    return {"rules": [{"rcpt": "^r550-", "at": "data", "reply": "550 5.1.1 no such user here"}] +
            [{"rcpt": "^%s$" % re.escape(r), "at": "data", "reply": "450 4.2.0 mailbox busy, try later", "times": 1}
             for m in messages(p) for r in m["rcpts"] if r.startswith("r450-")]}


def main(t):
    peer = dlvlib.Peer(lmtp=True, script=rules("t"))
    peer.start()
    try:
        run(t, peer, "tcp", "t", threads=2)
    finally:
        peer.stop()
    d = dslib.mkdtemp("ds-lmtp-sock-")
    upeer = dlvlib.Peer(lmtp=True, unix=os.path.join(d, "lmtp.sock"), script=rules("u"))
    upeer.start()
    try:
        run(t, upeer, "unix", "u", threads=1)
    finally:
        upeer.stop()


if __name__ == "__main__":
    dlvlib.enter_netns()
    dslib.run(main)
