#!/usr/bin/env python3
"""Recipient table (issue 17 points 1 and 2): --recipients FILE at RCPT.

- address lines, @domain lines, comments, blank lines, <a@b> form; domains
  case-insensitive, local parts too (and exactly with
  --recipients-case-sensitive);
- an accepted domain without a line has no recipients; other domains keep
  today's behaviour (550 5.7.1 relaying denied); <postmaster> always taken;
- 550 5.1.1 <addr>: recipient unknown; the message goes to the known ones;
- --session-unknown-recipients-max: the next unknown one gets 421 4.7.0 and
  the connection closes (loopback not trusted for this run);
- a broken file at start-up: exit 1 naming the line; on SIGHUP: the old table
  stays, the log names the line; a good file on SIGHUP: the new table answers;
- metrics dotspool_recipients_unknown_total and the limit's
  dotspool_throttled_total{limit="session_unknown_recipients_max"}.
"""
import os
import re
import signal
import subprocess
import time
import urllib.request

import dslib

TABLE = """# dotspool recipient table
alice@a.test
Bob@A.Test
<carol@a.test>
   dave@a.test   

@b.test
# c.test: accepted, but no line: nobody there
"""


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        return r.read().decode()


def metric_sum(text, name, label=None):
    total = 0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and (label is None or label in line):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def rcpt(c, addr):
    return c.cmd("RCPT TO:<%s>" % addr)


def session(srv):
    c = dslib.RawSMTP("127.0.0.1", srv.port)
    c.reply()
    c.cmd("EHLO client.test")
    code, _ = c.cmd("MAIL FROM:<s@example.org>")
    if code != 250:
        raise dslib.Fail("MAIL: %d\n%s" % (code, c.text()))
    return c


