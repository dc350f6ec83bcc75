#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Operations of issue 8 checked against the real server (build/dotspool).

Usage: test_server_ops.py --build BUILD_DIR

Sections (each reported on its own; the script fails if any fails):
  1 metrics    /metrics scraped with urllib (and curl when installed) before and
               after 5 messages and one relaying denial: counters, histograms,
               connections_current back to 0, 404 for other paths, a scrape while
               an SMTP session is open.
  2 refusals   --max-connections-per-ip 2: the 3rd connection gets 421, counted in
               connections_refused_total{reason="limit_per_ip"} and logged.
  3 logs       one event=accepted line per message, matching dotspool-ctl list
               --json (queue_id, sender, rcpts, size); the denial logged with
               code=550; --log-level warn logs no accepted line.
  4 tls-reload SIGHUP swaps the certificate for new STARTTLS sessions while an old
               session keeps working; a broken key keeps the old certificate.
  5 config     --config FILE (listen, spool, metrics, log-level) and --listen
               overriding the file's listen.
  6 data-refusals  refusals at the end of data (552 too big, SMTP alone and
               pipelined, LMTP per recipient) are logged with their sender.

Servers listen on loopback (free ports), use temporary spools, are stopped by
their own PID, and every network operation has a timeout. Exit 0 pass,
1 fail, 77 skip (server not built).
"""
import importlib.util
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
import dslib  # noqa: E402
from dslib import Fail  # noqa: E402

IO_TIMEOUT_S = 10.0
LOG_WAIT_S = 5.0
# Small spool so start-up (pre-written segments) is fast.
BASE_OPTS = ["--threads", "2", "--segment-size", "1M", "--spool-buffer-size", "256K"]
HELO = "ops-client.example"

_spec = importlib.util.spec_from_file_location("check_exposition", os.path.join(HERE, "check_exposition.py"))
check_exposition = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_exposition)


# ---------------------------------------------------------------- metrics

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(body):
    """[(name, {label: value}, float)] for every sample line."""
    out = []
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise Fail("unparsable metrics line: %r" % line)
        labels = dict(LABEL_RE.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


class Metrics:
    def __init__(self, body):
        self.body = body
        self.samples = parse_metrics(body)

    def series(self, name, **want):
        return [(lab, v) for n, lab, v in self.samples
                if n == name and all(lab.get(k) == str(x) for k, x in want.items())]

    def sum(self, name, **want):
        """Sum over every series of name whose labels include want (0 when absent)."""
        return sum(v for _, v in self.series(name, **want))

    def has(self, name):
        return any(n == name for n, _, _ in self.samples)


def http_get(port, path="/metrics"):
    """(status, body) of GET http://127.0.0.1:port/path with urllib."""
    url = "http://127.0.0.1:%d%s" % (port, path)
    try:
        with urllib.request.urlopen(url, timeout=IO_TIMEOUT_S) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def scrape(port):
    status, body = http_get(port)
    if status != 200:
        raise Fail("GET /metrics on port %d -> HTTP %d: %r" % (port, status, body[:300]))
    return Metrics(body)


def poll_metric(port, name, pred, timeout_s=3.0, **want):
    """Scrape until pred(sum) holds (bounded); returns the last sum."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = scrape(port).sum(name, **want)
        if pred(v) or time.monotonic() >= deadline:
            return v
        time.sleep(0.05)


# ---------------------------------------------------------------- logs

KV_RE = re.compile(r'([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|[^ ]*)')


def _unquote(v):
    if not v.startswith('"'):
        return v
    v = v[1:-1]
    out, i = [], 0
    while i < len(v):
        c = v[i]
        if c == "\\" and i + 1 < len(v):
            n = v[i + 1]
            if n == "x" and i + 3 < len(v):
                out.append(chr(int(v[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def logfmt(line):
    return {k: _unquote(v) for k, v in KV_RE.findall(line)}


def log_text(srv):
    try:
        with open(srv.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def log_events(srv, event=None):
    out = []
    for line in log_text(srv).splitlines():
        if not line.startswith("ts="):
            continue
        kv = logfmt(line)
        kv["_line"] = line
        if event is None or kv.get("event") == event:
            out.append(kv)
    return out


def wait_log(srv, pred, timeout_s=LOG_WAIT_S):
    """Poll the server log until pred(text) is true (bounded). Returns the last text."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = log_text(srv)
        if pred(text) or time.monotonic() >= deadline:
            return text
        time.sleep(0.02)


