#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Runs dotspool-bench in one mode for about 1-2 s against a real dotspool
that this script starts (loopback, free port, fresh temporary spool with small
segments, --threads 2), stops the server by its PID with SIGTERM (must exit
0), then checks:

  * the bench's JSON (bench_json.py: the shape run_modes.py checks, plus the configuration keys)
    and its error counts;
  * durability: every Message-ID in the --ack-log is in the spool. The spool's
    messages come from `dotspool-ctl list --json`; their Message-IDs from
    bench_spool_msgids (tests/bench/spool_msgids.c, same reader, one pass),
    cross-checked for a sample of up to 200 acks with `dotspool-ctl cat`
    (header Message-ID and byte count);
  * every stored message is one the bench sent (Message-IDs unique, none
    unacknowledged when no message failed), data sizes as sent, bytes_ok;
  * `dotspool-ctl verify` exits 0 and counts the same messages;
  * the server log has no error lines or sanitizer reports.

Exit 0 pass, 1 fail, 77 skip. DS_KEEP=1 keeps the temporary directory.
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET

from bench_json import Fail, Skip, check, parse_one
import dslib  # tests/integration, on sys.path through bench_json

# This script checks the whole configuration part of the JSON as well.
TOP_KEYS = ["server", "protocol", "mode", "connections", "rcpts", "threads", "rate_target", "starttls",
            "pipelining", "new_connection_per_message", "server_pipelining", "messages_ok", "messages_failed",
            "bytes_ok", "rcpts_ok", "rcpts_failed", "elapsed_s", "messages_per_s", "mb_per_s",
            "errors_by_code", "latency_us"]
SERVER_ARGS = ["--threads", "2", "--segment-size", "4M", "--spool-buffer-size", "512K"]
STOP_TIMEOUT_S = 20
SAMPLE = 200
MSGID_RE = re.compile(r"^<bench\.\d+\.\d+@dotspool-bench>$")


class Server(dslib.Server):
    """The dotspool under test on 127.0.0.1 (dslib.Server: free ports, started and stopped by its PID),
    with a fresh spool, its log and working directory under workdir. Ready once every port greets 220."""

    START_TIMEOUT_S = 15
    READY_BANNER = b"220"

    def __init__(self, a, workdir, lmtp=False, extra=()):
        super().__init__(os.path.dirname(a.server), binary=a.server, spool=os.path.join(workdir, "spool"),
                         logdir=workdir, lmtp=("127.0.0.1", dslib.free_port()) if lmtp else None,
                         extra=SERVER_ARGS + list(extra))
        for attempt in range(3):
            try:
                self.start()
                return
            except Fail:
                # Another process may have taken a port between free_port() and bind(): try again.
                if attempt < 2 and self.proc.returncode != -9 and "in use" in (self.log_text() or ""):
                    self.listen = [(self.host, dslib.free_port())]
                    self.port = self.listen[0][1]
                    if self.lmtp:
                        self.lmtp = (self.host, dslib.free_port())
                    continue
                raise

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def lmtp_addr(self):
        return "127.0.0.1:%d" % self.lmtp[1]

    def log_tail(self, n=3000):
        """The log without the per-message 'accepted' lines (counted instead), last n characters."""
        lines = (self.log_text() or "(no server log)").splitlines()
        acc = sum(1 for l in lines if "event=accepted" in l)
        reasons = {}
        for l in lines:
            m = re.search(r"event=refused reason=(\"[^\"]*\"|\S+)", l)
            if m:
                reasons[m.group(1)] = reasons.get(m.group(1), 0) + 1
        rest = "\n".join(l for l in lines if "event=accepted" not in l)
        return "---- server log (%s; %d event=accepted lines not shown; refusals by reason: %r) ----\n%s\n" \
               "---- end ----" % (self.log_path, acc, reasons, rest[-n:])

    def stop(self):
        """SIGTERM by PID; the server must exit 0 within STOP_TIMEOUT_S, its log free of errors."""
        check(self.running(), "server died during the run (exit %s)\n%s" % (self.proc.returncode, self.log_tail()))
        t0 = time.monotonic()
        rc = super().stop(timeout_s=STOP_TIMEOUT_S)
        if not isinstance(rc, int):
            raise Fail("server did not exit within %d s of SIGTERM\n%s" % (STOP_TIMEOUT_S, self.log_tail()))
        print("  server stopped in %.2fs, exit %d" % (time.monotonic() - t0, rc), flush=True)
        check(rc == 0, "server exited %s on SIGTERM (want 0)\n%s" % (rc, self.log_tail()))
        log = self.log_text() or ""
        for bad in ("level=error", "AddressSanitizer", "LeakSanitizer", "runtime error:"):
            check(bad not in log, "server log has %r\n%s" % (bad, self.log_tail(6000)))


