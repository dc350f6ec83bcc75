#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Runs dotspool-bench in one mode against tests/bench/sink.py and checks
the JSON output, the ack log and what the sink received. Exit 0 pass,
1 fail, 77 skip."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

from bench_json import Fail, Skip, check, parse_one


class Sink:
    def __init__(self, path, workdir, name, *extra):
        self.port_file = os.path.join(workdir, name + ".port")
        self.ids_file = os.path.join(workdir, name + ".ids")
        for f in (self.port_file, self.ids_file):
            if os.path.exists(f):
                os.unlink(f)
        self.proc = subprocess.Popen([sys.executable, path, "--port-file", self.port_file,
                                      "--ids-file", self.ids_file] + list(extra))
        deadline = time.time() + 10
        while not os.path.exists(self.port_file):
            check(self.proc.poll() is None, "sink died")
            check(time.time() < deadline, "sink did not start")
            time.sleep(0.02)
        self.port = int(open(self.port_file).read())
        self.server = "127.0.0.1:%d" % self.port

    def received(self):
        out = {}
        if os.path.exists(self.ids_file):
            for line in open(self.ids_file):
                mid, size, bad = line.split()
                out[mid] = (int(size), int(bad))
        return out

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def run(bench, args, expect_rc=0, timeout=40):
    p = subprocess.run([bench] + args, capture_output=True, text=True, timeout=timeout)
    if expect_rc is not None and p.returncode != expect_rc:
        raise Fail("%s exited %d (want %d): %s %s" % (args, p.returncode, expect_rc, p.stdout[-2000:],
                                                      p.stderr[-2000:]))
    return p


def run_json(bench, args, expect_rc=0):
    return parse_one(run(bench, args + ["--json"], expect_rc).stdout)


def check_acks(ack_path, sink, expect_n):
    acks = [l.strip() for l in open(ack_path) if l.strip()]
    check(len(acks) == expect_n, "ack log has %d lines, want %d" % (len(acks), expect_n))
    check(len(set(acks)) == len(acks), "duplicate Message-IDs in ack log")
    got = sink.received()
    missing = [a for a in acks if a not in got]
    check(not missing, "acked but not received by sink: %r" % missing[:3])
    bad = [m for m, (sz, b) in got.items() if b]
    check(not bad, "sink saw malformed lines")
    return acks, got


def mode_closed(a, w):
    s = Sink(a.sink, w, "s")
    try:
        ack = os.path.join(w, "ack.log")
        j = run_json(a.bench, ["--server", s.server, "--messages", "500", "--connections", "8",
                               "--ack-log", ack, "--quiet"])
        check(j["messages_ok"] == 500 and j["messages_failed"] == 0, "closed: %r" % j)
        check(j["mode"] == "closed", "mode")
        check(j["latency_us"]["final_dot"]["count"] == 500, "final_dot count")
        check(j["latency_us"]["mail"]["count"] == 500, "mail count")
        check(j["latency_us"]["connect"]["count"] == 8, "one connect per connection")
        check(j["bytes_ok"] == 500 * 4096, "bytes_ok")
        check(j["errors_by_code"] == {}, "no errors expected")
        acks, got = check_acks(ack, s, 500)
        check(all(got[m][0] == 4096 for m in acks), "sink saw a message size other than 4096")
        # Text mode prints the table.
        p = run(a.bench, ["--server", s.server, "--messages", "20", "--connections", "2"])
        for word in ["final_dot", "p99.9", "msg/s", "MB/s", "errors: none"]:
            check(word in p.stdout, "text output lacks %s" % word)
        check(p.stderr == "", "progress must be silent when stderr is not a tty: %r" % p.stderr)
    finally:
        s.stop()


