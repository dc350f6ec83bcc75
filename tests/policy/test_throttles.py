#!/usr/bin/env python3
"""Per-client throttles (issue 17 point 4), from many source addresses on
127.0.0.0/8 (the client socket bound to 127.0.0.x) and behind PROXY:

- --client-connection-rate-max: per address, the (N+1)-th connection in the
  minute gets 421 4.7.0 before any banner and is closed; other addresses are
  not affected; a --trusted-network address is never limited;
- --client-message-rate-max: the (N+1)-th MAIL gets 450 4.7.1, the session
  goes on; --client-recipient-rate-max: the (N+1)-th RCPT gets 450 4.7.1;
- behind --proxy-listen the limits count the PROXY header's source, an IPv6
  client is its /64 (2001:db8::1 and 2001:db8::2 are one client,
  2001:db8:0:1::1 another), a trusted network from the header is exempt;
- the log names the limit, dotspool_throttled_total counts each.
"""
import socket
import time
import urllib.request

import dslib

ADDRS = 20
CONN_MAX = 3


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        return r.read().decode()


def metric_sum(text, name, label):
    return sum(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines()
               if l.startswith(name + "{") and label in l)


def connect(port, src, proxy_line=None):
    """(client, code, text) of the first reply from a socket bound to src."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    c = dslib.RawSMTP.__new__(dslib.RawSMTP)
    c.sock, c.buf, c.transcript = s, b"", []
    if proxy_line:
        c.send(proxy_line)
    try:
        code, text = c.reply()
    except (ConnectionError, OSError) as e:
        return c, None, str(e)
    return c, code, text


def main(t):
    mport = dslib.free_port()
    pport = dslib.free_port()
    srv = t.server(proxy=("127.0.0.1", pport),
                   extra=["--client-connection-rate-max", str(CONN_MAX), "--client-message-rate-max", "2",
                          "--client-recipient-rate-max", "4", "--trusted-network", "127.0.0.200/32",
                          "--trusted-network", "198.51.100.0/24", "--metrics", "127.0.0.1:%d" % mport,
                          "--threads", "2"])
    srv.start()
    time.sleep(0.2)
    # Connections per address: CONN_MAX greeted, the next one 421 4.7.0 and closed.
    for i in range(ADDRS):
        src = "127.0.0.%d" % (10 + i)
        for k in range(CONN_MAX):
            c, code, text = connect(srv.port, src)
            if code != 220:
                raise dslib.Fail("%s: connection %d got %r %r" % (src, k + 1, code, text))
            c.quit()
        c, code, text = connect(srv.port, src)
        if code != 421 or "4.7.0" not in text or not c.closed(5):
            raise dslib.Fail("%s: connection %d got %r %r (want 421 4.7.0 and close)" % (src, CONN_MAX + 1, code,
                                                                                         text))
        c.close()
    t.check(True, "%d addresses: %d connections each greeted, the next one 421 4.7.0 and closed"
            % (ADDRS, CONN_MAX))
    for k in range(3 * CONN_MAX):
        c, code, text = connect(srv.port, "127.0.0.200")
        if code != 220:
            raise dslib.Fail("trusted 127.0.0.200: connection %d got %r %r" % (k + 1, code, text))
        c.quit()
    t.check(True, "trusted 127.0.0.200: %d connections greeted" % (3 * CONN_MAX))

    # Messages and recipients per address, on one connection from a fresh address.
    c, code, _ = connect(srv.port, "127.0.0.50")
    c.cmd("EHLO c.test")
    for k in range(2):
        t.eq(c.cmd("MAIL FROM:<s@example.org>")[0], 250, "MAIL %d of 2 taken" % (k + 1))
        t.eq(c.cmd("RSET")[0], 250, "RSET")
    code, text = c.cmd("MAIL FROM:<s@example.org>")
    t.check(code == 450 and "4.7.1" in text, "3rd MAIL in the minute: 450 4.7.1 (%d %s)" % (code, text))
    code, text = c.cmd("NOOP")
    t.eq(code, 250, "the session goes on after the 450", c.text())
    c.quit()
    c, code, _ = connect(srv.port, "127.0.0.51")
    c.cmd("EHLO c.test")
    t.eq(c.cmd("MAIL FROM:<s@example.org>")[0], 250, "MAIL from 127.0.0.51")
    for k in range(4):
        t.eq(c.cmd("RCPT TO:<r%d@localhost>" % k)[0], 250, "RCPT %d of 4 taken" % (k + 1))
    code, text = c.cmd("RCPT TO:<r9@localhost>")
    t.check(code == 450 and "4.7.1" in text, "5th RCPT in the minute: 450 4.7.1 (%d %s)" % (code, text))
    t.eq(c.cmd("DATA")[0], 354, "DATA for the 4 taken")
    c.send("Subject: t\r\n\r\nx\r\n.\r\n")
    t.eq(c.reply()[0], 250, "message for the 4 recipients taken")
    c.quit()
    c, code, _ = connect(srv.port, "127.0.0.200")
    c.cmd("EHLO c.test")
    for k in range(5):
        for line in ["MAIL FROM:<s@example.org>"] + ["RCPT TO:<r%d@localhost>" % j for j in range(5)]:
            code = c.cmd(line)[0]
            if code != 250:
                raise dslib.Fail("trusted: %s got %d\n%s" % (line, code, c.text()))
        c.cmd("RSET")
    t.check(True, "trusted 127.0.0.200: 5 MAIL x 5 RCPT all taken")
    c.quit()

    # Behind PROXY: the header's source is the client; IPv6 per /64.
    def proxy_conn(line):
        return connect(pport, "127.0.0.1", line)

    for src, n_ok in (("203.0.113.7", CONN_MAX), ("203.0.113.8", CONN_MAX)):
        for k in range(n_ok):
            c, code, text = proxy_conn("PROXY TCP4 %s 192.0.2.1 40000 25\r\n" % src)
            t.eq(code, 220, "PROXY %s: connection %d greeted" % (src, k + 1), text)
            c.quit()
        c, code, text = proxy_conn("PROXY TCP4 %s 192.0.2.1 40000 25\r\n" % src)
        t.check(code == 421 and "4.7.0" in text, "PROXY %s: connection %d: 421 4.7.0 (%r %r)"
                % (src, n_ok + 1, code, text))
        c.close()
    v6 = ["2001:db8::1", "2001:db8::2", "2001:db8::ffff:1"]
    for k, src in enumerate(v6):
        c, code, text = proxy_conn("PROXY TCP6 %s 2001:db8::25 40000 25\r\n" % src)
        t.eq(code, 220, "PROXY %s (2001:db8::/64 connection %d) greeted" % (src, k + 1), text)
        c.quit()
    c, code, text = proxy_conn("PROXY TCP6 2001:db8::abcd 2001:db8::25 40000 25\r\n")
    t.eq(code, 421, "PROXY 2001:db8::abcd: 4th of the same /64: 421", text)
    c.close()
    c, code, text = proxy_conn("PROXY TCP6 2001:db8:0:1::1 2001:db8::25 40000 25\r\n")
    t.eq(code, 220, "PROXY 2001:db8:0:1::1 (another /64) greeted", text)
    c.quit()
    for k in range(2 * CONN_MAX):
        c, code, text = proxy_conn("PROXY TCP4 198.51.100.9 192.0.2.1 40000 25\r\n")
        if code != 220:
            raise dslib.Fail("trusted PROXY source: connection %d got %r %r" % (k + 1, code, text))
        c.quit()
    t.check(True, "PROXY source in a trusted network: %d connections greeted" % (2 * CONN_MAX))

    time.sleep(0.3)
    log = srv.log_text()
    t.check("reason=client_connection_rate_max" in log, "the log names client_connection_rate_max")
    t.check("limit client_message_rate_max" in log, "the log names client_message_rate_max")
    t.check("limit client_recipient_rate_max" in log, "the log names client_recipient_rate_max")
    m = metrics(mport)
    want_conn = ADDRS + 2 + 1
    t.eq(metric_sum(m, "dotspool_throttled_total", 'limit="client_connection_rate_max"'), want_conn,
         "dotspool_throttled_total{limit=client_connection_rate_max}")
    t.eq(metric_sum(m, "dotspool_throttled_total", 'limit="client_message_rate_max"'), 1,
         "dotspool_throttled_total{limit=client_message_rate_max}")
    t.eq(metric_sum(m, "dotspool_throttled_total", 'limit="client_recipient_rate_max"'), 1,
         "dotspool_throttled_total{limit=client_recipient_rate_max}")
    t.eq(srv.stop(), 0, "server stops cleanly")


dslib.run(main)