def run(cmd, expect_rc=0, timeout=60):
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    print("  %.2fs rc=%d: %s" % (time.monotonic() - t0, p.returncode, " ".join(cmd)), flush=True)
    if expect_rc is not None and p.returncode != expect_rc:
        raise Fail("%s exited %d (want %d):\nstdout: %s\nstderr: %s"
                   % (" ".join(cmd), p.returncode, expect_rc, p.stdout[-3000:], p.stderr[-3000:]))
    return p


def bench_json(a, args, expect_rc=0):
    p = run([a.bench] + args + ["--json"], expect_rc)
    j = parse_one(p.stdout, TOP_KEYS)
    j["_rc"] = p.returncode
    print("  ok=%d failed=%d %.0f msg/s final_dot p50 %.0f us p99 %.0f us errors %r" % (
        j["messages_ok"], j["messages_failed"], j["messages_per_s"], j["latency_us"]["final_dot"]["p50"],
        j["latency_us"]["final_dot"]["p99"], j["errors_by_code"]), flush=True)
    return j


def check_clean(j, what):
    """No failures at all: every message acknowledged, every phase counted once per message."""
    check(j["messages_ok"] > 0 and j["messages_failed"] == 0, "%s: messages %r" % (what, j))
    check(j["errors_by_code"] == {}, "%s: errors %r" % (what, j["errors_by_code"]))
    check(j["rcpts_failed"] == 0 and j["rcpts_ok"] == j["messages_ok"] * j["rcpts"],
          "%s: rcpts %r" % (what, j))
    lat = j["latency_us"]
    for ph in ("mail", "data", "final_dot", "message"):
        check(lat[ph]["count"] == j["messages_ok"], "%s: latency_us.%s.count %d != messages_ok %d"
              % (what, ph, lat[ph]["count"], j["messages_ok"]))
    check(lat["rcpt"]["count"] == j["rcpts_ok"], "%s: one rcpt sample per recipient" % what)


def read_acks(path):
    acks = [l.strip() for l in open(path) if l.strip()]
    check(len(set(acks)) == len(acks), "duplicate Message-IDs in the ack log %s" % path)
    check(all(MSGID_RE.match(m) for m in acks), "malformed Message-ID in the ack log")
    return acks


class Spool:
    """What the stopped server left in its spool, through dotspool-ctl and bench_spool_msgids."""

    def __init__(self, a, path):
        self.a = a
        self.path = path
        p = run([a.ctl, "--spool", path, "list", "--json"])
        self.list = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
        self.by_id = {m["id"]: m for m in self.list}
        check(len(self.by_id) == len(self.list), "dotspool-ctl list: duplicate queue ids")
        p = run([a.msgids, path])
        self.msgid = {}   # queue id -> Message-ID
        self.data_size = {}  # queue id -> bytes as the client sent them (stored minus Received:)
        self.stored_size = {}
        for line in p.stdout.splitlines():
            qid, mid, size, rcvd = line.split()
            self.msgid[qid] = mid
            self.stored_size[qid] = int(size)
            self.data_size[qid] = int(size) - int(rcvd)
            check(int(rcvd) > 0, "message %s does not start with a Received: field" % qid)
        check(set(self.msgid) == set(self.by_id),
              "bench_spool_msgids and dotspool-ctl list disagree on the queue ids")
        for qid, m in self.by_id.items():
            check(self.stored_size[qid] == m["size"], "message %s: size %d vs list %d"
                  % (qid, self.stored_size[qid], m["size"]))
        self.by_msgid = {}
        for qid, mid in self.msgid.items():
            check(mid != "-", "message %s has no Message-ID" % qid)
            check(mid not in self.by_msgid, "Message-ID %s stored twice (%s, %s)"
                  % (mid, self.by_msgid.get(mid), qid))
            self.by_msgid[mid] = qid
        print("  spool: %d messages" % len(self.list), flush=True)

    def verify(self):
        p = run([self.a.ctl, "--spool", self.path, "verify"], expect_rc=None)
        check(p.returncode == 0, "dotspool-ctl verify exited %d:\n%s%s" % (p.returncode, p.stdout, p.stderr[-3000:]))
        m = re.search(r"verify: OK: .* (\d+) messages,", p.stdout)
        check(m is not None, "verify output: %r" % p.stdout)
        check(int(m.group(1)) == len(self.list), "verify counts %s messages, list %d" % (m.group(1), len(self.list)))

    def cat(self, qid):
        p = subprocess.run([self.a.ctl, "--spool", self.path, "cat", qid], capture_output=True, timeout=30)
        check(p.returncode == 0, "dotspool-ctl cat %s exited %d: %s" % (qid, p.returncode, p.stderr[-500:]))
        return p.stdout


