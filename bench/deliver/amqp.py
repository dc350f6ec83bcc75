#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""amqp:// hand-off benchmark (issue 18 point 3): messages/s handed off to a RabbitMQ quorum
queue and the commit-to-confirm latency, next to --deliver-to smtp:// into smtp-sink, same run.

   dotspool-bench -> dotspool --deliver-to smtp://      -> smtp-sink
   dotspool-bench -> dotspool --deliver-to amqp://x3    -> RabbitMQ 3.10 cluster (--nodes, default 3),
                                                           quorum queue on every node

Legs alternate (smtp, amqp) for --rounds rounds. Each leg: dotspool-bench closed loop (or
--rate R open loop) for --duration s, then wait until the server's queue is empty. Per leg:
accepted msg/s (dotspool-bench), handed-off msg/s = delivered messages / (load + drain time),
drain time, delivery latency p50/p99 (dotspool_delivery_latency_seconds: commit to the next
hop's word, for both legs) and, for amqp, publish-to-confirm p50/p99
(dotspool_handoff_confirm_seconds); the histograms are coarse (1, 5, 10, 25, 50, 100, 250,
500 ms ...) and interpolated. Nothing consumes the queue during the run (the hand-off alone);
it is purged between legs. CPU seconds of dotspool and of the broker (all beam processes).

Everything runs in a loopback-only network namespace; spools under --dir (the disk). The
machine is shared and has 2 cores: read the ratios, not the absolute figures.

Usage: bench/deliver/amqp.py [--nodes 3] [--duration 8] [--rounds 2] [--rate R] [--size 4096]
           [--connections 32] [--threads 2] [--window 256] [--json FILE] [--dir /var/tmp]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "peer"))
sys.path.insert(0, os.path.join(ROOT, "tests", "amqp"))
import run as drun  # noqa: E402  (bench/deliver/run.py: Proc, scrape, hist_delta, ...)
import peers  # noqa: E402
import rabbit  # noqa: E402

P_SMTP, P_SINK, P_AMQP = 10032, 10033, 10036
M_SMTP, M_AMQP = 10042, 10046


def pick(env, name):
    if os.environ.get(env):
        return os.environ[env]
    for d in ("build-amqp", "build"):
        p = os.path.join(ROOT, d, name)
        if os.access(p, os.X_OK):
            return p
    sys.exit("amqp.py: %s not built and %s not set" % (name, env))