def mode_rate(a, w):
    s = Sink(a.sink, w, "s")
    try:
        j = run_json(a.bench, ["--server", s.server, "--rate", "400", "--duration", "1.5", "--connections", "8"])
        check(j["mode"] == "open", "mode")
        check(j["messages_ok"] == 600, "open loop at 400/s for 1.5 s must send 600, got %d" % j["messages_ok"])
        check(1.4 <= j["elapsed_s"] <= 3.0, "elapsed %f" % j["elapsed_s"])
        check(300 <= j["messages_per_s"] <= 430, "rate %f" % j["messages_per_s"])
        # On a terminal (script(1) provides one) a progress line appears once per second.
        if shutil.which("script"):
            cmd = "%s --server %s --rate 200 --duration 1.6 --connections 2" % (a.bench, s.server)
            p = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=30)
            check("[   1.0s] ok" in p.stdout and "[18" not in p.stdout and "msg/s" in p.stdout and "p99" in p.stdout,
                  "no progress line on a tty: %r" % p.stdout[:300])
    finally:
        s.stop()
    # Coordinated omission: a slow server (40 ms per message, one connection) cannot keep up with
    # 50/s. Latency from the schedule must grow with the backlog, unlike final-dot latency.
    s = Sink(a.sink, w, "slow", "--delay-ms", "40")
    try:
        j = run_json(a.bench, ["--server", s.server, "--rate", "50", "--messages", "25", "--connections", "1"])
        check(j["messages_ok"] == 25, "slow: %r" % j)
        lat = j["latency_us"]
        check(lat["final_dot"]["p50"] >= 35000, "final dot should include the 40 ms delay: %r" % lat["final_dot"])
        check(lat["message"]["max"] >= 300000,
              "message latency must include queueing behind the slow server: %r" % lat["message"])
        check(lat["message"]["max"] > 4 * lat["final_dot"]["max"], "coordinated omission hidden")
    finally:
        s.stop()


def mode_pipelining(a, w):
    s = Sink(a.sink, w, "s")
    try:
        ack = os.path.join(w, "ack.log")
        j = run_json(a.bench, ["--server", s.server, "--messages", "300", "--pipelining", "--rcpts", "3",
                               "--ack-log", ack])
        check(j["pipelining"] and j["server_pipelining"], "pipelining flags")
        check(j["messages_ok"] == 300 and j["rcpts_ok"] == 900, "pipelining: %r" % j)
        check(j["latency_us"]["rcpt"]["count"] == 900, "one rcpt latency per recipient")
        check_acks(ack, s, 300)
    finally:
        s.stop()
    s = Sink(a.sink, w, "nopipe", "--no-pipelining")
    try:
        j = run_json(a.bench, ["--server", s.server, "--messages", "100", "--pipelining", "--rcpts", "2"])
        check(not j["server_pipelining"], "sink did not advertise PIPELINING")
        check(j["messages_ok"] == 100, "fallback to lockstep: %r" % j)
    finally:
        s.stop()


def mode_lmtp(a, w):
    s = Sink(a.sink, w, "s", "--lmtp")
    try:
        ack = os.path.join(w, "ack.log")
        j = run_json(a.bench, ["--server", s.server, "--lmtp", "--messages", "200", "--rcpts", "4",
                               "--pipelining", "--ack-log", ack])
        check(j["protocol"] == "lmtp", "protocol")
        check(j["messages_ok"] == 200 and j["rcpts_ok"] == 800, "lmtp: %r" % j)
        check_acks(ack, s, 200)
        # SMTP greeting against the LMTP sink is refused: counted by code, run fails.
        j = run_json(a.bench, ["--server", s.server, "--messages", "5", "--connections", "1"], expect_rc=1)
        check(j["messages_ok"] == 0 and "500" in j["errors_by_code"], "EHLO to LMTP: %r" % j)
    finally:
        s.stop()


def mode_newconn(a, w):
    s = Sink(a.sink, w, "s")
    try:
        j = run_json(a.bench, ["--server", s.server, "--messages", "120", "--connections", "4",
                               "--new-connection-per-message"])
        check(j["messages_ok"] == 120, "newconn: %r" % j)
        check(j["latency_us"]["connect"]["count"] == 120, "one connect per message")
        check(j["latency_us"]["banner"]["count"] == 120, "one banner per message")
        check(j["new_connection_per_message"], "flag")
        j = run_json(a.bench, ["--server", s.server, "--rate", "100", "--messages", "50", "--connections", "4",
                               "--new-connection-per-message"])
        check(j["messages_ok"] == 50 and j["latency_us"]["connect"]["count"] == 50, "open loop newconn %r" % j)
    finally:
        s.stop()