def check_durable(a, srv, acks, want_bytes, all_acked=True, expect_size=4096, rcpts=1):
    """Every acked Message-ID is in the spool; with all_acked, nothing else is either.
    want_bytes: the bench's bytes_ok (sum over its runs)."""
    sp = Spool(a, srv.spool)
    check(len(sp.list) >= len(acks), "spool holds %d messages but %d were acknowledged"
          % (len(sp.list), len(acks)))
    missing = [m for m in acks if m not in sp.by_msgid]
    check(not missing, "%d of %d acknowledged messages are not in the spool, e.g. %r"
          % (len(missing), len(acks), missing[:5]))
    ackset = set(acks)
    extra = [m for m in sp.by_msgid if m not in ackset]
    check(all(MSGID_RE.match(m) for m in sp.by_msgid), "a stored message the bench did not send")
    if all_acked:
        check(not extra, "%d stored messages were never acknowledged, e.g. %r" % (len(extra), extra[:5]))
    # bytes_ok: the data of the acknowledged messages, as stored (minus the server's Received: field).
    got_bytes = sum(sp.data_size[sp.by_msgid[m]] for m in acks)
    check(want_bytes == got_bytes, "bytes_ok %d but the spool holds %d data bytes for the acks" % (want_bytes, got_bytes))
    if expect_size is not None:
        bad = [q for q in sp.by_id if sp.data_size[q] != expect_size]
        check(not bad, "%d stored messages have a data size other than %d, e.g. %s: %d"
              % (len(bad), expect_size, bad[:1], sp.data_size[bad[0]] if bad else 0))
    for qid, m in sp.by_id.items():
        check(len(m["rcpt_to"]) == rcpts and m["mail_from"] == "bench@localhost",
              "message %s envelope %r" % (qid, m))
    # Cross-check the Message-ID mapping with dotspool-ctl cat for a sample.
    rnd = random.Random(len(acks))
    sample = acks if len(acks) <= SAMPLE else rnd.sample(acks, SAMPLE)
    t0 = time.monotonic()
    for mid in sample:
        qid = sp.by_msgid[mid]
        body = sp.cat(qid)
        check(len(body) == sp.stored_size[qid], "cat %s: %d bytes, list says %d" % (qid, len(body), sp.stored_size[qid]))
        head = body.split(b"\r\n\r\n", 1)[0]
        check(b"\r\nMessage-ID: " + mid.encode() + b"\r\n" in head + b"\r\n",
              "cat %s: header lacks Message-ID %s" % (qid, mid))
        check(body.startswith(b"Received: "), "cat %s: no Received: field first" % qid)
    print("  %d acks in the spool; %d checked with dotspool-ctl cat (%.2fs)"
          % (len(acks), len(sample), time.monotonic() - t0), flush=True)
    sp.verify()
    return sp


# ---- modes ---------------------------------------------------------------------------------------

