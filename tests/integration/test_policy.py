#!/usr/bin/env python3
"""Protocol policy over a raw socket: relay denied, unknown command, bad
sequence, SIZE over the limit, too many recipients, SMTP smuggling attempts,
VRFY, overlong command line."""
import socket

import dslib

MAX_SIZE = 10000
MAX_RCPT = 3

# (name, fake end-of-data) from the SMTP smuggling family: none may end DATA.
SMUGGLE = [
    ("LF.LF", b"\n.\n"),
    ("CR.CR", b"\r.\r"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CRLF NUL.CRLF", b"\r\n\x00.\r\n"),
    ("CRCRLF.CRCRLF", b"\r\r\n.\r\r\n"),
]


def session(t, srv):
    c = dslib.RawSMTP("127.0.0.1", srv.port)
    code, _ = c.reply()
    t.eq(code, 220, "banner 220")
    code, text = c.cmd("EHLO it.example")
    t.eq(code, 250, "EHLO 250")
    return c, text


def read_all_replies(c, quiet_s=1.0):
    """Every reply that arrives until the server is quiet for quiet_s (or closes)."""
    out = []
    c.sock.settimeout(quiet_s)
    try:
        while True:
            out.append(c.reply())
    except (socket.timeout, ConnectionError, OSError):
        pass
    c.sock.settimeout(10)
    return out


def in_sync_or_closed(t, c, what):
    try:
        code, _ = c.cmd("NOOP")
        t.eq(code, 250, "%s: session still in sync (NOOP 250)" % what, c.text())
    except (ConnectionError, OSError):
        print("  ok: %s: server closed the session" % what)


def main(t):
    srv = t.server(extra=["--max-message-size", str(MAX_SIZE), "--max-recipients", str(MAX_RCPT)]).start()

    c, ehlo = session(t, srv)
    try:
        code, text = c.cmd("MAIL FROM:<a@localhost>")
        t.eq(code, 250, "MAIL FROM 250")
        code, text = c.cmd("RCPT TO:<victim@example.com>")
        t.eq(code, 550, "relay to example.com refused 550", c.text())
        t.check(text.startswith("5.7.1"), "relay reply carries 5.7.1 (%r)" % text)
        code, text = c.cmd("RCPT TO:<victim@localhost.example.com>")
        t.eq(code, 550, "relay to a look-alike domain refused 550", c.text())
        code, text = c.cmd("XYZZY foo")
        t.eq(code, 500, "unknown command 500", c.text())
        code, text = c.cmd("VRFY postmaster@localhost")
        t.eq(code, 252, "VRFY 252 (no user enumeration)", c.text())
        code, text = c.cmd("RSET")
        t.eq(code, 250, "RSET 250")
        code, text = c.cmd("RCPT TO:<u@localhost>")
        t.eq(code, 503, "RCPT before MAIL 503", c.text())
        code, text = c.cmd("DATA")
        t.eq(code, 503, "DATA before MAIL 503", c.text())
        code, text = c.cmd("MAIL FROM:<a@localhost>")
        t.eq(code, 250, "MAIL FROM 250")
        code, text = c.cmd("DATA")
        t.eq(code, 503, "DATA without RCPT 503", c.text())
        code, text = c.cmd("MAIL FROM:<a@localhost>")
        t.eq(code, 503, "nested MAIL 503", c.text())
        c.cmd("RSET")

        # SIZE
        t.check("SIZE" in ehlo, "EHLO advertises SIZE", ehlo)
        code, text = c.cmd("MAIL FROM:<a@localhost> SIZE=%d" % (MAX_SIZE * 2))
        t.eq(code, 552, "declared SIZE over --max-message-size -> 552", c.text())
        code, text = c.cmd("MAIL FROM:<a@localhost> SIZE=99999999999999999999999999")
        t.check(code in (501, 552), "absurd SIZE -> 501 or 552 (got %d)" % code, c.text())
        c.cmd("RSET")
        code, text = c.cmd("MAIL FROM:<a@localhost> SIZE=%d" % (MAX_SIZE // 2))
        t.eq(code, 250, "SIZE under the limit -> 250", c.text())

        # recipient limit
        for i in range(MAX_RCPT):
            code, _ = c.cmd("RCPT TO:<r%d@localhost>" % i)
            t.eq(code, 250, "RCPT %d of %d -> 250" % (i + 1, MAX_RCPT), c.text())
        code, text = c.cmd("RCPT TO:<r%d@localhost>" % MAX_RCPT)
        t.eq(code, 452, "RCPT past --max-recipients %d -> 452" % MAX_RCPT, c.text())
        c.cmd("RSET")

        # undeclared overrun: 552 after reading to the end, session usable
        c.cmd("MAIL FROM:<a@localhost>")
        c.cmd("RCPT TO:<u@localhost>")
        code, _ = c.cmd("DATA")
        t.eq(code, 354, "DATA 354")
        c.send(b"Subject: big\r\n\r\n" + dslib.body_lines(MAX_SIZE * 3) + b".\r\n")
        code, text = c.reply()
        t.eq(code, 552, "undeclared message over the size limit -> 552", c.text())
        in_sync_or_closed(t, c, "after oversize")
    finally:
        c.quit()

    # overlong command line: 500, and the tail is not parsed as a command
    c, _ = session(t, srv)
    try:
        code, text = c.cmd("NOOP " + "A" * 600 + "QUIT")
        t.eq(code, 500, "command line over 512 octets -> 500", c.text())
        code, text = c.cmd("X" * 512 + "QUIT")
        t.eq(code, 500, "513+ octet line ending in QUIT -> 500, not 221", c.text())
        extra = read_all_replies(c, 0.5)
        t.eq(extra, [], "no further reply for the discarded tail", c.text())
        code, _ = c.cmd("NOOP")
        t.eq(code, 250, "session usable after an overlong line", c.text())
    finally:
        c.quit()

    # smuggling: a fake end of data followed by an injected transaction
    before = len(srv.list())
    accepted = 0
    for name, fake in SMUGGLE:
        c, _ = session(t, srv)
        try:
            t.eq(c.cmd("MAIL FROM:<a@localhost>")[0], 250, "%s: MAIL" % name)
            t.eq(c.cmd("RCPT TO:<u@localhost>")[0], 250, "%s: RCPT" % name)
            t.eq(c.cmd("DATA")[0], 354, "%s: DATA" % name)
            c.send(b"Subject: smuggle " + name.encode() + b"\r\n\r\nbody" + fake +
                   b"MAIL FROM:<evil@localhost>\r\nRCPT TO:<u@localhost>\r\nDATA\r\nsmuggled\r\n.\r\n")
            replies = read_all_replies(c, 1.0)
            codes = [r[0] for r in replies]
            t.check(len(replies) >= 1, "%s: a reply to the data" % name, c.text())
            t.check(codes[0] == 250 or 500 <= codes[0] <= 554,
                    "%s: the whole thing is one message (250) or refused (5xx): %r" % (name, codes), c.text())
            t.check(354 not in codes and codes.count(250) <= 1,
                    "%s: no second transaction started (%r)" % (name, codes), c.text())
            if codes[0] == 250:
                accepted += 1
            in_sync_or_closed(t, c, name)
        finally:
            c.quit()
    entries = srv.list()
    t.check(all(e.get("mail_from") != "evil@localhost" for e in entries),
            "no spooled message has the injected sender evil@localhost")
    t.eq(len(entries) - before, accepted, "spool grew by exactly the messages answered 250 (%d)" % accepted)
    v = srv.verify()
    t.eq(v.returncode, 0, "verify exits 0", v.stdout + v.stderr)
    t.eq(srv.stop(), 0, "server exits 0 on SIGTERM")


if __name__ == "__main__":
    dslib.run(main)
