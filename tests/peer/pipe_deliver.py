#!/usr/bin/env python3
"""A pipe program fixture: the `pipe:/path/program` next hop of dotspool's delivery tests.

It stores the message it reads on stdin, with its envelope, and exits with a chosen code.
Python 3 stdlib only. Also used by peers.Postfix as the private Postfix's pipe(8) transport.

Envelope (dotspool's pipe interface is still being defined; both forms are accepted, argv wins):
    argv:  pipe_deliver.py [--out DIR] [--queue-id ID] [--lf-to-crlf] [-f SENDER] [--] RCPT...
    env:   DS_SENDER (envelope sender, may be empty), DS_RECIPIENTS (space separated),
           DS_QUEUE_ID
Behaviour (env):
    DS_PIPE_OUT    directory for the output (required unless --out); created if missing
    DS_PIPE_EXIT   exit code after storing (default 0; 75 = EX_TEMPFAIL, 67/69/... = permanent)
    DS_PIPE_SLEEP  seconds to sleep before reading stdin (a slow or stalled next hop)
    DS_PIPE_STORE  "0": do not store anything (a program that fails before keeping the mail)
Output, one pair per invocation in DIR:
    <queue id or "noid">-<pid>-<n>.eml   the exact bytes read on stdin (with --lf-to-crlf: every
                                         bare LF turned into CRLF, for Postfix, which hands
                                         pipe(8) programs LF lines)
    <same>.json                          {"sender", "recipients", "queue_id", "exit", "bytes",
                                          "argv", "time"}
    The .json is written last, by rename: a reader counts deliveries by .json files.
"""

import json
import os
import sys
import time

USAGE = "usage: pipe_deliver.py [--out DIR] [--queue-id ID] [--lf-to-crlf] [-f SENDER] [--] RCPT..."
MAX_BYTES = 256 << 20  # a fixture, not a mailbox: refuse absurd input rather than fill the disk


def parse_args(argv):
    opts = {"out": os.environ.get("DS_PIPE_OUT", ""),
            "queue_id": os.environ.get("DS_QUEUE_ID", ""),
            "sender": os.environ.get("DS_SENDER"),
            "recipients": os.environ.get("DS_RECIPIENTS", "").split(),
            "crlf": False}
    rcpts = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rcpts.extend(argv[i + 1:])
            break
        if a in ("--out", "--queue-id", "-f") and i + 1 < len(argv):
            key = {"--out": "out", "--queue-id": "queue_id", "-f": "sender"}[a]
            opts[key] = argv[i + 1]
            i += 2
            continue
        if a == "--lf-to-crlf":
            opts["crlf"] = True
        elif a.startswith("-"):
            sys.stderr.write(USAGE + "\n")
            sys.exit(64)  # EX_USAGE
        else:
            rcpts.append(a)
        i += 1
    if rcpts:
        opts["recipients"] = rcpts
    if opts["sender"] is None:
        opts["sender"] = ""
    return opts


def lf_to_crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def main():
    opts = parse_args(sys.argv[1:])
    if not opts["out"]:
        sys.stderr.write("pipe_deliver.py: no output directory (DS_PIPE_OUT or --out)\n")
        return 78  # EX_CONFIG
    code = int(os.environ.get("DS_PIPE_EXIT", "0") or 0)
    pause = float(os.environ.get("DS_PIPE_SLEEP", "0") or 0)
    if pause > 0:
        time.sleep(pause)
    data = sys.stdin.buffer.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        sys.stderr.write("pipe_deliver.py: message too big\n")
        return 73  # EX_CANTCREAT
    if opts["crlf"]:
        data = lf_to_crlf(data)
    if os.environ.get("DS_PIPE_STORE", "1") == "0":
        return code
    os.makedirs(opts["out"], exist_ok=True)
    qid = "".join(c for c in opts["queue_id"] if c.isalnum() or c in "._") or "noid"
    n = 0
    while True:  # a unique name even if the same queue id is delivered again (a retry)
        base = os.path.join(opts["out"], "%s-%d-%d" % (qid, os.getpid(), n))
        try:
            fd = os.open(base + ".eml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            n += 1
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    meta = {"sender": opts["sender"], "recipients": opts["recipients"],
            "queue_id": opts["queue_id"], "exit": code, "bytes": len(data),
            "argv": sys.argv[1:], "time": time.time()}
    with open(base + ".json.tmp", "w") as f:
        json.dump(meta, f)
    os.rename(base + ".json.tmp", base + ".json")
    return code


if __name__ == "__main__":
    sys.exit(main())