def simple(a, w, bench_args, what, check_json=None, server_extra=(), lmtp=False, expect_size=4096, rcpts=1,
           target=None):
    srv = Server(a, w, lmtp=lmtp, extra=server_extra)
    ack = os.path.join(w, "ack.log")
    j = bench_json(a, ["--server", target(srv) if target else srv.addr, "--ack-log", ack] + bench_args,
                   expect_rc=None)
    srv.stop()
    # Durability first: whatever failed, what was acknowledged must be in the spool.
    acks = read_acks(ack)
    check(len(acks) == j["messages_ok"], "ack log has %d lines, messages_ok %d" % (len(acks), j["messages_ok"]))
    sp = check_durable(a, srv, acks, j["bytes_ok"], all_acked=j["messages_failed"] == 0, expect_size=expect_size,
                       rcpts=rcpts)
    if j["messages_failed"] or j["errors_by_code"] or j["_rc"]:
        raise Fail("%s: %d of %d messages failed, errors_by_code %r, dotspool-bench exit %d "
                   "(every acknowledged message is in the spool)\n%s"
                   % (what, j["messages_failed"], j["messages_ok"] + j["messages_failed"], j["errors_by_code"],
                      j["_rc"], srv.log_tail(1500)))
    check_clean(j, what)
    if check_json:
        check_json(j)
    return sp, j


def mode_closed(a, w):
    def cj(j):
        check(j["mode"] == "closed" and j["protocol"] == "smtp" and j["connections"] == 32, "config %r" % j)
        check(j["latency_us"]["connect"]["count"] == 32, "one connect per connection")
        check(j["latency_us"]["ehlo"]["count"] == 32, "one EHLO per connection")
        check(j["latency_us"]["starttls"]["count"] == 0, "no STARTTLS")
        check(j["bytes_ok"] == j["messages_ok"] * 4096, "bytes_ok")
        check(j["elapsed_s"] >= 1.4, "elapsed %r" % j["elapsed_s"])
    simple(a, w, ["--connections", "32", "--duration", "1.5"], "closed", cj)


def mode_pipelining(a, w):
    def cj(j):
        check(j["pipelining"] and j["server_pipelining"], "dotspool advertises PIPELINING: %r" % j)
        check(j["rcpts_ok"] == 3 * j["messages_ok"], "3 rcpts per message")
    simple(a, w, ["--connections", "16", "--duration", "1.5", "--pipelining", "--rcpts", "3"], "pipelining", cj,
           rcpts=3)


def mode_rate(a, w):
    def cj(j):
        check(j["mode"] == "open" and j["rate_target"] == 500, "config %r" % j)
        check(j["messages_ok"] == 750, "open loop at 500/s for 1.5 s sends 750, got %d" % j["messages_ok"])
        check(1.4 <= j["elapsed_s"] <= 4.0, "elapsed %r" % j["elapsed_s"])
        check(j["messages_per_s"] <= 510, "rate %r" % j["messages_per_s"])
        lat = j["latency_us"]
        check(lat["message"]["p50"] >= lat["final_dot"]["p50"], "message latency includes the final dot")
    simple(a, w, ["--connections", "16", "--rate", "500", "--duration", "1.5"], "rate", cj)


def mode_lmtp(a, w):
    def cj(j):
        check(j["protocol"] == "lmtp", "protocol %r" % j["protocol"])
        check(j["rcpts_ok"] == 4 * j["messages_ok"], "4 rcpts per message")
    sp, j = simple(a, w, ["--lmtp", "--connections", "8", "--duration", "1.5", "--rcpts", "4", "--pipelining"],
                   "lmtp", cj, lmtp=True, rcpts=4, target=lambda s: s.lmtp_addr)
    protos = set(m.get("proto") for m in sp.list)
    check(len(protos) == 1 and "LMTP" in str(protos).upper(), "stored proto %r" % protos)


def mode_newconn(a, w):
    def cj(j):
        check(j["new_connection_per_message"], "flag")
        lat = j["latency_us"]
        for ph in ("connect", "banner", "ehlo"):
            check(lat[ph]["count"] == j["messages_ok"], "one %s per message: %d vs %d"
                  % (ph, lat[ph]["count"], j["messages_ok"]))
    simple(a, w, ["--connections", "8", "--duration", "1.5", "--new-connection-per-message"], "newconn", cj)


def mode_sizefile(a, w):
    sizes = [300, 4096, 70000, 250000, 700000]
    sf = os.path.join(w, "sizes.txt")
    with open(sf, "w") as f:
        f.write("# sizes, some above 64 KiB and one above the 512 KiB spool buffer\n")
        f.write("\n".join(map(str, sizes)) + "\n")
    sp, j = simple(a, w, ["--connections", "8", "--messages", "250", "--size-file", sf], "sizefile",
                   expect_size=None)
    check(j["messages_ok"] == 250, "sizefile: %r" % j)
    seen = {}
    for q, n in sp.data_size.items():
        seen[n] = seen.get(n, 0) + 1
    check(set(seen) == set(sizes), "stored data sizes %r, want each of %r" % (sorted(seen), sizes))
    print("  sizes stored: %r" % sorted(seen.items()), flush=True)


