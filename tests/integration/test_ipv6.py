#!/usr/bin/env python3
"""--listen [::1]:PORT (alone and next to an IPv4 listener) accepts mail,
and the spool records the client as ::1."""
import smtplib
import socket

import dslib


def main(t):
    if not dslib.ipv6_loopback_available():
        raise dslib.Skip("::1 is not configured on this host")
    p6 = dslib.free_port(socket.AF_INET6, "::1")
    p4 = dslib.free_port()
    srv = t.server(listen=[("::1", p6), ("127.0.0.1", p4)]).start()
    data = b"Subject: v6\r\nMessage-ID: <v6@it.example>\r\n\r\nover IPv6\r\n"
    ids = {}
    for host, port in (("::1", p6), ("127.0.0.1", p4)):
        s = smtplib.SMTP(host, port, timeout=20)
        try:
            t.eq(s.ehlo("it.example")[0], 250, "EHLO over %s" % host)
            s.mail("a@localhost")
            s.rcpt("u@localhost")
            code, resp = s.data(data)
            t.eq(code, 250, "message over %s accepted" % host, resp)
            ids[host] = dslib.queued_id(resp)
            s.quit()
        finally:
            s.close()
    entries = srv.list()
    for host, qid in ids.items():
        e = dslib.entry_by_id(entries, qid)
        if "client_addr" in e:
            t.eq(e["client_addr"], host, "client_addr recorded as %s" % host)
        hdr = t.check_stored(srv, e, data, "message over %s" % host)
        t.check(host.encode() in hdr, "Received: header names %s" % host, hdr)
    t.eq(srv.stop(), 0, "server exits 0")


if __name__ == "__main__":
    dslib.run(main)
