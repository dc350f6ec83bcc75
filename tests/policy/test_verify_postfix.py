#!/usr/bin/env python3
"""Recipient verification against Postfix (issue 17 point 3): dotspool with
--verify-recipients a.test asks a private Postfix smtpd (tests/peer/peers.py,
a check_recipient_access table, in a loopback-only network namespace) at
RCPT. Postfix's 250: 250; its 550 5.1.1: 550 5.1.1; its 450: 450 4.1.1, not
cached (asked again next time); Postfix's log shows the probes as sessions
with MAIL FROM:<> that never reach DATA (no message reaches cleanup).
"""
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "peer"))
import dslib  # noqa: E402
import peers  # noqa: E402


def session(port):
    c = dslib.RawSMTP("127.0.0.1", port, timeout_s=30)
    c.reply()
    c.cmd("EHLO client.test")
    code, _ = c.cmd("MAIL FROM:<s@example.org>")
    if code != 250:
        raise dslib.Fail("MAIL %d\n%s" % (code, c.text()))
    return c


def main(t):
    tmp = peers.make_test_dir("ds-verify-pf-")
    port = peers.free_port()
    pf = peers.Postfix(tmp, port, rcpt_replies={
        "nobody@a.test": "550 5.1.1 <nobody@a.test>: Recipient address rejected: User unknown",
        "later@a.test": "450 4.2.0 <later@a.test>: try again later"})
    pf.start()
    try:
        srv = t.server(extra=["--accept-domain", "a.test", "--deliver-to", "smtp://127.0.0.1:%d" % port,
                              "--verify-recipients", "a.test", "--verify-timeout-s", "20", "--threads", "1"])
        srv.start()
        c = session(srv.port)
        t.eq(c.cmd("RCPT TO:<alice@a.test>")[0], 250, "Postfix takes alice@a.test: 250")
        code, text = c.cmd("RCPT TO:<nobody@a.test>")
        t.eq((code, text), (550, "5.1.1 <nobody@a.test>: recipient unknown"), "Postfix's 550: 550 5.1.1")
        code, text = c.cmd("RCPT TO:<later@a.test>")
        t.check(code == 450 and "4.1.1" in text, "Postfix's 450: 450 4.1.1 (%d %s)" % (code, text))
        code, text = c.cmd("RCPT TO:<later@a.test>")
        t.check(code == 450, "... not cached: asked again, 450 again (%d %s)" % (code, text))
        t.eq(c.cmd("RCPT TO:<alice@a.test>")[0], 250, "alice@a.test again: 250 (cache)")
        c.quit()
        deadline = time.monotonic() + 10
        log = ""
        while time.monotonic() < deadline:
            log = pf.log_text()
            if (len(re.findall(r"NOQUEUE: reject: RCPT from .*<later@a\.test>", log)) >= 2
                    and re.search(r"NOQUEUE: reject: RCPT from .*<nobody@a\.test>", log)):
                break
            time.sleep(0.2)
        t.check(len(re.findall(r"NOQUEUE: reject: RCPT from .*<later@a\.test>", log)) == 2,
                "Postfix's log: later@a.test refused twice (not cached)", log[-2000:])
        t.check(len(re.findall(r"NOQUEUE: reject: RCPT from .*<nobody@a\.test>", log)) == 1,
                "Postfix's log: nobody@a.test refused once", log[-2000:])
        # smtpd opens a queue file at the first valid RCPT ("ID: client="); QUIT before DATA drops it.
        t.eq(len(re.findall(r"smtpd\[\d+\]: connect from", log)), 2,
             "4 probes on one connection (RSET between them), plus peers.py's readiness probe", log[-2000:])
        t.eq(pf.message_ids(), {}, "no probe reached DATA: Postfix's cleanup saw no message")
        t.eq(pf.messages(), [], "... and nothing was delivered")
        t.eq(srv.stop(), 0, "server stops cleanly")
    finally:
        pf.stop()


if __name__ == "__main__":
    peers.netns_enter()
    dslib.run(main)