def mode_direct(a, w):
    """--spool-io direct on one lane (lane 0) under a mixed LMTP load with many recipients: the
    write mode's block padding must never disturb recovery's chunk accounting (a padding chunk
    with txn id 0 once made an acknowledged message vanish from list/recovery, about 1 run in 4
    of this load). Three rounds on fresh spools."""
    sizes = [300, 1000, 4096, 30000, 300000]
    sf = os.path.join(w, "sizes.txt")
    with open(sf, "w") as f:
        f.write("\n".join(map(str, sizes)) + "\n")
    extra = [os.environ.get("DS_IO_FLAG", "--spool-io"), os.environ.get("DS_IO_MODE", "direct"), "--threads", "1", "--segment-size", "1M", "--spool-buffer-size", "256K",
             "--flushes-in-flight", "1"]
    for r in range(3):
        wr = os.path.join(w, "round%d" % r)
        os.makedirs(wr, exist_ok=True)
        sp, j = simple(a, wr, ["--lmtp", "--connections", "50", "--messages", "600", "--size-file", sf,
                               "--rcpts", "100", "--pipelining"], "direct round %d" % r, server_extra=extra,
                       lmtp=True, expect_size=None, rcpts=100, target=lambda s: s.lmtp_addr)
        check(j["messages_ok"] == 600, "direct round %d: %r" % (r, j))


def mode_starttls(a, w):
    if not shutil.which("openssl"):
        raise Skip("openssl not installed: cannot make a test certificate")
    certs = os.path.join(w, "certs")
    run(["sh", a.gen_cert, certs])
    extra = ["--tls-cert", os.path.join(certs, "server.pem"), "--tls-key", os.path.join(certs, "server.key")]

    def cj(j):
        check(j["starttls"], "flag")
        lat = j["latency_us"]
        check(lat["starttls"]["count"] == 8, "one handshake per connection: %r" % lat["starttls"])
        check(lat["ehlo"]["count"] == 16, "EHLO again after TLS: %r" % lat["ehlo"])
        check(j["server_pipelining"], "PIPELINING in the EHLO after TLS")
    sp, j = simple(a, w, ["--connections", "8", "--duration", "1.5", "--starttls", "--pipelining"], "starttls", cj,
                   server_extra=extra)
    tls = set(m.get("tls") for m in sp.list)
    check(all(t and t != "none" for t in tls), "stored tls field %r" % tls)
    # The Received: field says the message came over TLS (RFC 3848: ESMTPS).
    qid = sp.list[0]["id"]
    head = sp.cat(qid).split(b"\r\n\r\n", 1)[0]
    check(b"ESMTPS" in head, "Received: of a TLS message: %r" % head[:300])


def mode_threads(a, w):
    srv = Server(a, w)
    ack1, ack2 = os.path.join(w, "ack1.log"), os.path.join(w, "ack2.log")
    j1 = bench_json(a, ["--server", srv.addr, "--threads", "2", "--connections", "16", "--duration", "1.5",
                        "--ack-log", ack1], expect_rc=None)
    j2 = bench_json(a, ["--server", srv.addr, "--threads", "2", "--connections", "8", "--rate", "600",
                        "--duration", "1", "--ack-log", ack2], expect_rc=None)
    srv.stop()
    acks = read_acks(ack1) + read_acks(ack2)
    check(len(acks) == j1["messages_ok"] + j2["messages_ok"], "ack logs vs messages_ok")
    check(len(set(acks)) == len(acks), "Message-IDs of the two runs collide")
    check_durable(a, srv, acks, j1["bytes_ok"] + j2["bytes_ok"],
                  all_acked=j1["messages_failed"] + j2["messages_failed"] == 0)
    check_clean(j1, "threads closed")
    check_clean(j2, "threads open")
    check(j1["_rc"] == 0 and j2["_rc"] == 0, "dotspool-bench exit status %d, %d" % (j1["_rc"], j2["_rc"]))
    check(j1["threads"] == 2 and j1["latency_us"]["connect"]["count"] == 16, "threads config %r" % j1)
    check(j2["messages_ok"] == 600 and j2["messages_per_s"] <= 610, "threads open loop %r" % j2)


