#!/usr/bin/env python3
"""Send with swaks (a real third-party client): plain, --pipeline, a large
attachment, and LMTP against --lmtp-listen; check every 250 in the spool."""
import email
import email.policy
import os
import re
import subprocess
import uuid

import dslib


def write_data(path, data):
    # swaks always sends CRLF before the terminating dot, so the file holds
    # the data without its last CRLF and the server must store it with one.
    assert data.endswith(b"\r\n")
    with open(path, "wb") as f:
        f.write(data[:-2])


def swaks(t, argv, what):
    full = ["swaks", "--server", "127.0.0.1", "--helo", "it.example", "--timeout", "30"] + argv
    print("  run:", " ".join(full))
    cp = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    out = cp.stdout.decode("utf-8", "replace")
    t.eq(cp.returncode, 0, "%s: swaks exits 0" % what, out[-3000:])
    # Replies after the data: "<-  250 2.0.0 Ok: queued as ID" (one per recipient for LMTP)
    ids = re.findall(r"^<-\s+250[ -].*?queued as <?([^\s>]+)>?", out, re.M)
    t.check(ids, "%s: swaks saw a 'queued as' reply" % what, out[-3000:])
    return ids, out


def main(t):
    dslib.need_tool("swaks")
    tmp = dslib.mkdtemp()
    lmtp_port = dslib.free_port()
    srv = t.server(lmtp=("127.0.0.1", lmtp_port), threads=2).start()
    port = str(srv.port)
    expect = []  # (what, id, mail_from, rcpts, data or None, check function)

    # 1. plain, our own data file (CRLF, no swaks tokens) so the bytes are known
    mid = "%s@it.example" % uuid.uuid4()
    data = (("From: a@localhost\r\nTo: u@localhost\r\nSubject: swaks plain\r\nMessage-ID: <%s>\r\n\r\n" % mid)
            .encode() + b"line one\r\n.leading dot\r\nlast\r\n")
    path = os.path.join(tmp, "plain.eml")
    write_data(path, data)
    ids, _ = swaks(t, ["--port", port, "--from", "a@localhost", "--to", "u@localhost", "--data", "@" + path],
                   "plain")
    expect.append(("plain", ids[0], "a@localhost", ["u@localhost"], data))

    # 2. pipelining, two recipients
    mid = "%s@it.example" % uuid.uuid4()
    data = (("From: a@localhost\r\nSubject: swaks pipeline\r\nMessage-ID: <%s>\r\n\r\n" % mid).encode()
            + dslib.body_lines(20000, "pipe"))
    path = os.path.join(tmp, "pipe.eml")
    write_data(path, data)
    ids, out = swaks(t, ["--port", port, "--pipeline", "--from", "b@localhost", "--to",
                         "u1@localhost,u2@localhost", "--data", "@" + path], "pipeline")
    t.check("PIPELINING" in out, "pipeline: server advertised PIPELINING", out[:2000])
    expect.append(("pipeline", ids[0], "b@localhost", ["u1@localhost", "u2@localhost"], data))

    # 3. a 600 KiB binary attachment (swaks builds the MIME; compare the decoded part)
    blob = os.urandom(600 * 1024)
    apath = os.path.join(tmp, "blob.bin")
    with open(apath, "wb") as f:
        f.write(blob)
    ids, _ = swaks(t, ["--port", port, "--from", "c@localhost", "--to", "u@localhost", "--attach-type",
                       "application/octet-stream", "--attach", "@" + apath], "attachment")
    expect.append(("attachment", ids[0], "c@localhost", ["u@localhost"], blob))

    # 4. LMTP: one 250 per recipient, all for the same stored message
    mid = "%s@it.example" % uuid.uuid4()
    data = (("From: d@localhost\r\nSubject: swaks lmtp\r\nMessage-ID: <%s>\r\n\r\nvia LMTP\r\n" % mid)
            .encode())
    path = os.path.join(tmp, "lmtp.eml")
    write_data(path, data)
    ids, out = swaks(t, ["--port", str(lmtp_port), "--protocol", "LMTP", "--from", "d@localhost", "--to",
                         "l1@localhost,l2@localhost", "--data", "@" + path], "lmtp")
    t.check("LHLO" in out, "lmtp: swaks spoke LHLO")
    t.eq(len(ids), 2, "lmtp: one 250 reply per recipient", out[-2000:])
    t.eq(ids[0], ids[1], "lmtp: both replies name the same stored message")
    expect.append(("lmtp", ids[0], "d@localhost", ["l1@localhost", "l2@localhost"], data))

    entries = srv.list()
    t.eq(len(entries), len(expect), "list shows one entry per accepted message")
    for what, qid, frm, rcpts, data in expect:
        e = dslib.entry_by_id(entries, qid)
        t.eq(e.get("mail_from"), frm, "%s: mail_from" % what)
        t.eq(dslib.rcpt_addrs(e), rcpts, "%s: rcpt_to" % what)
        if what == "attachment":
            _, stored = dslib.split_received(srv.cat(qid))
            msg = email.message_from_bytes(stored, policy=email.policy.default)
            parts = [p for p in msg.walk() if p.get_content_type() == "application/octet-stream"]
            t.eq(len(parts), 1, "attachment: one application/octet-stream part")
            t.check(parts[0].get_payload(decode=True) == blob, "attachment: decoded part equals the 600 KiB file")
            t.check(b"\r\n" in stored and b"\n" not in stored.replace(b"\r\n", b""),
                    "attachment: stored with CRLF line ends only")
        else:
            t.check_stored(srv, e, data, what)
        if what == "lmtp" and "proto" in e:
            t.eq(e["proto"], "LMTP", "lmtp: proto recorded as LMTP")
    v = srv.verify()
    t.eq(v.returncode, 0, "dotspool-ctl verify exits 0", v.stdout + v.stderr)
    t.eq(srv.stop(), 0, "server exits 0 on SIGTERM")


if __name__ == "__main__":
    dslib.run(main)
