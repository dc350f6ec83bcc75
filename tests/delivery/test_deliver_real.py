#!/usr/bin/env python3
"""Delivery to real next hops (issue 14, point 6), all inside one loopback-only namespace:

1. Postfix smtpd (private instance, tests/peer/peers.py) as the SMTP next hop: every message is
   in Postfix's log (smtpd "client=", cleanup "message-id=", pipe "status=sent" per recipient),
   the queue id in dotspool's delivery line is Postfix's, the bytes handed on are dotspool's
   stored bytes after Postfix's Received header; a recipient Postfix refuses (550 at RCPT)
   fails with a DSN that Postfix also takes.
2. Dovecot LMTP over its unix socket: Maildir files equal to the stored bytes apart from the
   headers Dovecot adds; an unknown user (550 at RCPT) fails with a DSN delivered to the sender's
   Maildir.
3. A second dotspool as the LMTP next hop (--lmtp-listen): its `dotspool-ctl cat` is its own
   Received header + the first one's stored bytes, envelope carried over.
4. smtp-sink: 60 messages from 4 client threads, counted by smtp-sink and by the metrics.
5. pipe: tests/peer/pipe_deliver.py behind a small wrapper that picks the exit code by
   recipient: exit 0 delivered (envelope in argv, DS_* environment, bytes), 75 deferred and
   tried again, 67 failed with a DSN (the program's first line of output is the reason), and a
   program over --deliver-timeout-pipe-s (8 s: Python starts slowly on a busy machine) killed and deferred. (A program killed after it
   stored the message runs again: at least once, so the time limit is not made tight.)
"""

import json
import os
import re
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib, peers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PIPE_DELIVER = os.path.join(HERE, "..", "peer", "pipe_deliver.py")


def by_sender(msgs):
    return {m["sender"]: m for m in msgs}


def send_all(srv, msgs):
    for m in msgs:
        m["id"] = dlvlib.send_ex(srv.port, m["sender"], m["rcpts"], m["body"], m.get("mail_opts", ()),
                                 m.get("rcpt_opts"))


def mk(tag, rcpts, size, **kw):
    d = {"tag": tag, "sender": "%s@client.test" % tag, "rcpts": rcpts,
         "body": dlvlib.body(tag, size, dots=True, eight_bit=kw.pop("eight", False))}
    d.update(kw)
    return d


