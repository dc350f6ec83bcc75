#!/usr/bin/env python3
"""A/B of two dotspool binaries (before/after a change): the same dotspool-bench load
(32 connections, 4 KiB, 6 s, closed loop, then open loop at half of OLD's closed-loop
median), rounds alternating old/new, spool under /work/ab/spool (the disk), --threads
as given (default 1 and 2). Prints one markdown table: median msg/s, final-dot p50,
p99 median and range. A benchmark, not a test; used for issue 13's before/after table.

Usage: bench/ab/ab.py OLD_BIN NEW_BIN BENCH_BIN ROUNDS [threads...]
Env: DS_AB_DIR (default /work/ab) for the spool and the server log."""
import json, os, shutil, signal, socket, subprocess, sys, time, statistics
old, new, bench, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
threads = [int(t) for t in sys.argv[5:]] or [1, 2]
AB_DIR = os.environ.get("DS_AB_DIR", "/work/ab")
os.makedirs(AB_DIR, exist_ok=True)
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def run(binary, nthreads, rate=None, dur=6):
    spool = os.path.join(AB_DIR, "spool")
    shutil.rmtree(spool, ignore_errors=True)
    port = free_port()
    srv = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--spool", spool, "--threads", str(nthreads),
                            "--segment-size", str(64 << 20)], stdout=subprocess.DEVNULL, stderr=open(os.path.join(AB_DIR, "srv.log"), "w"))
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close(); break
            except OSError: time.sleep(0.1)
        cmd = [bench, "--server", f"127.0.0.1:{port}", "--connections", "32", "--size", "4096", "--duration", str(dur), "--json", "--quiet"]
        if rate: cmd += ["--rate", str(rate)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + 60).stdout
        j = json.loads(out.strip().splitlines()[-1])
        fd = j["latency_us"]["final_dot"]
        return j["messages_per_s"], fd["p50"], fd["p99"]
    finally:
        srv.send_signal(signal.SIGTERM)
        try: srv.wait(20)
        except subprocess.TimeoutExpired: srv.kill(); srv.wait()
res = {}
for r in range(rounds):
    for t in threads:
        for name, b in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
            res.setdefault((name, t, "closed"), []).append(run(b, t))
for t in threads:
    # open loop at half of the old binary's median closed-loop peak
    half = int(statistics.median(x[0] for x in res[("old", t, "closed")]) / 2)
    for r in range(rounds):
        for name, b in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
            res.setdefault((name, t, f"open {half}/s"), []).append(run(b, t, rate=half))
print(f"| threads | load | binary | msg/s (median) | final-dot p50 ms | final-dot p99 ms (median, range) |")
print("|---|---|---|---:|---:|---:|")
for (name, t, load), v in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    m = statistics.median(x[0] for x in v); p50 = statistics.median(x[1] for x in v) / 1000
    p99s = [x[2] / 1000 for x in v]
    print(f"| {t} | {load} | {name} | {m:,.0f} | {p50:.2f} | {statistics.median(p99s):.2f} ({min(p99s):.2f}-{max(p99s):.2f}) |")
