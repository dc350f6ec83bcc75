#!/usr/bin/env python3
"""Self-test of tests/peer/peers.py and pipe_deliver.py: the real next hops of the delivery
tests (a private Postfix, Dovecot LMTP, smtp-sink, the pipe program), each started, fed by
Python's smtplib and stopped inside a loopback-only network namespace.

Needs root and scripts/deps.sh's packages; never skips (exit 0 pass, 1 fail). Also checks,
outside the namespace, that no system Postfix/Dovecot listens on ports 25/24.
"""

import json
import os
import shutil
import socket
import smtplib
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# Byte-exact bodies: CRLF lines (what dotspool stores), a leading dot, 8-bit text, a long line.
MSG1 = (b"From: <alice@example.org>\r\nTo: <bob@example.net>\r\nSubject: peers 1\r\n"
        b"Message-ID: <peers-1@example.org>\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n"
        b"caf\xc3\xa9 8-bit\r\nend\r\n")
MSG2 = (b"From: <>\r\nSubject: peers 2 (null sender)\r\nMessage-ID: <peers-2@example.org>\r\n"
        b"\r\n" + b"x" * 990 + b"\r\n" + b"".join(b"line %06d of a bigger body\r\n" % i
                                                   for i in range(6000)))
MSG3 = (b"From: <carol@example.org>\r\nSubject: peers 3\r\nMessage-ID: <peers-3@example.org>\r\n"
        b"\r\nthird\r\n")


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def host_checks():
    """Outside the namespace: the system instances deps.sh installed must not be serving."""
    listening = peers.listening_tcp_ports()
    check(25 not in listening, "something listens on port 25 (a system Postfix?)")
    check(24 not in listening, "something listens on port 24 (a system LMTP?)")
    for pidfile in ("/var/spool/postfix/pid/master.pid", "/run/dovecot/master.pid"):
        try:
            pid = int(open(pidfile).read().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid > 0 and os.path.exists("/proc/%d" % pid):
            comm = open("/proc/%d/comm" % pid).read().strip()
            check(comm not in ("master", "dovecot"), "system instance running: %s (pid %d, %s)"
                  % (pidfile, pid, comm))
    print("host: nothing on ports 25/24, no system postfix/dovecot master running")


def test_netns(tmp):
    check(peers.in_netns(), "not re-executed in a namespace")
    with open("/proc/net/dev") as f:
        ifaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    check(ifaces == ["lo"], "interfaces %s" % ifaces)
    # No route out: a UDP "connect" to a public address fails at once (no DNS either).
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 53))
        raise Fail("a route out of the namespace exists")
    except OSError:
        pass
    finally:
        s.close()
    # loopback works
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        socket.create_connection(srv.getsockname(), timeout=2).close()
    print("netns: lo only, up, no route out")


def smtp_send(port, sender, rcpts, msg):
    """One transaction; returns (rcpt replies {rcpt: code}, final reply text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.test")
        code, resp = s.mail(sender)
        check(code == 250, "MAIL: %d %r" % (code, resp))
        rr = {r: s.rcpt(r)[0] for r in rcpts}
        code, resp = s.data(msg)
        check(code == 250, "DATA: %d %r" % (code, resp))
        return rr, resp.decode()


def lmtp_send(path, sender, rcpts, msg):
    """One LMTP transaction over a unix socket; returns ({rcpt: RCPT code},
    {accepted rcpt: its reply code after the data}). smtplib.LMTP reads only the first of
    LMTP's per-recipient replies, so the others are read here with getreply()."""
    s = smtplib.LMTP(path, timeout=10)
    try:
        s.ehlo("client.test")
        check(s.mail(sender)[0] == 250, "LMTP MAIL")
        rr = {r: s.rcpt(r)[0] for r in rcpts}
        ok = [r for r in rcpts if rr[r] == 250]
        dr = {}
        if ok:
            dr[ok[0]] = s.data(msg)[0]
            for r in ok[1:]:
                dr[r] = s.getreply()[0]
        s.quit()
        return rr, dr
    finally:
        s.close()


