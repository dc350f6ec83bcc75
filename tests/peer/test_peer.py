#!/usr/bin/env python3
"""Self-test of tests/peer/peer.py, driven by Python's smtplib on loopback (stdlib only).

Each case starts its own peer (a subprocess on 127.0.0.1 with a free port, or a unix socket),
talks to it and stops it by its PID (SIGTERM, then SIGKILL after 10 s). Exit 0 pass, 1 fail.
"""

import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

MSG = (b"From: <a@example.org>\r\nTo: <ok@example.net>\r\nSubject: peer test\r\n\r\n"
       b".leading dot\r\n..two dots\r\n.\r\nend\r\n")


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


class Peer:
    def __init__(self, tmp, *args, script=None, unix=False):
        self.dir = tempfile.mkdtemp(prefix="peer-", dir=tmp)
        self.out = os.path.join(self.dir, "out")
        self.port_file = os.path.join(self.dir, "port")
        argv = [sys.executable, PEER, "--outdir", self.out]
        if unix:
            self.sock = os.path.join(self.dir, "lmtp.sock")
            argv += ["--unix", self.sock]
        else:
            self.sock = None
            argv += ["--listen", "127.0.0.1:0", "--port-file", self.port_file]
        if script is not None:
            sp = os.path.join(self.dir, "script.json")
            with open(sp, "w") as f:
                json.dump(script, f)
            argv += ["--script", sp]
        argv += list(args)
        self.stderr = open(os.path.join(self.dir, "stderr"), "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        want = self.sock or self.port_file
        while not os.path.exists(want):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.stop()
                raise Fail("peer did not start (exit %s): %s" % (rc, self.log()))
            time.sleep(0.02)
        self.port = None if unix else int(open(self.port_file).read())

    def smtp(self, timeout=10):
        return smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)

    def index(self):
        p = os.path.join(self.out, "index.jsonl")
        if not os.path.exists(p):
            return []
        with open(p) as f:
            return [json.loads(l) for l in f if l.strip()]

    def file(self, name):
        with open(os.path.join(self.out, name), "rb") as f:
            return f.read()

    def log(self):
        out = []
        for name in (os.path.join(self.out, "peer.log"), os.path.join(self.dir, "stderr")):
            try:
                with open(name, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace")[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self):
        """SIGTERM by PID, bounded wait, SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = "killed"
        self.stderr.close()
        return rc


def case_smtp_mix(tmp):
    """Per-recipient 450/550 at RCPT from a JSON script; DSN parameters recorded; bytes un-stuffed."""
    script = {"rules": [{"rcpt": "^bad@", "at": "rcpt", "reply": "550 5.1.1 no such user"},
                        {"rcpt": "^later@", "at": "rcpt", "reply": "450 4.2.0 try again", "times": 1}]}
    p = Peer(tmp, script=script)
    try:
        with p.smtp() as s:
            s.ehlo("client.test")
            check(s.has_extn("pipelining") and s.has_extn("dsn") and s.has_extn("8bitmime"), "extensions")
            check(s.esmtp_features.get("size") == str(10 * 1024 * 1024), "SIZE %r" % s.esmtp_features.get("size"))
            check(not s.has_extn("chunking") and not s.has_extn("prdr"), "CHUNKING/PRDR off by default")
            refused = s.sendmail("a@example.org", ["ok@example.net", "bad@example.net", "later@example.net"], MSG,
                                 mail_options=["RET=HDRS", "ENVID=e1"],
                                 rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;ok@example.net"])
            check(set(refused) == {"bad@example.net", "later@example.net"}, "refused %r" % refused)
            check(refused["bad@example.net"][0] == 550 and refused["later@example.net"][0] == 450,
                  "codes %r" % refused)
            # the 450 rule fired once: the retry is accepted
            refused = s.sendmail("a@example.org", ["later@example.net"], MSG)
            check(refused == {}, "retry refused %r" % refused)
        idx = p.index()
        check([e["rcpt"] for e in idx] == ["ok@example.net", "later@example.net"], "index %r" % idx)
        e = idx[0]
        check(p.file(e["file"]) == MSG, "stored bytes differ: %r" % p.file(e["file"]))
        check(e["size"] == len(MSG) and not e["dropped"] and e["reply"].startswith("250"), "entry %r" % e)
        check("RET=HDRS" in e["mail_params"] and "ENVID=e1" in e["mail_params"], "mail params %r" % e)
        check(e["rcpt_params"] == "NOTIFY=FAILURE ORCPT=rfc822;ok@example.net", "rcpt params %r" % e)
        check(idx[1]["msg"] == 2 and p.file(idx[1]["file"]) == MSG, "second message")
    finally:
        check(p.stop() == 0, "exit code")


def lmtp_send(lm, rcpts, msg):
    """MAIL, RCPTs, DATA and one reply per accepted recipient (smtplib reads only one)."""
    code, _ = lm.mail("a@example.org")
    check(code == 250, "MAIL %d" % code)
    for r in rcpts:
        code, _ = lm.rcpt(r)
        check(code == 250, "RCPT %s %d" % (r, code))
    code, _ = lm.docmd("DATA")
    check(code == 354, "DATA %d" % code)
    lm.send(smtplib._quote_periods(msg) + b".\r\n")
    return [lm.getreply() for _ in rcpts]


def case_lmtp(tmp):
    """LMTP over a unix socket: one reply per recipient after the data, flags instead of a script."""
    p = Peer(tmp, "--lmtp", "--rule", "data:^full@=552 5.2.2 mailbox full", "--rule",
             "data:^tmp@=451 4.3.0 try later@1", unix=True)
    try:
        lm = smtplib.LMTP(p.sock, timeout=10)
        try:
            code, _ = lm.ehlo("client.test")  # smtplib.LMTP sends LHLO
            check(code == 250, "LHLO %d" % code)
            code, _ = lm.docmd("EHLO", "x")
            check(code == 500, "EHLO in LMTP got %d" % code)
            reps = lmtp_send(lm, ["ok@example.net", "full@example.net", "tmp@example.net"], MSG)
            check([c for c, _ in reps] == [250, 552, 451], "per-recipient replies %r" % reps)
            reps = lmtp_send(lm, ["tmp@example.net"], MSG)  # the 451 rule fired once
            check([c for c, _ in reps] == [250], "retry %r" % reps)
            lm.quit()
        finally:
            lm.close()
        idx = p.index()
        check([e["rcpt"] for e in idx] == ["ok@example.net", "tmp@example.net"], "index %r" % idx)
        check(all(p.file(e["file"]) == MSG and e["proto"] == "LMTP" for e in idx), "bytes")
    finally:
        check(p.stop() == 0, "exit code")
    check(not os.path.exists(p.sock), "socket file removed")


def case_drop_after_dot(tmp):
    """The connection closes after the final dot without a reply; the message was stored (the gap)."""
    p = Peer(tmp, "--drop-after-dot", "1")
    try:
        with p.smtp() as s:
            try:
                s.sendmail("a@example.org", ["ok@example.net"], MSG)
                raise Fail("no disconnect after the dot")
            except smtplib.SMTPServerDisconnected:
                pass
        with p.smtp() as s:
            check(s.sendmail("a@example.org", ["ok@example.net"], MSG) == {}, "second send")
        idx = p.index()
        check([e["dropped"] for e in idx] == [True, False], "index %r" % idx)
        check(all(p.file(e["file"]) == MSG for e in idx), "bytes")
    finally:
        check(p.stop() == 0, "exit code")


def case_stall(tmp):
    """A stall after the dot longer than the client's timeout; the next connection is served at once."""
    p = Peer(tmp, "--stall", "dot=3@1")
    try:
        t0 = time.monotonic()
        s = p.smtp(timeout=1)
        try:
            s.sendmail("a@example.org", ["ok@example.net"], MSG)
            raise Fail("no timeout")
        except (socket.timeout, TimeoutError, smtplib.SMTPServerDisconnected):
            pass
        finally:
            s.close()
        check(time.monotonic() - t0 < 2.5, "client timeout took too long")
        t0 = time.monotonic()
        with p.smtp(timeout=5) as s:
            check(s.sendmail("a@example.org", ["ok@example.net"], MSG) == {}, "after the stall")
        check(time.monotonic() - t0 < 2.0, "second transaction stalled")
    finally:
        check(p.stop() == 0, "exit code")
    # mid-DATA: the peer stops reading after the first data line; a 4 MiB message fills the socket
    # buffers and the client's write times out
    p = Peer(tmp, "--stall", "in_data=5@1")
    try:
        big = MSG + (b"y" * 998 + b"\r\n") * 4096
        s = p.smtp(timeout=1)
        t0 = time.monotonic()
        try:
            s.sendmail("a@example.org", ["ok@example.net"], big)
            raise Fail("no timeout in DATA")
        except (socket.timeout, TimeoutError, smtplib.SMTPServerDisconnected):
            pass
        finally:
            s.close()
        check(time.monotonic() - t0 < 4, "mid-DATA timeout took too long")
        check(p.index() == [], "nothing stored")
    finally:
        check(p.stop() == 0, "exit code")


def case_refuse_421_size_conns(tmp):
    """Refused connections, 421 at MAIL once, SIZE and max_message_size, max_connections."""
    p = Peer(tmp, "--refuse-first", "2", "--reply-421", "mail@1", "--max-message-size", "1000",
             "--max-connections", "1")
    try:
        for _ in range(2):
            try:
                p.smtp().close()
                raise Fail("connection not refused")
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                pass
        with p.smtp() as s:
            try:
                s.sendmail("a@example.org", ["ok@example.net"], MSG)
                raise Fail("no 421")
            except smtplib.SMTPSenderRefused as e:
                check(e.smtp_code == 421, "got %r" % e)
        with p.smtp() as s:
            # max_connections 1: a second concurrent connection gets 421
            try:
                p.smtp().close()
                raise Fail("second connection accepted")
            except smtplib.SMTPConnectError as e:
                check(e.smtp_code == 421, "second connection %r" % e)
            big = MSG + b"x" * 2000 + b"\r\n"
            try:
                s.sendmail("a@example.org", ["ok@example.net"], big)  # smtplib sends SIZE=
                raise Fail("SIZE not refused")
            except smtplib.SMTPSenderRefused as e:
                check(e.smtp_code == 552, "SIZE %r" % e)
            s.rset()
            check(s.mail("a@example.org")[0] == 250, "MAIL without SIZE")
            check(s.rcpt("ok@example.net")[0] == 250, "RCPT")
            code, _ = s.data(big)
            check(code == 552, "too big after the data: %d" % code)
            check(s.sendmail("a@example.org", ["ok@example.net"], MSG) == {}, "a small one")
        check(len(p.index()) == 1, "index %r" % p.index())
    finally:
        check(p.stop() == 0, "exit code")


def case_prdr_bdat(tmp):
    """PRDR per-recipient replies after the data; BDAT chunks stored concatenated."""
    p = Peer(tmp, "--ext", "PIPELINING", "--ext", "PRDR", "--ext", "CHUNKING", "--ext", "SIZE",
             "--rule", "data:^bad@=550 5.7.1 content rejected for this recipient")
    try:
        with p.smtp() as s:
            s.ehlo("client.test")
            check(s.has_extn("prdr") and s.has_extn("chunking") and not s.has_extn("dsn"), "extensions")
            check(s.mail("a@example.org", ["PRDR"])[0] == 250, "MAIL PRDR")
            check(s.rcpt("ok@example.net")[0] == 250 and s.rcpt("bad@example.net")[0] == 250, "RCPT")
            check(s.docmd("DATA")[0] == 354, "DATA")
            s.send(smtplib._quote_periods(MSG) + b".\r\n")
            reps = [s.getreply()[0] for _ in range(4)]
            check(reps == [353, 250, 550, 250], "PRDR replies %r" % reps)

            check(s.mail("a@example.org")[0] == 250 and s.rcpt("ok@example.net")[0] == 250, "MAIL/RCPT")
            part1, part2 = b"Subject: bdat\r\n\r\n.no", b" unstuffing\r\n"
            s.send(b"BDAT %d\r\n" % len(part1) + part1)
            check(s.getreply()[0] == 250, "BDAT 1")
            s.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
            check(s.getreply()[0] == 250, "BDAT LAST")
        idx = p.index()
        check([e["rcpt"] for e in idx] == ["ok@example.net", "ok@example.net"], "index %r" % idx)
        check(p.file(idx[0]["file"]) == MSG, "PRDR bytes")
        check(p.file(idx[1]["file"]) == part1 + part2, "BDAT bytes %r" % p.file(idx[1]["file"]))
    finally:
        check(p.stop() == 0, "exit code")


def case_bounds(tmp):
    """--max-seconds ends the peer by itself; a non-loopback address is refused."""
    p = Peer(tmp, "--max-seconds", "1")
    try:
        rc = p.proc.wait(timeout=10)
        check(rc == 0, "max-seconds exit %r" % rc)
    finally:
        p.stop()
    cp = subprocess.run([sys.executable, PEER, "--listen", "0.0.0.0:0", "--outdir", os.path.join(tmp, "x")],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    check(cp.returncode != 0 and b"loopback" in cp.stdout, "non-loopback listen: %r" % cp.stdout)


CASES = [case_smtp_mix, case_lmtp, case_drop_after_dot, case_stall, case_refuse_421_size_conns,
         case_prdr_bdat, case_bounds]


def main():
    tmp = tempfile.mkdtemp(prefix="ds-peer-test-")
    bad = 0
    try:
        for c in CASES:
            t0 = time.monotonic()
            try:
                c(tmp)
                print("ok   %s (%.1f s)" % (c.__name__, time.monotonic() - t0), flush=True)
            except Exception:
                bad += 1
                print("FAIL %s\n%s" % (c.__name__, traceback.format_exc()), flush=True)
                for d in sorted(os.listdir(tmp)):
                    lp = os.path.join(tmp, d, "out", "peer.log")
                    if os.path.exists(lp):
                        with open(lp, "rb") as f:
                            print("---- %s ----\n%s" % (lp, f.read().decode("utf-8", "replace")[-3000:]))
    finally:
        if os.environ.get("DS_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