def beam_cpu_s():
    tot = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if open("/proc/%s/comm" % pid).read().strip() not in ("beam.smp",):
                continue
            f = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
            tot += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return tot


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--drain-max", type=int, default=60)
    ap.add_argument("--json", default="")
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    peers.netns_enter()
    t = tempfile.mkdtemp(prefix="ds-amqp-bench-", dir=a.dir)
    dotspool, bench = pick("DS_DOTSPOOL", "dotspool"), pick("DS_BENCH", "dotspool-bench")
    c = rabbit.Cluster(os.path.join(t, "rmq"), nodes=a.nodes)
    procs = {}
    res = {"smtp": [], "amqp": []}
    try:
        t0 = time.monotonic()
        c.start()
        start_s = time.monotonic() - t0
        print("rabbitmq: %d node(s) up in %.1f s (each: %s)" % (a.nodes, start_s,
              ", ".join("%.1f" % n.start_s for n in c.nodes)))
        rabbit.declare(c.nodes[0].port, "dotspool", "mail", "mail", quorum_size=a.nodes)
        procs["sink"] = drun.Proc("sink", [drun.SMTP_SINK, "-c", "-u", "nobody", "-h", "sink.test",
                                           "127.0.0.1:%d" % P_SINK, "1024"], os.path.join(t, "sink.out"))

        def server(name, port, mport, extra):
            spool = os.path.join(t, "spool-" + name)
            os.mkdir(spool)
            argv = [dotspool, "--listen", "127.0.0.1:%d" % port, "--spool", spool, "--accept-domain",
                    "localhost", "--threads", str(a.threads), "--metrics", "127.0.0.1:%d" % mport,
                    "--retry-min-s", "1", "--deliver-hop-backoff-min-s", "1", *extra]
            procs[name] = drun.Proc(name, argv, os.path.join(t, name + ".log"))

        server("smtp", P_SMTP, M_SMTP, ["--deliver-to", "smtp://127.0.0.1:%d" % P_SINK])
        urls = []
        for n in c.nodes:
            urls += ["--deliver-to", "amqp://guest:guest@127.0.0.1:%d/?exchange=dotspool&routing_key=mail" % n.port]
        server("amqp", P_AMQP, M_AMQP, urls + ["--amqp-window", str(a.window)])
        for name, port in (("sink", P_SINK), ("smtp", P_SMTP), ("amqp", P_AMQP)):
            drun.wait_banner(port, name)
        time.sleep(1.0)
        for r in range(a.rounds):
            for leg, port, mport in (("smtp", P_SMTP, M_SMTP), ("amqp", P_AMQP, M_AMQP)):
                m0 = drun.scrape(mport)
                cpu0 = procs[leg].cpu_s()
                b0 = beam_cpu_s()
                out = os.path.join(t, "bench-%d-%s.json" % (r, leg))
                argv = [bench, "--server", "127.0.0.1:%d" % port, "--connections", str(a.connections),
                        "--size", str(a.size), "--duration", str(a.duration), "--timeout-ms", "10000",
                        "--json", "--quiet"]
                if a.rate:
                    argv += ["--rate", "%.0f" % a.rate]
                tl = time.monotonic()
                subprocess.run(argv, stdout=open(out, "w"), check=False)
                load_s = time.monotonic() - tl
                j = json.loads(open(out).read().strip().splitlines()[-1])
                while time.monotonic() - tl < a.duration + a.drain_max:
                    if drun.queue_depth(drun.scrape(mport)) == 0:
                        break
                    time.sleep(0.2)
                total_s = time.monotonic() - tl
                m1 = drun.scrape(mport)
                acc = drun.msum(m1, "dotspool_server_messages_accepted_total") - \
                    drun.msum(m0, "dotspool_server_messages_accepted_total")
                delivered = drun.msum(m1, "dotspool_deliveries_total", 'outcome="delivered"') - \
                    drun.msum(m0, "dotspool_deliveries_total", 'outcome="delivered"')
                lat = drun.hist_delta(m0, m1, "dotspool_delivery_latency_seconds")
                row = {
                    "round": r, "accepted_per_s": round(acc / load_s, 1),
                    "final_dot_p99_ms": j["latency_us"]["final_dot"]["p99"] / 1e3,
                    "delivered": delivered, "load_s": round(load_s, 2), "drain_s": round(total_s - load_s, 2),
                    "handed_off_per_s": round(delivered / total_s, 1) if total_s else None,
                    "lat_p50_ms": (drun.hist_quantile(lat, 0.5) or 0) * 1000,
                    "lat_p99_ms": (drun.hist_quantile(lat, 0.99) or 0) * 1000,
                    "cpu_dotspool_s": round(procs[leg].cpu_s() - cpu0, 2),
                    "cpu_beam_s": round(beam_cpu_s() - b0, 2) if leg == "amqp" else None,
                }
                if leg == "amqp":
                    cf = drun.hist_delta(m0, m1, "dotspool_handoff_confirm_seconds")
                    row["confirm_p50_ms"] = (drun.hist_quantile(cf, 0.5) or 0) * 1000
                    row["confirm_p99_ms"] = (drun.hist_quantile(cf, 0.99) or 0) * 1000
                    for k in ("returned", "nacked", "timeout", "connection_lost"):
                        row[k] = drun.msum(m1, "dotspool_handoff_results_total", 'result="%s"' % k) - \
                            drun.msum(m0, "dotspool_handoff_results_total", 'result="%s"' % k)
                    try:
                        conn = rabbit.connect(c.nodes[0].port)
                        conn.channel().queue_purge("mail")
                        conn.close()
                    except Exception as e:  # noqa: BLE001
                        print("purge failed: %s" % e)
                res[leg].append(row)
                print("round %d %-4s: %s" % (r, leg, json.dumps({k: v for k, v in row.items()})))
        print("\nmedians over %d rounds (%d node(s), %d B, %d connections, %s):" % (
            a.rounds, a.nodes, a.size, a.connections, "rate %.0f" % a.rate if a.rate else "closed loop"))
        summary = {}
        for leg in ("smtp", "amqp"):
            rows = res[leg]
            summary[leg] = {k: statistics.median([x[k] for x in rows if x.get(k) is not None])
                            for k in ("accepted_per_s", "handed_off_per_s", "lat_p50_ms", "lat_p99_ms", "drain_s", "cpu_dotspool_s")
                            if any(x.get(k) is not None for x in rows)}
            if leg == "amqp":
                for k in ("confirm_p50_ms", "confirm_p99_ms", "cpu_beam_s"):
                    summary[leg][k] = statistics.median([x[k] for x in rows])
            print("  %-4s %s" % (leg, json.dumps(summary[leg])))
        s, q = summary["smtp"], summary["amqp"]
        if s.get("handed_off_per_s"):
            print("  ratio amqp/smtp handed off msg/s: %.2f" % (q["handed_off_per_s"] / s["handed_off_per_s"]))
        if a.json:
            json.dump({"args": vars(a), "rows": res, "summary": summary, "broker_start_s": start_s},
                      open(a.json, "w"), indent=1)
    finally:
        for p in procs.values():
            p.stop()
        c.stop()
        shutil.rmtree(t, ignore_errors=True)


if __name__ == "__main__":
    main()