def part_postfix(t, tmp):
    print("-- Postfix smtpd")
    port = peers.free_port()
    pf = peers.Postfix(tmp, port, rcpt_replies={"nouser@dest.test": "550 5.1.1 <nouser@dest.test>: no such user"})
    pf.start()
    srv = dlvlib.DServer(t.build, ["smtp://127.0.0.1:%d" % port], threads=2)
    srv.start()
    try:
        msgs = [mk("pf%d" % i, ["a%d@dest.test" % i, "b%d@other.test" % i][:1 + i % 2], 500 + 20000 * i,
                   eight=(i == 2), mail_opts=["BODY=8BITMIME"] if i == 2 else []) for i in range(6)]
        msgs.append(mk("pfbad", ["ok@dest.test", "nouser@dest.test"], 1500))
        send_all(srv, msgs)
        # 7 messages, and the DSN for pfbad (to pfbad@client.test).
        handed = pf.wait_messages(8, timeout=20)
        dlvlib.wait_for("dotspool logged 8 deliveries", lambda: len(srv.events("delivery")) >= 8, 10)
        time.sleep(0.5)
        handed = pf.messages()
        mids = pf.message_ids()
        statuses = pf.statuses()
        queued = pf.queued()
        lines = dlvlib.by_queue_id(srv.events("delivery"))
        for m in msgs:
            want_rcpts = [r for r in m["rcpts"] if r != "nouser@dest.test"]
            got = [h for h in handed if h.sender == m["sender"]]
            t.eq(sorted(r for h in got for r in h.recipients), sorted(want_rcpts),
                 "postfix: %s: each recipient handed on once" % m["tag"])
            stored = srv.cat(m["id"])
            pqid = got[0].queue_id
            for h in got:
                dlvlib.check_bytes(t, peers.Postfix.strip_received(h.data), stored,
                                   "postfix: %s: bytes after Postfix's Received = dotspool's stored" % m["tag"])
            t.eq(mids.get("<%s@client.test>" % m["tag"]), [pqid], "postfix log: %s message-id -> its queue id"
                 % m["tag"])
            t.check(pqid in queued, "postfix log: %s accepted by smtpd (client=)" % m["tag"])
            for r in want_rcpts:
                t.check((pqid, r, "sent") in statuses, "postfix log: %s %s status=sent" % (m["tag"], r))
            ln = lines.get(m["id"], [])
            t.eq(len(ln), 1, "dotspool: one delivery line for %s" % m["tag"], repr(ln))
            if m["tag"] != "pfbad":  # a mixed outcome shows the refusal instead
                t.check(("queued as %s" % pqid) in ln[0].get("reply", ""),
                        "dotspool's delivery line carries Postfix's queue id %s" % pqid, repr(ln[0]))
            if m["tag"] == "pfbad":
                t.eq((ln[0]["delivered"], ln[0]["failed"], ln[0]["code"]), ("1", "1", "550"),
                     "pfbad: 1 delivered, 1 failed at RCPT with 550", repr(ln[0]))
        dsn = [h for h in handed if h.sender == "" and h.recipients == ["pfbad@client.test"]]
        t.eq(len(dsn), 1, "postfix: one DSN for pfbad, from <>")
        d = dsn[0].data
        t.check(b"report-type=delivery-status" in d and b"Final-Recipient: rfc822; nouser@dest.test" in d
                and b"Status: 5.1.1" in d and b"no such user" in d, "the DSN names nouser@ with 5.1.1",
                d[:2500])
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}),
             sum(len(m["rcpts"]) for m in msgs) - 1 + 1, "metrics: delivered = recipients - 1 + the DSN")
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "failed"}), 1, "metrics: 1 failed")
        left = pf.wait_removed([h.queue_id for h in handed], timeout=10)
        t.eq(left, [], "postfix finished every message before it stops")
    finally:
        srv.stop()
        t.eq(pf.stop(), [], "postfix stopped cleanly")


def part_dovecot(t, tmp):
    print("-- Dovecot LMTP (unix socket)")
    sock = os.path.join(tmp, "dovecot-lmtp.sock")
    users = ["u%d@dest.test" % i for i in range(4)] + ["dvbad@client.test"]
    dv = peers.DovecotLmtp(tmp, sock, users=users)
    dv.start()
    srv = dlvlib.DServer(t.build, ["lmtp:%s" % sock], threads=2)
    srv.start()
    try:
        msgs = [mk("dv%d" % i, users[:1 + i % 4], 300 + 37000 * i, eight=(i == 1),
                   mail_opts=["BODY=8BITMIME"] if i == 1 else []) for i in range(5)]
        msgs.append(mk("dvbad", ["u0@dest.test", "nosuch@dest.test"], 2000))
        send_all(srv, msgs)
        want = {}
        for m in msgs:
            for r in m["rcpts"]:
                if r != "nosuch@dest.test":
                    want.setdefault(r, []).append(m)
        total = sum(len(v) for v in want.values()) + 1  # + the DSN to dvbad@client.test
        dlvlib.wait_for("dovecot Maildirs", lambda: sum(len(dv.messages(u)) for u in users) >= total, 20)
        time.sleep(0.5)
        for u in users[:4]:
            got = dv.messages(u)
            t.eq(len(got), len(want.get(u, [])), "dovecot: %s has one file per message for it" % u)
            for d in got:
                body = dv.strip_added(d.data)
                tag = re.search(rb"Message-ID: <(\w+)@client\.test>", body).group(1).decode()
                m = [x for x in msgs if x["tag"] == tag][0]
                t.check(u in m["rcpts"], "dovecot: %s got %s, which is for it" % (u, tag))
                dlvlib.check_bytes(t, body, srv.cat(m["id"]), "dovecot: %s %s equal to the spool's" % (u, tag))
                t.check(d.data.startswith(b"Return-Path: <%s>\r\n" % m["sender"].encode()),
                        "dovecot: Return-Path is the envelope sender", d.data[:100])
        bounce = dv.messages("dvbad@client.test")
        t.eq(len(bounce), 1, "dovecot: one DSN for the unknown user, in the sender's Maildir")
        b = bounce[0].data
        t.check(b.startswith(b"Return-Path: <>\r\n"), "the DSN is from <>", b[:100])
        t.check(b"Final-Recipient: rfc822; nosuch@dest.test" in b and re.search(rb"Status: 5\.\d\.\d", b)
                and b"Diagnostic-Code: smtp; 550" in b, "the DSN names nosuch@ with 5.x.x and the 550", b[:2500])
        t.check("saved mail to INBOX" in dv.log_text(), "dovecot's log has the deliveries")
        ln = dlvlib.by_queue_id(srv.events("delivery"))
        t.check(all(len(ln.get(m["id"], [])) == 1 for m in msgs), "one delivery line per message")
    finally:
        srv.stop()
        t.eq(dv.stop(), [], "dovecot stopped cleanly")


