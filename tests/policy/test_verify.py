#!/usr/bin/env python3
"""Recipient verification by the next hop (issue 17 point 3): dotspool A with
--verify-recipients a.test asks its --deliver-to hop, a second dotspool B
(LMTP listener, --recipients table), at RCPT with a probe that sends no data.

- B knows the address: 250; B says 550: 550 5.1.1 (counts as unknown);
- the answers are cached (metrics: a second ask is a cache hit); with B
  stopped, a refused address still gets 550, a new one 450 4.1.1 (B
  unreachable: never 250 on a guess); the positive TTL (3 s here) expires:
  450 4.1.1 for the once known address;
- a hop that accepts the connection and never answers: 450 4.1.1 after
  --verify-timeout-s, and the session goes on (pipelined commands answered);
- one connection answers several questions (RSET between them); a hop that
  restarted under an idle connection: the question is asked again on a new one;
- other domains are not verified; metrics dotspool_recipient_verifications_total.
"""
import os
import socket
import threading
import time
import urllib.request

import dslib


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        return r.read().decode()


def metric(text, name, label):
    return sum(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines()
               if l.startswith(name + "{") and label in l)


def session(port):
    c = dslib.RawSMTP("127.0.0.1", port, timeout_s=20)
    c.reply()
    c.cmd("EHLO client.test")
    t_code, _ = c.cmd("MAIL FROM:<s@example.org>")
    if t_code != 250:
        raise dslib.Fail("MAIL %d\n%s" % (t_code, c.text()))
    return c


def stall_server(stop):
    """Accepts connections and never says a word (a hung next hop)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ls.settimeout(0.2)
    held = []

    def loop():
        while not stop.is_set():
            try:
                s, _ = ls.accept()
                held.append(s)
            except socket.timeout:
                continue
        for s in held:
            s.close()
        ls.close()

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    return ls.getsockname()[1], th


def main(t):
    d = dslib.mkdtemp()
    table = os.path.join(d, "recipients")
    with open(table, "w") as f:
        f.write("alice@a.test\nbob@a.test\n")
    lport = dslib.free_port()
    bmport = dslib.free_port()
    b = t.server(lmtp=("127.0.0.1", lport), extra=["--accept-domain", "a.test", "--recipients", table,
                                                   "--threads", "1", "--metrics", "127.0.0.1:%d" % bmport]).start()
    mport = dslib.free_port()
    a = t.server(extra=["--accept-domain", "a.test", "--accept-domain", "b.test", "--deliver-to",
                        "lmtp://127.0.0.1:%d" % lport, "--verify-recipients", "a.test", "--verify-timeout-s", "2",
                        "--verify-positive-ttl-s", "3", "--verify-negative-ttl-s", "600", "--threads", "1",
                        "--metrics", "127.0.0.1:%d" % mport]).start()
    b_conns = metric(metrics(bmport), "dotspool_connections_total", "worker=")
    c = session(a.port)
    t_probe = time.monotonic()
    t.eq(c.cmd("RCPT TO:<alice@a.test>")[0], 250, "B knows alice@a.test: 250")
    code, text = c.cmd("RCPT TO:<nobody@a.test>")
    t.eq((code, text), (550, "5.1.1 <nobody@a.test>: recipient unknown"), "B refuses nobody@a.test: 550 5.1.1")
    t.eq(c.cmd("RCPT TO:<alice@a.test>")[0], 250, "alice@a.test again: 250 (from the positive cache, below)")
    t.eq(c.cmd("RCPT TO:<anyone@b.test>")[0], 250, "b.test is not verified: 250 as today")
    c.quit()
    t.eq(metric(metrics(bmport), "dotspool_connections_total", "worker=") - b_conns, 1,
         "both probes on one connection to B (RSET between them)")
    t.eq(b.stop(), 0, "next hop B stopped")
    c = session(a.port)
    t.eq(c.cmd("RCPT TO:<nobody@a.test>")[0], 550, "negative cache: nobody@a.test 550 with B down")
    code, text = c.cmd("RCPT TO:<bob@a.test>")
    t.check(code == 450 and "4.1.1" in text, "not cached, B down: 450 4.1.1, never 250 on a guess (%d %s)"
            % (code, text))
    time.sleep(max(0.0, 3.3 - (time.monotonic() - t_probe)))
    code, text = c.cmd("RCPT TO:<alice@a.test>")
    t.check(code == 450 and "4.1.1" in text, "positive TTL (3 s) over, B down: 450 4.1.1 (%d %s)" % (code, text))
    t.eq(c.cmd("RCPT TO:<nobody@a.test>")[0], 550, "negative TTL (600 s) not over: still 550")
    c.quit()
    m = metrics(mport)
    for result, want in (("known", 1), ("unknown", 1), ("cached_known", 1), ("cached_unknown", 2),
                         ("tempfail", 2)):
        t.eq(metric(m, "dotspool_recipient_verifications_total", 'result="%s"' % result), want,
             "dotspool_recipient_verifications_total{result=%s}" % result)
    # B back: a new connection; B restarted under the idle one: the question is asked again on a new one.
    b.start()
    c = session(a.port)
    t.eq(c.cmd("RCPT TO:<alice@a.test>")[0], 250, "B back: alice@a.test 250 (a new connection)")
    b.stop()
    b.start()
    t.eq(c.cmd("RCPT TO:<bob@a.test>")[0], 250, "B restarted under the idle connection: bob@a.test 250 (retried)")
    c.quit()
    t.eq(b.stop(), 0, "next hop B stopped")
    t.eq(a.stop(), 0, "server A stops cleanly")

    # A next hop that never answers: 450 4.1.1 after the timeout; the session goes on.
    stop = threading.Event()
    sport, th = stall_server(stop)
    try:
        a = t.server(extra=["--accept-domain", "a.test", "--deliver-to", "smtp://127.0.0.1:%d" % sport,
                            "--verify-recipients", "a.test", "--verify-timeout-s", "1", "--threads", "1"]).start()
        c = session(a.port)
        t0 = time.monotonic()
        c.send("RCPT TO:<alice@a.test>\r\nNOOP\r\n")
        code, text = c.reply()
        waited = time.monotonic() - t0
        t.check(code == 450 and "4.1.1" in text, "hung next hop: 450 4.1.1 (%d %s)" % (code, text))
        t.check(0.7 <= waited <= 5, "... after about --verify-timeout-s 1 (%.2f s)" % waited)
        t.eq(c.reply()[0], 250, "the pipelined NOOP is answered after it")
        c.quit()
        t.eq(a.stop(), 0, "server stops cleanly with the hung hop")
    finally:
        stop.set()
        th.join(5)


dslib.run(main)
