#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Real mail sizes (issue 19, points 1, 2 and 4): the same dotspool-bench load against the same
server with its spool on disk (each --spool-io mode) and on tmpfs (not durable: the CPU path),
plus the disk's own streaming figure (`dd bs=1M conv=fdatasync`, median of runs before and
after), in one run, legs alternating. One command gives the whole table:

  bench/sizes/run.py                       # 4k, 64k (4 GiB), mix; closed + open loop
  bench/sizes/run.py --baseline build-base/dotspool   # before/after as a ratio in one run
  bench/sizes/run.py --quick               # bounded trial run (~3 minutes)

Loads:
  4k    fixed 4 KiB, 32 connections, --mix-s seconds (default 20)
  64k   fixed 64 KiB, 16 connections, --gib GiB in total (default 4)
  mix   50% 4 KiB, 25% 16 KiB, 15% 64 KiB, 8% 256 KiB, 2% 1 MiB, 32 connections, --mix-s s
Each load runs closed loop in every leg, then (unless --no-open) open loop in every leg, each on
a fresh server, for --open-s seconds, at --open-frac (default 0.5) of the slowest leg's
closed-loop peak in that round (--open-rate common: the same offered load everywhere, so the
latencies compare) or of each leg's own peak (--open-rate own).

Legs: buffered, direct, adaptive (--spool-io MODE with the spool under --dir; a binary whose
--help does not know a mode skips that leg) and tmpfs (--spool-io buffered, spool in /dev/shm).
Binaries: the tree's build/dotspool ("new"), plus each --binary NAME=PATH / --baseline PATH
("base"): every leg runs once per binary, binaries alternating within the leg, and the order
of legs reversed every other round.

Latency columns: the 'final_dot' phase of dotspool-bench (final dot sent to 250 received),
p50/p99/p99.9 in ms. 'disk GiB' is what the block devices wrote during the closed-loop run
(/proc/diskstats: the whole machine, other processes included); the 1-minute load average
after each leg is in the JSON.

Free space: the disk legs need 1.5x the spool one leg leaves (timed legs bounded at 400 MB/s); short of it, the run exits 77
with a message before starting (nothing run). /dev/shm likewise for the tmpfs leg.
Environment: DS_DOTSPOOL, DS_BENCH (binaries; default build/).
The numbers are only comparable within one run: the machine is shared (say so with them).

Delivery on (issue 19 point 1, recycled segments): --deliver starts smtp-sink (a next hop that
discards; /usr/sbin/smtp-sink, Postfix) and runs every server with --deliver-to it and --reclaim
true, so the spool is in steady state (mail in, mail out: segments reclaimed and, with
--segment-recycle-max > 0, reused). --variant NAME=ARGS runs the tree's binary once more per leg
with ARGS added (e.g. --variant "norecycle=--segment-recycle-max 0"). With --deliver each leg also
reports, from the server's /metrics at its end, the messages delivered and the segments prepared
from free files (recycled) and as new, zero-filled files (fresh):

  bench/sizes/run.py --loads 64k --legs buffered,direct,tmpfs --deliver --closed-skip \
      --open-msg-s 900 --open-s 60 --variant "norecycle=--segment-recycle-max 0"

(a closed loop outruns delivery on 2 CPUs: the spool only grows and nothing is reclaimed; an open
loop at a rate delivery keeps up with is the steady state.)

A warm spool (--segment-spares N, prepared segments per lane): a leg whose server arguments hold
it waits until every lane's pool is full (/metrics, dotspool_spool_segments_spare) before the load
starts, and reports that wait; the pool's zero-fill is not in its 'disk GiB'. E.g. the 64 KiB
load with the pool large enough for the whole run (2 GiB over 2 lanes: 17 per lane):

  bench/sizes/run.py --loads 64k --gib 2 --legs direct,tmpfs --variant "spares=--segment-spares 17"
