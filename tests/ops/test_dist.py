#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Checks of dist/: the example configuration documents every option of
daemon/options.c, and the systemd unit is valid (systemd-analyze verify, when
available) with the settings issue 8 asks for.

Usage: test_dist.py DIST_DIR daemon/options.c
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def option_names(options_c):
    src = open(options_c).read()
    table = src[src.index("static const struct opt_def opts[]"):]
    table = table[: table.index("\n};")]
    return re.findall(r'\{"([a-z0-9-]+)",\s*OPT_([A-Z0-9_]+)', table)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    dist, options_c = argv[1], argv[2]
    conf = open(os.path.join(dist, "dotspool.conf")).read()
    opts = option_names(options_c)
    check(len(opts) >= 20, f"{len(opts)} options found in {options_c}")
    for name, kind in opts:
        if kind == "FLAG_NEG":  # command-line-only flag, no config key
            check(re.search(rf"--{name}\b", conf) is not None, f"dotspool.conf mentions the flag --{name}")
            continue
        check(re.search(rf"(?m)^(# )?{re.escape(name)} = \S", conf) is not None,
              f"dotspool.conf documents '{name} = ...'")
    for line in conf.splitlines():
        if len(line) >= 200:
            check(False, f"dotspool.conf line under libinih's 200 characters: {line[:40]}...")

    unit_path = os.path.join(dist, "dotspool.service")
    unit = open(unit_path).read()
    keys = {}
    for line in unit.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            keys.setdefault(m[1], []).append(m[2])
    want = {
        "Type": "exec", "KillSignal": "SIGTERM", "Restart": "on-failure", "LimitNOFILE": "65536",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes", "StateDirectory": "dotspool",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for k, v in want.items():
        check(keys.get(k, [None])[0] == v, f"unit: {k}={v}")
    check(keys.get("ExecStart", [""])[0] == "/usr/sbin/dotspool --config /etc/dotspool/dotspool.conf",
          "unit: ExecStart=/usr/sbin/dotspool --config /etc/dotspool/dotspool.conf (the package's path)")
    check(all(v.split()[0] in ("/usr/sbin/dotspool", "/bin/kill")
              for k in ("ExecStartPre", "ExecStart", "ExecReload") for v in keys.get(k, [])),
          "unit: every Exec line runs /usr/sbin/dotspool (or kill), nothing under /usr/local")
    check(keys.get("StateDirectoryMode", [None])[0] == "0750" and keys.get("User", [None])[0] == "dotspool",
          "unit: User=dotspool, StateDirectoryMode=0750")
    # Safe defaults: the shipped configuration listens on loopback only.
    listens = re.findall(r"(?m)^(?:listen|lmtp-listen|proxy-listen) = (\S+)", conf)
    check(listens != [] and all(a.startswith(("127.", "[::1]:")) for a in listens),
          f"dotspool.conf listens on loopback only: {listens}")
    spool = re.findall(r"(?m)^spool = (\S+)", conf)
    check(spool != [] and spool[0].startswith("/var/lib/dotspool/"),
          f"dotspool.conf spool inside the unit's StateDirectory /var/lib/dotspool: {spool}")
    # The Debian package installs these very files (debian/dotspool.install).
    inst = os.path.join(os.path.dirname(os.path.abspath(dist)), "debian", "dotspool.install")
    if os.path.exists(inst):
        srcs = [l.split()[0] for l in open(inst) if l.strip() and not l.startswith("#")]
        root = os.path.dirname(os.path.abspath(dist))
        check("dist/dotspool.service" in srcs and "dist/dotspool.conf" in srcs,
              "debian/dotspool.install ships dist/dotspool.service and dist/dotspool.conf")
        for src in srcs:
            check(os.path.exists(os.path.join(root, src)), f"debian/dotspool.install: {src} exists")
    check(any("kill -HUP $MAINPID" in v for v in keys.get("ExecReload", [])), "unit: ExecReload sends SIGHUP")
    filt = " ".join(keys.get("SystemCallFilter", []))
    check(all(s in filt for s in ("@system-service", "io_uring_setup", "io_uring_enter", "io_uring_register")),
          "unit: SystemCallFilter allows @system-service and io_uring")
    m = re.search(r"(?m)^# shutdown-timeout-s = (\d+)", conf)
    stop = keys.get("TimeoutStopSec", ["0"])[0]
    check(m is not None and stop.isdigit() and int(stop) > int(m[1]),
          f"unit: TimeoutStopSec={stop} beyond shutdown-timeout-s")

    analyze = shutil.which("systemd-analyze")
    if not analyze:
        print("SKIP systemd-analyze not installed: unit not verified")
    else:
        # verify wants the ExecStart binary to exist: point it at /bin/true in a copy.
        with tempfile.TemporaryDirectory(prefix="dotspool-unit-") as tmp:
            copy = os.path.join(tmp, "dotspool.service")
            with open(copy, "w") as f:
                f.write(unit.replace("/usr/sbin/dotspool", "/bin/true"))
            # verify runs man(1) for each Documentation=man:... entry: the pages in the tree.
            env = dict(os.environ, MANPATH=os.path.join(os.path.dirname(os.path.abspath(dist)), "doc", "man"))
            p = subprocess.run([analyze, "verify", copy], capture_output=True, text=True, timeout=60, env=env)
            msgs = (p.stdout + p.stderr).strip()
            check(p.returncode == 0 and msgs == "", f"systemd-analyze verify: rc {p.returncode} {msgs!r}")
            p = subprocess.run([analyze, "security", "--offline=true", copy], capture_output=True, text=True,
                               timeout=60)
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout)
            if m:
                check(float(m[1]) <= 2.5, f"systemd-analyze security: exposure {m[1]} <= 2.5")
            else:
                print(f"SKIP systemd-analyze security --offline unavailable: {p.stderr.strip()[:100]}")
        # A broken copy must be reported: the verification above could fail.
        with tempfile.TemporaryDirectory(prefix="dotspool-unit-") as tmp:
            copy = os.path.join(tmp, "broken.service")
            with open(copy, "w") as f:
                f.write(unit.replace("/usr/sbin/dotspool", "/bin/true").replace("ProtectSystem=strict", "ProtectSystem=bogus"))
            p = subprocess.run([analyze, "verify", copy], capture_output=True, text=True, timeout=60)
            check("protect system" in (p.stdout + p.stderr).lower(), "systemd-analyze verify catches a bad value")

    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("dist checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