def wait_log(srv, pattern, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if re.search(pattern, srv.log_text()):
            return True
        time.sleep(0.05)
    return False


def main(t):
    d = dslib.mkdtemp()
    table = os.path.join(d, "recipients")
    with open(table, "w") as f:
        f.write(TABLE)
    mport = dslib.free_port()
    domains = ["--accept-domain", "a.test", "--accept-domain", "b.test", "--accept-domain", "c.test"]
    srv = t.server(extra=domains + ["--recipients", table, "--session-unknown-recipients-max", "3",
                                    "--trusted-network", "none", "--metrics", "127.0.0.1:%d" % mport,
                                    "--threads", "2"]).start()
    t.check(wait_log(srv, r"recipients: .*: 4 addresses, 1 domains"), "start-up logs the table's size",
            srv.log())
    c = session(srv)
    for addr in ("alice@a.test", "ALICE@A.TEST", "bob@a.test", "carol@a.test", "dave@a.test",
                 "anyone@b.test", "x.y@B.TEST", "Postmaster"):
        code, text = rcpt(c, addr)
        t.eq(code, 250, "known: %s -> 250" % addr, c.text())
    code, text = rcpt(c, "eve@a.test")
    t.eq((code, text), (550, "5.1.1 <eve@a.test>: recipient unknown"), "unknown address of a.test -> 550 5.1.1",
         c.text())
    code, text = rcpt(c, "alice@c.test")
    t.eq(code, 550, "an accepted domain without a line has no recipients", c.text())
    code, text = rcpt(c, "alice@other.test")
    t.check(code == 550 and "5.7.1" in text, "another domain: today's relaying denied (%d %s)" % (code, text))
    code, _ = c.cmd("DATA")
    t.eq(code, 354, "DATA with the known recipients")
    c.send("Subject: t\r\n\r\nbody\r\n.\r\n")
    code, text = c.reply()
    t.eq(code, 250, "message taken for the known recipients", c.text())
    c.quit()
    entries = srv.list()
    t.eq(len(entries), 1, "one message in the spool")
    got = sorted(a.lower() for a in dslib.rcpt_addrs(entries[0]))
    t.eq(len(got), 8, "its recipients are the 8 known ones, none of the refused (%r)" % got)

    # Dictionary attack: 3 unknown allowed (550), the 4th ends the session.
    c = session(srv)
    for i in range(3):
        code, _ = rcpt(c, "guess%d@a.test" % i)
        t.eq(code, 550, "unknown %d -> 550" % (i + 1), c.text())
    code, text = rcpt(c, "alice@a.test")
    t.eq(code, 250, "a known recipient still 250 after 3 unknown", c.text())
    code, text = rcpt(c, "guess9@a.test")
    t.check(code == 421 and "4.7.0" in text, "4th unknown -> 421 4.7.0 (%d %s)" % (code, text))
    t.check(c.closed(5), "the connection is closed after the 421")
    c.close()
    t.check(wait_log(srv, r"limit session_unknown_recipients_max"), "the log names the limit", srv.log())
    m = metrics(mport)
    t.eq(metric_sum(m, "dotspool_recipients_unknown_total"), 6, "dotspool_recipients_unknown_total counts 6")
    t.eq(metric_sum(m, "dotspool_throttled_total", 'limit="session_unknown_recipients_max"'), 1,
         "dotspool_throttled_total{limit=session_unknown_recipients_max} is 1")
    t.eq(metric_sum(m, "dotspool_recipient_table_entries"), 5, "dotspool_recipient_table_entries is 5")

    # Reload: a broken file keeps the old table, the log names the line.
    with open(table + ".new", "w") as f:
        f.write("alice@a.test\nnew@a.test\nnot an address\n")
    os.rename(table + ".new", table)
    srv.send_signal(signal.SIGHUP)
    t.check(wait_log(srv, r"reload failed, keeping the old table: .*recipients:3: "), "broken file: line 3 logged",
            srv.log())
    c = session(srv)
    t.eq(rcpt(c, "bob@a.test")[0], 250, "old table still answers after a failed reload")
    t.eq(rcpt(c, "new@a.test")[0], 550, "... and does not know the broken file's addresses")
    c.quit()
    with open(table + ".new", "w") as f:
        f.write("alice@a.test\nnew@a.test\n@c.test\n")
    os.rename(table + ".new", table)
    srv.send_signal(signal.SIGHUP)
    t.check(wait_log(srv, r"recipients: reloaded .*: 2 addresses, 1 domains"), "good file reloaded", srv.log())
    m = metrics(mport)
    t.eq(metric_sum(m, "dotspool_recipient_table_reloads_total", 'result="failed"'), 1,
         "dotspool_recipient_table_reloads_total{result=failed} is 1")
    t.eq(metric_sum(m, "dotspool_recipient_table_reloads_total", 'result="ok"'), 1,
         "dotspool_recipient_table_reloads_total{result=ok} is 1")
    t.eq(metric_sum(m, "dotspool_recipient_table_entries"), 3, "dotspool_recipient_table_entries is 3 now")
    c = session(srv)
    t.eq(rcpt(c, "new@a.test")[0], 250, "new table: new@a.test known")
    t.eq(rcpt(c, "bob@a.test")[0], 550, "new table: bob@a.test gone")
    t.eq(rcpt(c, "x@c.test")[0], 250, "new table: @c.test")
    t.eq(rcpt(c, "x@b.test")[0], 550, "new table: @b.test gone")
    c.quit()
    t.eq(srv.stop(), 0, "server stops cleanly")

    # Case-sensitive local parts.
    srv = t.server(extra=domains + ["--recipients", table, "--recipients-case-sensitive", "true"]).start()
    with open(table, "w") as f:
        f.write("Alice@a.test\n")
    # `dotspool-ctl reload` over the control socket takes the SIGHUP path (issue 17 point 2).
    cp = srv.ctl("reload")
    t.check(cp.returncode == 0, "dotspool-ctl reload: exit 0", cp.stdout + cp.stderr)
    t.check(wait_log(srv, r"recipients: reloaded .*: 1 addresses"), "reloaded by dotspool-ctl reload", srv.log())
    c = session(srv)
    t.eq(rcpt(c, "Alice@A.TEST")[0], 250, "case-sensitive: Alice@A.TEST known (domain case ignored)")
    t.eq(rcpt(c, "alice@a.test")[0], 550, "case-sensitive: alice@a.test unknown")
    c.quit()
    t.eq(srv.stop(), 0, "server stops cleanly")

    # A broken file at start-up: exit 1, the line named.
    with open(table, "w") as f:
        f.write("ok@a.test\n\n# fine\nbad@\n")
    r = subprocess.run([os.path.join(t.build, "dotspool"), "--listen", "127.0.0.1:%d" % dslib.free_port(),
                        "--spool", os.path.join(d, "spool2"), "--recipients", table],
                       capture_output=True, text=True, timeout=30)
    t.eq(r.returncode, 1, "broken table at start-up: exit 1", r.stderr)
    t.check(re.search(r"recipients:4: no domain after '@'", r.stderr), "... naming line 4 (%r)" % r.stderr[-300:])


dslib.run(main)
