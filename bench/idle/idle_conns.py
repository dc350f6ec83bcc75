#!/usr/bin/env python3
"""Memory cost of idle connections (issue 5): start dotspool, open N connections on
loopback that each read the 220 banner and then sit idle, and report the server's
memory before and after, per connection. Also measures what the connection pool that
dotspool sizes at start-up costs per slot (idle server, --max-connections HI vs LO).

  bench/idle/idle_conns.py --build build --connections 10000

Memory figures come from /proc/PID/status of the server: VmRSS (all resident pages,
including the binary and shared libraries), RssAnon (resident anonymous pages: heap,
mmap'd pools, stacks, i.e. the user-space memory the server allocated). Kernel memory
(socket structures; idle sockets hold no buffered data) is not in either; the
machine-wide slab growth is shown for it, which counts the client's sockets too.
"""
import argparse, os, resource, selectors, signal, socket, subprocess, sys, tempfile, time, shutil


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmData"):
                out[k] = int(v.split()[0])  # KiB
    return out


def slab_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def raise_nofile(want):
    """Raise RLIMIT_NOFILE to want (the hard limit too if we may: root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    if soft == resource.RLIM_INFINITY or soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def start_server(a, max_conns, log):
    port = free_port()
    spool = tempfile.mkdtemp(prefix="ds-idle-")
    nofile = max_conns + 1024

    def pre():
        raise_nofile(nofile)

    cmd = [os.path.join(a.build, "dotspool"), "--listen", f"127.0.0.1:{port}",
           "--spool", spool, "--threads", str(a.threads),
           "--max-connections", str(max_conns),
           "--max-connections-per-ip", str(max_conns),
           "--segment-size", a.segment_size]
    srv = subprocess.Popen(cmd, stdout=log, stderr=log, preexec_fn=pre)
    deadline = time.time() + 20
    while time.time() < deadline:
        if srv.poll() is not None:
            raise RuntimeError(f"dotspool exited with {srv.returncode}: {' '.join(cmd)}")
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.recv(512)
            s.close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise RuntimeError("dotspool did not answer on its port")
    time.sleep(a.settle)
    return srv, port, spool, cmd


def stop_server(srv, spool):
    srv.send_signal(signal.SIGTERM)
    try:
        rc = srv.wait(timeout=20)
    except subprocess.TimeoutExpired:
        srv.kill()
        rc = srv.wait()
    shutil.rmtree(spool, ignore_errors=True)
    return rc


def open_idle(port, n, batch, pause, banner_timeout):
    """Open n connections, batch at a time, each reading its banner. Returns (socks, got, bad)."""
    sel = selectors.DefaultSelector()
    socks, got, bad = [], 0, {}
    for start in range(0, n, batch):
        pend = {}
        for _ in range(start, min(start + batch, n)):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, 115):  # EINPROGRESS
                bad[f"connect errno {err}"] = bad.get(f"connect errno {err}", 0) + 1
                s.close()
                continue
            pend[s] = b""
            sel.register(s, selectors.EVENT_READ)
        t_end = time.time() + banner_timeout
        while pend and time.time() < t_end:
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                try:
                    data = s.recv(512)
                except OSError as e:
                    data = None
                    why = f"recv {e.strerror}"
                if data:
                    pend[s] += data
                    if not pend[s].endswith(b"\r\n"):
                        continue
                    if pend[s].startswith(b"220"):
                        got += 1
                        socks.append(s)
                    else:
                        why = "reply " + pend[s][:3].decode(errors="replace")
                        bad[why] = bad.get(why, 0) + 1
                        s.close()
                else:
                    why = why if data is None else "closed"
                    bad[why] = bad.get(why, 0) + 1
                    s.close()
                sel.unregister(s)
                del pend[s]
        for s in pend:
            sel.unregister(s)
            s.close()
        if pend:
            bad["no banner in time"] = bad.get("no banner in time", 0) + len(pend)
        if pause:
            time.sleep(pause)
    sel.close()
    return socks, got, bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=250, help="connections opened per batch [250]")
    ap.add_argument("--pause", type=float, default=0.02, help="seconds between batches [0.02]")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before reading memory [1]")
    ap.add_argument("--segment-size", default="64M")
    ap.add_argument("--pool-lo", type=int, default=1000, help="--max-connections for the small pool [1000]")
    ap.add_argument("--pool-hi", type=int, default=20000, help="--max-connections for the large pool [20000]")
    ap.add_argument("--log", default=None, help="server stdout/stderr file (default: a temp file, shown if not empty)")
    a = ap.parse_args()

    raise_nofile(a.connections + 1024)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.connections + 64:
        print(f"RLIMIT_NOFILE {soft} is too low for {a.connections} connections", file=sys.stderr)
        return 2
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
    if a.batch > somaxconn:
        a.batch = somaxconn
    logf = open(a.log, "w+b") if a.log else tempfile.TemporaryFile()
    rc = 0

    # 1. Pool preallocation: idle server, no clients, large vs small pool.
    pool = {}
    for mc in (a.pool_lo, a.pool_hi):
        srv, port, spool, _ = start_server(a, mc, logf)
        pool[mc] = proc_status(srv.pid)
        if stop_server(srv, spool) != 0:
            rc = 1

    # 2. N idle connections against a server whose pool holds them.
    mc = max(a.connections + 100, 1000)
    srv, port, spool, cmd = start_server(a, mc, logf)
    try:
        before = proc_status(srv.pid)
        k_before = slab_kib()
        t0 = time.time()
        socks, got, bad = open_idle(port, a.connections, a.batch, a.pause, 20)
        elapsed = time.time() - t0
        time.sleep(a.settle)
        after = proc_status(srv.pid)
        k_after = slab_kib()
        # One more connection must still get a banner.
        _, extra, _ = open_idle(port, 1, 1, 0, 5)
        for s in socks:
            s.close()
        time.sleep(a.settle * 2)
        closed = proc_status(srv.pid)
        alive = srv.poll() is None
    finally:
        src = stop_server(srv, spool)

    n = max(got, 1)
    span = a.pool_hi - a.pool_lo
    print(f"server: {' '.join(cmd[:1] + ['--listen 127.0.0.1:PORT', '--spool TMP'] + cmd[5:])}")
    print(f"client: {got}/{a.connections} idle connections got the 220 banner in {elapsed:.2f} s "
          f"({a.batch} per batch, {a.pause:g} s apart; somaxconn {somaxconn}, RLIMIT_NOFILE {soft})")
    if bad:
        print("client failures: " + ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())))
    print(f"one more connection with all {got} open: {'banner ok' if extra else 'NO BANNER'}; "
          f"server {'alive' if alive else 'DEAD'}, exit status {src} after SIGTERM")
    print()
    print(f"| measurement | VmRSS KiB | RssAnon KiB | per unit (VmRSS) | per unit (RssAnon) |")
    print(f"|---|---:|---:|---:|---:|")
    print(f"| idle server, --max-connections {a.pool_lo} | {pool[a.pool_lo]['VmRSS']} | {pool[a.pool_lo]['RssAnon']} | | |")
    print(f"| idle server, --max-connections {a.pool_hi} | {pool[a.pool_hi]['VmRSS']} | {pool[a.pool_hi]['RssAnon']} | | |")
    print(f"| preallocated pool, per slot ({span} slots) | "
          f"{pool[a.pool_hi]['VmRSS'] - pool[a.pool_lo]['VmRSS']:+d} | {pool[a.pool_hi]['RssAnon'] - pool[a.pool_lo]['RssAnon']:+d} | "
          f"{(pool[a.pool_hi]['VmRSS'] - pool[a.pool_lo]['VmRSS']) * 1024 / span:.0f} B | "
          f"{(pool[a.pool_hi]['RssAnon'] - pool[a.pool_lo]['RssAnon']) * 1024 / span:.0f} B |")
    print(f"| --max-connections {mc}, 0 connections | {before['VmRSS']} | {before['RssAnon']} | | |")
    print(f"| same, {got} idle connections | {after['VmRSS']} | {after['RssAnon']} | | |")
    print(f"| idle connection, per connection | {after['VmRSS'] - before['VmRSS']:+d} | {after['RssAnon'] - before['RssAnon']:+d} | "
          f"{(after['VmRSS'] - before['VmRSS']) * 1024 / n:.0f} B | {(after['RssAnon'] - before['RssAnon']) * 1024 / n:.0f} B |")
    print(f"| same, all closed again | {closed['VmRSS']} | {closed['RssAnon']} | | |")
    print()
    print(f"kernel slab (/proc/meminfo, machine-wide: both ends of every connection, plus anything "
          f"else running): {k_before} -> {k_after} KiB ({(k_after - k_before) * 1024 / n:.0f} B per connection pair)")
    logf.seek(0)
    text = logf.read().decode(errors="replace").strip()
    if text:
        print("server output:\n" + "\n".join("  " + l for l in text.splitlines()[-20:]))
    if got != a.connections or not extra or not alive:
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
