#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Delivery benchmark (issue 14 point 5): is delivery fast and fair to ingest?

   dotspool-bench -> dotspool (delivery off)
   dotspool-bench -> dotspool --deliver-to smtp://  -> smtp-sink
   dotspool-bench -> dotspool --deliver-to lmtp://  -> a second dotspool (--lmtp-listen)

1. peak: closed-loop ingest into the server with delivery off (--duration s) -> peak msg/s.
2. open loop at half of that peak (or --rate), --duration s per leg, the legs alternating
   for --rounds rounds: off, smtp, lmtp. Per leg: accepted msg/s and final-dot p50/p99/p99.9
   (dotspool-bench), delivered msg/s (the server's dotspool_deliveries_total{outcome=
   "delivered"} delta over the load), the drain time after the load stops, the queue depth
   sampled every 0.5 s (dotspool_queue_messages, all states; the workers refresh it once a
   second), delivery latency p50/p99 from dotspool_delivery_latency_seconds (interpolated
   inside its coarse buckets) and its exact mean, CPU seconds of each process.
3. targets: delivered/accepted >= 0.95 and ingest final-dot p99 on/off <= 1.3, per
   delivery leg (medians over the rounds). PASS/MISS printed; a benchmark, not a test: exit
   0 either way, 1 only if something broke (a server did not start, the load failed).

Every server is started once, with its spool on the disk (a directory under --dir, default
/var/tmp), inside a loopback-only network namespace; the whole run is bounded at 300 s.

Usage: bench/deliver/run.py [--duration S] [--rounds N] [--rate R] [--size B]
           [--connections N] [--threads N] [--bench-threads N] [--deliver-connections N]
           [--legs off,smtp,lmtp,off+sink] [--drain-max S] [--server-arg=ARG]... [--json FILE]
           [--dir DIR] [--keep]
Env: DS_DOTSPOOL (server binary), DS_BENCH (dotspool-bench); default: the first of
build-h9/, build/ that has them. Needs root (network namespace) and smtp-sink
(scripts/deps.sh installs postfix)."""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile
import threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMTP_SINK = "/usr/sbin/smtp-sink"
BOUND_S = 300
LEGS = ("off", "smtp", "lmtp", "off+sink")
OFF_LEGS = ("off", "off+sink")
# Ports inside the namespace (nothing else listens there).
P_OFF, P_SMTP, P_SINK, P_LMTP_TARGET, P_LMTP = 10031, 10032, 10033, 10034, 10035
M_OFF, M_SMTP, M_LMTP_TARGET, M_LMTP = 10041, 10042, 10044, 10045


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per run (peak and each leg)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the alternating legs")
    ap.add_argument("--rate", type=float, default=0, help="offered rate; default: half the measured peak")
    ap.add_argument("--size", type=int, default=4096, help="message bytes")
    ap.add_argument("--connections", type=int, default=32, help="dotspool-bench connections")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="dotspool workers")
    ap.add_argument("--bench-threads", type=int, default=1, help="dotspool-bench threads")
    ap.add_argument("--deliver-connections", type=int, default=64, help="dotspool --deliver-connections")
    ap.add_argument("--legs", default=",".join(LEGS), help="subset of off,smtp,lmtp,off+sink (off is needed for the p99 ratio; off+sink is a CPU control)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="one more argument for every dotspool under load (not the LMTP target), "
                         "repeatable: --server-arg=--flushes-in-flight=4")
    ap.add_argument("--drain-max", type=int, default=15, help="longest wait for the queue to drain after a leg")
    ap.add_argument("--json", default="", help="also write the results as JSON to FILE")
    ap.add_argument("--dir", default="/var/tmp", help="where the spools go (the disk, not tmpfs)")
    ap.add_argument("--keep", action="store_true", help="keep the spools and logs")
    a = ap.parse_args()
    a.legs = [x for x in a.legs.split(",") if x]
    for leg in a.legs:
        if leg not in LEGS:
            ap.error("unknown leg %s (off, smtp, lmtp)" % leg)
    if a.duration < 1 or a.rounds < 1 or a.drain_max < 1:
        ap.error("--duration, --rounds, --drain-max must be positive")
    # Worst case: peak + warm-ups + every leg with a full drain, under the bound.
    nlegs = len(a.legs)
    ndlv = sum(1 for x in a.legs if x not in OFF_LEGS)
    worst = (a.duration + 3) * (1 + nlegs * a.rounds) + 3 * ndlv + ndlv * (a.rounds + 1) * a.drain_max + 15
    if worst > BOUND_S - 20:
        ap.error("duration x legs x rounds + drains may take %d s, more than %d s" % (worst, BOUND_S - 20))
    return a


def pick(env, name):
    if os.environ.get(env):
        return os.environ[env]
    for d in ("build-h9", "build"):
        p = os.path.join(ROOT, d, name)
        if os.access(p, os.X_OK):
            return p
    sys.exit("run.py: %s not built (cmake --build build) and %s not set" % (name, env))


# ---------------------------------------------------------------- processes

class Proc:
    def __init__(self, name, argv, log):
        self.name, self.argv, self.log = name, argv, log
        self.p = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT)

    def cpu_s(self):
        """user + system seconds so far (0 once gone)."""
        try:
            f = open("/proc/%d/stat" % self.p.pid).read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def wait_banner(port, what, deadline_s=20):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("%s does not answer on 127.0.0.1:%d" % (what, port))


def scrape(port):
    """{(name, labels-text): value} of one /metrics page."""
    out = {}
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if not line or line[0] == "#":
                continue
            m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)', line)
            if m:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def msum(mt, name, match=""):
    return sum(v for (n, lab), v in mt.items() if n == name and match in lab)


def queue_depth(mt):
    return msum(mt, "dotspool_queue_messages")


def hist_delta(a, b, name):
    """[(le, count in the interval)] of a cumulative histogram between two scrapes."""
    les = []
    for (n, lab), v in b.items():
        if n == name + "_bucket":
            le = re.search(r'le="([^"]+)"', lab).group(1)
            les.append((float("inf") if le == "+Inf" else float(le), v - a.get((n, lab), 0)))
    return sorted(les)


def hist_quantile(buckets, q):
    """Prometheus histogram_quantile: linear inside the bucket (from 0 for the first)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1)
        prev_le, prev_c = le, c
    return prev_le


