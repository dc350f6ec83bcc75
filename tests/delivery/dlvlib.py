"""Helpers for the delivery tests (issue 14): the scripted next hop (tests/peer/peer.py) as a
child process, sending mail into dotspool, and waiting for what the next hop received.

Every test script imports dslib (tests/integration) for the server and the run harness.
"""

import json
import os
import signal
import smtplib
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "peer"))

import dslib  # noqa: E402

PEER = os.path.join(HERE, "..", "peer", "peer.py")


class Peer:
    """tests/peer/peer.py on 127.0.0.1 (a free port) or a unix socket, stopped by its own PID."""

    def __init__(self, outdir=None, lmtp=False, unix=None, args=(), script=None, port=None):
        self.outdir = outdir or dslib.mkdtemp("ds-peer-")
        self.lmtp = lmtp
        self.unix = unix
        self.port = port if port is not None else (None if unix else dslib.free_port())
        self.args = list(args)
        self.script = script
        self.proc = None

    def url(self):
        if self.unix:
            return "lmtp:%s" % self.unix
        return "%s://127.0.0.1:%d" % ("lmtp" if self.lmtp else "smtp", self.port)

    def start(self):
        argv = [sys.executable, PEER, "--outdir", self.outdir]
        if self.unix:
            argv += ["--unix", self.unix]
        else:
            argv += ["--listen", "127.0.0.1:%d" % self.port]
        if self.lmtp:
            argv += ["--lmtp"]
        if self.script is not None:
            path = os.path.join(self.outdir, "script.json")
            with open(path, "w") as f:
                json.dump(self.script, f)
            argv += ["--script", path]
        argv += self.args
        self.log = open(os.path.join(self.outdir, "peer.stdout"), "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            if self.proc.poll() is not None:
                raise dslib.Fail("peer exited at start: %s" % self.tail())
            if self.unix and os.path.exists(self.unix):
                return self
            if not self.unix and dslib.wait_port("127.0.0.1", self.port, 0.2):
                return self
            time.sleep(0.05)
        raise dslib.Fail("peer not listening after 10 s: %s" % self.tail())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def tail(self, n=3000):
        out = ""
        for name in ("peer.stdout", "peer.log"):
            try:
                with open(os.path.join(self.outdir, name), "rb") as f:
                    out += "\n-- %s --\n" % name + f.read()[-n:].decode("utf-8", "replace")
            except OSError:
                pass
        return out

    def index(self):
        """One dict per accepting recipient (index.jsonl)."""
        out = []
        try:
            with open(os.path.join(self.outdir, "index.jsonl")) as f:
                for line in f:
                    if line.strip():
                        out.append(json.loads(line))
        except OSError:
            pass
        return out

    def data(self, entry):
        with open(os.path.join(self.outdir, entry["file"]), "rb") as f:
            return f.read()


def send(port, sender, rcpts, body, lmtp=False):
    """Send one message to dotspool; returns the queue id from the 250 text (smtplib)."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        s.ehlo("client.test")
        s.mail(sender)
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code != 250:
                raise dslib.Fail("RCPT %s -> %d %r" % (r, code, msg))
        code, msg = s.data(body)
        if code != 250:
            raise dslib.Fail("DATA -> %d %r" % (code, msg))
        s.quit()
    finally:
        s.close()
    return queue_id(msg)


def queue_id(msg):
    text = msg.decode("ascii", "replace") if isinstance(msg, bytes) else msg
    for word in text.replace(":", " ").split():
        if len(word) == 16 and all(c in "0123456789ABCDEF" for c in word):
            return word
    raise dslib.Fail("no queue id in %r" % text)


def wait_for(what, fn, timeout_s, step_s=0.1):
    t0 = time.monotonic()
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() - t0 > timeout_s:
            raise dslib.Fail("timed out after %.0f s waiting for %s" % (timeout_s, what))
        time.sleep(step_s)


def msg_state(srv, qid):
    """The message's entry in dotspool-ctl list --json, or None."""
    for m in srv.list():
        if m.get("id") == qid:
            return m
    return None


def rcpt_states(entry):
    return {r["addr"]: r.get("state") for r in entry.get("rcpt_to", []) if isinstance(r, dict)}


def metric(srv_metrics_port, name, labels=None):
    """Sum of a metric's samples from /metrics (labels: a dict that must match)."""
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % srv_metrics_port, timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, val = line.rpartition(" ")
        if key != name and not key.startswith(name + "{"):
            continue
        if labels:
            if not all('%s="%s"' % (k, v) in key for k, v in labels.items()):
                continue
        total += float(val)
    return total


def deliver_args(urls, retry_min_s=1, extra=()):
    a = []
    for u in urls:
        a += ["--deliver-to", u]
    a += ["--retry-min-s", str(retry_min_s), "--retry-max-s", str(max(retry_min_s * 4, 4)),
          "--deliver-hop-backoff-min-s", "1"]
    return a + list(extra)


# ---------------------------------------------------------------------------------------------
# Added for the delivery test scripts (H7)

import re  # noqa: E402

try:
    import peers  # noqa: E402  (tests/peer/peers.py: netns_enter, real next hops)
except ImportError:  # pragma: no cover
    peers = None


def enter_netns():
    """Re-exec the test in a loopback-only network namespace (peers.netns_enter)."""
    peers.netns_enter()


class DServer(dslib.Server):
    """dotspool with delivery flags, --accept-domain .test, its own metrics port."""

    def __init__(self, build, urls, threads=2, extra=(), metrics=True, retry_min_s=1, **kw):
        self.metrics_port = dslib.free_port() if metrics else None
        a = ["--accept-domain", ".test", "--hostname", "ds.test"]
        if self.metrics_port:
            a += ["--metrics", "127.0.0.1:%d" % self.metrics_port]
        a += deliver_args(urls, retry_min_s=retry_min_s) if urls else []
        a += list(extra)
        super().__init__(build, threads=threads, extra=a, **kw)

    def metric(self, name, labels=None):
        return metric(self.metrics_port, name, labels)

    def events(self, name=None):
        return events(self.log_text() or "", name)


def send_ex(port, sender, rcpts, body, mail_opts=(), rcpt_opts=None, host="127.0.0.1"):
    """Send one message with ESMTP parameters; rcpt_opts: {rcpt: [params]}. Returns the queue id."""
    s = smtplib.SMTP(host, port, timeout=30)
    try:
        s.ehlo("client.test")
        code, msg = s.mail(sender, list(mail_opts))
        if code != 250:
            raise dslib.Fail("MAIL %s -> %d %r" % (sender, code, msg))
        for r in rcpts:
            code, msg = s.rcpt(r, list((rcpt_opts or {}).get(r, ())))
            if code != 250:
                raise dslib.Fail("RCPT %s -> %d %r" % (r, code, msg))
        code, msg = s.data(body)
        if code != 250:
            raise dslib.Fail("DATA -> %d %r" % (code, msg))
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass  # the 250 for DATA is what counts
    finally:
        s.close()
    return queue_id(msg)


_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line):
    """One logfmt line -> dict (quoted values unescaped)."""
    out = {}
    for k, v in _LOGFMT.findall(line):
        if v.startswith('"'):
            v = re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), v[1:-1])
        out[k] = v
    return out


