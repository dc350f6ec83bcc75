#!/usr/bin/env python3
"""RFC 1047 gap dedup (issue 16) end to end, through the cutting proxy (cutproxy.py).

A message whose 250 the proxy swallows (then resets both sides) is at risk;
its retry (same envelope, same bytes) gets "250 2.0.0 Ok: already queued as
ID" with the original's id and is not stored, over SMTP DATA, BDAT, LMTP and
PRDR, on either of two workers, and after a kill -9 and restart between the
cut and the retry. Nothing else is ever suppressed: the same content sent
twice with both 250s read, the same body to another recipient, the same
envelope and size with one byte changed, a resend after the 250 was read and
a further command sent, a retry after the window, and everything with
--gap-dedup-window-s 0 are all stored. Copies are counted per Message-ID in
the spool (dotspool-ctl cat), and the metrics must agree.
"""
import os
import re
import smtplib
import socket
import sys
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)

import dslib  # noqa: E402
from cutproxy import CutProxy  # noqa: E402


def message(tag, body=b"hello\r\n"):
    mid = "<%s.%s@gap.example>" % (tag, uuid.uuid4().hex[:12])
    data = (b"From: s@gap.example\r\nTo: r@localhost\r\nSubject: " + tag.encode() + b"\r\nMessage-ID: " +
            mid.encode() + b"\r\n\r\n" + body)
    return mid, data


