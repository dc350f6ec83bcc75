#!/usr/bin/env python3
"""Memory cost of idle connections (issue 5): start dotspool, open N connections
on loopback that each read the 220 banner and then sit idle, and report the
server's resident memory before and after, per connection.

  bench/idle/idle_conns.py --build build --connections 10000
"""
import argparse, os, resource, selectors, signal, socket, subprocess, sys, tempfile, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.connections + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    port = free_port()
    spool = tempfile.mkdtemp(prefix="ds-idle-")
    srv = subprocess.Popen([os.path.join(a.build, "dotspool"), "--listen", f"127.0.0.1:{port}",
                            "--spool", spool, "--threads", str(a.threads),
                            "--max-connections", str(a.connections + 100),
                            "--segment-size", "64M"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        base = rss_kib(srv.pid)
        socks = []
        sel = selectors.DefaultSelector()
        t0 = time.time()
        got = 0
        failed = 0
        # Connect in batches so the listen backlog never overflows.
        for start in range(0, a.connections, 500):
            batch = []
            for i in range(start, min(start + 500, a.connections)):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                batch.append(s)
                sel.register(s, selectors.EVENT_READ)
            pending = len(batch)
            bt = time.time()
            while pending and time.time() < bt + 20:
                for key, _ in sel.select(timeout=1):
                    try:
                        data = key.fileobj.recv(512)
                    except OSError:
                        data = b""
                    if data.startswith(b"220"):
                        got += 1
                    else:
                        failed += 1
                    pending -= 1
                    sel.unregister(key.fileobj)
            socks.extend(batch)
        elapsed = time.time() - t0
        time.sleep(0.5)
        after = rss_kib(srv.pid)
        per = (after - base) * 1024 / max(got, 1)
        print(f"idle connections: {got}/{a.connections} got the banner in {elapsed:.2f} s")
        print(f"server RSS: {base} KiB before, {after} KiB after: {per:.0f} bytes per idle connection")
        for s in socks:
            s.close()
        return 0 if got == a.connections else 1
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=15)
        except subprocess.TimeoutExpired:
            srv.kill()


if __name__ == "__main__":
    sys.exit(main())