def part_dotspool(t, tmp):
    print("-- a second dotspool over LMTP")
    lport = dslib.free_port()
    second = dlvlib.DServer(t.build, [], threads=2, lmtp=("127.0.0.1", lport))
    second.start()
    first = dlvlib.DServer(t.build, ["lmtp://127.0.0.1:%d" % lport], threads=2)
    first.start()
    try:
        msgs = [mk("ds%d" % i, ["x%d.%d@dest.test" % (i, k) for k in range(1 + i % 3)], 400 + 45000 * i,
                   eight=(i % 2 == 1), mail_opts=["BODY=8BITMIME"] if i % 2 else []) for i in range(6)]
        send_all(first, msgs)
        n = len(msgs)
        dlvlib.wait_for("the second dotspool has them", lambda: len(second.list()) >= n, 20)
        dlvlib.wait_for("the first logged them delivered",
                        lambda: len([e for e in first.events("delivery") if e["outcome"] == "delivered"]) >= n, 10)
        time.sleep(0.3)
        got = second.list()
        t.eq(len(got), n, "the second dotspool holds each message once")
        bys = {e["mail_from"]: e for e in got}
        for m in msgs:
            e = bys.get(m["sender"])
            t.check(e is not None, "second has %s" % m["tag"])
            t.eq(sorted(dslib.rcpt_addrs(e)), sorted(m["rcpts"]), "second: %s envelope recipients" % m["tag"])
            if m.get("mail_opts"):
                t.check("BODY=8BITMIME" in e.get("mail_params", ""), "second: %s BODY=8BITMIME" % m["tag"],
                        repr(e.get("mail_params")))
            stored2 = second.cat(e["id"])
            hdr, data = dslib.split_received(stored2)
            dlvlib.check_bytes(t, data, first.cat(m["id"]), "second's stored = its Received + first's stored (%s)"
                               % m["tag"])
            t.check(b"with LMTP" in hdr, "second's Received says LMTP", hdr)
        t.eq(first.metric("dotspool_deliveries_total", {"outcome": "delivered"}),
             sum(len(m["rcpts"]) for m in msgs), "first: delivered = recipients")
    finally:
        first.stop()
        second.stop()


def part_sink(t, tmp):
    print("-- smtp-sink")
    port = peers.free_port()
    sk = peers.SmtpSink(tmp, port=port)
    sk.start()
    srv = dlvlib.DServer(t.build, ["smtp://127.0.0.1:%d" % port], threads=2)
    srv.start()
    try:
        n_threads, per = 4, 15
        errs = []

        def client(k):
            try:
                for i in range(per):
                    dlvlib.send_ex(srv.port, "sink%d.%d@client.test" % (k, i), ["r%d@dest.test" % i],
                                   dlvlib.body("sink%d_%d" % (k, i), 2000 + 300 * i))
            except Exception as e:  # noqa: BLE001
                errs.append(repr(e))
        th = [threading.Thread(target=client, args=(k,)) for k in range(n_threads)]
        for x in th:
            x.start()
        for x in th:
            x.join(60)
        t.eq(errs, [], "every message accepted by dotspool")
        n = n_threads * per
        dlvlib.wait_for("smtp-sink counted %d" % n, lambda: sk.count() >= n, 20)
        time.sleep(0.5)
        t.eq(sk.count(), n, "smtp-sink counted each message once")
        t.eq(srv.metric("dotspool_deliveries_total", {"outcome": "delivered"}), n, "metrics: delivered = %d" % n)
    finally:
        srv.stop()
        t.eq(sk.stop(), [], "smtp-sink stopped cleanly")


