#!/usr/bin/env python3
"""A TCP proxy that cuts connections exactly in the RFC 1047 synchronization gap.

It forwards both ways and follows the SMTP/LMTP dialogue well enough to know
which server reply answers the end of a message: the final dot of DATA, BDAT
... LAST, and with LMTP or PRDR every reply after the data. For a chosen set
of messages (a seeded fraction, or explicit message numbers) it swallows that
reply and resets both sides (SO_LINGER 0): the server has sent its 250, the
client never sees it, both get a RST.

Messages are numbered 1, 2, ... in the order their data ends, across all
connections. Each cut is printed as "CUT n" (and kept in .cuts).

Library use (tests): p = CutProxy(("127.0.0.1", 2525), fraction=0.3, seed=7);
p.start(); ... p.port ...; p.stop(). CLI: cutproxy.py --listen 127.0.0.1:PORT
--to 127.0.0.1:2525 [--fraction F --seed S] [--cut 1,3] [--lmtp] [--log FILE]
[--max-cuts K] (Postfix runs against the CLI in its namespace).
"""

import argparse
import random
import re
import select
import socket
import struct
import sys
import threading
import time

_CMD_RE = re.compile(rb"^([A-Za-z]+)")


class _Conn:
    """One proxied connection and its dialogue tracker."""

    def __init__(self, proxy, csock, ssock):
        self.p = proxy
        self.c = csock
        self.s = ssock
        self.cbuf = b""         # client bytes not parsed yet
        self.mode = "cmd"       # cmd | data | bdat
        self.bdat_left = 0
        self.bdat_last = False
        self.rcpts = 0
        self.prdr = False
        self.tail = b"\r\n"     # last bytes of data, for CRLF.CRLF across reads
        self.expect = ["greet"]  # reply kinds in order; ("dot", msgno) for end-of-message replies
        self.sbuf = b""
        self.cut_no = 0

    # ---- client -> server ----
    def _end_message(self):
        n = self.p._next_message()
        # LMTP: one reply per recipient; PRDR: 353, one per recipient, then the final 250.
        k = max(self.rcpts, 1) if self.p.lmtp else 1
        if self.prdr:
            k = self.rcpts + 2
        for _ in range(k):
            self.expect.append(("dot", n))
        self.rcpts = 0
        self.prdr = False

    def client_bytes(self, data):
        self.cbuf += data
        while self.cbuf:
            if self.mode == "data":
                # Look for CRLF.CRLF (data starts after the 354, i.e. at line start).
                hay = self.tail + self.cbuf
                i = hay.find(b"\r\n.\r\n")
                if i < 0:
                    self.tail = hay[-4:]
                    self.cbuf = b""
                    return
                used = i + 5 - len(self.tail)
                self.cbuf = self.cbuf[used:]
                self.tail = b"\r\n"
                self.mode = "cmd"
                self._end_message()
                continue
            if self.mode == "bdat":
                k = min(self.bdat_left, len(self.cbuf))
                self.cbuf = self.cbuf[k:]
                self.bdat_left -= k
                if self.bdat_left == 0:
                    self.mode = "cmd"
                    if self.bdat_last:
                        self._end_message()
                    else:
                        self.expect.append("bdat")
                continue
            i = self.cbuf.find(b"\n")
            if i < 0:
                return
            line, self.cbuf = self.cbuf[:i + 1], self.cbuf[i + 1:]
            m = _CMD_RE.match(line)
            verb = m.group(1).upper() if m else b""
            if verb == b"BDAT":
                parts = line.split()
                self.bdat_left = int(parts[1])
                self.bdat_last = len(parts) > 2 and parts[2].upper() == b"LAST"
                self.mode = "bdat"
                if self.bdat_left == 0:
                    self.mode = "cmd"
                    if self.bdat_last:
                        self._end_message()
                    else:
                        self.expect.append("bdat")
                continue
            if verb == b"DATA":
                self.expect.append("data")
                self.mode = "data"  # assumes 354 (tests only send valid transactions)
                self.tail = b"\r\n"
                continue
            if verb == b"RCPT":
                self.rcpts += 1
            if verb == b"MAIL" and b"PRDR" in line.upper():
                self.prdr = True
            self.expect.append("cmd")

    # ---- server -> client ----
    def server_bytes(self, data):
        """Returns the bytes to forward, or None to cut now."""
        self.sbuf += data
        out = b""
        while True:
            i = self.sbuf.find(b"\r\n")
            if i < 0:
                break
            line, rest = self.sbuf[:i + 2], self.sbuf[i + 2:]
            final = len(line) < 6 or line[3:4] != b"-"
            if final and self.expect:
                kind = self.expect.pop(0)
                if isinstance(kind, tuple) and self.p._should_cut(kind[1]):
                    self.cut_no = kind[1]
                    return None
            out += line
            self.sbuf = rest
        return out