"""
import argparse, json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIX = [(4096, 50), (16384, 25), (65536, 15), (262144, 8), (1048576, 2)]
LOADS = {"4k": (4096, 32), "64k": (65536, 16), "mix": (None, 32)}
DISK_MODES = ("buffered", "direct", "adaptive")
DD_RUNS = 2
# Above what this 2-CPU machine accepts (4k, mix: ~60-300 MB/s): bounds a timed leg's spool.
RATE_BOUND_B_S = 400e6


def pick(*paths):
    for p in paths:
        if p and os.access(p, os.X_OK):
            return p
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_banner(port, timeout_s=15):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                if c.recv(512).startswith(b"220"):
                    c.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def dd_mb_s(directory, mib):
    """Streaming write with one fdatasync at the end, as a capacity planner measures a disk."""
    path = os.path.join(directory, "dd.probe")
    t = time.monotonic()
    r = subprocess.run(["dd", "if=/dev/zero", "of=" + path, "bs=1M", "count=%d" % mib,
                        "conv=fdatasync"], capture_output=True)
    dt = time.monotonic() - t
    try:
        os.unlink(path)
    except OSError:
        pass
    if r.returncode != 0:
        return None
    return mib * 1048576 / dt / 1e6


def io_modes(binary):
    """The --spool-io modes a binary's --help names."""
    try:
        h = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    line = next((l for l in (h.stdout + h.stderr).splitlines() if "--spool-io" in l), "")
    return {m for m in DISK_MODES if m in line}


SMTP_SINK = "/usr/sbin/smtp-sink"
# --deliver: what the legs scrape from the server's /metrics at their end.
DELIVER_METRICS = {"delivered": "dotspool_deliveries_total",
                   "recycled": "dotspool_spool_segments_recycled_total",
                   "fresh": "dotspool_spool_segments_fresh_total",
                   "free": "dotspool_spool_segments_free"}


def scrape(port, names):
    """{key: sum of the samples of metric name} from /metrics (None where it does not answer)."""
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {k: None for k in names}
    out = {}
    for key, name in names.items():
        tot = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                if name == "dotspool_deliveries_total" and 'outcome="delivered"' not in line:
                    continue
                tot += float(line.rpartition(" ")[2])
        out[key] = tot
    return out


