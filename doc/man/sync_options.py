#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Add the options the man pages miss, from the binary's own --help.

For every flag `dotspool --help` prints that dotspool(8) lacks, an entry is added at the end of
its OPTIONS list; for every such option that is a configuration key (not a command-line-only
--no-* flag), an entry is added to dotspool.conf(5) under "Other keys" (created before FILES).
The text is the --help text (capitalised, default appended). Move the entries into their proper
group and improve the text by hand afterwards; tests/dist/test_man.py (ctest dist_man) says what
is still missing. dotspool-ctl commands and dotspool-bench flags are only reported.

Usage: doc/man/sync_options.py BUILD_DIR
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fold  # noqa: E402


def esc(text):
    # roff: a leading '.' or "'" would be a request; backslashes escaped.
    text = text.replace("\\", "\\e")
    return ("\\&" + text) if text[:1] in ".'" else text


def entries(help_text):
    out = {}
    for line in help_text.splitlines():
        m = re.match(r"^  --([a-z0-9][a-z0-9-]*)\s{2,}(.*)$", line) or re.match(r"^  --([a-z0-9][a-z0-9-]*) (\S.*)$", line)
        if not m:
            continue
        name, rest = m[1], m[2].strip()
        d = re.search(r" \[default (.*)\]$", rest)
        dflt = d[1] if d else None
        if d:
            rest = rest[: d.start()]
        words = rest.split(" ", 1)
        arg = words[0] if (words[0].isupper() or "|" in words[0]) and len(words) > 1 else ""
        txt = words[1] if arg else rest
        txt = txt[:1].upper() + txt[1:]
        if not txt.endswith("."):
            txt += "."
        if dflt and "default" not in txt.lower():
            txt += f" Default: {dflt}."
        out[name] = (arg, esc(txt))
    return out


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    build = argv[1]
    helptext = subprocess.run([os.path.join(build, "dotspool"), "--help"], capture_output=True, text=True).stdout
    opts = entries(helptext)
    p8 = os.path.join(HERE, "man8", "dotspool.8")
    p5 = os.path.join(HERE, "man5", "dotspool.conf.5")
    d8, c5 = open(p8).read(), open(p5).read()
    add8, add5 = [], []
    for name, (arg, txt) in opts.items():
        if name in ("config", "check-config"):
            continue
        if not re.search(rf"\bFl -{re.escape(name)}(?![a-z0-9-])", d8):
            add8.append(f".It Fl -{name}" + (f" Ar {arg}" if arg else "") + "\n" + txt + "\n")
        if not name.startswith("no-") and not re.search(rf"^\.It Ic {re.escape(name)}\b", c5, re.M):
            add5.append(f".It Ic {name}" + (f" No = Ar {arg}" if arg else "") + "\n" + txt + "\n")
    if add8:
        sec = d8.index(".Sh OPTIONS")
        end = d8.index("\n.El\n", sec)
        d8 = d8[: end + 1] + "".join(add8) + d8[end + 1:]
        open(p8, "w").write(d8)
    if add5:
        if ".Ss Other keys" not in c5:
            at = c5.index(".Sh FILES")
            c5 = c5[:at] + ".Ss Other keys\n.Bl -tag -width Ds\n.El\n" + c5[at:]
        sec = c5.index(".Ss Other keys")
        end = c5.index("\n.El\n", sec)
        c5 = c5[: end + 1] + "".join(add5) + c5[end + 1:]
        open(p5, "w").write(c5)
    fold.main([p8, p5])
    print(f"dotspool(8): {len(add8)} options added; dotspool.conf(5): {len(add5)} keys added")
    for tool, page in (("dotspool-ctl", "man8/dotspool-ctl.8"), ("dotspool-bench", "man1/dotspool-bench.1")):
        h = subprocess.run([os.path.join(build, tool), "--help"], capture_output=True, text=True).stdout
        text = open(os.path.join(HERE, page)).read()
        miss = sorted({f for f in re.findall(r"--([a-z0-9][a-z0-9-]*)", h)
                       if not re.search(rf"\bFl -{re.escape(f)}(?![a-z0-9-])", text)})
        if miss:
            print(f"{page}: flags to document by hand: {', '.join('--' + m for m in miss)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