class CutProxy:
    def __init__(self, upstream, listen=("127.0.0.1", 0), fraction=0.0, seed=1, cut=(), lmtp=False,
                 max_cuts=None, log=None):
        self.upstream = upstream
        self.fraction = fraction
        self.rng = random.Random(seed)
        self.cut_set = set(cut)
        self.lmtp = lmtp
        self.max_cuts = max_cuts
        self.log = log
        self.lock = threading.Lock()
        self.messages = 0
        self.decided = {}
        self.cuts = []
        fam = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.ls = socket.socket(fam, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(listen)
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        self.stopping = False
        self.threads = []

    def _next_message(self):
        with self.lock:
            self.messages += 1
            n = self.messages
            cut = n in self.cut_set or (self.fraction > 0 and self.rng.random() < self.fraction)
            if cut and self.max_cuts is not None and len(self.cuts) >= self.max_cuts:
                cut = False
            self.decided[n] = cut
            if cut:
                self.cuts.append(n)
            return n

    def _should_cut(self, n):
        with self.lock:
            return self.decided.get(n, False)

    def _note(self, text):
        line = "%s %.3f\n" % (text, time.time())
        if self.log:
            with open(self.log, "a") as f:
                f.write(line)
        else:
            sys.stdout.write(line)
            sys.stdout.flush()

    @staticmethod
    def _reset(sock):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _serve(self, csock):
        try:
            ssock = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            self._reset(csock)
            return
        ssock.settimeout(None)
        conn = _Conn(self, csock, ssock)
        socks = [csock, ssock]
        try:
            while not self.stopping:
                r, _, _ = select.select(socks, [], [], 0.5)
                for s in r:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        # Orderly end on one side: pass it on (half-close), then finish.
                        other = ssock if s is csock else csock
                        try:
                            other.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        socks = [x for x in socks if x is not s]
                        if not socks:
                            return
                        continue
                    if s is csock:
                        conn.client_bytes(data)
                        ssock.sendall(data)
                    else:
                        out = conn.server_bytes(data)
                        if out is None:
                            self._note("CUT %d" % conn.cut_no)
                            self._reset(ssock)
                            self._reset(csock)
                            return
                        if out:
                            csock.sendall(out)
                if not socks:
                    return
        except OSError:
            pass
        finally:
            for s in (csock, ssock):
                try:
                    s.close()
                except OSError:
                    pass

    def _accept_loop(self):
        while not self.stopping:
            r, _, _ = select.select([self.ls], [], [], 0.2)
            if not r:
                continue
            try:
                c, _ = self.ls.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()

    def start(self):
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.stopping = True
        for t in self.threads:
            t.join(2)
        self.ls.close()


def _hostport(s):
    h, p = s.rsplit(":", 1)
    return h.strip("[]"), int(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--fraction", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cut", default="", help="message numbers to cut, e.g. 1,3")
    ap.add_argument("--max-cuts", type=int, default=None)
    ap.add_argument("--lmtp", action="store_true")
    ap.add_argument("--log", default=None)
    a = ap.parse_args()
    cut = [int(x) for x in a.cut.split(",") if x]
    p = CutProxy(_hostport(a.to), _hostport(a.listen), a.fraction, a.seed, cut, a.lmtp, a.max_cuts, a.log)
    p.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        p.stop()


if __name__ == "__main__":
    main()