def test_postfix(tmp):
    port = peers.free_port()
    pf = peers.Postfix(tmp, port, rcpt_replies={"bad@example.net": "550 5.1.1 no such user",
                                                "later@example.net": "450 4.2.0 try later"})
    try:
        pf.start()
        print("postfix: started in %.3f s on 127.0.0.1:%d (%s)" % (pf.startup_s, port, pf.dir))
        sent = []
        rr, final = smtp_send(port, "alice@example.org", ["bob@example.net", "bad@example.net",
                                                          "later@example.net", "dan@example.net"],
                              MSG1)
        check(rr == {"bob@example.net": 250, "bad@example.net": 550, "later@example.net": 450,
                     "dan@example.net": 250}, "rcpt %s" % rr)
        sent.append((final, "alice@example.org", ["bob@example.net", "dan@example.net"], MSG1))
        _, final = smtp_send(port, "", ["bob@example.net"], MSG2)
        sent.append((final, "", ["bob@example.net"], MSG2))
        # Both handed on before the restarts below (a kill -9 in mid-delivery would deliver
        # again: at least once, as a real next hop does).
        qids = [f.split("queued as ")[1].split()[0] for f, _, _, _ in sent]
        check(pf.wait_removed(qids, timeout=15) == [], "first 2 messages not done")

        # A restart on the same port (a next hop down, then up), then a kill -9 and a start.
        check(pf.stop() == [], "postfix needed SIGKILL")
        check(pf.pids() == [], "postfix processes left after stop: %s" % pf.pids())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            raise Fail("postfix port still open after stop")
        except ConnectionRefusedError:
            pass
        pf.start()
        pf.kill()
        check(pf.pids() == [], "postfix processes left after kill")
        pf.start()
        _, final = smtp_send(port, "carol@example.org", ["eve@example.com"], MSG3)
        sent.append((final, "carol@example.org", ["eve@example.com"], MSG3))

        msgs = pf.wait_messages(len(sent), timeout=15)
        time.sleep(0.2)  # nothing more may come
        msgs = pf.messages()
        check(len(msgs) == len(sent), "postfix handed on %d of %d messages; log:\n%s"
              % (len(msgs), len(sent), pf.log_text()))
        queued = pf.queued()
        mids = pf.message_ids()
        statuses = pf.statuses()
        for final, sender, rcpts, body in sent:
            check("queued as " in final, "final reply %r" % final)
            qid = final.split("queued as ")[1].split()[0]
            check(qid in queued, "queue id %s not in smtpd's log lines" % qid)
            mid = [ln for ln in body.split(b"\r\n") if ln.startswith(b"Message-ID:")][0]
            mid = mid.split(b":", 1)[1].strip().decode()
            check(mids.get(mid) == [qid], "message-id %s -> %s, want [%s]" % (mid, mids.get(mid), qid))
            got = [m for m in msgs if m.queue_id == qid]
            check(len(got) == 1, "queue id %s delivered %d times" % (qid, len(got)))
            m = got[0]
            check(m.sender == sender and sorted(m.recipients) == sorted(rcpts),
                  "envelope %r %r, want %r %r" % (m.sender, m.recipients, sender, rcpts))
            check(peers.Postfix.strip_received(m.data) == body,
                  "bytes differ for %s (%d vs %d)" % (qid, len(m.data), len(body)))
            check(b"id " + qid.encode() in m.data.split(b"\r\n\r\n")[0], "Received lacks id")
            for r in rcpts:
                check((qid, r, "sent") in statuses, "no status=sent for %s %s" % (qid, r))
        print("postfix: %d messages, bytes equal after its Received header, log: %d queued, "
              "%d status=sent" % (len(sent), len(queued), len(statuses)))
    finally:
        pf.stop()
    check(pf.pids() == [], "postfix processes left: %s" % pf.pids())