class Server:
    def __init__(self, binary, spool, io_mode, threads, extra, metrics=False):
        self.port = free_port()
        self.spool = spool
        self.mport = free_port() if metrics else None
        args = [binary, "--listen", "127.0.0.1:%d" % self.port, "--spool", spool,
                "--accept-domain", "localhost", "--threads", str(threads),
                "--max-message-size", str(64 << 20), "--spool-io", io_mode] + extra
        if self.mport:
            args += ["--metrics", "127.0.0.1:%d" % self.mport]
        self.log = open(spool + ".log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_banner(self.port):
            self.stop()
            raise RuntimeError("server did not answer: %s" % " ".join(args))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_bench(bench, port, load, args, size_file, rate=None):
    size, conns = LOADS[load]
    cmd = [bench, "--server", "127.0.0.1:%d" % port, "--json", "--quiet",
           "--threads", str(args.bench_threads), "--connections", str(conns)]
    cmd += ["--size", str(size)] if size else ["--size-file", size_file]
    if rate:
        cmd += ["--rate", "%d" % rate, "--duration", str(args.open_s)]
    elif load == "64k":
        cmd += ["--messages", str(int(args.gib * (1 << 30) / 65536))]
    else:
        cmd += ["--duration", str(args.mix_s)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if not r.stdout.strip():
        raise RuntimeError("dotspool-bench failed: %s" % r.stderr.strip())
    j = json.loads(r.stdout)
    fd = j["latency_us"].get("final_dot", {})
    m = j["latency_us"].get("message", {})
    return {"msg_s": j["messages_per_s"], "mb_s": j["mb_per_s"], "ok": j["messages_ok"],
            "failed": j["messages_failed"], "elapsed_s": j["elapsed_s"],
            "p50_ms": fd.get("p50", 0) / 1000.0, "p99_ms": fd.get("p99", 0) / 1000.0,
            "p999_ms": fd.get("p999", 0) / 1000.0, "msg_p99_ms": m.get("p99", 0) / 1000.0}


def disk_written_bytes():
    """Bytes written to whole block devices so far (/proc/diskstats, 512-byte sectors)."""
    tot = 0
    with open("/proc/diskstats") as f:
        for line in f:
            p = line.split()
            if len(p) > 9 and p[2].startswith(("vd", "sd", "nvme", "xvd")) and not p[2][-1].isdigit():
                tot += int(p[9]) * 512
    return tot


def leg_bytes(load, args):
    """Spool bytes one leg (closed loop, then open loop at open_frac of its peak) leaves behind."""
    if args.open_msg_s:
        # A fixed rate: at most the largest message (1 MiB in the mix) each time.
        open_b = args.open_msg_s * (65536 if load == "64k" else 1 << 20) * args.open_s
    else:
        open_b = (2 if load == "64k" else 1) * RATE_BOUND_B_S * args.open_s * args.open_frac
    if args.closed_skip:
        return open_b
    if load == "64k":
        return args.gib * (1 << 30) + open_b
    return RATE_BOUND_B_S * args.mix_s + open_b


def spares_of(server_args):
    """N of the last --segment-spares N in a server's arguments (1: the default)."""
    n = 1
    for i, a in enumerate(server_args[:-1]):
        if a == "--segment-spares":
            n = int(server_args[i + 1])
    return n


def wait_spares(srv, want, timeout_s=300):
    """Seconds until every lane has its --segment-spares ready (the pool filled before the load)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        got = scrape(srv.mport, {"spare": "dotspool_spool_segments_spare"})["spare"]
        if got is not None and got >= want:
            return time.monotonic() - t0
        time.sleep(0.5)
    raise RuntimeError("the spare pool did not fill (%d wanted) in %d s" % (want, timeout_s))


def run_leg(bench, binary, leg, load, args, size_file, shm, work, rate, extra=()):
    """One server, fresh spool, one bench run (closed loop, or open loop at rate)."""
    spool = tempfile.mkdtemp(prefix="spool.", dir=shm if leg == "tmpfs" else work)
    sargs = args.server_arg + list(args.deliver_args) + list(extra)
    spares = spares_of(sargs)
    srv = Server(binary, spool, "buffered" if leg == "tmpfs" else leg, args.threads,
                 sargs, metrics=bool(args.deliver_args) or spares > 1)
    try:
        # --segment-spares N: a warm spool, the pool prepared before the load (not counted in disk GiB).
        spares_wait_s = wait_spares(srv, spares * args.threads) if spares > 1 else None
        w0 = disk_written_bytes()
        r = run_bench(bench, srv.port, load, args, size_file, rate)
        r["disk_gib"] = (disk_written_bytes() - w0) / (1 << 30)
        if spares_wait_s is not None:
            r["spares_wait_s"] = spares_wait_s
        if srv.mport and args.deliver_args:
            r.update(scrape(srv.mport, DELIVER_METRICS))
    finally:
        srv.stop()
        shutil.rmtree(spool, ignore_errors=True)
        try:
            os.unlink(spool + ".log")
        except OSError:
            pass
    r["load_avg_1m"] = os.getloadavg()[0]
    return r


def progress(t0, rnd_i, load, leg, bname, r, rate=None):
    extra = ""
    if "recycled" in r:
        extra = "; disk %.2f GiB, delivered %s, segments recycled %s fresh %s, free files %s" % (
            r["disk_gib"], r["delivered"], r["recycled"], r["fresh"], r["free"])
    print("run.py: [%4.0fs] round %d %s %s %s %s: %.0f msg/s %.0f MB/s p50 %.2f p99 %.2f p99.9 %.1f ms%s" %
          (time.monotonic() - t0, rnd_i + 1, load, "open@%d" % rate if rate else "closed", leg, bname,
           r["msg_s"], r["mb_s"], r["p50_ms"], r["p99_ms"], r["p999_ms"], extra), file=sys.stderr)


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", default="4k,64k,mix", help="comma list of 4k, 64k, mix")
    ap.add_argument("--legs", default="buffered,direct,adaptive,tmpfs")
    ap.add_argument("--binary", action="append", default=[], metavar="NAME=PATH",
                    help="another server binary run alternately in every leg (repeatable)")
    ap.add_argument("--baseline", metavar="PATH", help="same as --binary base=PATH")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--gib", type=float, default=4.0, help="GiB sent in the 64k closed loop")
    ap.add_argument("--mix-s", type=int, default=20, help="seconds of the 4k and mix closed loops")
    ap.add_argument("--open-s", type=int, default=None, help="seconds of each open loop (default --mix-s)")
    ap.add_argument("--no-open", dest="open", action="store_false")
    ap.add_argument("--open-frac", type=float, default=0.5)
    ap.add_argument("--open-rate", choices=("common", "own"), default="common",
                    help="open-loop rate: --open-frac of the slowest leg's closed-loop peak in the round "
                         "(common: every leg at the same offered load) or of each leg's own")
    ap.add_argument("--quick", action="store_true", help="--gib 0.5 --mix-s 5 --dd-mib 256")
    ap.add_argument("--threads", type=int, default=2, help="server --threads")
    ap.add_argument("--server-arg", action="append", default=[], help="extra server argument")
    ap.add_argument("--bench-threads", type=int, default=1)
    ap.add_argument("--dd-mib", type=int, default=1024)
    ap.add_argument("--dir", default="/var/tmp", help="where the disk spools go")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--deliver", action="store_true",
                    help="deliver to smtp-sink with --reclaim true (steady state: mail in, mail out)")
    ap.add_argument("--sink-port", type=int, default=0, help="smtp-sink's port (default: a free one)")
    ap.add_argument("--open-msg-s", type=int, default=0,
                    help="open loops at this fixed rate (msg/s) instead of --open-frac of a closed-loop peak; "
                         "with --closed-skip only open loops run (--deliver: a rate delivery keeps up with)")
    ap.add_argument("--closed-skip", action="store_true", help="no closed loops (needs --open-msg-s)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="the tree's binary once more per leg with these server arguments (repeatable)")
    args = ap.parse_args()
    args.deliver_args = []
    if args.quick:
        args.gib, args.mix_s, args.dd_mib = min(args.gib, 0.5), min(args.mix_s, 5), min(args.dd_mib, 256)
    if args.open_s is None:
        args.open_s = args.mix_s
    new = os.environ.get("DS_DOTSPOOL") or pick(os.path.join(ROOT, "build/dotspool"))
    bench = os.environ.get("DS_BENCH") or pick(os.path.join(ROOT, "build/dotspool-bench"))
    if not new or not bench:
        print("run.py: build dotspool and dotspool-bench first (cmake --build build)", file=sys.stderr)
        return 2
    binaries = [("new", new)]
    variant_args = {}
    for v in args.variant:
        name, _, vargs = v.partition("=")
        if not name or not vargs:
            print("run.py: --variant %s: not NAME=ARGS" % v, file=sys.stderr)
            return 2
        binaries.append((name, new))
        variant_args[name] = vargs.split()
    for b in args.binary + (["base=" + args.baseline] if args.baseline else []):
        name, _, path = b.partition("=")
        if not path or not os.access(path, os.X_OK):
            print("run.py: --binary %s: not an executable NAME=PATH" % b, file=sys.stderr)
            return 2
        binaries.append((name, os.path.abspath(path)))
    modes = {name: io_modes(path) for name, path in binaries}
    loads = [l for l in args.loads.split(",") if l]
    legs = [l for l in args.legs.split(",") if l]
    for l in loads:
        if l not in LOADS:
            print("run.py: unknown load %s" % l, file=sys.stderr)
            return 2
    for l in legs:
        if l not in DISK_MODES + ("tmpfs",):
            print("run.py: unknown leg %s" % l, file=sys.stderr)
            return 2
    # Free space first: a run that cannot finish is not started.
    os.makedirs(args.dir, exist_ok=True)
    # One leg's spool at a time (removed after it), with a margin; dd's file likewise.
    # --segment-spares N: each lane's pool of prepared segments (64 MiB each) sits on disk too.
    spares_max = max([spares_of(args.server_arg)] + [spares_of(args.server_arg + v) for v in variant_args.values()])
    need = max(max(leg_bytes(l, args) for l in loads) * 1.5 + spares_max * args.threads * (64 << 20),
               args.dd_mib * 1048576 * 2.5)
    for leg_set, where in (([l for l in legs if l != "tmpfs"], args.dir), (["tmpfs"] if "tmpfs" in legs else [], "/dev/shm")):
        if leg_set and shutil.disk_usage(where).free < need:
            print("run.py: %s has %.1f GiB free, the %s legs need %.1f GiB: not run" %
                  (where, shutil.disk_usage(where).free / (1 << 30), ",".join(leg_set), need / (1 << 30)))
            return 77
    sink = None
    if args.deliver:
        if not os.access(SMTP_SINK, os.X_OK):
            print("run.py: --deliver needs %s (scripts/deps.sh installs postfix): not run" % SMTP_SINK)
            return 77
        sport = args.sink_port or free_port()
        sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", "-h", "sink.test", "127.0.0.1:%d" % sport, "1024"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        args.deliver_args = ["--deliver-to", "smtp://127.0.0.1:%d" % sport, "--reclaim", "true",
                             "--deliver-connections", "16"]
    work = tempfile.mkdtemp(prefix="dotspool-sizes.", dir=args.dir)
    shm = tempfile.mkdtemp(prefix="dotspool-sizes.", dir="/dev/shm") if "tmpfs" in legs else None
    size_file = os.path.join(work, "mix.sizes")
    rnd = random.Random(19)
    with open(size_file, "w") as f:
        for _ in range(10000):
            x = rnd.uniform(0, 100)
            for size, pct in MIX:
                x -= pct
                if x <= 0:
                    break
            f.write("%d\n" % size)
    results = {}  # (load, leg, binary) -> [round results]
    skipped = set()
    dd = {"before": [], "after": []}
    t0 = time.monotonic()
    try:
        dd["before"] = [dd_mb_s(work, args.dd_mib) for _ in range(DD_RUNS)]
        for rnd_i in range(args.rounds):
            for load in loads:
                order = [(leg, b) for leg in legs for b in binaries]
                if rnd_i % 2:
                    order.reverse()
                order = [(leg, b) for leg, b in order if (leg if leg != "tmpfs" else "buffered") in modes[b[0]]]
                skipped |= {(leg, b[0]) for leg in legs for b in binaries
                            if (leg if leg != "tmpfs" else "buffered") not in modes[b[0]]}
                this = {}
                for leg, (bname, bpath) in order:
                    if args.closed_skip:
                        break
                    r = run_leg(bench, bpath, leg, load, args, size_file, shm, work, None,
                                variant_args.get(bname, ()))
                    this[(leg, bname)] = r
                    results.setdefault((load, leg, bname), []).append(r)
                    progress(t0, rnd_i, load, leg, bname, r)
                if args.closed_skip:
                    for leg, b in order:
                        this[(leg, b[0])] = {}
                        results.setdefault((load, leg, b[0]), []).append(this[(leg, b[0])])
                if not args.open or not this:
                    continue
                # Open loop: every leg at the same offered load, so their latencies compare.
                peak = None
                if not args.open_msg_s:
                    peak = min(r["msg_s"] for r in this.values()) if args.open_rate == "common" else None
                for leg, (bname, bpath) in order:
                    rate = args.open_msg_s or max(1, int((peak or this[(leg, bname)]["msg_s"]) * args.open_frac))
                    o = run_leg(bench, bpath, leg, load, args, size_file, shm, work, rate,
                                variant_args.get(bname, ()))
                    this[(leg, bname)]["open"] = dict(o, rate=rate)
                    progress(t0, rnd_i, load, leg, bname, o, rate)
        dd["after"] = [dd_mb_s(work, args.dd_mib) for _ in range(DD_RUNS)]
    finally:
        if sink:
            sink.terminate()
            sink.wait()
        shutil.rmtree(work, ignore_errors=True)
        if shm:
            shutil.rmtree(shm, ignore_errors=True)
    load_avg = [v for rs in results.values() for x in rs
                for v in (x.get("load_avg_1m"), x.get("open", {}).get("load_avg_1m")) if v is not None]
    print_table(results, loads, legs, binaries, dd, args, load_avg, skipped)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "binaries": dict(binaries),
                       "results": {"%s/%s/%s" % k: v for k, v in results.items()},
                       "dd_mb_s": dd}, f, indent=1)
    failed = sum(x.get("failed", 0) + x.get("open", {}).get("failed", 0) for rs in results.values() for x in rs)
    if failed:
        print("run.py: %d messages failed" % failed, file=sys.stderr)
    return 1 if failed else 0


def print_table(results, loads, legs, binaries, dd, args, load_avg, skipped):
    multi = len(binaries) > 1
    print("\n| load | loop | leg | %smsg/s | MB/s | p50 ms | p99 ms | p99.9 ms | disk GiB | vs tmpfs |%s" %
          ("binary | " if multi else "", " vs %s |" % binaries[1][0] if multi else ""))
    print("|---|---|---|%s---:|---:|---:|---:|---:|---:|---:|%s" % ("---|" if multi else "", "---:|" if multi else ""))
    for load in loads:
        for loop in ("closed", "open"):
            for leg in legs:
                for bname, _ in binaries:
                    rs = results.get((load, leg, bname))
                    if not rs:
                        continue
                    xs = [x for x in rs if "msg_s" in x] if loop == "closed" else [x["open"] for x in rs if "open" in x]
                    if not xs:
                        continue
                    def col(k, fmt="%.2f"):
                        vals = [x[k] for x in xs]
                        if len(vals) == 1:
                            return fmt % vals[0]
                        return (fmt + " (" + fmt + "-" + fmt + ")") % (med(vals), min(vals), max(vals))
                    msg = med([x["msg_s"] for x in xs])
                    if loop == "closed":
                        tm = results.get((load, "tmpfs", bname))
                        tm = [x for x in tm or [] if "msg_s" in x]
                        ratio = "%.2f" % (msg / med([x["msg_s"] for x in tm])) if tm and leg != "tmpfs" else "-"
                        disk = "%.2f" % med([x["disk_gib"] for x in xs])
                        lp = "closed"
                    else:
                        ratio, disk = "-", "%.2f" % med([x["disk_gib"] for x in xs])
                        lp = "open @%d/s" % med([x["rate"] for x in xs])
                    if args.deliver:
                        # delivered, segments recycled / fresh (server's /metrics at the leg's end)
                        disk += " (dlv %.0f, seg %.0f/%.0f)" % (med([x.get("delivered") or 0 for x in xs]),
                                                               med([x.get("recycled") or 0 for x in xs]),
                                                               med([x.get("fresh") or 0 for x in xs]))
                    vs = ""
                    if multi:
                        other = results.get((load, leg, binaries[1][0]))
                        if bname == binaries[1][0] or not other:
                            vs = " - |"
                        else:
                            oxs = [x for x in other if "msg_s" in x] if loop == "closed" else \
                                [x["open"] for x in other if "open" in x]
                            vs = " %.2f |" % (msg / med([x["msg_s"] for x in oxs])) if oxs else " - |"
                    print("| %s | %s | %s | %s%.0f | %.0f | %s | %s | %s | %s | %s |%s" %
                          (load, lp, leg, bname + " | " if multi else "", msg,
                           med([x["mb_s"] for x in xs]), col("p50_ms"), col("p99_ms"), col("p999_ms", "%.1f"),
                           disk, ratio, vs))
    dds = [x for x in dd["before"] + dd["after"] if x]
    if dds:
        print("\ndd bs=1M count=%d conv=fdatasync in %s: median %.0f MB/s (before: %s; after: %s)" %
              (args.dd_mib, args.dir, med(dds), ", ".join("%.0f" % x for x in dd["before"] if x),
               ", ".join("%.0f" % x for x in dd["after"] if x)))
    print("64k closed loop: %.1f GiB per leg; 4k/mix closed loop %d s; open loops %d s at %.0f%% of %s "
          "closed-loop peak; server --threads %d; %d round(s)" %
          (args.gib, args.mix_s, args.open_s, args.open_frac * 100,
           "the slowest leg's" if args.open_rate == "common" else "each leg's own", args.threads, args.rounds))
    for name, path in binaries:
        print("binary %s: %s" % (name, path))
    for leg, bname in sorted(skipped):
        print("leg %s skipped for %s: its --spool-io does not know it" % (leg, bname))
    if load_avg:
        print("machine: %d CPUs, 1-min load average over the legs %.2f-%.2f (shared host: compare "
              "within this run only)" % (os.cpu_count(), min(load_avg), max(load_avg)))


if __name__ == "__main__":
    sys.exit(main())
