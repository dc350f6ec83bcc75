#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Start-up time of a full spool (issue 19, point 3): a spool filled to --gib GiB (default 1 and 10)
with 64 KiB messages by dotspool-bench (the 64k load of run.py, no delivery hop, so every message
stays queued), the server stopped cleanly, then timed from exec to the 220 banner, and the recovery
time it logs ("spool recovery: ... N ms"), with a cold cache (`sync; echo 3 >
/proc/sys/vm/drop_caches`: needs root) and warm (started again at once).

Cases, each on a spool of its own fill:
  new            this tree's dotspool on a spool it filled (format 4: seal summaries)
  new-nosum      the same spool with DS_SPOOL_NO_SUMMARIES=1: every segment scanned (lanes still
                 prepared in parallel)
  base           --binary (e.g. a build of the commit before) on a spool IT filled
  new-on-base    this tree's dotspool on the base spool (formats <= 3: no summaries yet; a v3
                 binary cannot read a v4 spool, so this is the upgrade case), first start
  new-on-base-2  the same after the new binary's background backfill wrote the summaries of the
                 old segments (waited for, up to --backfill-s)

On a VM, drop_caches empties the guest's page cache only, not the host's: a "cold" read may
still come from the host's cache. The machine may be shared: compare within one run only.

Usage: bench/sizes/startup.py [--gib 1,10] [--binary OLD_DOTSPOOL] [--dir /var/tmp]
                              [--port-base P] [--warm N] [--json FILE]
