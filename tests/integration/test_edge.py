#!/usr/bin/env python3
"""Edge cases found by load testing:
- a client that half-closes (writes a whole transaction + QUIT, then
  shutdown(SHUT_WR), as `printf ... | nc -N` does) gets every reply, the 250
  of its message included, and the message is stored once;
- a half-close in the middle of DATA stores nothing and the connection closes;
- an envelope whose commit record does not fit the lane's staging memory at
  the end of data (1000 long recipients behind a body that filled it) is
  committed once writes free room, not refused with 451;
- a tiny io_uring (--ring-entries 8) fills its submission queue all the time
  and still serves every message;
- a bare LF or bare CR in a command line gets one 500 5.5.2 and the
  connection closes; the pipelined bytes after it are never executed."""
import socket
import time

import dslib


def read_to_eof(s, timeout_s=10):
    s.settimeout(timeout_s)
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            return data, True
        data += chunk
    return data, False


def half_close(t):
    srv = t.server(threads=1).start()
    body = b"Subject: half\r\nMessage-ID: <half-close@it>\r\n\r\n" + dslib.body_lines(20000)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(b"EHLO half.example\r\nMAIL FROM:<a@localhost>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n" + body +
              b".\r\nQUIT\r\n")
    s.shutdown(socket.SHUT_WR)
    data, eof = read_to_eof(s)
    s.close()
    lines = data.split(b"\r\n")
    t.check(eof, "half-closed client: the server closes after its replies")
    t.check(any(l.startswith(b"250 2.0.0") and b"queued as" in l for l in lines),
            "half-closed client gets the 250 for its message", data[-300:])
    t.check(lines[-2].startswith(b"221"), "and the 221 to its QUIT, last", data[-200:])
    entries = dslib.list_json(t.build, srv.spool)
    t.eq(len(entries), 1, "the message is stored once")
    stored = srv.cat(entries[0]["id"])
    _, data_part = dslib.split_received(stored)
    t.check(data_part == body, "stored bytes are the data sent")

    # Half-close in the middle of DATA: nothing stored, connection closed.
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(b"EHLO half.example\r\nMAIL FROM:<a@localhost>\r\nRCPT TO:<u@localhost>\r\nDATA\r\npartial\r\n")
    s.shutdown(socket.SHUT_WR)
    data, eof = read_to_eof(s)
    s.close()
    t.check(eof, "half-close mid-DATA: the server closes")
    t.check(b"354" in data and b"queued" not in data, "replies up to 354, no 250", data[-200:])
    t.eq(len(dslib.list_json(t.build, srv.spool)), 1, "the partial message is not stored")
    t.eq(srv.stop(), 0, "server exits 0")


def big_envelope(t):
    # 256 KiB of staging: the body fills it down to the reserve, then the
    # commit record (1000 recipients of ~75 bytes) needs more than is left.
    srv = t.server(threads=1, extra=["--spool-buffer-size", "256K", "--segment-size", "4M"]).start()
    rcpts = ["%s%04d@localhost" % ("u" * 60, i) for i in range(1000)]
    for size in (180000, 200000, 220000):
        c = dslib.RawSMTP("127.0.0.1", srv.port, timeout_s=30)
        t.eq(c.reply()[0], 220, "banner")
        t.eq(c.cmd("EHLO big.example")[0], 250, "EHLO")
        t.eq(c.cmd("MAIL FROM:<a@localhost>")[0], 250, "MAIL")
        c.send("".join("RCPT TO:<%s>\r\n" % r for r in rcpts).encode())
        ok = sum(c.reply()[0] == 250 for _ in rcpts)
        t.eq(ok, 1000, "%d bytes: 1000 recipients accepted" % size)
        t.eq(c.cmd("DATA")[0], 354, "DATA")
        body = b"Subject: big envelope\r\n\r\n" + dslib.body_lines(size)
        c.send(body + b".\r\n")
        code, text = c.reply()
        t.eq(code, 250, "%d-byte body behind a 1000-recipient envelope gets 250 (not 451)" % size, text)
        c.quit()
        c.close()
    entries = dslib.list_json(t.build, srv.spool)
    t.eq(len(entries), 3, "three messages stored")
    t.check(all(len(dslib.rcpt_addrs(e)) == 1000 for e in entries), "each with its 1000 recipients")
    v = srv.verify()
    t.eq(v.returncode, 0, "dotspool-ctl verify exits 0", v.stdout + v.stderr)
    t.eq(srv.stop(), 0, "server exits 0")


