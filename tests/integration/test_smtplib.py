#!/usr/bin/env python3
"""Send messages of several shapes with Python's smtplib; each 250 must be
listed with the right envelope, and cat must return the Received: header
followed by exactly the bytes sent (after dot-unstuffing); verify exits 0."""
import smtplib
import uuid

import dslib


def message(subject, body, extra_headers=b""):
    mid = "<%s@it.example>" % uuid.uuid4()
    return (b"From: it@localhost\r\nTo: u@localhost\r\nSubject: " + subject.encode() + b"\r\nMessage-ID: "
            + mid.encode() + b"\r\n" + extra_headers + b"\r\n" + body)


def main(t):
    srv = t.server(threads=2).start()
    sent = []  # (what, id, mail_from, rcpts, data)
    smtp = smtplib.SMTP("127.0.0.1", srv.port, timeout=30)
    try:
        code, _ = smtp.ehlo("it.example")
        t.eq(code, 250, "EHLO answered 250")
        utf8 = smtp.has_extn("smtputf8")
        eightbit = smtp.has_extn("8bitmime")
        print("  server advertises: %s" % sorted(smtp.esmtp_features))

        cases = [
            ("tiny", "a@localhost", ["u@localhost"], message("tiny", b"hi\r\n"), []),
            ("100KiB", "a@localhost", ["u@localhost"], message("100k", dslib.body_lines(100 * 1024)), []),
            ("2MiB", "a@localhost", ["u@localhost"], message("2m", dslib.body_lines(2 * 1024 * 1024)), []),
            ("leading dots", "a@localhost", ["u@localhost"],
             message("dots", b".\r\n..\r\n.x\r\n. \r\n...\r\nend\r\n.\r\n"), []),
            # Every line dot-stuffed: thousands of tiny pieces for one message (the spool
            # grows one chunk record instead of paying a header per piece).
            ("1 MiB of dot lines", "a@localhost", ["u@localhost"],
             message("dotty", b"".join(b"." * (1 + i % 7) + b"x" * (i % 3) + b"\r\n" for i in range(150000))), []),
            ("multi rcpt", "a@localhost", ["u1@localhost", "u2@localhost", "u3@localhost"],
             message("multi", b"three\r\n"), []),
            ("null sender", "", ["u@localhost"], message("bounce", b"null sender\r\n"), []),
            ("empty last line", "a@localhost", ["u@localhost"],
             message("blank", b"x\r\n\r\n"), []),
        ]
        body8 = "Grüße, 日本語, ñ — 8-bit body\r\n".encode("utf-8")
        opts = ["BODY=8BITMIME"] if eightbit else []
        if utf8:
            cases.append(("UTF-8 SMTPUTF8", "Jürgen@localhost", ["Zoë@localhost"],
                          message("utf8", body8, b"Content-Type: text/plain; charset=utf-8\r\n"),
                          opts + ["SMTPUTF8"]))
        else:
            print("  note: SMTPUTF8 not advertised; sending the 8-bit body with ASCII addresses")
            cases.append(("8-bit body", "a@localhost", ["u@localhost"], message("8bit", body8), opts))

        for what, frm, rcpts, data, mopts in cases:
            code, resp = smtp.mail(frm, mopts)
            t.eq(code, 250, "%s: MAIL FROM:<%s> -> 250" % (what, frm), resp)
            for r in rcpts:
                code, resp = smtp.rcpt(r)
                t.eq(code, 250, "%s: RCPT TO:<%s> -> 250" % (what, r), resp)
            code, resp = smtp.data(data)
            t.eq(code, 250, "%s: final dot -> 250" % what, resp)
            qid = dslib.queued_id(resp)
            t.check(qid is not None, "%s: reply names the queue id (%r)" % (what, resp))
            sent.append((what, qid, frm, rcpts, data))
        smtp.quit()
    finally:
        smtp.close()

    entries = srv.list()
    t.eq(len(entries), len(sent), "list shows one entry per 250")
    for what, qid, frm, rcpts, data in sent:
        e = dslib.entry_by_id(entries, qid)
        t.eq(e.get("mail_from"), frm, "%s: mail_from" % what)
        t.eq(dslib.rcpt_addrs(e), rcpts, "%s: rcpt_to" % what)
        stored = srv.cat(qid)
        t.check(e.get("size") in (len(data), len(stored)),
                "%s: size %r is the data size %d (or stored %d)" % (what, e.get("size"), len(data), len(stored)))
        if "client_addr" in e:
            t.eq(e["client_addr"], "127.0.0.1", "%s: client_addr" % what)
        hdr = t.check_stored(srv, e, data, what)
        t.check(b"127.0.0.1" in hdr, "%s: Received: header names the client address" % what, hdr)
    v = srv.verify()
    t.eq(v.returncode, 0, "dotspool-ctl verify exits 0", v.stdout + v.stderr)
    rc = srv.stop()
    t.eq(rc, 0, "server exits 0 on SIGTERM")


if __name__ == "__main__":
    dslib.run(main)