def test_dovecot(tmp):
    sock = os.path.join(tmp, "lmtp.sock")
    dv = peers.DovecotLmtp(tmp, sock, users=["bob@example.net", "carol@example.net"])
    try:
        dv.start()
        print("dovecot: started in %.3f s on %s (%s)" % (dv.startup_s, sock, dv.dir))
        rr, dr = lmtp_send(sock, "alice@example.org",
                           ["bob@example.net", "nosuch@example.net", "carol@example.net"], MSG1)
        check(rr == {"bob@example.net": 250, "nosuch@example.net": 550,
                     "carol@example.net": 250}, "RCPT replies %s" % rr)
        check(dr == {"bob@example.net": 250, "carol@example.net": 250}, "data replies %s" % dr)
        rr, dr = lmtp_send(sock, "", ["bob@example.net"], MSG2)
        check(dr == {"bob@example.net": 250}, "data replies %s" % dr)
        bob = dv.messages("bob@example.net")
        carol = dv.messages("carol@example.net")
        check(len(bob) == 2 and len(carol) == 1, "bob %d carol %d" % (len(bob), len(carol)))
        check(dv.all_users() == ["bob@example.net", "carol@example.net"],
              "maildirs %s" % dv.all_users())
        # Multi-recipient transaction: Return-Path + Received; single: + Delivered-To.
        check(bob[0].data.startswith(b"Return-Path: <alice@example.org>\r\nReceived: "),
              "added headers %r" % bob[0].data[:80])
        check(bob[1].data.startswith(b"Return-Path: <>\r\nDelivered-To: bob@example.net\r\n"
                                     b"Received: "), "added headers %r" % bob[1].data[:80])
        check(dv.strip_added(bob[0].data) == MSG1, "bob msg1 bytes differ")
        check(dv.strip_added(carol[0].data) == MSG1, "carol msg1 bytes differ")
        check(dv.strip_added(bob[1].data) == MSG2, "bob msg2 bytes differ")
        check("saved mail to INBOX" in dv.log_text(), "no delivery in dovecot's log")
        check(dv.stop() == [], "dovecot needed SIGKILL")
        check(dv.pids() == [], "dovecot processes left")
        # Accept-everyone variant, restarted after a kill -9.
        sock2 = os.path.join(tmp, "lmtp2.sock")
        dv2 = peers.DovecotLmtp(tmp, sock2)
        try:
            dv2.start()
            dv2.kill()
            dv2.start()
            rr, dr = lmtp_send(sock2, "a@example.org", ["anyone@example.com"], MSG3)
            check(dr == {"anyone@example.com": 250}, "open userdb: %s %s" % (rr, dr))
            got = dv2.messages("anyone@example.com")
            check(len(got) == 1 and dv2.strip_added(got[0].data) == MSG3, "open userdb bytes")
        finally:
            dv2.stop()
        check(dv2.pids() == [], "dovecot (2) processes left")
        print("dovecot: 550 for an unknown user, Maildirs byte-equal after Return-Path/"
              "[Delivered-To]/Received")
    finally:
        dv.stop()
    check(dv.pids() == [], "dovecot processes left: %s" % dv.pids())


def test_smtp_sink(tmp):
    port = peers.free_port()
    sk = peers.SmtpSink(tmp, port=port)
    try:
        sk.start()
        print("smtp-sink: started in %.3f s on 127.0.0.1:%d" % (sk.startup_s, port))
        n = 0
        for _ in range(4):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                for _ in range(10):
                    s.sendmail("a@example.org", ["b@example.net", "c@example.net"], MSG3)
                    n += 1
        deadline = time.monotonic() + 5
        while sk.count() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        check(sk.count() == n, "smtp-sink counted %d, sent %d (%r)"
              % (sk.count(), n, sk.output()[-200:]))
        check(sk.counters().get("sess", 0) >= 4, "sessions %s" % sk.counters())
    finally:
        sk.stop()
    check(sk.pids() == [], "smtp-sink processes left")
    # LMTP over a unix socket, dumping messages.
    path = os.path.join(tmp, "sink.sock")
    sk2 = peers.SmtpSink(tmp, unix_path=path, lmtp=True, dump=True)
    try:
        sk2.start()
        rr, dr = lmtp_send(path, "a@example.org", ["x@example.net", "y@example.net"], MSG1)
        check(dr == {"x@example.net": 250, "y@example.net": 250}, "sink lmtp %s" % dr)
        deadline = time.monotonic() + 5
        while not sk2.dumps() and time.monotonic() < deadline:
            time.sleep(0.05)
        d = sk2.dumps()
        check(len(d) == 1 and b"X-Rcpt-Args: <y@example.net>" in d[0].data
              and b"\n.leading dot\n" in d[0].data, "sink dump %r" % (d[:1],))
    finally:
        sk2.stop()
    check(sk2.pids() == [], "smtp-sink (lmtp) processes left")
    print("smtp-sink: %d messages counted, LMTP on a unix socket with a dump" % n)


