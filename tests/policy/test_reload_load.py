#!/usr/bin/env python3
"""Recipient table reload under load (issue 17 point 2): 20 SIGHUPs while
client threads run transactions without pause; the table (~200k addresses,
a load that takes real time) alternates between two files that both hold the
addresses the clients use, and neither holds the unknown one. Zero failed
transactions: every known recipient 250, every unknown one 550 5.1.1, every
message 250, across all 20 reloads (each one logged as done before the next
signal). Bounded: about 10 s.
"""
import os
import re
import signal
import threading
import time

import dslib

THREADS = 4
RELOADS = 20
FILLER = 200000


def write_table(path, generation):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("# generation %d\n" % generation)
        for i in range(THREADS):
            f.write("user%d@a.test\n" % i)
        # A different filler each time, so each reload builds a new table of the same size.
        for i in range(FILLER):
            f.write("filler%d.g%d@a.test\n" % (i, generation % 2))
    os.rename(tmp, path)


def client(t, port, no, stop, stats, errors):
    c = None
    while not stop.is_set():
        try:
            if c is None:
                c = dslib.RawSMTP("127.0.0.1", port)
                c.reply()
                c.cmd("EHLO load%d.test" % no)
            code, text = c.cmd("MAIL FROM:<s%d@example.org>" % no)
            if code != 250:
                raise RuntimeError("MAIL %d %s" % (code, text))
            code, text = c.cmd("RCPT TO:<user%d@a.test>" % no)
            if code != 250:
                raise RuntimeError("known RCPT %d %s" % (code, text))
            code, text = c.cmd("RCPT TO:<nobody%d@a.test>" % no)
            if code != 550 or "5.1.1" not in text:
                raise RuntimeError("unknown RCPT %d %s" % (code, text))
            code, text = c.cmd("DATA")
            if code != 354:
                raise RuntimeError("DATA %d %s" % (code, text))
            c.send("Subject: load\r\n\r\nmessage\r\n.\r\n")
            code, text = c.reply()
            if code != 250:
                raise RuntimeError("end of data %d %s" % (code, text))
            stats[no] += 1
            if stats[no] % 50 == 0:  # new connections too, not only one long session each
                c.quit()
                c = None
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            errors.append("thread %d: %s" % (no, e))
            if c:
                c.close()
            c = None
            time.sleep(0.05)
    if c:
        c.quit()


def main(t):
    d = dslib.mkdtemp()
    table = os.path.join(d, "recipients")
    write_table(table, 0)
    srv = t.server(extra=["--accept-domain", "a.test", "--recipients", table, "--threads", "2",
                          "--trusted-network", "none", "--session-unknown-recipients-max", "0",
                          "--client-message-rate-max", "0", "--client-recipient-rate-max", "0",
                          "--client-connection-rate-max", "0"]).start()
    stop = threading.Event()
    stats = [0] * THREADS
    errors = []
    threads = [threading.Thread(target=client, args=(t, srv.port, i, stop, stats, errors)) for i in range(THREADS)]
    for th in threads:
        th.start()
    t0 = time.monotonic()
    done = 0
    try:
        time.sleep(0.3)
        for g in range(1, RELOADS + 1):
            write_table(table, g)
            srv.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                done = len(re.findall(r"recipients: reloaded ", srv.log_text()))
                if done >= g:
                    break
                time.sleep(0.01)
            if done < g:
                raise dslib.Fail("reload %d not logged within 10 s\n%s" % (g, srv.log()))
        time.sleep(0.3)
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    elapsed = time.monotonic() - t0
    total = sum(stats)
    print("  %d transactions in %.1f s across %d reloads (%s per thread)" % (total, elapsed, done, stats))
    t.eq(done, RELOADS, "%d reloads done and logged" % RELOADS)
    t.check(not re.search(r"reload failed", srv.log_text()), "no reload failed", srv.log())
    t.eq(errors, [], "zero failed transactions across the reloads")
    t.check(min(stats) > 0, "every client thread completed transactions during the reloads (%r)" % stats)
    t.eq(srv.stop(), 0, "server stops cleanly")


dslib.run(main)
