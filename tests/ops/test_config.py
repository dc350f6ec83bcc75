#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Configuration file tests of issue 8 (item 1 and the bad-config matrix of item 5).

Usage: test_config.py BUILD/dotspool dist/dotspool.conf
Exits 77 (skipped) when the server binary is not built.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import dslib  # noqa: E402  (free_port)

failures = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        failures.append(what)


def run(exe, *args, timeout=20):
    p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def write(dirname, name, text):
    path = os.path.join(dirname, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# name, file text, line of the error, exact message after "dotspool: FILE:LINE: "
MATRIX = [
    ("bad value", "# comment\n[dotspool]\nthreads = abc\n", 3, "'threads': 'abc' is not a number in [1, 64]"),
    ("negative number", "max-recipients = -5\n", 1, "'max-recipients': '-5' is not a number in [1, 100000]"),
    ("out of range high", "\n\nmax-recipients = 100001\n", 3, "'max-recipients': '100001' is not a number in [1, 100000]"),
    ("out of range low", "max-command-line = 511\n", 1, "'max-command-line': '511' is not a number in [512, 65536]"),
    ("size suffix overflow", "segment-size = 99999999999999G\n", 1,
     "'segment-size': '99999999999999G' is not a number in [524288, 4294967296]"),
    ("spool-buffer-size below the spool's 256K minimum", "spool-buffer-size = 128K\n", 1,
     "'spool-buffer-size': '128K' is not a number in [262144, 1073741824]"),
    ("segment-size above the spool's 4G maximum", "segment-size = 8G\n", 1,
     "'segment-size': '8G' is not a number in [524288, 4294967296]"),
    ("segment-size not a multiple of 4096", "segment-size = 1048577\nspool-buffer-size = 256K\n", 1,
     "'segment-size': '1048577' is not a multiple of 4096"),

    ("ring-entries below 4", "ring-entries = 3\n", 1, "'ring-entries': '3' is not a number in [4, 32768]"),
    ("ring-entries above 32768", "ring-entries = 32769\n", 1,
     "'ring-entries': '32769' is not a number in [4, 32768]"),
    ("not a power of 2", "recv-buffers = 1000\n", 1, "'recv-buffers': '1000' is not a power of 2"),
    ("recv buffer not a power of 2", "recv-buffer-size = 20000\n", 1,
     "'recv-buffer-size': '20000' is not a power of 2"),
    ("recv buffer above 64 KiB", "recv-buffer-size = 131072\n", 1,
     "'recv-buffer-size': '131072' is not a number in [4096, 65536]"),
    ("no spare segment", "segment-spares = 0\n", 1,
     "'segment-spares': '0' is not a number in [1, 64]"),
    ("too many spare segments", "segment-spares = 65\n", 1,
     "'segment-spares': '65' is not a number in [1, 64]"),
    ("unknown key", "threads = 2\nthread = 2\n", 2, "unknown key 'thread'"),
    ("unknown key (flag only)", "no-prewrite = true\n", 1, "unknown key 'no-prewrite'"),
    ("unknown key underscores", "max_recipient = 3\n", 1, "unknown key 'max_recipient'"),
    ("unknown section", "threads = 1\n[smtp]\nmax-recipients = 5\n", 3, "unknown section [smtp] (use [dotspool] or none)"),
    ("bad listen address", "listen = 127.0.0.1:2525\nlisten = 127.0.0.1\n", 2,
     "'listen': bad address '127.0.0.1' (want IP:PORT or [IPv6]:PORT)"),
    ("listen host name", "listen = localhost:25\n", 1, "'listen': bad address 'localhost:25' (want IP:PORT or [IPv6]:PORT)"),
    ("listen port range", "lmtp-listen = [::1]:65536\n", 1,
     "'lmtp-listen': bad address '[::1]:65536' (want IP:PORT or [IPv6]:PORT)"),
    ("bad boolean", "prewrite = maybe\n", 1, "'prewrite': 'maybe' is not a boolean (true/false)"),
    ("hash after value is part of it", "threads = 2 # two\n", 1, "'threads': '2 # two' is not a number in [1, 64]"),
    ("syntax error", "threads = 2\nmax-recipients 5\n", 2, "syntax error (want 'key = value')"),
    ("first error wins", "threads = 0\nbogus = 1\n", 1, "'threads': '0' is not a number in [1, 64]"),
]

KNOWN_BUGS = []

GOOD = """; all kinds of values
[dotspool]
listen = 127.0.0.1:2525
listen = [::1]:2525
lmtp-listen = 127.0.0.1:2424
accept-domain = example.com
accept-domain = .example.org
max_message_size = 10M   ; underscores and an inline comment
prewrite = off
threads = 1
"""


def banner(port, timeout=0.5):
    """The first reply line on 127.0.0.1:port, or None when nothing listens."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(2)
            data = b""
            while b"\n" not in data:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
            try:
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
            return data.decode("ascii", "replace")
    except OSError:
        return None


def test_override(exe, tmp):
    port_a, port_b = dslib.free_port(), dslib.free_port()
    while port_b == port_a:
        port_b = dslib.free_port()
    spool = os.path.join(tmp, "spool")
    conf = write(tmp, "override.conf",
                 f"listen = 127.0.0.1:{port_a}\nspool = {spool}\nthreads = 1\nsegment-size = 1M\n"
                 f"spool-buffer-size = 256K\nmax-connections = 64\n")
    log = open(os.path.join(tmp, "server.log"), "w+")
    p = subprocess.Popen([exe, "--config", conf, "--listen", f"127.0.0.1:{port_b}", "--timeout-commit-s", "5"],
                         stdout=log, stderr=log)
    try:
        got = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and p.poll() is None:
            got = banner(port_b)
            if got:
                break
            time.sleep(0.05)
        check(got is not None and got.startswith("220"), f"command line --listen :{port_b} answers 220 ({got!r})")
        check(banner(port_a) is None, f"file's listen :{port_a} is replaced, nothing answers there")
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        log.seek(0)
        out = log.read()
        log.close()
    check(rc == 0, f"SIGTERM: server exits 0 (got {rc})")
    check(f"listening on 127.0.0.1:{port_b}" in out and f"127.0.0.1:{port_a}" not in out,
          "server log names only the command-line listener")
    check("dotspool: timeout-commit-s is obsolete and ignored" in out,
          "obsolete flag --timeout-commit-s 5: the server starts and warns")
    if rc != 0:
        print(out)


# Delivery (issue 14): every flag and key, a good and a bad value. name, good value, bad value, the
# message after "dotspool: FILE:LINE: " (file) or "dotspool: --" (command line).
DELIVER_OPTS = [
    ("deliver-to", "smtp://127.0.0.1:2525", "smtp://localhost:25",
     "'deliver-to': 'smtp://localhost:25': 'localhost': dotspool makes no DNS lookups: give an IP literal"),
    ("deliver-connections", "10000", "10001", "'deliver-connections': '10001' is not a number in [1, 10000]"),
    ("deliver-starttls", "required", "may",
     "'deliver-starttls': 'may' is not one of never, opportunistic, required"),
    ("deliver-tls-name", "mx1.example.com", "127.0.0.1",
     "'deliver-tls-name': '127.0.0.1' is an IP address; give the DNS name the certificate carries "
     "(mbedTLS 2.28 matches DNS names only)"),
    ("retry-min-s", "1", "0", "'retry-min-s': '0' is not a number in [1, 86400]"),
    ("retry-max-s", "604800", "604801", "'retry-max-s': '604801' is not a number in [1, 604800]"),
    ("queue-lifetime-s", "1", "2592001", "'queue-lifetime-s': '2592001' is not a number in [1, 2592000]"),
    ("deliver-hop-backoff-min-s", "1", "0", "'deliver-hop-backoff-min-s': '0' is not a number in [1, 86400]"),
] + [(f"deliver-timeout-{t}-s", "86400", bad, f"'deliver-timeout-{t}-s': '{bad}' is not a number in [1, 86400]")
     for t, bad in (("connect", "0"), ("greeting", "86401"), ("command", "0"), ("data-init", "-1"),
                    ("data-block", "1.5"), ("data-done", "86401"), ("pipe", "0"))]

# Bad deliver-to values (the file's first line), each with its message after "'deliver-to': 'URL': ".
DELIVER_TO_BAD = [
    ("host name", "smtp://mx.example.com:25",
     "'mx.example.com': dotspool makes no DNS lookups: give an IP literal"),
    ("lmtp host name", "lmtp://lmtp.example.com:24",
     "'lmtp.example.com': dotspool makes no DNS lookups: give an IP literal"),
    ("IPv6 without brackets", "smtp://::1:25", "an IPv6 address goes in brackets (smtp://[::1]:PORT)"),
    ("bad IPv6", "smtp://[::g]:25", "'::g' is not an IPv6 address"),
    ("bad IPv4", "smtp://127.0.0.256:25", "'127.0.0.256' is not an IPv4 address"),
    ("no port", "smtp://127.0.0.1", "no port (want smtp://IP:PORT)"),
    ("no port IPv6", "lmtp://[::1]", "no port (want lmtp://[IPv6]:PORT)"),
    ("empty port", "smtp://127.0.0.1:", "no port (want smtp://IP:PORT)"),
    ("port 0", "smtp://127.0.0.1:0", "bad port '0' (1..65535)"),
    ("port 65536", "lmtp://[::1]:65536", "bad port '65536' (1..65535)"),
    ("port not a number", "smtp://127.0.0.1:smtp", "bad port 'smtp' (1..65535)"),
    ("no host", "smtp://:25", "no host (want smtp://IP:PORT)"),
    ("a path after the port", "smtp://127.0.0.1:25/", "nothing but IP:PORT after '//' (no path, user or query)"),
    ("user part", "smtp://u@127.0.0.1:25", "nothing but IP:PORT after '//' (no path, user or query)"),
    ("unknown scheme", "smtps://127.0.0.1:465",
     "not a next hop (want smtp://IP:PORT, lmtp://IP:PORT, lmtp:/PATH, pipe:/PATH or "
     "amqp://USER:PASS@IP:PORT/VHOST?exchange=E&routing_key=K)"),
    ("relative unix path", "lmtp:run/lmtp", "want lmtp:/ABSOLUTE/PATH or lmtp://IP:PORT"),
    ("unix path longer than sun_path", "lmtp:/" + "s" * 107,
     "unix socket path is 108 bytes, longer than sun_path allows (107)"),
    ("relative pipe", "pipe:bin/deliver", "want pipe:/ABSOLUTE/PATH/TO/PROGRAM"),
    ("pipe program missing", "pipe:/nonexistent/deliver", "/nonexistent/deliver: No such file or directory"),
    ("pipe program a directory", "pipe:/tmp", "/tmp is not a regular file"),
    # amqp:// (issue 18): IP literals only, known query keys, one path segment; no amqps yet.
    ("amqp host name", "amqp://u:p@rabbit.example:5672/",
     "'rabbit.example': dotspool makes no DNS lookups: give an IP literal"),
    ("amqp query key", "amqp://u:p@127.0.0.1/?queue=x", "unknown query key 'queue' (exchange, routing_key)"),
    ("amqp vhost path", "amqp://u:p@127.0.0.1/a/b", "one path segment only: the virtual host (%2F for '/')"),
    ("amqps", "amqps://[::1]:5671/", "amqps:// (TLS to the broker) is not supported yet: use amqp://"),
]

SETTINGS_DEFAULT = ("dotspool: deliver: deliver-connections=64 deliver-starttls=opportunistic deliver-ca=- "
                    "deliver-tls-name=- retry-min-s=300 retry-max-s=4000 queue-lifetime-s=432000 "
                    "deliver-hop-backoff-min-s=60 deliver-timeout-connect-s=30 deliver-timeout-greeting-s=300 "
                    "deliver-timeout-command-s=300 deliver-timeout-data-init-s=120 "
                    "deliver-timeout-data-block-s=180 deliver-timeout-data-done-s=600 deliver-timeout-pipe-s=600\n")

SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def check_file(exe, tmp, name, body, want_err=None, line=1, want_out=None):
    """--check-config on body: want_err (message after FILE:LINE:) -> exit 1; else exit 0 and want_out."""
    path = write(tmp, name, body)
    rc, out, err = run(exe, "--check-config", path)
    if want_err is not None:
        want = f"dotspool: {path}:{line}: {want_err}\n" if line else f"dotspool: {path}: {want_err}\n"
        ok = rc == 1 and err == want and out == ""
        check(ok, f"{name}: exit {rc}, {err.strip()!r}" + ("" if ok else f" (want {want.strip()!r})"))
        return
    want = f"dotspool: {path}: OK\n" + (want_out or "")
    ok = rc == 0 and out == want and err == ""
    check(ok, f"{name}: OK" + ("" if ok else f" (exit {rc}, out {out!r}, err {err!r}; want {want!r})"))


def check_flags(exe, tmp, argv, want_err, what):
    """The command line: argv must be refused before anything starts (exit 2, usage error), exactly want_err."""
    spool = os.path.join(tmp, "never-created")
    rc, out, err = run(exe, "--spool", spool, *argv)
    ok = rc == 2 and err == want_err and out == "" and not os.path.exists(spool)
    check(ok, f"{what}: exit {rc}, {err.strip()!r}" + ("" if ok else f" (want {want_err.strip()!r})"))


def test_deliver(exe, tmp, helptext):
    prog = write(tmp, "deliver.sh", "#!/bin/sh\ncat >/dev/null\nexit 0\n")
    os.chmod(prog, 0o755)
    noexec = write(tmp, "noexec.sh", "#!/bin/sh\nexit 0\n")
    os.chmod(noexec, 0o644)
    ca = write(tmp, "ca.pem", "# a comment first\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key = write(tmp, "key.pem", "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")

    # --help lists every delivery flag.
    listed = set(re.findall(r"(?m)^  --([a-z0-9-]+)", helptext))
    for name, *_ in DELIVER_OPTS + [("deliver-ca",)]:
        check(name in listed, f"--help lists --{name}")

    # Every key and every flag: a good value is taken, a bad one refused with the same message.
    sentinel = ["--max-errors", "0"]  # refused after everything before it was taken: nothing starts
    sentinel_err = "dotspool: --'max-errors': '0' is not a number in [1, 1000]\n"
    opts = DELIVER_OPTS + [("deliver-ca", ca, key,
                            f"'deliver-ca': {key} has no PEM certificate (-----BEGIN CERTIFICATE-----) "
                            f"in its first 64 KiB")]
    for name, good, bad, msg in opts:
        extra = f"deliver-ca = {ca}\n" if name == "deliver-starttls" else ""
        path = write(tmp, f"good-{name}.conf", f"{name} = {good}\n{extra}")
        rc, out, err = run(exe, "--check-config", path)
        check(rc == 0 and out.startswith(f"dotspool: {path}: OK\n") and err == "",
              f"key {name} = {good}: OK ({err.strip()!r})")
        check_file(exe, tmp, f"bad-{name}.conf", f"threads = 1\n{name} = {bad}\n", msg, line=2)
        check_flags(exe, tmp, [f"--{name}", good] + sentinel, sentinel_err, f"flag --{name} {good} taken")
        check_flags(exe, tmp, [f"--{name}={good}"] + sentinel, sentinel_err, f"flag --{name}={good} taken")
        check_flags(exe, tmp, [f"--{name}", bad], f"dotspool: --{msg}\n", f"flag --{name} {bad} refused")
        under = name.replace("-", "_")
        path = write(tmp, f"under-{name}.conf", f"{under} = {good}\n{extra}")
        rc, out, err = run(exe, "--check-config", path)
        check(rc == 0 and err == "", f"key {under} (underscores): OK ({err.strip()!r})")

    # deliver-to: every form, the order kept, each hop as understood (one line each), then the settings.
    urls = ["smtp://192.0.2.25:25", "smtp://[2001:db8::0:25]:2525", "lmtp:/run/dovecot/lmtp",
            "lmtp://127.0.0.1:24", f"pipe:{prog}", "LMTP://[::1]:24"]
    desc = ["kind=smtp addr=192.0.2.25 port=25", "kind=smtp addr=2001:db8::25 port=2525",
            "kind=lmtp unix=/run/dovecot/lmtp", "kind=lmtp addr=127.0.0.1 port=24",
            f"kind=pipe program={prog}", "kind=lmtp addr=::1 port=24"]
    body = "".join(f"deliver-to = {u}\n" for u in urls)
    hops = "".join(f"dotspool: deliver-to {i + 1}: {u} {d}\n" for i, (u, d) in enumerate(zip(urls, desc)))
    check_file(exe, tmp, "hops.conf", body, want_out=hops + SETTINGS_DEFAULT)
    rev = "".join(f"deliver-to = {u}\n" for u in reversed(urls))
    hops_rev = "".join(f"dotspool: deliver-to {i + 1}: {u} {d}\n"
                       for i, (u, d) in enumerate(zip(reversed(urls), reversed(desc))))
    check_file(exe, tmp, "hops-reversed.conf", rev, want_out=hops_rev + SETTINGS_DEFAULT)
    check_file(exe, tmp, "hops-underscore.conf", "[dotspool]\ndeliver_to = smtp://[::1]:25\n",
               want_out="dotspool: deliver-to 1: smtp://[::1]:25 kind=smtp addr=::1 port=25\n" + SETTINGS_DEFAULT)
    # Every setting at once: the line says what the engine gets; hop backoff follows retry-min-s below 60.
    check_file(exe, tmp, "settings.conf",
               "deliver-to = lmtp://127.0.0.1:24\ndeliver-connections = 8\ndeliver-starttls = required\n"
               f"deliver-ca = {ca}\ndeliver-tls-name = lmtp.example.org\nretry-min-s = 2\nretry-max-s = 10\n"
               "queue-lifetime-s = 60\ndeliver-timeout-connect-s = 3\ndeliver-timeout-greeting-s = 4\n"
               "deliver-timeout-command-s = 5\ndeliver-timeout-data-init-s = 6\n"
               "deliver-timeout-data-block-s = 7\ndeliver-timeout-data-done-s = 8\ndeliver-timeout-pipe-s = 9\n",
               want_out="dotspool: deliver-to 1: lmtp://127.0.0.1:24 kind=lmtp addr=127.0.0.1 port=24\n"
               f"dotspool: deliver: deliver-connections=8 deliver-starttls=required deliver-ca={ca} "
               "deliver-tls-name=lmtp.example.org retry-min-s=2 retry-max-s=10 queue-lifetime-s=60 "
               "deliver-hop-backoff-min-s=2 deliver-timeout-connect-s=3 deliver-timeout-greeting-s=4 "
               "deliver-timeout-command-s=5 deliver-timeout-data-init-s=6 deliver-timeout-data-block-s=7 "
               "deliver-timeout-data-done-s=8 deliver-timeout-pipe-s=9\n")
    check_file(exe, tmp, "backoff.conf", "deliver-to = smtp://127.0.0.1:25\ndeliver-hop-backoff-min-s = 4000\n",
               want_out="dotspool: deliver-to 1: smtp://127.0.0.1:25 kind=smtp addr=127.0.0.1 port=25\n"
               + SETTINGS_DEFAULT.replace("backoff-min-s=60", "backoff-min-s=4000"))
    # Settings without a hop are valid and print nothing more (delivery is off).
    check_file(exe, tmp, "nohop.conf", "retry-min-s = 5\ndeliver-starttls = never\n")

    # Bad URLs, the pipe program checked now, amqp refused and never mixed, at most 8 hops, no repeats.
    for i, (what, url, msg) in enumerate(DELIVER_TO_BAD):
        check_file(exe, tmp, f"url{i}.conf", f"deliver-to = {url}\n", f"'deliver-to': '{url}': {msg}")
    check_file(exe, tmp, "pipe-noexec.conf", f"deliver-to = pipe:{noexec}\n",
               f"'deliver-to': 'pipe:{noexec}': {noexec} is not executable")
    check_file(exe, tmp, "amqp-mixed.conf", "deliver-to = smtp://127.0.0.1:25\ndeliver-to = amqp://127.0.0.1/\n",
               "'deliver-to': 'amqp://127.0.0.1/': amqp:// is per message and is not mixed with smtp, "
               "lmtp or pipe hops", line=2)
    check_file(exe, tmp, "nine.conf", "".join(f"deliver-to = smtp://127.0.0.1:{25 + i}\n" for i in range(9)),
               "'deliver-to': at most 8 next hops", line=9)
    check_file(exe, tmp, "eight.conf", "".join(f"deliver-to = smtp://127.0.0.1:{25 + i}\n" for i in range(8)),
               want_out="".join(f"dotspool: deliver-to {i + 1}: smtp://127.0.0.1:{25 + i} kind=smtp "
                                f"addr=127.0.0.1 port={25 + i}\n" for i in range(8)) + SETTINGS_DEFAULT)
    check_file(exe, tmp, "twice.conf", "deliver-to = lmtp:/run/l\ndeliver-to = smtp://[::1]:25\n"
               "deliver-to = lmtp:/run/l\n", "'deliver-to': 'lmtp:/run/l' is given twice", line=3)
    check_flags(exe, tmp, ["--deliver-to", "amqp://127.0.0.1/"],
                "dotspool: 'amqp://127.0.0.1/': no credentials: amqp://USER:PASSWORD@... or "
                "deliver-credentials FILE\n",
                "flag --deliver-to amqp:// without credentials refused")
    check_flags(exe, tmp, ["--deliver-to", "smtp://[::1]:25", "--deliver-to", f"pipe:{noexec}"],
                f"dotspool: --'deliver-to': 'pipe:{noexec}': {noexec} is not executable\n",
                "flag --deliver-to pipe: not executable refused")
    check_flags(exe, tmp, ["--deliver-to", "lmtp:/run/x.sock", "--deliver-to", "smtp://[::1]:25"] + sentinel,
                sentinel_err, "flag --deliver-to repeated: IPv6 and unix socket taken")

    # TLS: the CA file checked now, the name a DNS name, required finds a CA.
    missing = os.path.join(tmp, "missing.pem")
    check_file(exe, tmp, "ca-missing.conf", f"deliver-ca = {missing}\n",
               f"'deliver-ca': {missing}: No such file or directory")
    check_file(exe, tmp, "ca-dir.conf", f"deliver-ca = {tmp}\n", f"'deliver-ca': {tmp} is not a regular file")
    check_file(exe, tmp, "tls-name-bad.conf", "deliver-tls-name = mx_1.example.com\n",
               "'deliver-tls-name': 'mx_1.example.com' is not a DNS name (labels of letters, digits, '-')")
    check_file(exe, tmp, "tls-name-dot.conf", "deliver-tls-name = mx..example.com\n",
               "'deliver-tls-name': 'mx..example.com' is not a DNS name (labels of letters, digits, '-')")
    check_file(exe, tmp, "tls-name-v6.conf", "deliver-tls-name = ::1\n",
               "'deliver-tls-name': '::1' is an IP address; give the DNS name the certificate carries "
               "(mbedTLS 2.28 matches DNS names only)")
    check_file(exe, tmp, "tls-never.conf", "deliver-starttls = never\ndeliver-tls-name = mx.example.com\n",
               "deliver-ca and deliver-tls-name have no effect with deliver-starttls never", line=0)
    req = "deliver-to = smtp://127.0.0.1:25\ndeliver-starttls = required\n"
    if os.access(SYSTEM_CA, os.R_OK):
        check_file(exe, tmp, "required-system-ca.conf", req,
                   want_out="dotspool: deliver-to 1: smtp://127.0.0.1:25 kind=smtp addr=127.0.0.1 port=25\n"
                   + SETTINGS_DEFAULT.replace("starttls=opportunistic deliver-ca=-",
                                              f"starttls=required deliver-ca={SYSTEM_CA}"))
    else:
        check_file(exe, tmp, "required-no-ca.conf", req,
                   f"deliver-starttls required needs CA certificates: give deliver-ca FILE ({SYSTEM_CA}: "
                   "No such file or directory)", line=0)

    # Rules between keys: named, no line to blame; the same from the command line.
    check_file(exe, tmp, "retry-order.conf", "retry-min-s = 600\nretry-max-s = 300\n",
               "retry-max-s (300) must be at least retry-min-s (600)", line=0)
    check_file(exe, tmp, "backoff-over.conf", "retry-max-s = 100\nretry-min-s = 100\n"
               "deliver-hop-backoff-min-s = 101\n",
               "deliver-hop-backoff-min-s (101) must not exceed retry-max-s (100)", line=0)
    check_flags(exe, tmp, ["--retry-min-s", "10", "--retry-max-s", "5"],
                "dotspool: retry-max-s (5) must be at least retry-min-s (10)\n", "flags retry-max-s < retry-min-s")


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    exe, example = argv[1], argv[2]
    if not os.access(exe, os.X_OK):
        print(f"SKIP: {exe} is not built")
        return 77
    with tempfile.TemporaryDirectory(prefix="dotspool-ops-") as tmp:
        # The example file of the repository is valid, and so is every commented default in it.
        rc, out, err = run(exe, "--check-config", example)
        check(rc == 0 and out == f"dotspool: {example}: OK\n" and err == "", f"example {example} is OK")
        text = open(example).read()
        # Only keys this binary knows (the example may document options still being wired).
        rc, helptext, _ = run(exe, "--help")
        known = set(re.findall(r"(?m)^  --([a-z0-9-]+)", helptext))
        check(rc == 0 and {"listen", "threads", "spool"} <= known, f"--help lists {len(known)} options")
        # A file example (deliver-ca, deliver-credentials) is uncommented only where that file
        # exists on this machine.
        uncommented = re.sub(r"(?m)^# ([a-z0-9-]+) = (\S+)",
                             lambda m: f"{m[1]} = {m[2]}" if m[1] in known and (
                                 m[1] not in ("deliver-ca", "deliver-credentials")
                                 or os.path.exists(m[2])) else m[0], text)
        check(uncommented != text, "example has commented defaults")
        path = write(tmp, "all-defaults.conf", uncommented)
        rc, out, err = run(exe, "--check-config", path)
        check(rc == 0 and out.startswith(f"dotspool: {path}: OK\n"),
              f"example with every default uncommented is OK {err.strip()}")
        # Its delivery examples are hops that say what they are.
        check(re.search(r"(?m)^dotspool: deliver-to 1: smtp://\S+ kind=smtp addr=\S+ port=\d+$", out) is not None
              and "\ndotspool: deliver: deliver-connections=64 deliver-starttls=opportunistic" in out,
              f"example's delivery lines, uncommented, are printed ({out.strip()!r})")

        path = write(tmp, "good.conf", GOOD)
        rc, out, err = run(exe, "--check-config", path)
        check(rc == 0 and out == f"dotspool: {path}: OK\n", f"good file is OK {err.strip()}")
        # An obsolete key still loads, with a warning on stderr, and is not offered any more.
        warn = ("dotspool: timeout-commit-s is obsolete and ignored: a commit is never abandoned "
                "(see dist/README.md)\n")
        check("timeout-commit" not in helptext, "--help no longer lists timeout-commit-s")
        check("timeout-commit-s =" not in text, "the example no longer documents timeout-commit-s")
        for key in ("timeout-commit-s", "timeout_commit_s"):
            path = write(tmp, "obsolete.conf", f"threads = 1\n{key} = 600\n")
            rc, out, err = run(exe, "--check-config", path)
            check(rc == 0 and out == f"dotspool: {path}: OK\n" and err == warn,
                  f"obsolete key '{key} = 600': OK with a warning ({err.strip()!r})")
        path = write(tmp, "empty.conf", "")
        rc, out, err = run(exe, "--check-config", path)
        check(rc == 0, "empty file is OK")

        # Missing file.
        missing = os.path.join(tmp, "nope.conf")
        rc, out, err = run(exe, "--check-config", missing)
        check(rc == 1 and err == f"dotspool: {missing}: No such file or directory\n" and out == "",
              f"missing file: exit 1, message names the file ({err.strip()!r})")

        # The bad-config matrix: exit 1, exactly "dotspool: FILE:LINE: message".
        for i, (what, body, line, msg) in enumerate(MATRIX):
            path = write(tmp, f"bad{i}.conf", body)
            rc, out, err = run(exe, "--check-config", path)
            want = f"dotspool: {path}:{line}: {msg}\n"
            check(rc == 1 and err == want and out == "", f"{what}: exit {rc}, {err.strip()!r}"
                  + ("" if err == want else f" (want {want.strip()!r})"))

        for i, (what, body, line, msg) in enumerate(KNOWN_BUGS):
            path = write(tmp, f"known{i}.conf", body)
            rc, out, err = run(exe, "--check-config", path)
            if rc == 1 and err.startswith(f"dotspool: {path}:{line}: {msg}"):
                print(f"XPASS {what}: now refused, move it to MATRIX")
            else:
                print(f"XFAIL {what}: --check-config says {out.strip() or err.strip()!r} (known bug in daemon/options.c)")

        # A constraint between keys (no single line to blame).
        path = write(tmp, "cross.conf", "segment-size = 1M\nspool-buffer-size = 512K\n")
        rc, out, err = run(exe, "--check-config", path)
        check(rc == 1 and err == f"dotspool: {path}: segment-size must be at least 4 x spool-buffer-size\n",
              f"segment-size < 4 x spool-buffer-size: exit 1 ({err.strip()!r})")
        path = write(tmp, "tlspair.conf", "tls-cert = /nonexistent.pem\n")
        rc, out, err = run(exe, "--check-config", path)
        check(rc == 1 and err == f"dotspool: {path}: tls-cert and tls-key go together: set both or neither\n",
              f"tls-cert without tls-key: exit 1 ({err.strip()!r})")

        # Starting with a bad file fails at once with the same message.
        path = write(tmp, "start-bad.conf", "threads = 1\nmax-errors = 0\n")
        rc, out, err = run(exe, "--config", path, "--listen", f"127.0.0.1:{dslib.free_port()}")
        check(rc != 0 and f"dotspool: {path}:2: 'max-errors': '0' is not a number in [1, 1000]" in err,
              f"--config with a bad file: exit {rc}, {err.strip()!r}")

        # Delivery settings (issue 14): --check-config and refused command lines only, nothing delivers.
        test_deliver(exe, tmp, helptext)

        # The command line overrides the file.
        test_override(exe, tmp)

    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("all config tests passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
