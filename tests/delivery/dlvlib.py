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