def mode_sizefile(a, w):
    s = Sink(a.sink, w, "s")
    try:
        sizes = [500, 5000, 70000]
        sf = os.path.join(w, "sizes.txt")
        with open(sf, "w") as f:
            # A comment longer than the parser's line buffer must not be read as sizes.
            f.write("# sizes" + " (500 bytes, 5000 bytes and 70000 bytes, sampled per message)" * 3 + "\n")
            f.write("\n".join(map(str, sizes)) + "\n")
        ack = os.path.join(w, "ack.log")
        j = run_json(a.bench, ["--server", s.server, "--messages", "150", "--size-file", sf, "--ack-log", ack])
        check(j["messages_ok"] == 150, "sizefile %r" % j)
        acks, got = check_acks(ack, s, 150)
        seen = set(got[m][0] for m in acks)
        check(seen <= set(sizes), "unexpected sizes %r" % seen)
        check(len(seen) == 3, "all sizes sampled: %r" % seen)
        check(j["bytes_ok"] == sum(got[m][0] for m in acks), "bytes_ok matches what the sink got")
        with open(sf, "w") as f:
            f.write("12\nabc\n")
        p = run(a.bench, ["--server", s.server, "--size-file", sf], expect_rc=2)
        check("size-file" in p.stderr, "bad size file message")
        with open(sf, "w") as f:
            f.write("12\n" + "1" * 100 + "\n")
        p = run(a.bench, ["--server", s.server, "--size-file", sf], expect_rc=2)
        check("size-file" in p.stderr, "an overlong size line is an error")
        # Single big message size.
        j = run_json(a.bench, ["--server", s.server, "--messages", "5", "--size", "1000000"])
        check(j["messages_ok"] == 5 and j["bytes_ok"] == 5000000, "1 MB messages %r" % j)
        # bytes_ok is the bytes of each message as sent (before dot-stuffing, what the sink stores),
        # also when --size is smaller than the generated headers and more than asked for goes out.
        for size in (100, 4096):
            ack = os.path.join(w, "ack%d.log" % size)
            j = run_json(a.bench, ["--server", s.server, "--messages", "40", "--connections", "4", "--size",
                                   str(size), "--ack-log", ack])
            check(j["messages_ok"] == 40, "--size %d: %r" % (size, j))
            got = s.received()
            acks = [l.strip() for l in open(ack) if l.strip()]
            sent = [got[m][0] for m in acks]
            check(j["bytes_ok"] == sum(sent),
                  "--size %d: bytes_ok %d, the sink got %d bytes" % (size, j["bytes_ok"], sum(sent)))
            if size == 100:
                check(min(sent) > 100, "--size 100 sends the headers alone, more than 100 bytes: %r" % sent[:5])
            else:
                check(set(sent) == {size}, "--size %d sends %d-byte messages: %r" % (size, size, set(sent)))
            mbs = j["bytes_ok"] / 1e6 / j["elapsed_s"]
            check(abs(j["mb_per_s"] - mbs) <= 0.01 + 0.01 * mbs, "mb_per_s is bytes_ok / elapsed: %r" % j)
    finally:
        s.stop()


def mode_errors(a, w):
    s = Sink(a.sink, w, "s", "--fail-every", "5", "--reject-rcpt", "user3@")
    try:
        ack = os.path.join(w, "ack.log")
        j = run_json(a.bench, ["--server", s.server, "--messages", "200", "--connections", "4",
                               "--ack-log", ack], expect_rc=1)
        e = j["errors_by_code"]
        check(e.get("451", 0) > 0 and e.get("550", 0) > 0, "errors_by_code %r" % e)
        check(j["messages_ok"] + j["messages_failed"] == 200, "every message accounted for %r" % j)
        check(j["messages_failed"] == e["451"] + e["550"], "one error per failed message %r" % j)
        check_acks(ack, s, j["messages_ok"])
        # Pipelined with rejected recipients: the group's replies stay in step.
        j = run_json(a.bench, ["--server", s.server, "--messages", "200", "--connections", "4",
                               "--pipelining"], expect_rc=1)
        check(j["messages_ok"] + j["messages_failed"] == 200, "pipelined accounting %r" % j)
        check(j["errors_by_code"].get("550", 0) > 0, "pipelined 550")
    finally:
        s.stop()
    # A server that stalls after the final dot: the per-reply timeout fails the message, no hang.
    s = Sink(a.sink, w, "stall", "--delay-ms", "3000")
    try:
        t0 = time.time()
        j = run_json(a.bench, ["--server", s.server, "--messages", "2", "--connections", "1",
                               "--timeout-ms", "300"], expect_rc=1)
        check(time.time() - t0 < 6, "timeout not enforced")
        check(j["errors_by_code"].get("timeout", 0) >= 1 and j["messages_ok"] == 0, "stall %r" % j)
    finally:
        s.stop()
    # Nothing listening: connect errors, no hang.
    j = run_json(a.bench, ["--server", "127.0.0.1:1", "--messages", "5", "--connections", "2"], expect_rc=1)
    check(j["messages_ok"] == 0 and j["messages_failed"] == 5 and j["errors_by_code"].get("connect", 0) > 0,
          "dead server %r" % j)