def sink_count(path):
    """smtp-sink -c: the last 'mesg=N' of its \\r-separated running counter."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 512))
            m = re.findall(rb"mesg=(\d+)", f.read())
            return int(m[-1]) if m else 0
    except OSError:
        return 0


# ---------------------------------------------------------------- the run

class Bench:
    def __init__(self, a, t):
        self.a, self.t = a, t
        self.bench = pick("DS_BENCH", "dotspool-bench")
        self.dotspool = pick("DS_DOTSPOOL", "dotspool")
        self.procs = {}
        self.n = 0

    def server(self, name, listen, metrics, extra):
        spool = os.path.join(self.t, "spool-" + name)
        os.mkdir(spool)
        argv = [self.dotspool, *listen, "--spool", spool, "--accept-domain", "localhost",
                "--threads", str(self.a.threads), "--metrics", "127.0.0.1:%d" % metrics, *extra]
        self.procs[name] = Proc(name, argv, os.path.join(self.t, name + ".log"))

    def start(self):
        a = self.a
        need = set(a.legs) | {"off"}
        if "lmtp" in need:
            self.server("lmtp-target", ["--lmtp-listen", "127.0.0.1:%d" % P_LMTP_TARGET], M_LMTP_TARGET, [])
        if "smtp" in need or "off+sink" in need:
            self.procs["sink"] = Proc("sink", [SMTP_SINK, "-c", "-u", "nobody", "-h", "sink.test",
                                               "127.0.0.1:%d" % P_SINK, "1024"],
                                      os.path.join(self.t, "sink.out"))
        dc = ["--deliver-connections", str(a.deliver_connections)]
        dc += a.server_arg
        self.server("off", ["--listen", "127.0.0.1:%d" % P_OFF], M_OFF, list(a.server_arg))
        if "smtp" in need:
            self.server("smtp", ["--listen", "127.0.0.1:%d" % P_SMTP], M_SMTP,
                        ["--deliver-to", "smtp://127.0.0.1:%d" % P_SINK, *dc])
        if "lmtp" in need:
            self.server("lmtp", ["--listen", "127.0.0.1:%d" % P_LMTP], M_LMTP,
                        ["--deliver-to", "lmtp://127.0.0.1:%d" % P_LMTP_TARGET, *dc])
        ports = {"off": P_OFF, "smtp": P_SMTP, "lmtp": P_LMTP, "sink": P_SINK, "lmtp-target": P_LMTP_TARGET}
        for name, p in self.procs.items():
            try:
                wait_banner(ports[name], name)
            except RuntimeError:
                sys.stderr.write(open(p.log, errors="replace").read()[-2000:])
                raise

    def stop(self):
        for p in self.procs.values():
            p.stop()

    def load(self, port, rate, duration, tag):
        """One dotspool-bench run: (its JSON, its CPU seconds)."""
        self.n += 1
        out = os.path.join(self.t, "bench-%02d-%s.json" % (self.n, tag))
        argv = [self.bench, "--server", "127.0.0.1:%d" % port, "--connections", str(self.a.connections),
                "--size", str(self.a.size), "--duration", str(duration), "--threads", str(self.a.bench_threads),
                "--timeout-ms", "10000", "--json", "--quiet"]
        if rate:
            argv += ["--rate", "%.0f" % rate]
        p = subprocess.Popen(argv, stdout=open(out, "w"), stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace")
        try:
            j = json.loads(open(out).read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            raise RuntimeError("dotspool-bench gave no JSON (exit %d): %s" % (p.returncode, err[-500:]))
        return j, ru.ru_utime + ru.ru_stime

    def leg(self, leg, rate, duration):
        port, mport = {"off": (P_OFF, M_OFF), "off+sink": (P_OFF, M_OFF), "smtp": (P_SMTP, M_SMTP),
                       "lmtp": (P_LMTP, M_LMTP)}[leg]
        peer = {"smtp": "sink", "lmtp": "lmtp-target"}.get(leg)
        cpu0 = {k: p.cpu_s() for k, p in self.procs.items()}
        m0 = scrape(mport)
        pm0 = scrape(M_LMTP_TARGET) if leg == "lmtp" else None
        sink0 = sink_count(self.procs["sink"].log) if leg == "smtp" else None
        samples, stop = [], threading.Event()
        acc0 = msum(m0, "dotspool_server_messages_accepted_total")
        dlv0 = msum(m0, "dotspool_deliveries_total", 'outcome="delivered"')

        def sampler():
            t0 = time.time()
            while not stop.wait(0.5):
                try:
                    mt = scrape(mport)
                    # The gauge is refreshed once a second per worker; accepted minus
                    # delivered (counters, live) is the backlog at this instant.
                    backlog = (msum(mt, "dotspool_server_messages_accepted_total") - acc0) - \
                        (msum(mt, "dotspool_deliveries_total", 'outcome="delivered"') - dlv0)
                    samples.append((time.time() - t0, queue_depth(mt),
                                    msum(mt, "dotspool_deliver_connections"), backlog))
                except OSError:
                    pass

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        side = None
        if leg == "off+sink":
            # The control: delivery off, and beside it a second client sending the same rate to
            # smtp-sink: the CPU the smtp leg's next hop and client side take, without delivery.
            side = subprocess.Popen([self.bench, "--server", "127.0.0.1:%d" % P_SINK, "--connections", "64",
                                     "--size", str(self.a.size), "--duration", str(duration), "--rate",
                                     "%.0f" % rate, "--pipelining", "--json", "--quiet"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t_start = time.time()
        j, bench_cpu = self.load(port, rate, duration, leg)
        if side:
            side.wait()
        t_load = time.time() - t_start
        stop.set()
        th.join()
        m1 = scrape(mport)
        cpu1 = {k: p.cpu_s() for k, p in self.procs.items()}
        acc = msum(m1, "dotspool_server_messages_accepted_total") - msum(m0, "dotspool_server_messages_accepted_total")
        dname = "dotspool_deliveries_total"
        dlv = msum(m1, dname, 'outcome="delivered"') - msum(m0, dname, 'outcome="delivered"')
        r = {"leg": leg, "rate_target": rate, "bench": j, "load_s": t_load, "accepted": acc,
             "accepted_per_s": acc / t_load, "bench_cpu_s": bench_cpu,
             "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0 if cpu1[k] - cpu0[k] > 0.005}}
        # The lane's group commits: ingest commits plus, with delivery, ATTEMPT and outcome records.
        fl = msum(m1, "dotspool_flushes_total") - msum(m0, "dotspool_flushes_total")
        fdur = msum(m1, "dotspool_flush_duration_seconds_sum") - msum(m0, "dotspool_flush_duration_seconds_sum")
        r["flushes_per_s"] = fl / t_load
        r["flush_ms_mean"] = fdur / fl * 1e3 if fl else None
        r["commits_per_flush"] = acc / fl if fl else None
        sg = hist_delta(m0, m1, "dotspool_server_sync_gap_seconds")
        r["server_gap_ms"] = {k: (v * 1e3 if v is not None else None)
                              for k, v in (("p50", hist_quantile(sg, 0.5)), ("p99", hist_quantile(sg, 0.99)))}
        fd = j["latency_us"]["final_dot"]
        r["final_dot_ms"] = {k: fd[k] / 1e3 for k in ("p50", "p99", "p999", "max")}
        r["message_p99_ms"] = j["latency_us"]["message"]["p99"] / 1e3
        if leg in OFF_LEGS:
            return r
        # The queue after the load: wait until everything accepted is delivered.
        t_end = time.time()
        drain = None
        while time.time() - t_end < self.a.drain_max:
            mt = scrape(mport)
            if msum(mt, dname, 'outcome="delivered"') - msum(m0, dname, 'outcome="delivered"') >= acc:
                drain = time.time() - t_end
                break
            time.sleep(0.05)
        m2 = scrape(mport)
        cpu2 = {k: p.cpu_s() for k, p in self.procs.items()}
        lat = hist_delta(m0, m2, "dotspool_delivery_latency_seconds")
        cnt = msum(m2, "dotspool_delivery_latency_seconds_count") - msum(m0, "dotspool_delivery_latency_seconds_count")
        lsum = msum(m2, "dotspool_delivery_latency_seconds_sum") - msum(m0, "dotspool_delivery_latency_seconds_sum")
        q50, q99 = hist_quantile(lat, 0.5), hist_quantile(lat, 0.99)
        r.update({
            "delivered": dlv, "delivered_per_s": dlv / t_load, "delivered_ratio": dlv / acc if acc else 0,
            "delivered_total": msum(m2, dname, 'outcome="delivered"') - msum(m0, dname, 'outcome="delivered"'),
            "deferred": msum(m2, dname, 'outcome="deferred"') - msum(m0, dname, 'outcome="deferred"'),
            "failed": msum(m2, dname, 'outcome="failed"') - msum(m0, dname, 'outcome="failed"'),
            "attempts": msum(m2, "dotspool_delivery_attempts_total") - msum(m0, "dotspool_delivery_attempts_total"),
            "drain_s": drain,
            "queue": {"samples": samples, "max": max((s[1] for s in samples), default=0),
                      "end": samples[-1][1] if samples else 0, "after_drain": queue_depth(m2),
                      "backlog_max": max((s[3] for s in samples), default=0),
                      "backlog_end": acc - dlv},
            "deliver_conns_max": max((s[2] for s in samples), default=0),
            "deliver_conns_opened": msum(m2, "dotspool_deliver_connections_total") -
                                    msum(m0, "dotspool_deliver_connections_total"),
            "latency_ms": {"p50": q50 * 1e3 if q50 is not None else None,
                           "p99": q99 * 1e3 if q99 is not None else None,
                           "mean": lsum / cnt * 1e3 if cnt else None},
            "cpu_s_drain": {k: cpu2[k] - cpu1[k] for k in cpu1 if cpu2[k] - cpu1[k] > 0.005},
        })
        r["outcome_records"] = msum(m2, "dotspool_outcome_records_total") - msum(m0, "dotspool_outcome_records_total")
        if r["deferred"] or r["failed"]:
            # Why: the first few delivery log lines that were not plain deliveries.
            lines = [ln.strip() for ln in open(self.procs[leg].log, errors="replace")
                     if "event=delivery" in ln and "outcome=delivered" not in ln]
            r["not_delivered_sample"] = lines[-5:]
        if leg == "lmtp":
            pm1 = scrape(M_LMTP_TARGET)
            r["peer_accepted"] = msum(pm1, "dotspool_server_messages_accepted_total") - \
                msum(pm0, "dotspool_server_messages_accepted_total")
        if leg == "smtp":
            r["peer_accepted"] = sink_count(self.procs["sink"].log) - sink0
        return r


def fmt(v, f="%.2f"):
    return "-" if v is None else f % v


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def report(a, peak, rate, res, meta):
    by = {leg: [r for r in res if r["leg"] == leg] for leg in a.legs}
    print("delivery benchmark (issue 14.5), %s; %s" % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), meta))
    if peak:
        print("peak (closed loop, delivery off, %d connections, %d s): %.0f msg/s, final-dot p99 %.2f ms" % (
            a.connections, a.duration, peak["bench"]["messages_per_s"], peak["final_dot_ms"]["p99"]))
    print("offered rate: %.0f msg/s%s; %d round(s), medians (p99 range)" % (
        rate, " (half of peak)" if peak else " (--rate; peak not measured)", a.rounds))
    print()
    print("| leg | accepted msg/s | delivered msg/s | delivered/accepted | drain s | final-dot p50 ms | "
          "p99 ms | p99.9 ms | queue max / end (backlog max / end) | dlv latency p50 / p99 / mean ms | failed | "
          "CPU s (dotspool, peer, bench) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = {"off": "delivery off", "smtp": "-> smtp-sink", "lmtp": "-> dotspool LMTP",
             "off+sink": "off, + same rate into smtp-sink (control)"}
    for leg in a.legs:
        rs = by[leg]
        if not rs:
            continue
        p99s = [r["final_dot_ms"]["p99"] for r in rs]
        p99 = fmt(med(p99s)) + (" (%.2f-%.2f)" % (min(p99s), max(p99s)) if len(rs) > 1 else "")
        peer = {"smtp": "sink", "lmtp": "lmtp-target", "off+sink": "sink"}.get(leg)
        srv = "off" if leg in OFF_LEGS else leg
        cpu = "%.1f, %s, %.1f" % (med([r["cpu_s"].get(srv, 0) for r in rs]),
                                  fmt(med([r["cpu_s"].get(peer, 0) for r in rs]), "%.1f") if peer else "-",
                                  med([r["bench_cpu_s"] for r in rs]))
        failed = sum(r["bench"]["messages_failed"] for r in rs)
        if leg in OFF_LEGS:
            print("| %s | %.0f | - | - | - | %s | %s | %s | - | - | %d | %s |" % (
                names[leg], med([r["accepted_per_s"] for r in rs]), fmt(med([r["final_dot_ms"]["p50"] for r in rs])),
                p99, fmt(med([r["final_dot_ms"]["p999"] for r in rs])), failed, cpu))
            continue
        drains = [r["drain_s"] for r in rs]
        print("| %s | %.0f | %.0f | %.3f | %s | %s | %s | %s | %.0f / %.0f (%.0f / %.0f) | %s / %s / %s | %d | %s |" % (
            names[leg], med([r["accepted_per_s"] for r in rs]), med([r["delivered_per_s"] for r in rs]),
            med([r["delivered_ratio"] for r in rs]),
            "undrained" if None in drains else fmt(med(drains)),
            fmt(med([r["final_dot_ms"]["p50"] for r in rs])), p99, fmt(med([r["final_dot_ms"]["p999"] for r in rs])),
            max(r["queue"]["max"] for r in rs), med([r["queue"]["end"] for r in rs]),
            max(r["queue"]["backlog_max"] for r in rs), med([r["queue"]["backlog_end"] for r in rs]),
            fmt(med([r["latency_ms"]["p50"] for r in rs])), fmt(med([r["latency_ms"]["p99"] for r in rs])),
            fmt(med([r["latency_ms"]["mean"] for r in rs])), failed + sum(int(r["failed"]) for r in rs), cpu))
    print()
    verdicts = {}
    off = by.get("off") or []
    for leg in a.legs:
        if leg in OFF_LEGS or not by[leg]:
            continue
        rs = by[leg]
        ratio = med([r["delivered_ratio"] for r in rs])
        v1 = ratio >= 0.95
        line = "%s: delivered/accepted %.3f (target >= 0.95) %s" % (names[leg], ratio, "PASS" if v1 else "MISS")
        v2 = None
        if off:
            p_on, p_off = med([r["final_dot_ms"]["p99"] for r in rs]), med([r["final_dot_ms"]["p99"] for r in off])
            pr = p_on / p_off if p_off else float("inf")
            v2 = pr <= 1.3
            line += "; ingest final-dot p99 on/off %.2f (%.2f / %.2f ms; target <= 1.3) %s" % (
                pr, p_on, p_off, "PASS" if v2 else "MISS")
            verdicts[leg] = {"delivered_ratio": ratio, "delivered_pass": v1, "p99_ratio": pr, "p99_pass": v2}
        else:
            verdicts[leg] = {"delivered_ratio": ratio, "delivered_pass": v1}
        lost = [r for r in rs if r.get("peer_accepted") is not None and r["peer_accepted"] < r["delivered_total"]]
        if lost:
            line += " [peer counted fewer messages than delivered!]"
        print(line)
    print("group commits (server under load): " + "; ".join(
        "%s %s flushes/s, %s commits/flush, flush %s ms mean" % (
            names[leg], fmt(med([r["flushes_per_s"] for r in by[leg]]), "%.0f"),
            fmt(med([r["commits_per_flush"] for r in by[leg]]), "%.1f"),
            fmt(med([r["flush_ms_mean"] for r in by[leg]]), "%.2f")) for leg in a.legs if by[leg]))
    print("server-side final dot to 250 (dotspool_server_sync_gap_seconds, interpolated p50 / p99 ms): " +
          "; ".join("%s %s / %s" % (names[leg], fmt(med([r["server_gap_ms"]["p50"] for r in by[leg]])),
                                     fmt(med([r["server_gap_ms"]["p99"] for r in by[leg]])))
                    for leg in a.legs if by[leg]))
    for leg in a.legs:
        for r in by[leg]:
            if r.get("not_delivered_sample"):
                print("%s: %d deferred, %d failed; last such log lines:" % (names[leg], r["deferred"], r["failed"]))
                for ln in r["not_delivered_sample"]:
                    print("    " + ln[:400])
    for leg in a.legs:
        for r in by[leg]:
            if leg not in OFF_LEGS and r["queue"]["samples"]:
                print("%s: queue gauge / backlog (accepted - delivered) every 0.5 s: %s" % (
                    names[leg], " ".join("%.0f/%.0f" % (s[1], s[3]) for s in r["queue"]["samples"])))
    return verdicts


def main():
    a = parse_args()
    if os.geteuid() != 0:
        sys.exit("run.py: needs root (network namespace)")
    if not os.access(SMTP_SINK, os.X_OK) and "smtp" in a.legs:
        sys.exit("run.py: %s missing: scripts/deps.sh installs postfix" % SMTP_SINK)
    if not os.environ.get("DS_DELIVER_IN_NETNS"):
        # Loopback-only namespace: nothing the servers do can reach another host; bounded.
        os.environ["DS_DELIVER_IN_NETNS"] = "1"
        os.execvp("timeout", ["timeout", "-k", "10", str(BOUND_S), "unshare", "-n",
                              sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    st = os.statvfs(a.dir)
    free_gb = st.f_bavail * st.f_frsize / 1e9
    if free_gb < 4:
        sys.exit("run.py: only %.1f GB free under %s; the spools need a few GB" % (free_gb, a.dir))
    t = tempfile.mkdtemp(prefix="dotspool-deliver.", dir=a.dir)
    os.chmod(t, 0o755)
    b = Bench(a, t)
    res, peak, rc = [], None, 0
    try:
        b.start()
        sys.stderr.write("run.py: servers up in %s; warm-up and peak on delivery off\n" % t)
        b.load(P_OFF, 0, 2, "warmup")
        rate = a.rate
        if not rate:
            peak = b.leg("off", 0, a.duration)
            rate = peak["bench"]["messages_per_s"] / 2
        for leg in a.legs:  # warm each server (fresh spool) at the offered rate, drained
            if leg not in OFF_LEGS:
                b.leg(leg, rate, 2)
        for rnd in range(a.rounds):
            order = a.legs if rnd % 2 == 0 else list(reversed(a.legs))
            for leg in order:
                sys.stderr.write("run.py: round %d: %s at %.0f msg/s\n" % (rnd + 1, leg, rate))
                res.append(b.leg(leg, rate, a.duration))
        la = os.getloadavg()
        meta = "%d cpus, load %.2f %.2f %.2f at the end; %d B messages, %d connections, %d s per leg; " \
               "dotspool --threads %d, --deliver-connections %d%s; spools in %s" % (
                   os.cpu_count(), *la, a.size, a.connections, a.duration, a.threads, a.deliver_connections,
                   "".join(" " + x for x in a.server_arg), a.dir)
        verdicts = report(a, peak, rate, res, meta)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"args": vars(a), "peak": peak, "rate": rate, "legs": res, "verdicts": verdicts,
                           "meta": meta}, f, indent=1)
        if any(r["bench"]["messages_ok"] == 0 for r in res):
            rc = 1
    except (RuntimeError, OSError) as e:
        sys.stderr.write("run.py: %s\n" % e)
        rc = 1
    finally:
        b.stop()
        if a.keep:
            sys.stderr.write("run.py: kept %s\n" % t)
        else:
            shutil.rmtree(t, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
