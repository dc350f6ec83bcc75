"""Shared helpers for dotspool integration tests (stdlib only).

Every test script:
    import dslib
    def main(t): ...            # t is a dslib.Test
    dslib.run(main)             # parses --build, maps outcome to exit code

Exit codes: 0 pass, 1 fail (with the transcript), 77 skip (a required
external tool or host feature is missing; the reason is printed).
Network use is loopback only. Every server started is stopped by its own PID
and every temporary directory removed, whatever happens (try/finally and
atexit).
"""

import argparse
import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

SKIP = 77
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
CTL_TIMEOUT_S = 30.0


class Skip(Exception):
    """Raise to exit 77; the message says why."""


class Fail(Exception):
    """Raise (or call Test.check) to fail the test."""


_servers = []      # running servers, killed at exit
_all_servers = []  # every server started, for logs on failure
_tmpdirs = []


def kill_servers(before_kill=None):
    """SIGKILL (by PID) every server started and not yet stopped; before_kill(srv) is called first."""
    for srv in list(_servers):
        if before_kill:
            try:
                before_kill(srv)
            except Exception:
                pass
        try:
            srv.kill()
        except Exception:
            pass


def _cleanup():
    kill_servers()
    if os.environ.get("DS_KEEP"):
        for d in _tmpdirs:
            print("kept", d)
        return
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)
    _tmpdirs.clear()


atexit.register(_cleanup)


def mkdtemp(prefix="ds-it-"):
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


# Listening ports come from below the kernel's ephemeral range (ip_local_port_range, 32768-60999 by
# default): a port taken from inside it can be handed, between a server's stop and its restart, to an
# outgoing connection as its source port (a readiness probe, a delivery, a scrape), and the restart
# then fails with EADDRINUSE although nothing listens there (gap_compact did, under -j4).
_PORT_LOW, _PORT_HIGH = 20000, 32767
_ports_given = set()  # never the same port twice in one test (it may not be bound yet)


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A port below the ephemeral range that nothing is bound to on host right now."""
    rnd = random.SystemRandom()
    for _ in range(200):
        port = rnd.randint(_PORT_LOW, _PORT_HIGH)
        if port in _ports_given:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    with socket.socket(family, socket.SOCK_STREAM) as s:  # a crowded range: the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def fmt_addr(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def ipv6_loopback_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_port(host, port, timeout_s, proc=None, hello=None, banner=None):
    """Wait until host:port accepts a TCP connection (bounded).

    With hello (bytes), the probe behaves like a polite client: it sends
    hello (b"" for nothing), reads the greeting, says QUIT and reads the reply
    before closing, so readiness does not depend on how the server copes with
    an abrupt close (test_limits checks that separately). With banner (bytes,
    e.g. b"220"), a greeting that does not start with it is not ready yet.
    """
    deadline = time.monotonic() + timeout_s
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect((host, port))
                if hello is not None:
                    if hello:
                        s.sendall(hello)
                    got = b""
                    while b"\r\n" not in got:
                        chunk = s.recv(512)
                        if not chunk:
                            break
                        got += chunk
                    if got.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        try:
                            while s.recv(512):
                                pass
                        except OSError:
                            pass
                    if banner is not None and not got.startswith(banner):
                        raise OSError("greeting %r" % got[:80])
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Server:
    """build/dotspool on loopback ports with its own spool directory.

    binary: the server executable (default BUILD/dotspool); logdir: where the
    logs go and the server runs (default a temporary directory).
    """

    START_TIMEOUT_S = START_TIMEOUT_S
    READY_BANNER = None  # e.g. b"220": start() waits for this greeting on every port

    def __init__(self, build, spool=None, listen=None, lmtp=None, proxy=None, extra=(), threads=None, env=None,
                 binary=None, logdir=None):
        self.build = build
        self.bin = binary or os.path.join(build, "dotspool")
        self.spool = spool or os.path.join(mkdtemp(), "spool")
        self.host = "127.0.0.1"
        if listen is None:
            listen = free_port()
        if isinstance(listen, int):
            self.listen = [(self.host, listen)]
        else:
            self.listen = list(listen)  # [(host, port), ...]
        self.port = self.listen[0][1]
        self.lmtp = lmtp
        self.proxy = proxy
        self.extra = list(extra)
        self.threads = threads
        self.env = dict(env or {})  # added to the server's environment (e.g. LD_PRELOAD)
        self.proc = None
        self.logdir = logdir or mkdtemp("ds-it-log-")
        self.starts = 0

    def argv(self):
        a = [self.bin]
        for h, p in self.listen:
            a += ["--listen", fmt_addr(h, p)]
        if self.lmtp:
            a += ["--lmtp-listen", fmt_addr(*self.lmtp)]
        if self.proxy:
            a += ["--proxy-listen", fmt_addr(*self.proxy)]
        a += ["--spool", self.spool]
        if self.threads:
            a += ["--threads", str(self.threads)]
        return a + self.extra

    def start(self, wait=True):
        if not os.access(self.bin, os.X_OK):
            raise Fail("server binary missing: %s (build target dotspool)" % self.bin)
        self.starts += 1
        self.log_path = os.path.join(self.logdir, "server.%d.log" % self.starts)
        log = open(self.log_path, "wb")
        argv = self.argv()
        print("  start:", " ".join(["%s=%s" % kv for kv in sorted(self.env.items())] + argv))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.logdir, env=dict(os.environ, **self.env) if self.env else None)
        log.close()
        _servers.append(self)
        if self not in _all_servers:
            _all_servers.append(self)
        if wait:
            ports = [(h, p, b"") for h, p in self.listen]
            if self.lmtp:
                ports.append(self.lmtp + (b"",))
            if self.proxy:
                ports.append(self.proxy + (b"PROXY UNKNOWN\r\n",))
            for h, p, hello in ports:
                if not wait_port(h, p, self.START_TIMEOUT_S, self.proc, hello, self.READY_BANNER):
                    rc = self.proc.poll()
                    self.kill()
                    raise Fail("server did not accept on %s within %.0f s (exit %s)\n%s"
                               % (fmt_addr(h, p), self.START_TIMEOUT_S, rc, self.log()))
        return self

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        if self.running():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout_s):
        """Exit code, or None if still running after timeout_s."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout_s=STOP_TIMEOUT_S):
        """Signal, wait (bounded), then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.running():
            os.kill(self.proc.pid, sig)
        rc = self.wait(timeout_s)
        if rc is None:
            self.kill()
            rc = "killed after %.0f s" % timeout_s
        if self in _servers:
            _servers.remove(self)
        return rc

    def kill(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        if self in _servers:
            _servers.remove(self)

    def log_text(self):
        """The whole log of the last start, or None if there is none."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, AttributeError):
            return None

    def log(self, tail_bytes=4000):
        data = self.log_text()
        if data is None:
            return "(no server log)"
        return "---- server log (%s) ----\n%s\n---- end ----" % (
            getattr(self, "log_path", "?"), data[-tail_bytes:])

    # spool inspection through dotspool-ctl
    def ctl(self, *args, check=True):
        return ctl(self.build, self.spool, *args, check=check)

    def list(self):
        return list_json(self.build, self.spool)

    def cat(self, msg_id):
        return ctl(self.build, self.spool, "cat", str(msg_id)).stdout

    def verify(self):
        return ctl(self.build, self.spool, "verify", check=False)