def one_per_spool(t):
    """A second server on the same spool refuses to start (flock on SPOOL/dotspool.lock)."""
    import subprocess
    srv = t.server(threads=1).start()
    other = subprocess.run([srv.bin, "--listen", "127.0.0.1:%d" % dslib.free_port(), "--spool", srv.spool],
                           capture_output=True, text=True, timeout=20)
    t.eq(other.returncode, 1, "a second server on the same spool exits 1", other.stderr)
    t.check("in use by another dotspool" in other.stderr, "and says why", other.stderr)
    c = dslib.RawSMTP("127.0.0.1", srv.port)
    t.eq(c.reply()[0], 220, "the first server still greets")
    c.close()
    t.eq(srv.stop(), 0, "server exits 0")
    srv.start()  # the lock went with the process
    t.check(srv.running(), "a restart on the same spool takes the lock again")
    t.eq(srv.stop(), 0, "server exits 0 again")


def tiny_ring(t):
    """--ring-entries 8: every turn overflows the submission queue (io_sqe() submits and retries)."""
    srv = t.server(threads=1, extra=["--ring-entries", "8"]).start()
    c = dslib.RawSMTP("127.0.0.1", srv.port)
    t.eq(c.reply()[0], 220, "ring-entries 8: banner")
    t.eq(c.cmd("EHLO ring.example")[0], 250, "EHLO")
    t.eq(c.cmd("MAIL FROM:<a@localhost>")[0], 250, "MAIL")
    t.eq(c.cmd("RCPT TO:<u@localhost>")[0], 250, "RCPT")
    t.eq(c.cmd("DATA")[0], 354, "DATA")
    body = b"Subject: tiny ring\r\n\r\n" + dslib.body_lines(100000)
    c.send(body + b".\r\n")
    code, text = c.reply()
    t.eq(code, 250, "ring-entries 8: the message gets 250", text)
    c.quit()
    # More connections than SQ entries, each pipelining a whole transaction.
    conns = []
    for i in range(24):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        conns.append(s)
    for i, s in enumerate(conns):
        s.sendall(b"EHLO ring.example\r\nMAIL FROM:<a@localhost>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n" +
                  b"Subject: ring %d\r\n\r\n" % i + dslib.body_lines(20000) + b".\r\nQUIT\r\n")
    ok = 0
    for s in conns:
        data, eof = read_to_eof(s, 20)
        s.close()
        ok += eof and b"queued as" in data and b"\r\n221" in data
    t.eq(ok, 24, "ring-entries 8: 24 concurrent pipelined transactions each get 250 and 221")
    t.eq(len(dslib.list_json(t.build, srv.spool)), 25, "25 messages stored")
    v = srv.verify()
    t.eq(v.returncode, 0, "dotspool-ctl verify exits 0", v.stdout + v.stderr)
    t.eq(srv.stop(), 0, "server exits 0")


def bare_newline(t):
    srv = t.server(threads=1).start()
    cases = [
        ("bare LF in the first command", b"EHLO a\nMAIL FROM:<x@localhost>\r\nRCPT TO:<u@localhost>\r\nNOOP\r\n"),
        ("bare CR in the first command", b"EHLO a\rNOOP\r\nNOOP\r\n"),
        ("bare LF after EHLO", b"EHLO a\r\nMAIL FROM:<x@localhost>\nRCPT TO:<u@localhost>\r\nDATA\r\n"
                               b"Subject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n"),
    ]
    for what, data in cases:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(data)
        out, eof = read_to_eof(s)
        s.close()
        replies = [l for l in out.split(b"\r\n") if l][1:]  # after the banner
        if data.startswith(b"EHLO a\r\n"):  # the EHLO reply, up to its last line
            while replies and replies.pop(0).startswith(b"250-"):
                pass
        t.check(eof, what + ": the server closes the connection", out)
        t.check(len(replies) == 1 and replies[0].startswith(b"500 5.5.2 ") and b"bare" in replies[0],
                what + ": one 500 5.5.2 reply, nothing executed after the bare newline", out)
    t.eq(len(dslib.list_json(t.build, srv.spool)), 0, "nothing stored")
    t.eq(srv.stop(), 0, "server exits 0")


def main(t):
    tiny_ring(t)
    bare_newline(t)
    half_close(t)
    big_envelope(t)
    one_per_spool(t)


if __name__ == "__main__":
    dslib.run(main)