def mode_sweep(a, w):
    s = Sink(a.sink, w, "s")
    try:
        rep = os.path.join(w, "report")
        shutil.rmtree(rep, ignore_errors=True)
        ack = os.path.join(w, "ack.log")
        p = run(a.bench, ["sweep", "--server", s.server, "--slo-p99-ms", "200", "--start-rate", "50",
                          "--step-factor", "2", "--step-duration", "0.4", "--max-rate", "200", "--report", rep,
                          "--connections", "4", "--ack-log", ack, "--json"])
        j = json.loads(p.stdout)
        check(len(j["steps"]) == 3 and j["best_rate"] == 200, "sweep %r" % j)
        # --ack-log covers every step, and no two steps share a Message-ID (20 + 40 + 80 messages).
        check_acks(ack, s, 140)
        md = open(os.path.join(rep, "sweep.md")).read()
        check("| 200.0 |" in md and "Highest rate meeting the target" in md, "sweep.md table")
        root = ET.parse(os.path.join(rep, "sweep.svg")).getroot()
        check(root.tag.endswith("svg"), "svg root")
        check(len([e for e in root.iter() if e.tag.endswith("polyline")]) == 2, "p50 and p99 lines")
    finally:
        s.stop()
    # Slow server: the target must break, and the sweep must stop there.
    s = Sink(a.sink, w, "slow", "--delay-ms", "20")
    try:
        rep = os.path.join(w, "report2")
        p = run(a.bench, ["sweep", "--server", s.server, "--slo-p99-ms", "60", "--start-rate", "20",
                          "--step-factor", "3", "--step-duration", "0.5", "--max-rate", "2000", "--report", rep,
                          "--connections", "1", "--json"], expect_rc=None)
        j = json.loads(p.stdout)
        check(not j["steps"][-1]["met"], "last step must break the target: %r" % j)
        check(j["best_rate"] < 60, "a 20 ms/message single connection cannot meet 60 msg/s: %r" % j)
        check(len(j["steps"]) < 5, "sweep must stop at the first broken step")
        check(os.path.exists(os.path.join(rep, "sweep.svg")), "svg")
    finally:
        s.stop()


def mode_threads(a, w):
    s = Sink(a.sink, w, "s")
    try:
        ack = os.path.join(w, "ack.log")
        j = run_json(a.bench, ["--server", s.server, "--messages", "1001", "--connections", "8", "--threads", "3",
                               "--ack-log", ack])
        check(j["threads"] == 3 and j["messages_ok"] == 1001, "threads closed %r" % j)
        check(j["latency_us"]["connect"]["count"] == 8, "connections split, not multiplied")
        check_acks(ack, s, 1001)
        j = run_json(a.bench, ["--server", s.server, "--rate", "600", "--duration", "1", "--connections", "4",
                               "--threads", "2"])
        check(j["messages_ok"] == 600 and 450 <= j["messages_per_s"] <= 660, "threads open loop %r" % j)
        run(a.bench, ["--server", s.server, "--connections", "2", "--threads", "3"], expect_rc=2)
    finally:
        s.stop()