Exits 77 (with a message) when the spool directory has too little free space, 2 without binaries.
"""
import argparse, glob, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, pick, run_bench, free_port  # noqa: E402  (the 64k load, as run.py drives it)

REC_RE = re.compile(r"spool recovery: .*?(\d+) segments, (\d+) messages .*?, (\d+) ms"
                    r"(?:, (\d+) segments from seal summaries)?")


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Server:
    def __init__(self, binary, spool, port, threads, env=None, log=None):
        self.port = port
        args = [binary, "--listen", "127.0.0.1:%d" % port, "--spool", spool,
                "--accept-domain", "localhost", "--threads", str(threads),
                "--max-message-size", str(64 << 20)]
        self.logpath = log or os.path.join(os.path.dirname(spool), "server-%d.log" % port)
        self.log = open(self.logpath, "w")
        e = dict(os.environ)
        e.update(env or {})
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        self.banner_s = self._wait_banner(600)
        if self.banner_s is None:
            self.stop()
            raise RuntimeError("server did not answer (log %s): %s" % (self.logpath, " ".join(args)))

    def _wait_banner(self, timeout_s):
        deadline = self.t0 + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return None
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
                    if c.recv(512).startswith(b"220"):
                        t = time.monotonic() - self.t0
                        c.sendall(b"QUIT\r\n")
                        return t
            except OSError:
                time.sleep(0.005)
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def recovery(self):
        with open(self.logpath) as f:
            m = REC_RE.search(f.read())
        if not m:
            return {}
        return {"segments": int(m.group(1)), "messages": int(m.group(2)), "recovery_ms": int(m.group(3)),
                "summaries": int(m.group(4)) if m.group(4) else 0}


class Ports:
    def __init__(self, base):
        self.base, self.n = base, 0

    def next(self):
        if not self.base:
            return free_port()
        self.n += 1
        return self.base + self.n % 100


def start_once(binary, spool, ports, args, cold, env=None):
    if cold:
        drop_caches()
    s = Server(binary, spool, ports.next(), args.threads, env)
    try:
        r = dict(s.recovery(), start_s=s.banner_s)
    finally:
        s.stop()
    return r


def measure(case, binary, spool, ports, args, env=None):
    cold = start_once(binary, spool, ports, args, True, env)
    warm = [start_once(binary, spool, ports, args, False, env) for _ in range(args.warm)]
    out = {"case": case, "binary": binary, "cold": cold, "warm": warm,
           "warm_start_s": statistics.median(w["start_s"] for w in warm) if warm else None,
           "warm_recovery_ms": statistics.median(w.get("recovery_ms", 0) for w in warm) if warm else None}
    print("startup.py: %-14s cold %.2f s (recovery %s ms, %s/%s segments from summaries), warm %s s" %
          (case, cold["start_s"], cold.get("recovery_ms"), cold.get("summaries"), cold.get("segments"),
           "%.2f" % out["warm_start_s"] if warm else "-"), file=sys.stderr)
    return out


def fill(binary, bench, spool, ports, args, gib):
    s = Server(binary, spool, ports.next(), args.threads)
    try:
        ns = argparse.Namespace(gib=gib, bench_threads=1, mix_s=0)
        r = run_bench(bench, s.port, "64k", ns, None)
    finally:
        s.stop()
    if r["failed"]:
        raise RuntimeError("fill: %d messages failed" % r["failed"])
    print("startup.py: filled %s with %.1f GiB by %s: %.0f msg/s" % (spool, gib, binary, r["msg_s"]),
          file=sys.stderr)
    return r


def count(spool, pat):
    return len(glob.glob(os.path.join(spool, "lane-*", pat)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", default="1,10")
    ap.add_argument("--binary", help="another dotspool (the baseline) timed on a spool it filled")
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--threads", type=int, default=2, help="server --threads (= lanes)")
    ap.add_argument("--warm", type=int, default=2, help="warm starts per case (median)")
    ap.add_argument("--port-base", type=int, default=0, help="ports base+1..base+99 (default: free ports)")
    ap.add_argument("--backfill-s", type=int, default=300)
    ap.add_argument("--json")
    args = ap.parse_args()
    dotspool = os.environ.get("DS_DOTSPOOL") or pick(os.path.join(ROOT, "build/dotspool"))
    bench = os.environ.get("DS_BENCH") or pick(os.path.join(ROOT, "build/dotspool-bench"))
    if not dotspool or not bench or (args.binary and not pick(args.binary)):
        print("startup.py: build dotspool and dotspool-bench first (cmake --build build)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("startup.py: dropping the page cache needs root: run as root", file=sys.stderr)
        return 77
    sizes = [float(x) for x in args.gib.split(",")]
    # One spool at a time; segments are 64 MiB, plus an active and a spare segment per lane and the summaries.
    need = max(sizes) * (1 << 30) * 1.1 + (1 << 30)
    free = shutil.disk_usage(args.dir).free
    if free < need:
        print("startup.py: %s has %.1f GiB free, needs %.1f GiB: skipped" % (args.dir, free / (1 << 30), need / (1 << 30)))
        return 77
    print("startup.py: cold = after `sync; echo 3 > /proc/sys/vm/drop_caches`; on a VM this empties the "
          "guest's page cache only, not the host's", file=sys.stderr)
    ports = Ports(args.port_base)
    results = []
    work = tempfile.mkdtemp(prefix="dotspool-startup.", dir=args.dir)
    try:
        for gib in sizes:
            spool = os.path.join(work, "spool-new-%g" % gib)
            os.mkdir(spool)
            fill(dotspool, bench, spool, ports, args, gib)
            for case, env in (("new", None), ("new-nosum", {"DS_SPOOL_NO_SUMMARIES": "1"})):
                r = measure(case, dotspool, spool, ports, args, env)
                results.append(dict(r, gib=gib))
            shutil.rmtree(spool)
            if not args.binary:
                continue
            spool = os.path.join(work, "spool-base-%g" % gib)
            os.mkdir(spool)
            fill(args.binary, bench, spool, ports, args, gib)
            results.append(dict(measure("base", args.binary, spool, ports, args), gib=gib))
            # The upgrade: the new binary on the old spool (no summaries), once; then after its backfill.
            first = start_once(dotspool, spool, ports, args, True)
            results.append({"case": "new-on-base", "gib": gib, "binary": dotspool, "cold": first, "warm": [],
                            "warm_start_s": None, "warm_recovery_ms": None})
            print("startup.py: new-on-base    cold %.2f s (recovery %s ms, %s summaries)" %
                  (first["start_s"], first.get("recovery_ms"), first.get("summaries")), file=sys.stderr)
            s = Server(dotspool, spool, ports.next(), args.threads)
            deadline = time.monotonic() + args.backfill_s
            while time.monotonic() < deadline and count(spool, "*.sum") < count(spool, "*.seg") - 2 * args.threads:
                time.sleep(1)
            s.stop()
            results.append(dict(measure("new-on-base-2", dotspool, spool, ports, args), gib=gib))
            shutil.rmtree(spool)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| spool | case | segments | from summaries | cold: start to 220 | cold: recovery | warm: start to 220 | warm: recovery |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r["cold"]
        print("| %g GiB | %s | %s | %s | %.2f s | %.2f s | %s | %s |" %
              (r["gib"], r["case"], c.get("segments", "?"), c.get("summaries", "?"), c["start_s"],
               c.get("recovery_ms", 0) / 1000.0,
               "%.2f s" % r["warm_start_s"] if r["warm_start_s"] is not None else "-",
               "%.2f s" % (r["warm_recovery_ms"] / 1000.0) if r["warm_recovery_ms"] is not None else "-"))
    print("\nmachine: %d CPUs, load average %s (shared host: compare within this run only); cold = "
          "drop_caches, which on a VM empties the guest's cache only, not the host's" %
          (os.cpu_count(), " ".join("%.2f" % x for x in os.getloadavg())))
    print("\n" + json.dumps(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
