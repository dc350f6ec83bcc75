#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The man pages in doc/man cannot drift from the programs.

Every flag `dotspool --help` prints is in dotspool(8); every key of the option
table in daemon/options.c is in dotspool.conf(5), each with the default --help prints; every command and option
`dotspool-ctl --help` prints is in dotspool-ctl(8); every flag of
`dotspool-bench --help` is in dotspool-bench(1); every 4xx/5xx reply code the
session and the delivery stage can send (core/, io/) is in dotspool(8)'s REPLY
CODES; and `mandoc -T lint` reports nothing at warning level or above.

The lists come from the binaries and the sources as they are now, so a flag,
key, command or code added without its documentation fails here.

Usage: test_man.py BUILD_DIR SOURCE_DIR
"""
import glob
import os
import re
import shutil
import subprocess
import sys

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def run(*argv):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout + p.stderr


def help_flags(text):
    """Every --flag that starts an entry of a help text (first token(s) of an indented line)."""
    flags = set()
    for line in text.splitlines():
        m = re.match(r"^\s{1,4}((?:-[a-zA-Z], )?--[a-z0-9-]+(?:[ ,=][^ ]*)*?)(?:\s{2,}|$)", line)
        if m:
            flags.update(re.findall(r"--([a-z0-9][a-z0-9-]*)", m[1]))
    return flags


def option_table(options_c):
    src = open(options_c).read()
    table = src[src.index("static const struct opt_def opts[]"):]
    table = table[: table.index("\n};")]
    return re.findall(r'\{"([a-z0-9-]+)",\s*OPT_([A-Z0-9_]+)', table)


def ctl_commands(text):
    """Command names of dotspool-ctl --help: under 'commands:', each entry line (two-space indent)
    names one or more commands before its description column ('retry ID...|--all, hold ID...')."""
    cmds, inside = [], False
    for line in text.splitlines():
        if re.match(r"^[a-z ]*commands?[^:]*:\s*$", line, re.I):
            inside = True
            continue
        if inside and re.match(r"^\S", line):
            inside = False
        if inside and re.match(r"^  [a-z]", line):
            head = re.split(r"\s{2,}", line.strip())[0]
            for part in head.split(", "):
                m = re.match(r"^([a-z][a-z-]*)\b", part)
                if m and m[1] not in cmds:
                    cmds.append(m[1])
    return cmds


def mdoc_flag(page, flag):
    """'Fl -flag' (or 'Fl flag' after a dash, as in 'Fl -no-prewrite') anywhere in an mdoc page."""
    return re.search(rf"\bFl -{re.escape(flag)}(?![a-z0-9-])", page) is not None


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    build, src = argv[1], argv[2]
    man = os.path.join(src, "doc", "man")
    pages = {os.path.basename(p): open(p).read() for p in glob.glob(os.path.join(man, "man*", "*.[0-9]"))}
    for name in ("dotspool.8", "dotspool-ctl.8", "dotspool.conf.5", "dotspool-bench.1"):
        check(name in pages, f"doc/man has {name}")
    if failures:
        return 1
    d8, ctl8, conf5, bench1 = pages["dotspool.8"], pages["dotspool-ctl.8"], pages["dotspool.conf.5"], pages["dotspool-bench.1"]

    # dotspool --help: every flag in dotspool(8).
    rc, out = run(os.path.join(build, "dotspool"), "--help")
    flags = help_flags(out)
    check(rc == 0 and len(flags) >= 40 and {"listen", "config", "check-config", "help", "version"} <= flags,
          f"dotspool --help: {len(flags)} flags parsed")
    for f in sorted(flags):
        check(mdoc_flag(d8, f), f"dotspool(8) documents --{f}")

    # Defaults: a flag whose --help line ends in "[default X]" has X in its entries of dotspool(8)
    # and dotspool.conf(5) (from its .It line to the next one).
    def entry(page, head):
        m = re.search(rf"^\.It {head}(?![a-z0-9-]).*?(?=^\.It |^\.El|^\.Sh |\Z)", page, re.M | re.S)
        return re.sub(r"\s+", " ", m[0]) if m else ""
    for line in out.splitlines():
        m = re.match(r"^  --([a-z0-9-]+)\s.*\[default (.+)\]$", line)
        if not m:
            continue
        f, dflt = m[1], m[2]
        if f == "threads":  # the machine's core count: the pages say so in words
            continue
        for name, page, head in (("dotspool(8)", d8, rf"Fl -{re.escape(f)}"),
                                 ("dotspool.conf(5)", conf5, rf"Ic {re.escape(f)}")):
            text = entry(page, head)
            if text:
                check(dflt in text, f"{name}: --{f} default {dflt}")

    # The option table: every key in dotspool.conf(5) (as 'Ic key'), every flag in dotspool(8).
    opts = option_table(os.path.join(src, "daemon", "options.c"))
    check(len(opts) >= 40, f"daemon/options.c: {len(opts)} options in the table")
    for name, kind in opts:
        check(mdoc_flag(d8, name), f"dotspool(8) documents the table's --{name}")
        if kind == "FLAG_NEG":  # command line only
            check(mdoc_flag(conf5, name), f"dotspool.conf(5) explains the command-line-only --{name}")
        else:
            check(re.search(rf"^\.It Ic {re.escape(name)}\b", conf5, re.M) is not None,
                  f"dotspool.conf(5) documents the key '{name}'")
        check(name in flags, f"--help prints the table's --{name}")

    # dotspool-ctl --help: every command as 'Cm cmd' and every option in dotspool-ctl(8).
    rc, out = run(os.path.join(build, "dotspool-ctl"), "--help")
    cmds = ctl_commands(out)
    check(rc == 0 and {"list", "cat", "verify", "stats"} <= set(cmds), f"dotspool-ctl --help: commands {cmds}")
    for c in cmds:
        check(re.search(rf"^\.It Cm {re.escape(c)}\b", ctl8, re.M) is not None,
              f"dotspool-ctl(8) documents the command '{c}'")
    # Every --flag the help mentions anywhere (command options such as queue --state are inside
    # the command lines).
    cflags = set(re.findall(r"--([a-z0-9][a-z0-9-]*)", out))
    check({"spool", "help"} <= cflags, f"dotspool-ctl --help: {len(cflags)} flags parsed")
    for f in sorted(cflags):
        check(mdoc_flag(ctl8, f), f"dotspool-ctl(8) documents --{f}")

    # dotspool-bench --help: every flag in dotspool-bench(1).
    rc, out = run(os.path.join(build, "dotspool-bench"), "--help")
    bflags = help_flags(out)
    check(rc == 0 and len(bflags) >= 20 and {"server", "rate", "slo-p99-ms"} <= bflags,
          f"dotspool-bench --help: {len(bflags)} flags parsed")
    for f in sorted(bflags):
        check(mdoc_flag(bench1, f), f"dotspool-bench(1) documents --{f}")

    # Reply codes: every 4xx/5xx reply the server's session or delivery stage writes.
    # Session replies are C string literals "NNN X.Y.Z ..."; the pages name each code and
    # each 4xx enhanced code (the retryable ones an operator looks up).
    codes, enhanced = set(), set()
    for path in glob.glob(os.path.join(src, "core", "*.c")) + glob.glob(os.path.join(src, "io", "*.c")):
        text = open(path).read()
        for m in re.finditer(r'"([45][0-9][0-9])[ -]([45]\.[0-9]{1,3}\.[0-9]{1,3})', text):
            codes.add(m[1])
            if m[1].startswith("4"):
                enhanced.add((m[1], m[2]))
        for m in re.finditer(r"DLV_FAILED, ([45][0-9][0-9]), \"([45]\.[0-9]+\.[0-9]+)\"", text):
            codes.add(m[1])
    reply = d8[d8.index(".Sh REPLY CODES"):]
    reply = reply[: reply.index("\n.Sh ", 1)]
    check(len(codes) >= 10, f"{len(codes)} reply codes found in core/ and io/: {sorted(codes)}")
    for c in sorted(codes):
        check(re.search(rf"\b{c}\b", reply) is not None, f"dotspool(8) REPLY CODES names {c}")
    for c, e in sorted(enhanced):
        check(re.search(rf"\b{c} {re.escape(e)}\b", reply) is not None, f"dotspool(8) REPLY CODES names {c} {e}")

    # Sections the issue asks for.
    for name, page in pages.items():
        for sec in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS" if not name.endswith(".5") else "FILES",
                    "SEE ALSO"):
            check(f".Sh {sec}" in page, f"{name} has {sec}")
    check(".Sh SIGNALS" in d8 and "SIGHUP" in d8 and "SIGTERM" in d8, "dotspool(8) has SIGNALS (TERM, INT, HUP)")
    check(".Sh FILES" in d8 and "/etc/dotspool/dotspool.conf" in d8 and "/var/lib/dotspool" in d8,
          "dotspool(8) FILES: configuration and spool")

    # mandoc -T lint: nothing at warning level or above (style notes such as a
    # cross-reference to a page not installed on this machine are not counted).
    mandoc = shutil.which("mandoc")
    check(mandoc is not None, "mandoc installed (scripts/deps.sh)")
    if mandoc:
        for name in sorted(pages):
            path = glob.glob(os.path.join(man, "man*", name))[0]
            p = subprocess.run([mandoc, "-T", "lint", "-W", "warning", path], capture_output=True, text=True,
                               timeout=30)
            msgs = "\n".join(l for l in (p.stdout + p.stderr).splitlines() if "mandoc.db" not in l)
            check(p.returncode == 0 and msgs == "", f"mandoc -T lint -W warning {name}: rc {p.returncode} {msgs!r}")
        # The check above must be able to fail: a page with a broken macro is reported.
        p = subprocess.run([mandoc, "-T", "lint", "-W", "warning"], input=".Dd x\n.Dt X 1\n.Os\n.Sh NAME\n.Bl\n",
                           capture_output=True, text=True, timeout=30)
        check(p.returncode != 0 or (p.stdout + p.stderr).strip() != "", "mandoc -T lint reports a broken page")

    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("man page checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