def run_pipe(env_extra, argv, data):
    env = dict(os.environ, **env_extra)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, os.path.join(HERE, "pipe_deliver.py")] + argv,
                       input=data, env=env, capture_output=True, timeout=20)
    return p.returncode, time.monotonic() - t0


def pipe_outputs(out):
    res = []
    for name in sorted(os.listdir(out)):
        if name.endswith(".json"):
            meta = json.load(open(os.path.join(out, name)))
            data = open(os.path.join(out, name[:-5] + ".eml"), "rb").read()
            res.append((meta, data))
    return res


def test_pipe(tmp):
    out = os.path.join(tmp, "pipe-out")
    base = {"DS_PIPE_OUT": out}
    # env envelope
    rc, _ = run_pipe(dict(base, DS_SENDER="a@example.org", DS_RECIPIENTS="b@x.net c@y.net",
                          DS_QUEUE_ID="Q1"), [], MSG1)
    check(rc == 0, "pipe rc %d" % rc)
    # argv envelope wins over env; a tempfail exit; a null sender
    rc, _ = run_pipe(dict(base, DS_SENDER="ignored@x", DS_RECIPIENTS="ignored@x",
                          DS_QUEUE_ID="Q2", DS_PIPE_EXIT="75"), ["-f", "", "--", "d@z.org"], MSG2)
    check(rc == 75, "pipe tempfail rc %d" % rc)
    # sleep, and no store
    rc, took = run_pipe(dict(base, DS_QUEUE_ID="Q3", DS_PIPE_SLEEP="0.3", DS_PIPE_STORE="0"),
                        ["-f", "s@x", "r@y"], MSG3)
    check(rc == 0 and took >= 0.3, "pipe sleep rc %d took %.2f" % (rc, took))
    # no output directory is a configuration error, not a silent success
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_PIPE")}
    p = subprocess.run([sys.executable, os.path.join(HERE, "pipe_deliver.py"), "r@y"],
                       input=MSG3, env=env, capture_output=True, timeout=20)
    check(p.returncode == 78, "no DS_PIPE_OUT rc %d" % p.returncode)
    got = pipe_outputs(out)
    check(len(got) == 2, "pipe outputs %d" % len(got))
    (m1, d1), (m2, d2) = sorted(got, key=lambda x: x[0]["queue_id"])
    check(m1["sender"] == "a@example.org" and m1["recipients"] == ["b@x.net", "c@y.net"]
          and m1["queue_id"] == "Q1" and d1 == MSG1, "pipe 1 %r" % m1)
    check(m2["sender"] == "" and m2["recipients"] == ["d@z.org"] and m2["exit"] == 75
          and d2 == MSG2, "pipe 2 %r" % m2)
    print("pipe_deliver.py: env and argv envelopes, exit 75, sleep, no-store")


def leftover_processes(tmp):
    """Any process whose command line or cwd mentions the test directory."""
    left = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            cmd = open("/proc/%s/cmdline" % d, "rb").read().replace(b"\0", b" ").decode()
            cwd = os.readlink("/proc/%s/cwd" % d)
        except OSError:
            continue
        if tmp in cmd or cwd.startswith(tmp):
            left.append((int(d), cmd))
    return left


def main():
    if os.geteuid() != 0:
        print("FAIL: peers_selftest needs root (private Postfix/Dovecot, network namespace)")
        return 1
    if not peers.in_netns():
        try:
            host_checks()
        except Fail as e:
            print("FAIL: %s" % e)
            return 1
    peers.netns_enter()  # outside: re-executes this script in the namespace; inside: lo up
    t0 = time.monotonic()
    tmp = peers.make_test_dir("dspeers-test-")
    failed = []
    for name, fn in (("netns", test_netns), ("pipe", test_pipe), ("postfix", test_postfix),
                     ("dovecot", test_dovecot), ("smtp_sink", test_smtp_sink)):
        try:
            fn(tmp)
        except Exception as e:
            failed.append(name)
            print("FAIL %s: %s" % (name, e))
            if not isinstance(e, Fail):
                traceback.print_exc()
    time.sleep(0.1)
    left = leftover_processes(tmp)
    if left:
        failed.append("leftovers")
        print("FAIL: processes left: %s" % left)
    print("took %.1f s" % (time.monotonic() - t0))
    if failed:
        print("FAILED: %s (kept %s)" % (", ".join(failed), tmp))
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
