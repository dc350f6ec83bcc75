#!/usr/bin/env python3
"""Graceful shutdown: SIGTERM (then SIGINT) while a client is mid-DATA. The
transaction can finish with 250 within the shutdown bound, new connections
are refused or get 421, idle sessions get 421 or are closed, the server
exits 0. A client that stalls mid-DATA does not hold the exit past the
bound."""
import signal
import time

import dslib

SHUTDOWN_S = 4


def probe_new_connection(port):
    """What a client connecting after the signal sees, within 1 s.

    Returns (ok, description). Refused, closed, or a 421 greeting are fine; a
    connection left hanging in the listen backlog (no answer) is not: a load
    balancer would keep sending clients to a node that is going away.
    """
    try:
        c = dslib.RawSMTP("127.0.0.1", port, timeout_s=1)
    except OSError as e:
        return True, "refused (%s)" % e
    try:
        code, text = c.reply()
        return code == 421, "greeted %d %s" % (code, text)
    except ConnectionError:
        return True, "closed without a banner"
    except OSError as e:
        return False, "no answer within 1 s (%s): accepted by the kernel but never served" % e
    finally:
        c.close()


def start_mid_data(t, srv):
    c = dslib.RawSMTP("127.0.0.1", srv.port)
    t.eq(c.reply()[0], 220, "banner")
    t.eq(c.cmd("EHLO it.example")[0], 250, "EHLO")
    t.eq(c.cmd("MAIL FROM:<a@localhost>")[0], 250, "MAIL")
    t.eq(c.cmd("RCPT TO:<u@localhost>")[0], 250, "RCPT")
    t.eq(c.cmd("DATA")[0], 354, "DATA 354")
    return c


def one(t, sig):
    name = signal.Signals(sig).name
    srv = t.server(extra=["--shutdown-timeout-s", str(SHUTDOWN_S)]).start()
    idle = dslib.RawSMTP("127.0.0.1", srv.port)
    t.eq(idle.reply()[0], 220, "%s: idle client banner" % name)
    t.eq(idle.cmd("EHLO idle.example")[0], 250, "%s: idle client EHLO" % name)
    c = start_mid_data(t, srv)
    data = b"Subject: shutdown " + name.encode() + b"\r\n\r\n" + dslib.body_lines(50000)
    half = len(data) // 2
    c.send(data[:half])
    time.sleep(0.2)
    t0 = time.monotonic()
    srv.send_signal(sig)
    time.sleep(0.3)
    t.check(srv.running(), "%s: server still running while a transaction is in flight" % name, srv.log())
    probe_ok, probe_what = probe_new_connection(srv.port)
    try:
        code, _ = idle.cmd("NOOP")
        t.eq(code, 421, "%s: idle session's next command gets 421" % name, idle.text())
    except (ConnectionError, OSError):
        print("  ok: %s: idle session closed" % name)
    idle.close()
    try:
        c.send(data[half:] + b".\r\n")
        code, text = c.reply()
    except (ConnectionError, OSError) as e:
        raise dslib.Fail("%s: in-flight transaction dropped: %s before the reply to the final dot\n%s"
                         % (name, e, c.text()))
    t.eq(code, 250, "%s: in-flight transaction finished with 250 after the signal" % name, c.text())
    qid = dslib.queued_id(text)
    c.close()
    rc = srv.wait(SHUTDOWN_S + 5)
    elapsed = time.monotonic() - t0
    t.eq(rc, 0, "%s: server exited 0 (after %.1f s)" % (name, elapsed), srv.log())
    t.check(elapsed <= SHUTDOWN_S + 5, "%s: exit within the shutdown bound" % name)
    t.check(probe_ok, "%s: a new connection after the signal is refused, closed or gets 421: %s"
            % (name, probe_what))
    e = dslib.entry_by_id(srv.list(), qid)
    t.check_stored(srv, e, data, "%s: message finished during shutdown" % name)


def stalled(t):
    srv = t.server(extra=["--shutdown-timeout-s", "2"]).start()
    c = start_mid_data(t, srv)
    c.send(b"Subject: stalled\r\n\r\npartial body\r\n")
    time.sleep(0.2)
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    rc = srv.wait(2 + 8)
    elapsed = time.monotonic() - t0
    t.check(rc is not None, "stalled client: server exits despite a stuck transaction (%.1f s)" % elapsed,
            srv.log())
    t.eq(rc, 0, "stalled client: exit code 0")
    t.eq(len(srv.list()), 0, "stalled client: the unfinished message is not in the spool")
    c.close()


def main(t):
    one(t, signal.SIGTERM)
    one(t, signal.SIGINT)
    stalled(t)


if __name__ == "__main__":
    dslib.run(main)