def events(text, name=None):
    """The log's logfmt lines (event=NAME only, if given) as dicts, in order."""
    out = []
    for line in text.splitlines():
        if not line.startswith("ts=") or "event=" not in line:
            continue
        d = logfmt(line)
        if name is None or d.get("event") == name:
            out.append(d)
    return out


def by_queue_id(evs):
    out = {}
    for e in evs:
        out.setdefault(e.get("queue_id"), []).append(e)
    return out


def list_states(srv):
    """{queue id: {rcpt: state}} from dotspool-ctl list --json, or None when the listing does not
    carry per-recipient delivery state yet."""
    out = {}
    seen_state = False
    for m in srv.list():
        st = {}
        for r in m.get("rcpt_to", []):
            if isinstance(r, dict) and "state" in r:
                seen_state = True
                st[r.get("addr", r.get("address"))] = r["state"]
        out[m.get("id")] = st
    return out if seen_state else None


def body(tag, n_bytes, dots=False, eight_bit=False, subject=None):
    """A CRLF message of about n_bytes with unique headers (Message-ID <tag@client.test>)."""
    hdr = ("From: <%s@client.test>\r\nTo: <rcpt@dest.test>\r\nSubject: %s\r\n"
           "Message-ID: <%s@client.test>\r\n" % (tag, subject or tag, tag)).encode()
    if eight_bit:
        hdr += b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" \
               b"Content-Transfer-Encoding: 8bit\r\n"
    lines = [b"\r\n"]
    total = len(hdr) + 2
    i = 0
    while total < n_bytes:
        if dots and i % 7 == 0:
            line = b"." * (1 + i % 3) + b"dot line %d of %s\r\n" % (i, tag.encode())
        elif eight_bit and i % 5 == 0:
            line = "caf\u00e9 \u00fcber \u65e5\u672c %d %s\r\n".encode("utf-8") % (i, tag.encode())
        else:
            line = b"line %08d %s " % (i, tag.encode()) + b"x" * 40 + b"\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    if dots:
        lines.append(b".\r\n" if False else b".end\r\n")
    return hdr + b"".join(lines)


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def check_bytes(t, got, want, what):
    if got != want:
        i = first_diff(got, want)
        raise dslib.Fail("%s: bytes differ (got %d, want %d, first difference at %d)\n got[%d:]: %r\nwant[%d:]: %r"
                         % (what, len(got), len(want), i, i, got[i:i + 100], i, want[i:i + 100]))
    t.checks += 1


def wait_log(srv, pred, what, timeout_s):
    """Wait until pred(events list) is truthy (events: all logfmt lines)."""
    return wait_for(what, lambda: pred(srv.events()), timeout_s)
