#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reflow the text lines of an mdoc page in place: one sentence per line
(mandoc's "new sentence, new line"), text lines folded at 78 bytes on
spaces. Macro lines (starting with '.') and literal displays are kept.

Usage: fold.py PAGE...
"""
import re
import sys


def fold(line, width=78):
    out = []
    while len(line) > width:
        cut = line.rfind(" ", 0, width)
        if cut <= 0:
            cut = line.find(" ", width)
            if cut < 0:
                break
        out.append(line[:cut])
        line = line[cut + 1:]
    out.append(line)
    return out


def main(paths):
    for path in paths:
        lines = open(path).read().split("\n")
        out, literal = [], False
        for line in lines:
            if line.startswith(".Bd -literal") or line.startswith(".Bd -unfilled"):
                literal = True
            elif line.startswith(".Ed"):
                literal = False
            if literal or line.startswith((".", "'")) or line == "":
                out.append(line)
                continue
            # One sentence per line: split after '.', '?' or '!' followed by a space and a capital.
            for sentence in re.split(r"(?<=[.?!]) (?=[A-Z(])", line):
                # A folded line starting with '.' or "'" would be a request: \& before it.
                out.extend(("\\&" + l) if l[:1] in ".'" else l for l in fold(sentence))
        open(path, "w").write("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
