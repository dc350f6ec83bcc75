#!/usr/bin/env python3
"""PROXY protocol on --proxy-listen: a real haproxy (send-proxy-v2 and
send-proxy) in front on loopback, raw v1/v2 headers with fake sources, and
malformed headers closing the connection. The plain listener must not trust
a PROXY line."""
import os
import smtplib
import socket
import struct
import subprocess
import time

import dslib

V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def start_haproxy(t, cfg_dir, fe_v2, fe_v1, backend_port):
    exe = dslib.need_tool("haproxy")
    cfg = os.path.join(cfg_dir, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("""global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe_v2
    bind 127.0.0.1:%d
    default_backend be_v2
frontend fe_v1
    bind 127.0.0.1:%d
    default_backend be_v1
backend be_v2
    server ds 127.0.0.1:%d send-proxy-v2
backend be_v1
    server ds 127.0.0.1:%d send-proxy
""" % (fe_v2, fe_v1, backend_port, backend_port))
    chk = subprocess.run([exe, "-c", "-f", cfg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
    t.eq(chk.returncode, 0, "haproxy accepts the config", chk.stdout.decode(errors="replace"))
    log = open(os.path.join(cfg_dir, "haproxy.log"), "wb")
    proc = subprocess.Popen([exe, "-db", "-f", cfg], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    for p in (fe_v2, fe_v1):
        if not dslib.wait_port("127.0.0.1", p, 10, proc):
            proc.kill()
            proc.wait(5)
            raise dslib.Fail("haproxy did not listen on %d: %s"
                             % (p, open(os.path.join(cfg_dir, "haproxy.log"), "rb").read()[-2000:]))
    return proc


def stop_proc(proc):
    if proc.poll() is None:
        os.kill(proc.pid, 15)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait(5)


def send_via(t, port, src, data, what):
    s = smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(src, 0))
    try:
        t.eq(s.ehlo("it.example")[0], 250, "%s: EHLO" % what)
        s.mail("a@localhost")
        s.rcpt("u@localhost")
        code, resp = s.data(data)
        t.eq(code, 250, "%s: accepted" % what, resp)
        s.quit()
        return dslib.queued_id(resp)
    finally:
        s.close()


def raw_send(t, port, header, data, what, pieces=1):
    c = dslib.RawSMTP("127.0.0.1", port)
    try:
        # pieces > 1: the header arrives in several TCP segments
        step = max(1, len(header) // pieces)
        for i in range(0, len(header), step):
            c.send(header[i:i + step])
            if pieces > 1:
                time.sleep(0.05)
        t.eq(c.reply()[0], 220, "%s: banner after the PROXY header" % what, c.text())
        t.eq(c.cmd("EHLO it.example")[0], 250, "%s: EHLO" % what)
        t.eq(c.cmd("MAIL FROM:<a@localhost>")[0], 250, "%s: MAIL" % what)
        t.eq(c.cmd("RCPT TO:<u@localhost>")[0], 250, "%s: RCPT" % what)
        t.eq(c.cmd("DATA")[0], 354, "%s: DATA" % what)
        c.send(data + b".\r\n")
        code, text = c.reply()
        t.eq(code, 250, "%s: accepted" % what, c.text())
        c.cmd("QUIT")
        return dslib.queued_id(text)
    finally:
        c.close()


def check_addr(t, srv, qid, data, addr, what):
    e = dslib.entry_by_id(srv.list(), qid)
    if "client_addr" in e:
        t.eq(e["client_addr"], addr, "%s: client_addr is %s" % (what, addr))
    hdr = t.check_stored(srv, e, data, what)
    t.check(addr.encode() in hdr, "%s: Received: header shows %s" % (what, addr), hdr)


def malformed(t, port, payload, what):
    c = dslib.RawSMTP("127.0.0.1", port)
    try:
        c.send(payload)
        closed = c.closed(5)
        t.check(closed, "%s: connection closed" % what, c.text())
        t.check(b"220" not in c.buf, "%s: no banner was sent (%r)" % (what, c.buf[:100]))
    finally:
        c.close()


def main(t):
    dslib.need_tool("haproxy")
    proxy_port = dslib.free_port()
    srv = t.server(proxy=("127.0.0.1", proxy_port)).start()
    tmp = dslib.mkdtemp()
    fe_v2, fe_v1 = dslib.free_port(), dslib.free_port()
    hap = start_haproxy(t, tmp, fe_v2, fe_v1, proxy_port)
    try:
        # the client uses 127.0.0.5 as its source; haproxy connects from 127.0.0.1
        data = b"Subject: via haproxy v2\r\nMessage-ID: <hap2@it.example>\r\n\r\nhello\r\n"
        qid = send_via(t, fe_v2, "127.0.0.5", data, "haproxy send-proxy-v2")
        check_addr(t, srv, qid, data, "127.0.0.5", "haproxy send-proxy-v2")
        data = b"Subject: via haproxy v1\r\nMessage-ID: <hap1@it.example>\r\n\r\nhello\r\n"
        qid = send_via(t, fe_v1, "127.0.0.6", data, "haproxy send-proxy")
        check_addr(t, srv, qid, data, "127.0.0.6", "haproxy send-proxy (v1)")
    finally:
        stop_proc(hap)

    data = b"Subject: raw v1\r\n\r\nfake source\r\n"
    hdr = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 %d\r\n" % proxy_port
    qid = raw_send(t, proxy_port, hdr, data, "raw PROXY v1 in 4 segments", pieces=4)
    check_addr(t, srv, qid, data, "192.0.2.7", "raw PROXY v1")

    data = b"Subject: raw v2\r\n\r\nfake v6 source\r\n"
    src6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    dst6 = socket.inet_pton(socket.AF_INET6, "2001:db8::25")
    body = src6 + dst6 + struct.pack("!HH", 40001, 25) + b"\x04\x00\x02zz"  # NOOP TLV
    hdr = V2SIG + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body
    qid = raw_send(t, proxy_port, hdr, data, "raw PROXY v2 TCP6 with a TLV, in 5 segments", pieces=5)
    check_addr(t, srv, qid, data, "2001:db8::7", "raw PROXY v2")

    # v2 LOCAL: the connection's own address is used
    data = b"Subject: local\r\n\r\nlocal\r\n"
    qid = raw_send(t, proxy_port, V2SIG + b"\x20\x00\x00\x00", data, "PROXY v2 LOCAL")
    check_addr(t, srv, qid, data, "127.0.0.1", "PROXY v2 LOCAL")

    before = len(srv.list())
    malformed(t, proxy_port, b"EHLO it.example\r\n", "no PROXY header")
    malformed(t, proxy_port, b"PROXY TCP4 999.0.2.7 127.0.0.1 1 2\r\n", "v1 bad address")
    malformed(t, proxy_port, b"PROXY TCP4 192.0.2.7 127.0.0.1 70000 2\r\n", "v1 port > 65535")
    malformed(t, proxy_port, b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n", "v1 bare LF")
    malformed(t, proxy_port, b"PROXY " + b"x" * 200, "v1 too long")
    malformed(t, proxy_port, V2SIG + b"\x21\x11\x00\x04abcd", "v2 length too short for AF_INET")
    malformed(t, proxy_port, V2SIG + b"\x21\x12\x00\x0c" + b"\0" * 12, "v2 DGRAM")
    malformed(t, proxy_port, V2SIG + b"\x21\x11\xff\xff", "v2 length over the bound")
    t.eq(len(srv.list()), before, "malformed headers stored nothing")

    # the plain listener must not honour a PROXY line
    c = dslib.RawSMTP("127.0.0.1", srv.port)
    try:
        t.eq(c.reply()[0], 220, "plain listener greets first")
        code, _ = c.cmd("PROXY TCP4 192.0.2.9 127.0.0.1 1 2")
        t.check(500 <= code <= 599, "plain listener answers a PROXY line with 5xx (%d)" % code, c.text())
    finally:
        c.close()
    t.eq(srv.stop(), 0, "server exits 0")


if __name__ == "__main__":
    dslib.run(main)