def wait_events(srv, event, n, timeout_s=LOG_WAIT_S, **want):
    """Poll until at least n event lines matching want are logged (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        evs = [e for e in log_events(srv, event) if all(e.get(k) == str(v) for k, v in want.items())]
        if len(evs) >= n or time.monotonic() >= deadline:
            return evs
        time.sleep(0.02)


# ---------------------------------------------------------------- helpers

def new_server(t, extra=(), **kw):
    mport = dslib.free_port()
    srv = t.server(extra=list(BASE_OPTS) + ["--metrics", "127.0.0.1:%d" % mport] + list(extra), **kw)
    srv.mport = mport
    return srv


def message(i, size_hint=200):
    body = dslib.body_lines(size_hint + 300 * i, tag="ops%d" % i)
    return (b"From: sender%d@client.example\r\nTo: rcpt@localhost\r\nSubject: ops test %d\r\n"
            b"Message-ID: <ops-%d-%d@client.example>\r\n\r\n" % (i, i, i, os.getpid())) + body


def send_one(port, sender, rcpts, data, smtp=None):
    """One message over smtplib (a fresh session unless smtp is given); raises on refusal."""
    s = smtp or smtplib.SMTP("127.0.0.1", port, local_hostname=HELO, timeout=IO_TIMEOUT_S)
    try:
        refused = s.sendmail(sender, rcpts, data)
        if refused:
            raise Fail("recipients refused: %r" % refused)
    finally:
        if smtp is None:
            s.quit()


def relay_denied(port):
    """MAIL + a RCPT for a foreign domain: the server must answer 550."""
    s = smtplib.SMTP("127.0.0.1", port, local_hostname=HELO, timeout=IO_TIMEOUT_S)
    try:
        s.ehlo(HELO)
        code, _ = s.mail("denied-sender@client.example")
        if code != 250:
            raise Fail("MAIL -> %d" % code)
        return s.rcpt("someone@elsewhere.example")
    finally:
        s.quit()


def soft(t, cond, what, detail=""):
    """A check whose failure is recorded without stopping the section (used last in a section)."""
    t.checks += 1
    if cond:
        print("  ok:", what)
    else:
        print("  FAILED: %s\n    %s" % (what, detail.replace("\n", "\n    ")))
        t.soft_failures.append(what)


SANITIZER_RE = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|ThreadSanitizer")


def stop_ok(t, srv):
    """SIGTERM by PID: the server must exit 0 with no sanitizer report in its log."""
    rc = srv.stop()
    t.eq(rc, 0, "server on port %d exits 0 on SIGTERM" % srv.port, log_text(srv)[-3000:])
    m = SANITIZER_RE.search(log_text(srv))
    t.check(m is None, "server on port %d: no sanitizer report" % srv.port, log_text(srv)[-6000:])


class Section:
    """Runs one numbered check group; failures are collected, not fatal to the others."""

    def __init__(self, t):
        self.t = t
        self.results = []

    def run(self, name, fn, *args):
        print("\n-- %s" % name)
        t0 = time.monotonic()
        before = self.t.checks
        self.t.soft_failures = []
        res, detail = "PASS", ""
        try:
            fn(self.t, *args)
        except dslib.Skip as e:
            res, detail = "SKIP", str(e)
        except Fail as e:
            res, detail = "FAIL", str(e)
        except Exception as e:  # an unexpected exception is a failure of that section
            import traceback
            traceback.print_exc(file=sys.stdout)
            res, detail = "FAIL", "%s: %s" % (type(e).__name__, e)
        # stop this section's servers still running (exit code and sanitizer checked)
        for srv in list(dslib._servers):
            if getattr(srv, "section", None) == name:
                try:
                    stop_ok(self.t, srv)
                except Fail as e:
                    res, detail = "FAIL", (detail + "\n" if detail else "") + str(e)
        if self.t.soft_failures:
            res = "FAIL"
            detail = "\n".join([detail] * bool(detail) + ["check failed: " + f for f in self.t.soft_failures])
        dt = time.monotonic() - t0
        print("%s %s (%d checks, %.2f s)%s" % (res, name, self.t.checks - before, dt,
                                                ("\n  " + detail.replace("\n", "\n  ")) if detail else ""))
        if res == "FAIL":
            for srv in dslib._all_servers:
                if getattr(srv, "section", None) == name:
                    print(srv.log(8000))
        self.results.append((name, res, dt, detail))


# ---------------------------------------------------------------- 1 + 3: metrics and logs

def sec_metrics(t, state):
    srv = new_server(t)
    srv.section = "1 metrics"
    srv.start()
    state["srv"] = srv
    mp = srv.mport

    before = scrape(mp)
    for name in ("dotspool_connections_current", "dotspool_connections_total", "dotspool_messages_accepted_total",
                 "dotspool_accepted_bytes_total", "dotspool_replies_total", "dotspool_sync_gap_seconds_count",
                 "dotspool_flush_duration_seconds_count", "dotspool_messages_per_flush_sum",
                 "dotspool_tls_handshakes_total", "dotspool_connections_refused_total",
                 "dotspool_spool_used_bytes", "dotspool_spool_free_bytes", "dotspool_server_messages_accepted_total"):
        t.check(before.has(name), "metric %s present" % name)
    samples, _, hists = check_exposition.check(before.body)
    t.check(samples > 50 and hists >= 3, "body is valid Prometheus text 0.0.4 (%d samples, %d histograms)"
            % (samples, hists))

    # 5 messages: the first one over a session held open across a scrape.
    sent = []
    smtp = smtplib.SMTP("127.0.0.1", srv.port, local_hostname=HELO, timeout=IO_TIMEOUT_S)
    smtp.ehlo(HELO)
    during = scrape(mp)
    t.check(during.sum("dotspool_connections_current") >= 1,
            "scrape while an SMTP session is open answers (connections_current %d >= 1)"
            % during.sum("dotspool_connections_current"))
    for i in range(5):
        sender = "sender%d@client.example" % i
        rcpts = ["r%d-%d@localhost" % (i, k) for k in range(1 + i % 3)]
        data = message(i)
        send_one(srv.port, sender, rcpts, data, smtp=smtp if i == 0 else None)
        if i == 0:
            smtp.quit()
        sent.append((sender, rcpts, data))
    state["sent"] = sent
    code, text = relay_denied(srv.port)
    t.eq(code, 550, "RCPT to a foreign domain is denied", text)
    state["denied"] = (code, text)

    # Clients have quit: connections_current comes back to 0.
    cur = poll_metric(mp, "dotspool_connections_current", lambda v: v == 0, timeout_s=3.0)
    t.eq(cur, 0, "connections_current sums to 0 after every client quit")
    after = scrape(mp)
    samples, _, _ = check_exposition.check(after.body)

    def d(name, **lab):
        return after.sum(name, **lab) - before.sum(name, **lab)

    t.eq(d("dotspool_messages_accepted_total"), 5, "messages_accepted_total (summed over workers) grew by 5")
    t.eq(d("dotspool_server_messages_accepted_total"), 5, "server_messages_accepted_total grew by 5")
    t.check(d("dotspool_accepted_bytes_total") > 0, "accepted_bytes_total grew (%d)" % d("dotspool_accepted_bytes_total"))
    t.eq(d("dotspool_server_accepted_bytes_total"), d("dotspool_accepted_bytes_total"),
         "server_accepted_bytes_total grew as much as the per-worker sum")
    state["bytes_delta"] = d("dotspool_accepted_bytes_total")
    t.check(d("dotspool_replies_total", **{"class": "5xx"}) >= 1,
            "replies_total{class=\"5xx\"} grew by >= 1 (%d)" % d("dotspool_replies_total", **{"class": "5xx"}))
    t.check(d("dotspool_replies_total", **{"class": "2xx"}) >= 5 * 4,
            "replies_total{class=\"2xx\"} grew by >= 20 (%d)" % d("dotspool_replies_total", **{"class": "2xx"}))
    t.eq(d("dotspool_sync_gap_seconds_count"), 5, "sync_gap_seconds_count (summed) grew by 5")
    t.check(d("dotspool_sync_gap_seconds_sum") > 0, "sync_gap_seconds_sum grew")
    for lab, cnt in after.series("dotspool_sync_gap_seconds_count"):
        w = lab.get("worker")
        inf = after.sum("dotspool_sync_gap_seconds_bucket", worker=w, le="+Inf")
        t.eq(inf, cnt, "worker %s: sync_gap_seconds_bucket{le=\"+Inf\"} == _count" % w)
    t.eq(d("dotspool_server_sync_gap_seconds_count"), 5, "server_sync_gap_seconds_count grew by 5")
    t.check(d("dotspool_flush_duration_seconds_count") >= 1,
            "flush_duration_seconds_count grew by >= 1 (%d)" % d("dotspool_flush_duration_seconds_count"))
    t.check(d("dotspool_flushes_total") >= 1, "flushes_total grew by >= 1")
    t.check(d("dotspool_messages_per_flush_sum") >= 5,
            "messages_per_flush_sum grew by >= 5 (%d)" % d("dotspool_messages_per_flush_sum"))
    t.check(d("dotspool_connections_total") >= 6,
            "connections_total grew by >= 6 (%d)" % d("dotspool_connections_total"))

    status, body = http_get(mp, "/other")
    t.eq(status, 404, "GET /other -> HTTP 404")

    curl = shutil.which("curl")
    if curl:
        cp = subprocess.run([curl, "-s", "-f", "-m", "10", "http://127.0.0.1:%d/metrics" % mp],
                            stdout=subprocess.PIPE, timeout=20)
        t.eq(cp.returncode, 0, "curl -s /metrics exits 0")
        cm = Metrics(cp.stdout.decode("utf-8", "replace"))
        t.eq(cm.sum("dotspool_messages_accepted_total"), after.sum("dotspool_messages_accepted_total"),
             "curl sees the same messages_accepted_total")
        cp = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                             "http://127.0.0.1:%d/other" % mp], stdout=subprocess.PIPE, timeout=20)
        t.eq(cp.stdout.strip(), b"404", "curl /other -> 404")
    else:
        print("  (curl not installed: curl checks skipped)")


def sec_logs(t, state):
    srv = state.get("srv")
    if srv is None or "sent" not in state:
        raise Fail("section 1 did not get as far as sending the messages")
    srv.section = "3 logs"  # its log is printed if this section fails
    entries = srv.list()
    t.eq(len(entries), 5, "dotspool-ctl list --json lists the 5 messages")
    evs = wait_events(srv, "accepted", 5)
    t.eq(len(evs), 5, "5 event=accepted lines for 5 messages", "\n".join(e["_line"] for e in evs))
    by_sender = {s: (r, d) for s, r, d in state["sent"]}
    total = 0
    for e in entries:
        qid = str(e["id"])
        mine = [ev for ev in evs if ev.get("queue_id") == qid]
        t.eq(len(mine), 1, "exactly one event=accepted line with queue_id=%s" % qid,
             "\n".join(ev["_line"] for ev in evs))
        ev = mine[0]
        t.eq(ev.get("sender"), e["mail_from"], "queue_id=%s: sender matches the spool" % qid)
        t.check(e["mail_from"] in by_sender, "queue_id=%s: spool sender is one we sent" % qid)
        t.eq(sorted(dslib.rcpt_addrs(e)), sorted(by_sender[e["mail_from"]][0]),
             "queue_id=%s: spool recipients are the ones sent" % qid)
        t.eq(ev.get("rcpts"), str(len(dslib.rcpt_addrs(e))), "queue_id=%s: rcpts matches" % qid)
        t.eq(ev.get("size"), str(e["size"]), "queue_id=%s: size matches" % qid)
        t.eq(ev.get("client"), "127.0.0.1", "queue_id=%s: client" % qid)
        t.eq(ev.get("helo"), HELO, "queue_id=%s: helo" % qid)
        t.eq(ev.get("level"), "info", "queue_id=%s: level=info" % qid)
        t.check(re.fullmatch(r"[0-9]+", ev.get("gap_us", "")) is not None, "queue_id=%s: gap_us is a number" % qid)
        t.eq(ev.get("tls"), "none", "queue_id=%s: tls=none (plain session)" % qid)
        total += e["size"]
    print("  info: accepted_bytes_total grew by %d; spool sizes sum to %d" % (state.get("bytes_delta", -1), total))
    ref = wait_events(srv, "refused", 1, code=550)
    t.check(len(ref) >= 1, "the relaying denial is logged as event=refused code=550",
            log_text(srv)[-3000:])
    t.eq(ref[0].get("client"), "127.0.0.1", "refused line names the client")
    t.check("relaying denied" in ref[0].get("reason", ""), "refused reason carries the reply text (%r)"
            % ref[0].get("reason"))

    # --log-level warn: no accepted lines (and no info lines at all).
    w = new_server(t, extra=["--log-level", "warn"])
    w.section = "3 logs"
    w.start()
    for i in range(2):
        send_one(w.port, "warn%d@client.example" % i, ["w@localhost"], message(i))
    relay_denied(w.port)
    t.eq(len(w.list()), 2, "--log-level warn: both messages stored")
    time.sleep(0.3)  # the logger thread writes within ~10 ms
    text = log_text(w)
    t.eq(len(log_events(w, "accepted")), 0, "--log-level warn: no event=accepted line", text[-2000:])
    t.eq(len([l for l in text.splitlines() if "level=info" in l]), 0, "--log-level warn: no level=info line",
         text[-2000:])
    stop_ok(t, w)

    # The session knows both by the time of the RCPT (struct obs_log_refusal has helo
    # and sender fields).
    got = (ref[0].get("helo"), ref[0].get("sender"))
    soft(t, got == (HELO, "denied-sender@client.example"),
         "the RCPT refusal line carries the session's helo and sender",
         "got %r\n%s" % (got, ref[0]["_line"]))

    # A client that sends the final dot and goes away before reading the 250 (the
    # RFC 1047 gap): the message is durable, stored and counted as accepted, so it
    # must have its event=accepted line too (the one an operator looks for when the
    # client retries and a duplicate appears).
    g = new_server(t)
    g.section = "3 logs"
    g.start()
    n_gap = 3
    for i in range(n_gap):
        raw = dslib.RawSMTP("127.0.0.1", g.port, timeout_s=IO_TIMEOUT_S)
        try:
            raw.reply()
            raw.cmd("EHLO " + HELO)
            for line in ("MAIL FROM:<gap%d@client.example>" % i, "RCPT TO:<gap@localhost>", "DATA"):
                code, text = raw.cmd(line)
                if code not in (250, 354):
                    raise Fail("%s -> %d %s" % (line, code, text))
            raw.send(b"Subject: gap\r\n\r\nclosed before the 250\r\n.\r\n")
        finally:
            raw.close()  # without reading the reply to the final dot
    deadline = time.monotonic() + LOG_WAIT_S
    while len(g.list()) < n_gap and time.monotonic() < deadline:
        time.sleep(0.05)
    stored = g.list()
    t.eq(len(stored), n_gap, "messages whose client left before the 250 are stored (durable)")
    acc = poll_metric(g.mport, "dotspool_messages_accepted_total", lambda v: v >= n_gap)
    t.eq(acc, n_gap, "... and counted in messages_accepted_total")
    evs = wait_events(g, "accepted", n_gap, timeout_s=2.0)
    logged = sorted(e.get("queue_id") for e in evs)
    soft(t, logged == sorted(str(e["id"]) for e in stored),
         "... and each has its event=accepted line",
         "spool ids %r\nlogged queue_ids %r" % (sorted(str(e["id"]) for e in stored), logged))
    stop_ok(t, g)


# ---------------------------------------------------------------- 2: refusals by reason

def sec_refusals(t):
    srv = new_server(t, extra=["--max-connections-per-ip", "2"])
    srv.section = "2 refusals"
    srv.start()
    # the start-up probe's connection must be gone before counting
    t.eq(poll_metric(srv.mport, "dotspool_connections_current", lambda v: v == 0), 0,
         "no connection open before the test")
    conns = []
    try:
        for i in range(2):
            c = dslib.RawSMTP("127.0.0.1", srv.port, timeout_s=IO_TIMEOUT_S)
            conns.append(c)
            code, text = c.reply()
            t.eq(code, 220, "connection %d of 2 gets the 220 banner" % (i + 1), text)
        third = dslib.RawSMTP("127.0.0.1", srv.port, timeout_s=IO_TIMEOUT_S)
        conns.append(third)
        code, text = third.reply()
        t.eq(code, 421, "3rd connection from the same address gets 421", text)
        t.check(third.closed(5), "the 3rd connection is closed after its 421")
        v = poll_metric(srv.mport, "dotspool_connections_refused_total", lambda v: v >= 1, reason="limit_per_ip")
        t.check(v >= 1, "connections_refused_total{reason=\"limit_per_ip\"} >= 1 (%d)" % v)
        m = scrape(srv.mport)
        t.eq(m.sum("dotspool_connections_refused_total", reason="limit_total"), 0,
             "connections_refused_total{reason=\"limit_total\"} stays 0")
        evs = wait_events(srv, "refused", 1, reason="limit_per_ip")
        t.check(len(evs) >= 1, "log has event=refused reason=limit_per_ip", log_text(srv)[-2000:])
        t.eq(evs[0].get("code"), "421", "the limit_per_ip refusal is logged with code=421")
        t.eq(evs[0].get("client"), "127.0.0.1", "the limit_per_ip refusal names the client")
    finally:
        for c in conns:
            c.quit()
    # the slots free up again
    t.eq(poll_metric(srv.mport, "dotspool_connections_current", lambda v: v == 0), 0,
         "connections_current back to 0 after the clients quit")
    c = dslib.RawSMTP("127.0.0.1", srv.port, timeout_s=IO_TIMEOUT_S)
    try:
        code, text = c.reply()
        t.eq(code, 220, "a new connection is served once the others have gone", text)
    finally:
        c.quit()
    stop_ok(t, srv)


# ---------------------------------------------------------------- 6: end-of-data refusals

def too_big(c, sender, rcpts, after=b""):
    """MAIL, RCPTs, DATA and a 4 KB body over --max-message-size 1024; returns the replies to the dot."""
    c.send("MAIL FROM:<%s>\r\n" % sender)
    code, text = c.reply()
    if code != 250:
        raise Fail("MAIL -> %d %s" % (code, text))
    for r in rcpts:
        code, text = c.cmd("RCPT TO:<%s>" % r)
        if code != 250:
            raise Fail("RCPT -> %d %s" % (code, text))
    code, text = c.cmd("DATA")
    if code != 354:
        raise Fail("DATA -> %d %s" % (code, text))
    c.send(b"Subject: too big\r\n\r\n" + dslib.body_lines(4000) + b".\r\n" + after)
    return c.reply()


def sec_data_refusals(t):
    lmtp_port = dslib.free_port()
    srv = new_server(t, extra=["--max-message-size", "1024"], lmtp=("127.0.0.1", lmtp_port))
    srv.section = "6 data-refusals"
    srv.start()
    c = dslib.RawSMTP("127.0.0.1", srv.port, timeout_s=IO_TIMEOUT_S)
    try:
        t.eq(c.reply()[0], 220, "banner")
        t.eq(c.cmd("EHLO " + HELO)[0], 250, "EHLO")
        code, text = too_big(c, "big@client.example", ["u@localhost"])
        t.eq(code, 552, "a 4 KB message over --max-message-size 1024 gets 552", text)
        # Pipelined: a new MAIL right behind the dot must not lend its sender to the 552.
        code, text = too_big(c, "pipe@client.example", ["u@localhost"],
                             after=b"MAIL FROM:<next@client.example>\r\nRSET\r\n")
        t.eq(code, 552, "pipelined: 552", text)
        t.eq(c.reply()[0], 250, "pipelined MAIL after the dot: 250")
        t.eq(c.reply()[0], 250, "pipelined RSET: 250")
    finally:
        c.quit()
    evs = wait_events(srv, "refused", 2, code=552)
    t.eq(len(evs), 2, "two event=refused code=552 lines", log_text(srv)[-3000:])
    t.eq([e.get("sender") for e in evs], ["big@client.example", "pipe@client.example"],
         "each 552 is logged with the sender of its transaction", "\n".join(e["_line"] for e in evs))
    t.check(all(e.get("helo") == HELO and e.get("client") == "127.0.0.1" for e in evs),
            "and with the client's helo and address", "\n".join(e["_line"] for e in evs))
    t.check(all("message size exceeds" in e.get("reason", "") for e in evs), "reason is the reply text")

    # LMTP: one 552 per recipient, each logged with the sender.
    c = dslib.RawSMTP("127.0.0.1", lmtp_port, timeout_s=IO_TIMEOUT_S)
    try:
        t.eq(c.reply()[0], 220, "LMTP banner")
        t.eq(c.cmd("LHLO " + HELO)[0], 250, "LHLO")
        code, text = too_big(c, "lmtp@client.example", ["u1@localhost", "u2@localhost"])
        t.eq(code, 552, "LMTP: 552 for the first recipient", text)
        t.eq(c.reply()[0], 552, "LMTP: 552 for the second recipient")
    finally:
        c.quit()
    evs = wait_events(srv, "refused", 2, code=552, sender="lmtp@client.example")
    t.eq(len(evs), 2, "LMTP: two code=552 lines with sender=lmtp@client.example", log_text(srv)[-3000:])
    stop_ok(t, srv)


# ---------------------------------------------------------------- 4: TLS reload on SIGHUP

def leaf_der(pem_path):
    with open(pem_path) as f:
        text = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def starttls_session(port):
    """An smtplib session after STARTTLS and the second EHLO; returns (smtp, peer leaf DER)."""
    s = smtplib.SMTP("127.0.0.1", port, local_hostname=HELO, timeout=IO_TIMEOUT_S)
    try:
        s.ehlo(HELO)
        if not s.has_extn("starttls"):
            raise Fail("STARTTLS not offered: %r" % s.esmtp_features)
        code, text = s.starttls(context=client_ctx())
        if code != 220:
            raise Fail("STARTTLS -> %d %r" % (code, text))
        s.ehlo(HELO)
        return s, s.sock.getpeercert(binary_form=True)
    except Exception:
        s.close()
        raise


def peer_cert_of_new_session(port):
    s, der = starttls_session(port)
    try:
        s.quit()
    except (smtplib.SMTPException, OSError):
        s.close()
    return der


def fp(der):
    import hashlib
    return hashlib.sha256(der).hexdigest()[:16]


def sec_tls_reload(t):
    if not shutil.which("openssl"):
        raise dslib.Skip("openssl not installed (scripts/gen-test-cert.sh needs it)")
    gen = os.path.join(SRC, "scripts", "gen-test-cert.sh")
    dirs = {}
    for name in ("A", "B"):
        d = os.path.join(dslib.mkdtemp("ds-ops-tls-"), name)
        cp = subprocess.run(["sh", gen, d], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if cp.returncode != 0:
            raise Fail("gen-test-cert.sh %s failed: %s" % (d, cp.stdout.decode("utf-8", "replace")))
        dirs[name] = d
    live = dslib.mkdtemp("ds-ops-live-")
    cert, key = os.path.join(live, "cert.pem"), os.path.join(live, "key.pem")
    shutil.copyfile(os.path.join(dirs["A"], "server.pem"), cert)
    shutil.copyfile(os.path.join(dirs["A"], "server.key"), key)
    der_a, der_b = leaf_der(os.path.join(dirs["A"], "server.pem")), leaf_der(os.path.join(dirs["B"], "server.pem"))
    t.check(der_a != der_b, "two generated certificates differ (A %s, B %s)" % (fp(der_a), fp(der_b)))

    srv = new_server(t, extra=["--tls-cert", cert, "--tls-key", key])
    srv.section = "4 tls-reload"
    srv.start()
    old, der = starttls_session(srv.port)
    try:
        t.eq(fp(der), fp(der_a), "before SIGHUP a STARTTLS session presents certificate A")

        shutil.copyfile(os.path.join(dirs["B"], "server.pem"), cert)
        shutil.copyfile(os.path.join(dirs["B"], "server.key"), key)
        srv.send_signal(signal.SIGHUP)
        text = wait_log(srv, lambda s: "reloaded" in s)
        t.check("reloaded" in text, "server log says the certificate was reloaded", text[-2000:])
        t.check("reload failed" not in text, "no worker reported a failed reload", text[-2000:])

        # New sessions (spread over the workers by SO_REUSEPORT) present B.
        deadline = time.monotonic() + 5.0
        seen = []
        while time.monotonic() < deadline:
            seen.append(fp(peer_cert_of_new_session(srv.port)))
            if seen[-1] == fp(der_b):
                break
        t.eq(seen[-1], fp(der_b), "after SIGHUP a new STARTTLS session presents certificate B", "seen %r" % seen)
        later = [fp(peer_cert_of_new_session(srv.port)) for _ in range(6)]
        t.eq(later, [fp(der_b)] * 6, "the next 6 new sessions all present certificate B")

        # The session opened before the reload is still up and completes a message.
        t.eq(fp(old.sock.getpeercert(binary_form=True)), fp(der_a), "the old session still has certificate A")
        send_one(srv.port, "old-session@client.example", ["tls@localhost"], message(7), smtp=old)
        print("  ok: the old session completed a message after the reload")
        t.checks += 1
        old.quit()
    finally:
        old.close()
    entries = srv.list()
    hit = [e for e in entries if e["mail_from"] == "old-session@client.example"]
    t.eq(len(hit), 1, "the old session's message is in the spool")
    t.check(bool(hit[0].get("tls")), "the old session's message records TLS (%r)" % hit[0].get("tls"))
    evs = wait_events(srv, "accepted", 1, sender="old-session@client.example")
    t.check(len(evs) == 1 and evs[0].get("tls") not in ("", "none"),
            "its event=accepted line records the TLS session (%r)" % (evs[0].get("tls") if evs else None))

    # A broken key: SIGHUP fails, the old (B) certificate keeps being served.
    with open(key, "w") as f:
        f.write("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    n_reloaded = log_text(srv).count("reloaded")
    srv.send_signal(signal.SIGHUP)
    text = wait_log(srv, lambda s: "reload failed" in s)
    t.check("reload failed" in text, "a SIGHUP with a broken key logs the failure", text[-2000:])
    t.eq(text.count("reloaded"), n_reloaded, "no 'reloaded' line for the failed reload", text[-2000:])
    t.check(srv.running(), "the server is still running after the failed reload")
    for i in range(4):
        t.eq(fp(peer_cert_of_new_session(srv.port)), fp(der_b),
             "after the failed reload new session %d still handshakes with certificate B" % (i + 1))
    s, _ = starttls_session(srv.port)
    try:
        send_one(srv.port, "after-bad-key@client.example", ["tls@localhost"], message(8), smtp=s)
        s.quit()
    finally:
        s.close()
    t.eq(len([e for e in srv.list() if e["mail_from"] == "after-bad-key@client.example"]), 1,
         "a message over STARTTLS after the failed reload is stored")
    m = scrape(srv.mport)
    ok = m.sum("dotspool_tls_handshakes_total", result="ok")
    t.check(ok >= 1 + len(seen) + 6 + 4 + 1, "tls_handshakes_total{result=\"ok\"} counts the sessions (%d)" % ok)
    stop_ok(t, srv)


# ---------------------------------------------------------------- 5: configuration file

class ConfigServer(dslib.Server):
    """build/dotspool --config FILE [extra]; self.listen is where it should answer."""

    def __init__(self, build, conf, port, extra=()):
        super().__init__(build, listen=port, extra=extra)
        self.conf = conf

    def argv(self):
        return [self.bin, "--config", self.conf] + self.extra


def refused_connect(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def sec_config(t):
    d = dslib.mkdtemp("ds-ops-conf-")
    spool = os.path.join(d, "spool")
    port_a, port_b, mport = dslib.free_port(), dslib.free_port(), dslib.free_port()
    while len({port_a, port_b, mport}) < 3:
        port_b, mport = dslib.free_port(), dslib.free_port()
    conf = os.path.join(d, "ops.conf")
    with open(conf, "w") as f:
        f.write("# written by test_server_ops.py\n[dotspool]\n"
                "listen = 127.0.0.1:%d\n"
                "spool = %s\n"
                "metrics = 127.0.0.1:%d\n"
                "log-level = warn\n"
                "threads = 2\n"
                "segment-size = 1M\n"
                "spool-buffer-size = 256K\n" % (port_a, spool, mport))
    cp = subprocess.run([os.path.join(t.build, "dotspool"), "--check-config", conf], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, timeout=20)
    t.eq(cp.returncode, 0, "--check-config accepts the file", cp.stdout.decode("utf-8", "replace"))
    t.check(b"OK" in cp.stdout, "--check-config prints OK (%r)" % cp.stdout.strip())

    srv = ConfigServer(t.build, conf, port_a)
    srv.section = "5 config"
    srv.start()
    send_one(port_a, "conf-a@client.example", ["c@localhost"], message(1))
    ctl = dslib.list_json(t.build, spool)
    t.eq([e["mail_from"] for e in ctl], ["conf-a@client.example"],
         "message sent to the file's listen is in the file's spool")
    m = scrape(mport)
    t.eq(m.sum("dotspool_messages_accepted_total"), 1, "metrics served on the file's metrics address")
    time.sleep(0.3)
    t.eq(len(log_events(srv, "accepted")), 0, "log-level = warn from the file: no event=accepted line",
         log_text(srv)[-2000:])
    stop_ok(t, srv)

    over = ConfigServer(t.build, conf, port_b, extra=["--listen", "127.0.0.1:%d" % port_b])
    over.section = "5 config"
    over.start()
    send_one(port_b, "conf-b@client.example", ["c@localhost"], message(2))
    t.check(refused_connect(port_a), "with --listen on the command line the file's listen is not used")
    ctl = dslib.list_json(t.build, spool)
    t.eq(sorted(e["mail_from"] for e in ctl), ["conf-a@client.example", "conf-b@client.example"],
         "message sent to the command-line listen lands in the file's spool")
    t.eq(scrape(mport).sum("dotspool_messages_accepted_total"), 1,
         "the file's metrics address still serves with --listen overridden")
    stop_ok(t, over)


def main(t):
    if not os.access(os.path.join(t.build, "dotspool"), os.X_OK):
        raise dslib.Skip("server binary not built: %s" % os.path.join(t.build, "dotspool"))
    sections = Section(t)
    state = {}
    sections.run("1 metrics", sec_metrics, state)
    sections.run("2 refusals", sec_refusals)
    sections.run("3 logs", sec_logs, state)
    sections.run("4 tls-reload", sec_tls_reload)
    sections.run("5 config", sec_config)
    sections.run("6 data-refusals", sec_data_refusals)
    print("\nsummary:")
    for name, res, dt, detail in sections.results:
        print("  %-14s %s  %.2f s" % (name, res, dt))
    failed = [name for name, res, _, _ in sections.results if res == "FAIL"]
    if failed:
        dslib._all_servers.clear()  # logs were printed per section
        raise Fail("failed sections: %s" % ", ".join(failed))


if __name__ == "__main__":
    dslib.run(main, name="test_server_ops.py")