WRAPPER = """#!/bin/sh
# Exit code by recipient, then the fixture (it stores the message first).
case " $DS_RECIPIENTS " in
  *tempfail*) export DS_PIPE_EXIT=75; echo "mailbox locked, try later" >&2 ;;
  *permfail*) export DS_PIPE_EXIT=67; echo "user unknown to the pipe" >&2 ;;
  *slow*) exec sleep 60 ;;
esac
mkdir -p "$DS_PIPE_OUT"
env | grep '^DS_' | sort > "$DS_PIPE_OUT/env.$DS_QUEUE_ID.$DS_ATTEMPT.$$"
exec {python} {fixture} "$@"
"""


def part_pipe(t, tmp):
    print("-- pipe: program")
    d = dslib.mkdtemp("ds-pipe-")
    out = os.path.join(d, "out")
    prog = os.path.join(d, "deliver.sh")
    with open(prog, "w") as f:
        f.write(WRAPPER.format(python=sys.executable, fixture=os.path.abspath(PIPE_DELIVER)))
    os.chmod(prog, 0o755)
    srv = dlvlib.DServer(t.build, ["pipe:%s" % prog], threads=2, extra=["--deliver-timeout-pipe-s", "8"],
                         env={"DS_PIPE_OUT": out})
    srv.start()
    try:
        msgs = [mk("p%d" % i, ["a%d@dest.test" % i, "b%d@dest.test" % i][:1 + i % 2], 300 + 50000 * i,
                   eight=(i == 1), mail_opts=["BODY=8BITMIME"] if i == 1 else []) for i in range(4)]
        temp = mk("ptemp", ["tempfail@dest.test"], 800)
        perm = mk("pperm", ["permfail@dest.test", "ok-too@dest.test"], 900,
                  rcpt_opts={"permfail@dest.test": ["NOTIFY=FAILURE"]})
        slow = mk("pslow", ["slow@dest.test"], 700)
        send_all(srv, msgs + [temp, perm, slow])

        def runs():
            res = []
            try:
                names = os.listdir(out)
            except FileNotFoundError:
                return res
            for n in sorted(names):
                if n.endswith(".json"):
                    with open(os.path.join(out, n)) as f:
                        j = json.load(f)
                    j["eml"] = os.path.join(out, n[:-5] + ".eml")
                    res.append(j)
            return res
        # The good ones, the permfail run and the DSN it causes, two tempfail runs, two slow
        # attempts deferred.
        dlvlib.wait_for("pipe runs", lambda: len([r for r in runs() if r["sender"] == "" ]) >= 1 and
                        len([r for r in runs() if r["sender"] == temp["sender"]]) >= 2, 20)
        dlvlib.wait_for("the slow program deferred",
                        lambda: len([e for e in srv.events("delivery") if e["queue_id"] == slow["id"]]) >= 1, 20)
        rs = runs()
        for m in msgs:
            got = [r for r in rs if r["sender"] == m["sender"]]
            t.eq(len(got), 1, "pipe: %s run once" % m["tag"])
            r = got[0]
            t.eq((r["queue_id"], sorted(r["recipients"]), r["exit"]), (m["id"], sorted(m["rcpts"]), 0),
                 "pipe: %s queue id, recipients (argv after --), exit 0" % m["tag"])
            t.eq(r["argv"][:3], ["-f", m["sender"], "--"], "pipe: %s argv -f SENDER -- RCPT..." % m["tag"])
            with open(r["eml"], "rb") as f:
                dlvlib.check_bytes(t, f.read(), srv.cat(m["id"]), "pipe: %s stdin = the stored bytes" % m["tag"])
        ln = dlvlib.by_queue_id(srv.events("delivery"))
        for m in msgs:
            t.eq([e["outcome"] for e in ln.get(m["id"], [])], ["delivered"], "pipe: %s logged delivered" % m["tag"])
            envs = [n for n in os.listdir(out) if n.startswith("env.%s." % m["id"])]
            t.eq(len(envs), 1, "pipe: %s: one run's environment" % m["tag"])
            with open(os.path.join(out, envs[0])) as f:
                env = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
            entry = dslib.entry_by_id(srv.list(), m["id"])
            t.eq({k: env.get(k) for k in ("DS_QUEUE_ID", "DS_SENDER", "DS_RECIPIENTS", "DS_SIZE", "DS_ATTEMPT",
                                          "DS_CLIENT_ADDR", "DS_HELO", "DS_PIPE_OUT")},
                 {"DS_QUEUE_ID": m["id"], "DS_SENDER": m["sender"], "DS_RECIPIENTS": " ".join(m["rcpts"]),
                  "DS_SIZE": str(len(srv.cat(m["id"]))), "DS_ATTEMPT": "1", "DS_CLIENT_ADDR": "127.0.0.1",
                  "DS_HELO": "client.test", "DS_PIPE_OUT": out},
                 "pipe: %s: DS_* environment (and dotspool's own, DS_PIPE_OUT)" % m["tag"])
            t.check(re.match(r"^\d+$", env.get("DS_RECEIVED_AT", "")) or env.get("DS_RECEIVED_AT", "")[:4] == "20",
                    "pipe: %s: DS_RECEIVED_AT set" % m["tag"], repr(env.get("DS_RECEIVED_AT")))
        # 75: deferred, tried again, still deferred.
        tl = ln.get(temp["id"], [])
        t.check(len(tl) >= 2 and all(e["outcome"] == "deferred" for e in tl), "pipe: exit 75 deferred, retried",
                repr(tl))
        t.check("mailbox locked" in tl[0].get("reply", ""), "pipe: the program's first line is the reason",
                repr(tl[0]))
        # 67: failed (both recipients of that run), one DSN through the pipe for the one that asked.
        pl = ln.get(perm["id"], [])
        t.eq([(e["outcome"], e["failed"]) for e in pl], [("failed", "2")], "pipe: exit 67 fails the run's recipients",
             repr(pl))
        t.check("user unknown to the pipe" in pl[0].get("reply", ""), "pipe: exit 67 reason from its output",
                repr(pl[0]))
        dsn = [r for r in rs if r["sender"] == ""]
        t.eq(len(dsn), 1, "pipe: one DSN run")
        t.eq(dsn[0]["recipients"], [perm["sender"]], "pipe: the DSN goes to the sender")
        with open(dsn[0]["eml"], "rb") as f:
            b = f.read()
        t.check(b"Final-Recipient: rfc822; permfail@dest.test" in b, "DSN names permfail@", b[:2000])
        t.check(b"Final-Recipient: rfc822; ok-too@dest.test" in b, "DSN names ok-too@ (NOTIFY default)",
                b[:2000])
        t.check(b"Status: 5." in b, "DSN status 5.x.x", b[:2000])
        # Over --deliver-timeout-pipe-s: killed, deferred (nothing stored by the fixture).
        sl = ln.get(slow["id"], [])
        t.check(all(e["outcome"] == "deferred" for e in sl) and len(sl) >= 1, "pipe: the slow program deferred",
                repr(sl))
        t.check(all(7500 <= int(e["duration_ms"]) < 12000 for e in sl), "pipe: killed after ~8 s", repr(sl))
        t.check(all("time limit" in e["reply"] for e in sl), "pipe: the reason says so", repr(sl))
        # Only these run lines exist (no duplicate of a delivered message).
        t.eq(len([r for r in rs if r["sender"] in [m["sender"] for m in msgs]]), len(msgs), "no duplicates")
        # Its retry (60 s sleep) may be running now: dotspool lets a running program finish
        # within its grace period (here the 8 s limit kills it first), then exits 0.
        t0 = time.monotonic()
        t.eq(srv.stop(timeout_s=15), 0, "pipe: dotspool stops cleanly (exit 0) with a program running")
        t.check(time.monotonic() - t0 < 12, "pipe: within the grace period (%.1f s)" % (time.monotonic() - t0))
    finally:
        srv.stop()


def main(t):
    tmp = peers.make_test_dir("ds-dlv-real-")
    try:
        for part in (part_postfix, part_dovecot, part_dotspool, part_sink, part_pipe):
            t0 = time.monotonic()
            part(t, tmp)
            print("  (%s: %.1f s)" % (part.__name__, time.monotonic() - t0))
    finally:
        if not os.environ.get("DS_KEEP"):
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept", tmp)


if __name__ == "__main__":
    dlvlib.enter_netns()
    dslib.run(main)
