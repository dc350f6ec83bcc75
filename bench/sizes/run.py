#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Real mail sizes (issue 19, point 4): the same dotspool-bench load against the same server
with its spool on disk (buffered and direct I/O) and on tmpfs (not durable: the CPU path), plus
the disk's own streaming figure (`dd bs=1M conv=fdatasync`, median of runs before and after),
in one run, legs alternating. Prints one markdown table (and --json).

Loads:
  64k   fixed 64 KiB messages, --gib GiB in total (default 4), 16 connections, closed loop
  mix   50% 4 KiB, 25% 16 KiB, 15% 64 KiB, 8% 256 KiB, 2% 1 MiB, 32 connections, closed loop,
        --mix-s seconds (default 20)
  4k    fixed 4 KiB, 32 connections, closed loop, --mix-s seconds
  open  each load again open loop at --open-frac (default 0.5) of the closed-loop peak of
        the same leg (--open)

Usage: bench/sizes/run.py [--loads 64k,mix] [--legs buffered,direct,tmpfs] [--rounds N]
                          [--gib G] [--mix-s S] [--open] [--json FILE] [--threads N]
Environment: DS_DOTSPOOL, DS_BENCH (binaries; default build/). Needs free space: the disk
legs check for 2.5x the bytes they write and skip with a message when it is short.
The numbers are only comparable within one run: the machine is shared (say so with them).
"""
import argparse, json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIX = [(4096, 50), (16384, 25), (65536, 15), (262144, 8), (1048576, 2)]


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


def dd_mb_s(directory, mib=1024):
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


class Server:
    def __init__(self, binary, spool, io_mode, threads):
        self.port = free_port()
        self.spool = spool
        args = [binary, "--listen", "127.0.0.1:%d" % self.port, "--spool", spool,
                "--accept-domain", "localhost", "--threads", str(threads),
                "--max-message-size", str(64 << 20)]
        if io_mode:
            args += ["--spool-io", io_mode]
        self.log = open(os.path.join(os.path.dirname(spool), "server-%d.log" % self.port), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_banner(self.port):
            self.stop()
            raise RuntimeError("server did not answer: %s" % " ".join(args))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_bench(bench, port, load, args, size_file, rate=None):
    cmd = [bench, "--server", "127.0.0.1:%d" % port, "--json", "--quiet",
           "--threads", str(args.bench_threads)]
    if load == "64k":
        n = int(args.gib * (1 << 30) / 65536)
        cmd += ["--size", "65536", "--connections", "16"]
        cmd += ["--duration", str(max(1, int(n / rate)))] if rate else ["--messages", str(n)]
    elif load == "4k":
        cmd += ["--size", "4096", "--connections", "32", "--duration", str(args.mix_s)]
    else:
        cmd += ["--size-file", size_file, "--connections", "32", "--duration", str(args.mix_s)]
    if rate:
        cmd += ["--rate", "%d" % rate]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if not r.stdout.strip():
        raise RuntimeError("dotspool-bench failed: %s" % r.stderr.strip())
    j = json.loads(r.stdout)
    m = j["latency_us"].get("message", {})
    return {"msg_s": j["messages_per_s"], "mb_s": j["mb_per_s"], "failed": j["messages_failed"],
            "p99_ms": m.get("p99", 0) / 1000.0, "p999_ms": m.get("p999", 0) / 1000.0}


def disk_written_bytes():
    """Bytes written to block devices so far (/proc/diskstats, sectors of 512 bytes)."""
    tot = 0
    with open("/proc/diskstats") as f:
        for line in f:
            p = line.split()
            if len(p) > 9 and p[2].startswith(("vd", "sd", "nvme", "xvd")) and not p[2][-1].isdigit():
                tot += int(p[9]) * 512
    return tot


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", default="64k,mix")
    ap.add_argument("--legs", default="buffered,direct,tmpfs")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--mix-s", type=int, default=20)
    ap.add_argument("--open", action="store_true")
    ap.add_argument("--open-frac", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2, help="server --threads")
    ap.add_argument("--bench-threads", type=int, default=1)
    ap.add_argument("--dd-mib", type=int, default=1024)
    ap.add_argument("--dir", default="/var/tmp", help="where the disk spools go")
    ap.add_argument("--json")
    args = ap.parse_args()
    dotspool = os.environ.get("DS_DOTSPOOL") or pick(os.path.join(ROOT, "build/dotspool"))
    bench = os.environ.get("DS_BENCH") or pick(os.path.join(ROOT, "build/dotspool-bench"))
    if not dotspool or not bench:
        print("run.py: build dotspool and dotspool-bench first (cmake --build build)", file=sys.stderr)
        return 2
    loads = args.loads.split(",")
    legs = args.legs.split(",")
    work = tempfile.mkdtemp(prefix="dotspool-sizes.", dir=args.dir)
    shm = tempfile.mkdtemp(prefix="dotspool-sizes.", dir="/dev/shm")
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
    need = 2.5 * max(args.gib * (1 << 30) if "64k" in loads else 0, 8 << 30)
    results = {}
    dd = {"before": [], "after": []}
    try:
        disk_ok = shutil.disk_usage(work).free >= need
        shm_ok = shutil.disk_usage(shm).free >= need
        if not disk_ok:
            print("run.py: %s has less than %.1f GiB free: disk legs skipped" % (work, need / (1 << 30)))
        if not shm_ok:
            print("run.py: /dev/shm has less than %.1f GiB free: tmpfs leg skipped" % (need / (1 << 30)))
        if disk_ok:
            dd["before"] = [dd_mb_s(work, args.dd_mib) for _ in range(2)]
        for rnd_i in range(args.rounds):
            for load in loads:
                for leg in legs:
                    if (leg == "tmpfs" and not shm_ok) or (leg != "tmpfs" and not disk_ok):
                        continue
                    base = shm if leg == "tmpfs" else work
                    spool = tempfile.mkdtemp(prefix="spool.", dir=base)
                    io_mode = "direct" if leg == "direct" else None
                    srv = Server(dotspool, spool, io_mode, args.threads)
                    try:
                        w0 = disk_written_bytes()
                        r = run_bench(bench, srv.port, load, args, size_file)
                        r["disk_written_gib"] = (disk_written_bytes() - w0) / (1 << 30)
                        if args.open:
                            rate = max(1, int(r["msg_s"] * args.open_frac))
                            o = run_bench(bench, srv.port, load, args, size_file, rate)
                            r["open"] = dict(o, rate=rate)
                    finally:
                        srv.stop()
                        shutil.rmtree(spool, ignore_errors=True)
                    results.setdefault((load, leg), []).append(r)
                    print("run.py: round %d %s %s: %.0f msg/s %.0f MB/s p99 %.1f ms p99.9 %.1f ms" %
                          (rnd_i + 1, load, leg, r["msg_s"], r["mb_s"], r["p99_ms"], r["p999_ms"]),
                          file=sys.stderr)
        if disk_ok:
            dd["after"] = [dd_mb_s(work, args.dd_mib) for _ in range(2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    dds = [x for x in dd["before"] + dd["after"] if x]
    print("\n| load | leg | msg/s (median) | MB/s | p99 ms | p99.9 ms | disk written GiB | vs tmpfs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for load in loads:
        tm = results.get((load, "tmpfs"))
        tmm = statistics.median(x["msg_s"] for x in tm) if tm else None
        for leg in legs:
            rs = results.get((load, leg))
            if not rs:
                continue
            med = statistics.median(x["msg_s"] for x in rs)
            mb = statistics.median(x["mb_s"] for x in rs)
            p99 = "%.1f-%.1f" % (min(x["p99_ms"] for x in rs), max(x["p99_ms"] for x in rs))
            p999 = "%.1f-%.1f" % (min(x["p999_ms"] for x in rs), max(x["p999_ms"] for x in rs))
            dw = statistics.median(x["disk_written_gib"] for x in rs)
            ratio = "%.2f" % (med / tmm) if tmm and leg != "tmpfs" else "-"
            print("| %s | %s | %.0f | %.0f | %s | %s | %.2f | %s |" % (load, leg, med, mb, p99, p999, dw, ratio))
            for x in rs:
                if "open" in x:
                    o = x["open"]
                    print("| %s open @%d/s | %s | %.0f | %.0f | %.1f | %.1f | - | - |" %
                          (load, o["rate"], leg, o["msg_s"], o["mb_s"], o["p99_ms"], o["p999_ms"]))
    if dds:
        print("\ndd bs=1M count=%d conv=fdatasync: median %.0f MB/s (runs: %s)" %
              (args.dd_mib, statistics.median(dds), ", ".join("%.0f" % x for x in dds)))
    print("machine: %d CPUs, load average %s (shared host: compare within this run only)" %
          (os.cpu_count(), " ".join("%.2f" % x for x in os.getloadavg())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": {"%s/%s" % k: v for k, v in results.items()}, "dd_mb_s": dd}, f, indent=1)
    failed = sum(x["failed"] for rs in results.values() for x in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