def mode_starttls(a, w):
    if not shutil.which("openssl"):
        raise Skip("openssl not installed: cannot make a test certificate")
    key, cert = os.path.join(w, "key.pem"), os.path.join(w, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=30)
    s = Sink(a.sink, w, "tls", "--tls-cert", cert, "--tls-key", key, "--require-tls")
    try:
        ack = os.path.join(w, "ack.log")
        j = run_json(a.bench, ["--server", s.server, "--messages", "300", "--connections", "4", "--starttls",
                               "--pipelining", "--rcpts", "2", "--ack-log", ack])
        check(j["starttls"] and j["messages_ok"] == 300 and j["rcpts_ok"] == 600, "starttls %r" % j)
        lat = j["latency_us"]
        check(lat["starttls"]["count"] == 4, "one handshake per connection")
        check(lat["ehlo"]["count"] == 8, "EHLO again after TLS")
        check(j["server_pipelining"], "PIPELINING seen in the EHLO after TLS")
        check_acks(ack, s, 300)
        # Large bodies cross many TLS records; one connection per message.
        j = run_json(a.bench, ["--server", s.server, "--messages", "12", "--connections", "3", "--starttls",
                               "--size", "300000", "--new-connection-per-message"])
        check(j["messages_ok"] == 12 and j["bytes_ok"] == 12 * 300000, "big TLS %r" % j)
        check(j["latency_us"]["starttls"]["count"] == 12, "handshake per message")
        sizes = [sz for sz, bad in s.received().values()]
        check(sizes.count(300000) == 12, "sink received the big messages intact")
        # Without STARTTLS the server refuses MAIL: counted by code.
        j = run_json(a.bench, ["--server", s.server, "--messages", "3", "--connections", "1"], expect_rc=1)
        check(j["errors_by_code"].get("530", 0) == 3, "530 without TLS %r" % j)
    finally:
        s.stop()
    s = Sink(a.sink, w, "plain")
    try:
        j = run_json(a.bench, ["--server", s.server, "--messages", "3", "--connections", "1", "--starttls"],
                     expect_rc=1)
        check(j["messages_ok"] == 0 and j["errors_by_code"].get("tls", 0) > 0, "no STARTTLS offered %r" % j)
    finally:
        s.stop()


def mode_usage(a, w):
    p = run(a.bench, ["--help"])
    for opt in ["--server", "--connections", "--messages", "--duration", "--rate", "--pipelining", "--size",
                "--size-file", "--rcpts", "--from", "--to", "--lmtp", "--starttls",
                "--new-connection-per-message", "--json", "--ack-log", "--quiet", "--slo-p99-ms",
                "--threads", "--start-rate", "--step-factor", "--step-duration", "--max-rate", "--error-budget", "--report"]:
        check(opt in p.stdout, "--help lacks %s" % opt)
    run(a.bench, ["--server", "localhost:25"], expect_rc=2)
    run(a.bench, ["--server", "127.0.0.1:99999"], expect_rc=2)
    run(a.bench, ["--server", "127.0.0.1:25", "--to", "%s@x"], expect_rc=2)
    run(a.bench, ["--server", "127.0.0.1:25", "--messages", "3", "--duration", "1"], expect_rc=2)
    run(a.bench, ["sweep", "--server", "127.0.0.1:25"], expect_rc=2)


def mode_diskprobe(a, w):
    p = run(a.bench, ["--dir", w, "--count", "30", "--file-mb", "4", "--json"])
    j = json.loads(p.stdout)
    for m in ["prewritten", "fallocate", "odirect"]:
        r = j["modes"].get(m)
        check(r is not None, "mode %s missing" % m)
        if m == "odirect" and not r["ok"]:
            continue  # tmpfs and some filesystems refuse O_DIRECT
        check(r["ok"] and r["flushes"] == 30, "%s: %r" % (m, r))
        check(0 < r["p50_us"] <= r["p99_us"] <= r["max_us"], "%s percentiles %r" % (m, r))
    check(not [f for f in os.listdir(w) if f.startswith(".dotspool-diskprobe")], "probe files left behind")
    run(a.bench, ["--mode", "bogus"], expect_rc=2)
    # Interleaved rounds add up to --count per mode.
    j = json.loads(run(a.bench, ["--dir", w, "--count", "30", "--rounds", "3", "--file-mb", "4",
                                 "--mode", "prewritten", "--json"]).stdout)
    check(list(j["modes"]) == ["prewritten"] and j["modes"]["prewritten"]["flushes"] == 30, "rounds %r" % j)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--sink", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("mode")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    fn = globals().get("mode_" + a.mode)
    if fn is None:
        print("unknown mode", a.mode)
        return 1
    try:
        fn(a, a.workdir)
    except Fail as e:
        print("FAIL:", e)
        return 1
    except Skip as e:
        print("SKIP:", e)
        return 77
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