def mode_sweep(a, w):
    srv = Server(a, w)
    rep = os.path.join(w, "report")
    steps_want = [100.0, 200.0, 400.0]
    dur = 0.7
    ack = os.path.join(w, "ack.log")
    p = run([a.bench, "sweep", "--server", srv.addr, "--slo-p99-ms", "5000", "--start-rate", "100",
             "--step-factor", "2", "--step-duration", str(dur), "--max-rate", "400", "--connections", "8",
             "--report", rep, "--ack-log", ack, "--json"])
    srv.stop()
    j = json.loads(p.stdout)
    print("  sweep: %r" % j, flush=True)
    for k in ("slo_p99_ms", "best_rate", "steps"):
        check(k in j, "sweep JSON lacks %s" % k)
    check([s["rate_target"] for s in j["steps"]] == steps_want, "steps %r" % j["steps"])
    for s in j["steps"]:
        for k in ("rate_target", "rate_achieved", "p50_ms", "p99_ms", "final_dot_p99_ms", "error_frac", "met"):
            check(k in s, "sweep step lacks %s" % k)
        check(s["met"] and s["error_frac"] == 0, "step %r" % s)
        check(0 < s["p50_ms"] <= s["p99_ms"] and 0 < s["final_dot_p99_ms"], "step latencies %r" % s)
        check(0.5 * s["rate_target"] <= s["rate_achieved"] <= 1.02 * s["rate_target"], "achieved %r" % s)
    check(j["best_rate"] == 400, "best_rate %r" % j["best_rate"])
    md = open(os.path.join(rep, "sweep.md")).read()
    rows = [l for l in md.splitlines() if re.match(r"^\|\s*\d", l)]
    check(len(rows) == 3, "sweep.md has %d table rows: %s" % (len(rows), md))
    check(rows[-1].split("|")[1].strip() == "400.0", "last row is the 400/s step: %r" % rows[-1])
    check("Highest rate meeting the target: **400.0 msg/s**" in md, "sweep.md names the best rate:\n%s" % md)
    root = ET.parse(os.path.join(rep, "sweep.svg")).getroot()
    check(root.tag.endswith("svg"), "svg root")
    check(len([e for e in root.iter() if e.tag.endswith("polyline")]) == 2, "p50 and p99 lines")
    # Open loop sends rate x duration messages per step; every one acknowledged (error_frac 0).
    want = sum(int(round(r * dur)) for r in steps_want)
    acks = read_acks(ack)
    check(len(acks) == want, "sweep ack log has %d Message-IDs, want %d" % (len(acks), want))
    check(len(set(acks)) == len(acks), "sweep steps reuse Message-IDs")
    check_durable(a, srv, acks, 4096 * len(acks))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--msgids", required=True)
    ap.add_argument("--gen-cert", required=True)
    ap.add_argument("mode")
    a = ap.parse_args()
    for k in ("bench", "server", "ctl", "msgids", "gen_cert"):
        setattr(a, k, os.path.abspath(getattr(a, k)))
    fn = globals().get("mode_" + a.mode)
    if fn is None:
        print("unknown mode", a.mode)
        return 2
    for b in (a.bench, a.server, a.ctl, a.msgids):
        if not os.access(b, os.X_OK):
            print("FAIL: not executable:", b)
            return 1
    w = dslib.mkdtemp(prefix="ds-bench-%s-" % a.mode)  # removed at exit unless DS_KEEP is set
    t0 = time.monotonic()
    rc = 1
    try:
        fn(a, w)
        rc = 0
    except Fail as e:
        print("FAIL:", e)
    except Skip as e:
        print("SKIP:", e)
        rc = 77
    except Exception:
        print("FAIL: unexpected exception")
        traceback.print_exc(file=sys.stdout)
    finally:
        def report(srv):
            print("killing server pid %d (still running)" % srv.pid)
            print(srv.log_tail())
        dslib.kill_servers(report)
    if rc == 0:
        print("ok (%.1fs)" % (time.monotonic() - t0))
    return rc


if __name__ == "__main__":
    sys.exit(main())