def smtp_send(port, data, frm="s@gap.example", rcpts=("r@localhost",), quit=True, mail_opts=()):
    """One transaction with smtplib: (code, text) of the data reply; raises if the connection dies."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    s.ehlo("client.example")
    code, resp = s.mail(frm, list(mail_opts))
    assert code == 250, resp
    for r in rcpts:
        code, resp = s.rcpt(r)
        assert code == 250, resp
    code, resp = s.data(data)
    if quit:
        s.quit()
    else:
        s.sock.close()
    return code, resp.decode()


def raw_send(port, data, frm="s@gap.example", rcpts=("r@localhost",), lmtp=False, bdat=False, prdr=False):
    """Exact protocol: returns the list of replies after the data (LMTP/PRDR: several); raises on a cut."""
    c = dslib.RawSMTP("127.0.0.1", port)
    code, _ = c.reply()
    assert code == 220
    code, _ = c.cmd(("LHLO" if lmtp else "EHLO") + " client.example")
    assert code == 250
    code, t = c.cmd("MAIL FROM:<%s>%s" % (frm, " PRDR" if prdr else ""))
    assert code == 250, t
    for r in rcpts:
        code, t = c.cmd("RCPT TO:<%s>" % r)
        assert code == 250, t
    if bdat:
        half = len(data) // 2
        c.send(b"BDAT %d\r\n" % half + data[:half])
        code, t = c.reply()
        assert code == 250, t
        c.send(b"BDAT %d LAST\r\n" % (len(data) - half) + data[half:])
    else:
        code, t = c.cmd("DATA")
        assert code == 354, t
        stuffed = re.sub(rb"(?m)^\.", b"..", data)
        c.send(stuffed + b".\r\n")
    n = len(rcpts) if lmtp else (len(rcpts) + 2 if prdr else 1)
    replies = [c.reply() for _ in range(n)]
    c.quit()
    return replies


def cut_send(fn):
    """Run a send that the proxy cuts: it must fail with a lost connection."""
    try:
        r = fn()
    except (smtplib.SMTPServerDisconnected, ConnectionError, OSError, EOFError) as e:
        return repr(e)
    raise dslib.Fail("expected the proxy to cut this transaction, got %r" % (r,))


class Metrics:
    def __init__(self, port):
        self.url = "http://127.0.0.1:%d/metrics" % port

    def get(self, name):
        text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        m = re.search(r"(?m)^%s (\d+)$" % re.escape(name), text)
        return int(m.group(1)) if m else None

    def wait(self, name, want, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self.get(name) or 0) >= want:
                return
            time.sleep(0.02)
        raise dslib.Fail("%s did not reach %d (is %r)" % (name, want, self.get(name)))


copies = dslib.message_copies


def queued_id(text):
    m = re.search(r"queued as (\w+)", text)
    return m.group(1) if m else None


def main(t):
    mport = dslib.free_port()
    lport = dslib.free_port()
    srv = t.server(threads=2, extra=["--metrics", "127.0.0.1:%d" % mport, "--lmtp-listen",
                                     "127.0.0.1:%d" % lport])
    srv.start()
    met = Metrics(mport)
    want = {}  # Message-ID -> copies expected
    at_risk = 0
    suppressed = 0
    # Every message the proxies see is numbered; these are cut.
    px = CutProxy(("127.0.0.1", srv.port), cut=set()).start()
    lpx = CutProxy(("127.0.0.1", lport), cut=set(), lmtp=True).start()

    def cut_next(p):
        p.cut_set.add(p.messages + 1)

    try:
        # 1. SMTP DATA: cut, retry -> already queued as the original's id; then, once that
        # reply was read and the entry cleared, the same again is a new message (stored).
        mid, data = message("smtp")
        cut_next(px)
        print("  cut:", cut_send(lambda: smtp_send(px.port, data)))
        at_risk += 1
        met.wait("dotspool_gap_at_risk_total", at_risk)
        orig = [e["id"] for e in srv.list()]
        t.eq(len(orig), 1, "the cut message is stored once")
        code, text = smtp_send(px.port, data)
        suppressed += 1
        t.check(code == 250 and "already queued as" in text and queued_id(text) == orig[0],
                "retry answered '250 ... already queued as %s'" % orig[0], text)
        code, text = smtp_send(px.port, data)
        t.check(code == 250 and "already" not in text, "after the retry's 250 was read: stored again", text)
        want[mid] = 2

        # 2. Same content twice, both 250s read: both stored.
        mid, data = message("twice")
        for _ in range(2):
            code, text = smtp_send(srv.port, data)
            t.check(code == 250 and "already" not in text, "identical resend with the 250 read is stored", text)
        want[mid] = 2

        # 3. At risk, then the same body to another recipient: stored; the true retry still matches.
        mid, data = message("otherrcpt")
        cut_next(px)
        cut_send(lambda: smtp_send(px.port, data))
        at_risk += 1
        met.wait("dotspool_gap_at_risk_total", at_risk)
        code, text = smtp_send(px.port, data, rcpts=("other@localhost",))
        t.check("already" not in text, "same body to another recipient is stored", text)
        code, text = smtp_send(px.port, data, rcpts=("r@localhost", "other@localhost"))
        t.check("already" not in text, "same body to a superset of recipients is stored", text)
        code, text = smtp_send(px.port, data)
        suppressed += 1
        t.check("already queued" in text, "the true retry is still suppressed", text)
        want[mid] = 3

        # 4. Same envelope and size, one byte different after the first 1024 (the set's key has
        # the head): found, compared byte for byte, stored.
        mid, data = message("onebyte", b"filler line\r\n" * 100 + b"hello A\r\n")
        cut_next(px)
        cut_send(lambda: smtp_send(px.port, data))
        at_risk += 1
        met.wait("dotspool_gap_at_risk_total", at_risk)
        code, text = smtp_send(px.port, data.replace(b"hello A", b"hello B"))
        t.check("already" not in text, "same envelope and size, one byte changed: stored", text)
        t.check((met.get("dotspool_gap_compare_miss_total") or 0) >= 1, "the byte compare said no")
        want[mid] = 2  # the variant has the same Message-ID

        # 5. 250 read and a further command sent, then the connection dropped: not at risk.
        mid, data = message("readthen")
        s = smtplib.SMTP("127.0.0.1", srv.port, timeout=10)
        s.ehlo("client.example")
        s.sendmail("s@gap.example", ["r@localhost"], data)
        s.noop()
        s.sock.close()
        time.sleep(0.3)
        code, text = smtp_send(srv.port, data)
        t.check("already" not in text, "resend after 250 read + NOOP + drop is stored", text)
        want[mid] = 2

        # 6. BDAT (CHUNKING): cut at the reply to BDAT LAST, retry.
        mid, data = message("bdat", b"chunked body\r\n" * 50)
        cut_next(px)
        cut_send(lambda: raw_send(px.port, data, bdat=True))
        at_risk += 1
        met.wait("dotspool_gap_at_risk_total", at_risk)
        r = raw_send(px.port, data, bdat=True)
        suppressed += 1
        t.check(r[0][0] == 250 and "already queued" in r[0][1], "BDAT retry suppressed", repr(r))
        want[mid] = 1

        # 7. PRDR: the proxy swallows the 353 and everything after it.
        mid, data = message("prdr")
        cut_next(px)
        cut_send(lambda: raw_send(px.port, data, rcpts=("r@localhost", "q@localhost"), prdr=True))
        at_risk += 1
        met.wait("dotspool_gap_at_risk_total", at_risk)
        r = raw_send(px.port, data, rcpts=("r@localhost", "q@localhost"), prdr=True)
        suppressed += 1
        t.check(r[0][0] == 353 and r[-1][0] == 250 and "already queued" in r[-1][1], "PRDR retry suppressed",
                repr(r))
        want[mid] = 1

        # 8. LMTP: every per-recipient reply swallowed; the retry gets one "already queued" each.
        mid, data = message("lmtp")
        cut_next(lpx)
        cut_send(lambda: raw_send(lpx.port, data, rcpts=("r@localhost", "q@localhost"), lmtp=True))
        at_risk += 1
        met.wait("dotspool_gap_at_risk_total", at_risk)
        r = raw_send(lpx.port, data, rcpts=("q@localhost", "r@localhost"), lmtp=True)
        suppressed += 1
        t.check(len(r) == 2 and all(c == 250 and "already queued" in x for c, x in r),
                "LMTP retry (recipients in another order): one 'already queued' per recipient", repr(r))
        want[mid] = 1

        # 8b. LMTP, a client that read some replies retries the others: a subset matches; a
        # recipient the original did not have makes it a new message.
        mid, data = message("lmtpsub")
        cut_next(lpx)
        cut_send(lambda: raw_send(lpx.port, data, rcpts=("a@localhost", "b@localhost", "c@localhost"), lmtp=True))
        at_risk += 1
        met.wait("dotspool_gap_at_risk_total", at_risk)
        r = raw_send(lpx.port, data, rcpts=("a@localhost", "d@localhost"), lmtp=True)
        t.check(all("already" not in x for _, x in r), "LMTP retry with a new recipient is stored", repr(r))
        r = raw_send(lpx.port, data, rcpts=("c@localhost", "b@localhost"), lmtp=True)
        suppressed += 1
        t.check(len(r) == 2 and all(c == 250 and "already queued" in x for c, x in r),
                "LMTP retry to a subset of the recipients (b, c of a, b, c) suppressed", repr(r))
        want[mid] = 2

        t.eq(met.get("dotspool_gap_suppressed_total"), suppressed, "suppressed retries counted")
        deadline = time.monotonic() + 5
        while True:  # the logger thread writes on its own schedule
            log = srv.log_text() or ""
            if log.count("event=gap_retry_suppressed") >= suppressed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        t.check(log.count("event=gap_retry_suppressed") == suppressed and
                len(re.findall(r"event=gap_retry_suppressed queue_id=\w+ retry_id=\w+", log)) == suppressed,
                "one log line per suppression, naming both transactions", log[-3000:])

        # 9. Restart between the cut and the retry (kill -9: the AT_RISK record is what survives).
        mid, data = message("restart")
        cut_next(px)
        cut_send(lambda: smtp_send(px.port, data))
        at_risk += 1
        met.wait("dotspool_gap_at_risk_total", at_risk)
        time.sleep(1.0)  # its record rides the next group flush
        srv.kill()
        srv.start()
        # Still at risk: "onebyte" (its retry never came) and this one; the others were cleared.
        t.check("2 at-risk message(s) loaded" in (srv.log_text() or ""), "the restart loaded the at-risk set",
                srv.log())
        code, text = smtp_send(px.port, data)
        t.check("already queued" in text, "retry after kill -9 and restart suppressed", text)
        want[mid] = 1

        got = copies(srv)
        for m, n in want.items():
            t.eq(got.get(m, 0), n, "copies of %s in the spool" % m)
        r = srv.verify()
        t.eq(r.returncode, 0, "dotspool-ctl verify", r.stdout[-2000:])
    finally:
        px.stop()
        lpx.stop()
        srv.stop()

    # 12. A crash with a 250 whose fate is open (sent, the client silent): after kill -9 the
    # commits after the lane's last watermark are at risk (fingerprinted from the stored copy);
    # a message confirmed before that watermark is not. A clean stop leaves no such tail.
    s3 = t.server(threads=1)
    s3.start()
    try:
        mid_ok, data_ok = message("confirmed")
        smtp_send(s3.port, data_ok)
        time.sleep(2.5)  # a watermark passes it (written within about a second)
        mid_open, data_open = message("open")
        c = dslib.RawSMTP("127.0.0.1", s3.port)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<s@gap.example>")
        c.cmd("RCPT TO:<r@localhost>")
        c.cmd("DATA")
        c.send(data_open + b".\r\n")
        code, text = c.reply()  # 250 read, nothing sent after it: its fate is open
        t.eq(code, 250, "the open message got its 250")
        time.sleep(2.5)  # a watermark is written with it open
        s3.kill()
        c.sock.close()
        s3.start()
        t.check("1 at risk from a crash" in (s3.log_text() or ""), "kill -9: the open message is at risk",
                s3.log())
        code, text = smtp_send(s3.port, data_open)
        t.check("already queued" in text and queued_id(text) == queued_id(c.transcript[-1]),
                "its retry after the crash is suppressed", text)
        code, text = smtp_send(s3.port, data_ok)
        t.check("already" not in text, "a message confirmed before the watermark is not at risk", text)
        s3.stop()
        s3.start()
        t.check("0 at risk from a crash" in (s3.log_text() or ""), "a clean stop leaves no tail at risk",
                s3.log())
        got = copies(s3)
        t.eq(got.get(mid_open, 0), 1, "the open message is stored once")
        t.eq(got.get(mid_ok, 0), 2, "the confirmed one twice")
    finally:
        s3.stop()

    # 13. --gap-dedup-all: every message is fingerprinted, so a resend after the sender's own
    # timeout (its 250 was read) is answered "already queued" too; other content is stored.
    s4 = t.server(threads=2, extra=["--gap-dedup-all", "true"])
    s4.start()
    try:
        mid, data = message("all")
        code, text = smtp_send(s4.port, data)
        first = queued_id(text)
        code, text = smtp_send(s4.port, data)
        t.check("already queued" in text and queued_id(text) == first,
                "--gap-dedup-all: a resend of a confirmed message is suppressed", text)
        code, text = smtp_send(s4.port, data.replace(b"hello", b"hallo"))
        t.check("already" not in text, "--gap-dedup-all: other bytes are stored", text)
        t.eq(copies(s4).get(mid, 0), 2, "--gap-dedup-all: original and the changed one stored")
    finally:
        s4.stop()

    # 10. After the window: stored. 11. Window 0 (off): every retry stored.
    for window, what in ((2, "after the window"), (0, "with --gap-dedup-window-s 0")):
        mport = dslib.free_port()
        s2 = t.server(threads=2, extra=["--gap-dedup-window-s", str(window), "--metrics", "127.0.0.1:%d" % mport])
        s2.start()
        p2 = CutProxy(("127.0.0.1", s2.port), cut={1}).start()
        try:
            mid, data = message("window%d" % window)
            cut_send(lambda: smtp_send(p2.port, data))
            if window:
                Metrics(mport).wait("dotspool_gap_at_risk_total", 1)
                time.sleep(window + 1)
            else:
                time.sleep(0.3)
            code, text = smtp_send(p2.port, data)
            t.check(code == 250 and "already" not in text, "retry %s is stored" % what, text)
            t.eq(copies(s2).get(mid, 0), 2, "two copies %s" % what)
        finally:
            p2.stop()
            s2.stop()


if __name__ == "__main__":
    dslib.run(main, "gap")
