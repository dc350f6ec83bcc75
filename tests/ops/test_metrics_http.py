#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Scrape obs_metrics_http() with real HTTP clients (urllib, curl, raw sockets).

Usage: test_metrics_http.py ops_metrics_serve check_exposition.py
"""
import importlib.util
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def raw(port, chunks, pause=0.02):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for c in chunks:
            s.sendall(c)
            time.sleep(pause)
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                return data
            data += b


def main(argv):
    serve, checker = argv[1], argv[2]
    spec = importlib.util.spec_from_file_location("check_exposition", checker)
    ce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ce)
    curl = shutil.which("curl")
    n = 6 + (1 if curl else 0)
    p = subprocess.Popen([serve, str(n)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(p.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            body = r.read().decode()
            check(r.status == 200 and r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8",
                  f"urllib GET /metrics: {r.status} {r.headers['Content-Type']}")
        samples, fams, hists = ce.check(body)
        check(samples > 50 and hists >= 4, f"urllib body is valid exposition ({samples} samples)")
        check('dotspool_messages_accepted_total{worker="1"} 200\n' in body, "counter value as set")
        for path, method, code in (("/", "GET", 404), ("/metrics", "POST", 405)):
            try:
                urllib.request.urlopen(urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None), timeout=10)
                check(False, f"urllib {method} {path}: no error")
            except urllib.error.HTTPError as e:
                check(e.code == code, f"urllib {method} {path}: {e.code}")
        with urllib.request.urlopen(urllib.request.Request(base + "/metrics", method="HEAD"), timeout=10) as r:
            check(r.status == 200 and r.read() == b"" and int(r.headers["Content-Length"]) == len(body.encode()),
                  "urllib HEAD /metrics: headers only, same length")
        # A request split over several packets, one byte at first.
        data = raw(port, [b"G", b"ET /metr", b"ics HTTP/1.1\r\nHost: x\r", b"\n\r\n"])
        check(data.startswith(b"HTTP/1.0 200 OK\r\n") and ce.check_http(data) == body, "split request: same 200")
        data = raw(port, [b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000])
        check(data.startswith(b"HTTP/1.0 400 "), f"oversized request: {data[:30]!r}")
        if curl:
            c = subprocess.run([curl, "-sS", "-f", "-D", "-", base + "/metrics"], capture_output=True, timeout=20)
            out = c.stdout.decode()
            check(c.returncode == 0 and "Content-Type: text/plain; version=0.0.4" in out and out.endswith(body),
                  f"curl GET /metrics: rc {c.returncode}")
        else:
            print("SKIP curl not installed")
        rc = p.wait(timeout=20)
        check(rc == 0, f"server exit {rc}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    print(f"{len(failures)} failure(s)" if failures else "metrics HTTP tests passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