def ctl(build, spool, *args, check=True):
    exe = os.path.join(build, "dotspool-ctl")
    if not os.access(exe, os.X_OK):
        raise Fail("dotspool-ctl missing: %s" % exe)
    argv = [exe, "--spool", spool] + [str(a) for a in args]
    try:
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=CTL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Fail("timeout: %s" % " ".join(argv))
    if check and cp.returncode != 0:
        raise Fail("%s -> exit %d\nstdout: %r\nstderr: %r" % (" ".join(argv), cp.returncode, cp.stdout[:2000],
                                                             cp.stderr[:2000]))
    return cp


def rcpt_addrs(entry):
    """rcpt_to as a list of address strings (entries may be strings or objects)."""
    out = []
    for r in entry.get("rcpt_to", []):
        if isinstance(r, dict):
            out.append(r.get("addr", r.get("address", "")))
        else:
            out.append(r)
    return out


def list_json(build, spool):
    cp = ctl(build, spool, "list", "--json")
    out = []
    for n, line in enumerate(cp.stdout.decode("utf-8", "replace").splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as e:
            raise Fail("list --json line %d is not JSON (%s): %r" % (n + 1, e, line[:300]))
    return out


def split_received(stored):
    """Split stored bytes into (trace header block, data).

    The server prepends exactly one Received: header, possibly folded over
    several lines (continuations start with SP or HTAB), each ending CRLF.
    """
    if not stored.startswith(b"Received:"):
        raise Fail("stored message does not start with a Received: header: %r" % stored[:200])
    pos = 0
    while True:
        end = stored.find(b"\r\n", pos)
        if end < 0:
            raise Fail("unterminated Received: header: %r" % stored[:300])
        pos = end + 2
        if pos >= len(stored) or stored[pos:pos + 1] not in (b" ", b"\t"):
            break
    return stored[:pos], stored[pos:]


def find_message_id(data):
    m = re.search(rb"(?im)^Message-ID:\s*<([^>\r\n]+)>", data)
    return m.group(1).decode("ascii", "replace") if m else None


def message_copies(srv):
    """"<Message-ID>" -> number of copies stored in srv's spool (dotspool-ctl list and cat)."""
    out = {}
    for e in srv.list():
        mid = "<%s>" % find_message_id(srv.cat(e["id"]))
        out[mid] = out.get(mid, 0) + 1
    return out


class RawSMTP:
    """A minimal line client for exact protocol checks (no smtplib magic)."""

    def __init__(self, host, port, timeout_s=10.0, family=None):
        fam = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect((host, port))
        self.buf = b""
        self.transcript = []

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append("C: %r" % data[:300])
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        """Read one (possibly multi-line) reply -> (code, text)."""
        lines = []
        while True:
            line = self._line()
            self.transcript.append("S: %s" % line.decode("utf-8", "replace"))
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise Fail("bad reply line %r" % lines[-1])
        return code, b"\n".join(l[4:] for l in lines).decode("utf-8", "replace")

    def cmd(self, line):
        self.send(line if line.endswith("\r\n") else line + "\r\n")
        return self.reply()

    def closed(self, timeout_s=5.0):
        """True if the server closes the connection within timeout_s (reading what is left)."""
        self.sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
                self.transcript.append("S(raw): %r" % chunk[:300])
        except socket.timeout:
            return False
        except OSError:
            return True  # reset counts as closed
        return False

    def quit(self):
        """Polite end: QUIT, read the reply and the close, then close."""
        try:
            self.sock.settimeout(5)
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
            self.closed(5)
        except (OSError, ConnectionError, Fail):
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def text(self):
        return "\n".join(self.transcript)


def send_original(t, port, body, what):
    """One message (s@src.test to r@dest.test) over a fresh connection, checked for its 250 and left
    open after it, not a byte more: the gap tests then reset or close it. -> (connection, reply
    text of the 250)."""
    c = RawSMTP("127.0.0.1", port)
    c.reply()
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<s@src.test>")
    c.cmd("RCPT TO:<r@dest.test>")
    c.cmd("DATA")
    c.send(body + b".\r\n")
    code, text = c.reply()
    t.eq(code, 250, "%s got its 250" % what)
    return c, text


class Test:
    def __init__(self, name, build):
        self.name = name
        self.build = os.path.abspath(build)
        self.checks = 0
        self.notes = []

    def check(self, cond, what, detail=""):
        self.checks += 1
        if not cond:
            raise Fail("check failed: %s\n%s" % (what, detail))
        print("  ok:", what)

    def eq(self, got, want, what, detail=""):
        self.check(got == want, what, "got  %r\nwant %r\n%s" % (got, want, detail))

    def server(self, **kw):
        return Server(self.build, **kw)

    def check_stored(self, srv, entry, want_data, what):
        """cat(entry) == Received: header + want_data, byte for byte."""
        stored = srv.cat(entry["id"])
        hdr, data = split_received(stored)
        if data != want_data:
            i = next((k for k in range(min(len(data), len(want_data))) if data[k] != want_data[k]),
                     min(len(data), len(want_data)))
            raise Fail("%s: stored bytes differ (stored %d, sent %d, first difference at %d)\n"
                       "stored[%d:]: %r\nsent[%d:]:   %r\nheader: %r"
                       % (what, len(data), len(want_data), i, i, data[i:i + 120], i, want_data[i:i + 120],
                          hdr[:300]))
        print("  ok: %s: %d bytes identical after the Received: header" % (what, len(data)))
        self.checks += 1
        return hdr


def sanitized_build(build):
    """True if build is a DS_SANITIZE=ON (ASan + UBSan) build directory."""
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            return "DS_SANITIZE:BOOL=ON" in f.read()
    except OSError:
        return False


def need_tool(name):
    path = shutil.which(name)
    if not path:
        raise Skip("required tool %r not found in PATH" % name)
    return path


def run(main, name=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("DS_BUILD", "build"),
                    help="build directory holding dotspool and dotspool-ctl")
    args = ap.parse_args()
    name = name or os.path.basename(sys.argv[0])
    t = Test(name, args.build)
    print("== %s (build %s)" % (name, t.build))
    t0 = time.monotonic()
    rc = 1
    try:
        main(t)
        rc = 0
        print("PASS %s: %d checks in %.1f s" % (name, t.checks, time.monotonic() - t0))
    except Skip as e:
        rc = SKIP
        print("SKIP %s: %s" % (name, e))
    except Fail as e:
        print("FAIL %s after %d checks: %s" % (name, t.checks, e))
        for srv in _all_servers:
            print(srv.log())
    except Exception:
        print("FAIL %s after %d checks: unexpected exception" % (name, t.checks))
        traceback.print_exc(file=sys.stdout)
        for srv in _all_servers:
            print(srv.log())
    finally:
        sys.stdout.flush()
        _cleanup()
    sys.exit(rc)


def queued_id(reply_text):
    """The spool id from a "250 2.0.0 Ok: queued as <ID>" reply, or None."""
    if isinstance(reply_text, bytes):
        reply_text = reply_text.decode("utf-8", "replace")
    m = re.search(r"queued as <?([^\s>]+)>?", reply_text)
    return m.group(1) if m else None


def entry_by_id(entries, msg_id):
    hits = [e for e in entries if str(e.get("id")) == str(msg_id)]
    if len(hits) != 1:
        raise Fail("id %s listed %d times in list --json (%d entries): %r"
                   % (msg_id, len(hits), len(entries), [e.get("id") for e in entries][:50]))
    return hits[0]


def body_lines(n_bytes, tag="line", width=76):
    """ASCII CRLF text of about n_bytes, each line distinct."""
    out = []
    total = 0
    i = 0
    while total < n_bytes:
        line = ("%s %08d " % (tag, i)).encode()
        line += b"x" * max(0, width - len(line)) + b"\r\n"
        out.append(line)
        total += len(line)
        i += 1
    return b"".join(out)
