#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The include graph keeps the layout honest (ARCHITECTURE.md). Checks every
#include "..." of the C sources and headers under ROOT (default: this
script's repository):

1. No cycle between the units of a folder. A unit is a name: x.c and x.h are
   unit x; unit A uses unit B when a file of A includes B's header, except
   when a header includes one of its folder's public headers (one that a
   file outside the folder includes: an interface, like smtp.h for
   smtp_internal.h). Headers alone never form a cycle, so the check is on
   units: worker.c including conn.h while conn.h took its types from
   worker.h, the worker's own private header, was a cycle.
2. No cycle between folders (a folder uses another when one of its files
   includes a header of the other).
3. Nothing in the product (everything but tests/ and bench/micro/) outside
   spool/ includes a header of spool/ other than its public ones.
4. Header guards in one style: DS_<FOLDER>_<NAME>_H, FOLDER the header's
   directory (slashes as _), NAME its file name without a repeat of the
   folder's last name (spool/spool_format.h: DS_SPOOL_FORMAT_H, io/io.h:
   DS_IO_H) or, in common/, the ds_ prefix (common/ds_clock.h:
   DS_COMMON_CLOCK_H).

Quoted includes resolve against the including file's directory first, then
against every header of the tree by file name (the build puts the folders on
the include path); a name that two folders use is an error, as is a name
that resolves nowhere. Exit 0 when all holds, 1 with one line per problem.

Usage: check_includes.py [ROOT]
"""
import os
import re
import sys

SPOOL_PUBLIC = {"spool.h", "spool_compact.h", "spool_fetch.h", "spool_id.h", "spool_reader.h", "spool_reclaim.h",
                "spool_syncio.h"}
# Not the product: may include what they test or measure.
NOT_PRODUCT = ("tests/", "bench/micro/")
# Header guards of these folders are their owners' to change (they follow another style today).
GUARDS_PENDING = ("deliver/", "tests/deliver/", "tests/peer/", "tests/powercut/")
SKIP_DIRS = {".git", "__pycache__"}

INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def source_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not (rel == "." and x.startswith("build")))
        for f in sorted(files):
            if f.endswith((".c", ".h", ".cc")):
                out.append(os.path.normpath(os.path.join(rel, f)))
    return out


def folder_of(path):
    return os.path.dirname(path) or "."


def unit_of(path):
    return os.path.join(folder_of(path), os.path.splitext(os.path.basename(path))[0])


def resolve(includer, name, by_name, files):
    local = os.path.normpath(os.path.join(folder_of(includer), name))
    if local in files:
        return local, None
    cands = by_name.get(os.path.basename(name), [])
    cands = [c for c in cands if c.endswith(os.path.normpath(name))]
    if len(cands) == 1:
        return cands[0], None
    if not cands:
        return None, '%s: #include "%s" resolves to no file of the tree' % (includer, name)
    return None, '%s: #include "%s" is ambiguous: %s' % (includer, name, ", ".join(cands))


def find_cycle(graph):
    """One cycle of graph (node -> set of nodes) as a list, or None."""
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def expected_guard(path):
    folder = folder_of(path)
    last = os.path.basename(folder)
    name = os.path.splitext(os.path.basename(path))[0]
    if name == last:
        name = ""
    elif name.startswith(last + "_"):
        name = name[len(last) + 1:]
    elif folder == "common" and name.startswith("ds_"):
        name = name[3:]
    parts = ["DS", folder.replace("/", "_")] + ([name] if name else [])
    return "_".join(parts).upper().replace("-", "_") + "_H"


def check_guard(root, path):
    text = open(os.path.join(root, path), encoding="utf-8", errors="replace").read()
    m = re.search(r"^#ifndef\s+(\w+)\s*\n#define\s+(\w+)", text, re.M)
    want = expected_guard(path)
    if not m or m.group(1) != m.group(2):
        return "%s: no '#ifndef %s' / '#define %s' guard" % (path, want, want)
    if m.group(1) != want:
        return "%s: header guard %s, want %s" % (path, m.group(1), want)
    if not re.search(r"^#endif\b[^\n]*\s*\Z", text, re.M):
        return "%s: the guard's #endif is not the last line" % path
    return None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    files = source_files(root)
    fileset = set(files)
    by_name = {}
    for f in files:
        if f.endswith(".h"):
            by_name.setdefault(os.path.basename(f), []).append(f)
    problems = []
    edges = []  # (includer, included)
    for f in files:
        text = open(os.path.join(root, f), encoding="utf-8", errors="replace").read()
        for name in INCLUDE_RE.findall(text):
            target, err = resolve(f, name, by_name, fileset)
            if err:
                problems.append(err)
            else:
                edges.append((f, target))
    public = {t for f, t in edges if folder_of(f) != folder_of(t)}
    units = {}  # folder -> {unit -> set(unit)}
    folders = {}  # folder -> set(folder)
    for f, target in edges:
        ff, tf = folder_of(f), folder_of(target)
        if ff != tf:
            folders.setdefault(ff, set()).add(tf)
        elif unit_of(f) != unit_of(target) and not (f.endswith(".h") and target in public):
            units.setdefault(ff, {}).setdefault(unit_of(f), set()).add(unit_of(target))
    for f, target in edges:
        ff, tf = folder_of(f), folder_of(target)
        if (tf == "spool" and ff != "spool" and not f.startswith(NOT_PRODUCT)
                and os.path.basename(target) not in SPOOL_PUBLIC):
            problems.append("%s: includes %s, internal to spool/ (public: %s)"
                            % (f, target, ", ".join(sorted(SPOOL_PUBLIC))))
    for f in files:
        if f.endswith(".h") and not f.startswith(GUARDS_PENDING):
            err = check_guard(root, f)
            if err:
                problems.append(err)
    for folder in sorted(units):
        cycle = find_cycle(units[folder])
        if cycle:
            problems.append("%s/: units include each other: %s" % (folder, " -> ".join(cycle)))
    cycle = find_cycle(folders)
    if cycle:
        problems.append("folders include each other: %s" % " -> ".join(cycle))
    for p in problems:
        print(p)
    print("check_includes: %d files, %d problem(s)" % (len(files), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
