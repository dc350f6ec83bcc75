#!/usr/bin/env python3
"""dotspool-ctl tests: list, list --json, cat, verify, stats on a spool written by the lane."""
import json, os, shutil, subprocess, sys, tempfile

ctl, fixture = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp(prefix="dsctl-")
spool, out = os.path.join(tmp, "spool"), os.path.join(tmp, "out")
os.mkdir(out)
fails = 0


def check(cond, what):
    global fails
    if not cond:
        print("FAIL:", what)
        fails += 1


def run(*args, ok=True, spool_dir=None):
    p = subprocess.run([ctl, "--spool", spool_dir or spool] + list(args), capture_output=True, timeout=30)
    if ok:
        check(p.returncode == 0, f"{args} exit {p.returncode}: {p.stderr!r}")
    return p


try:
    subprocess.run([fixture, spool, out], check=True, timeout=30)
    ids = open(os.path.join(out, "ids")).read().split()
    check(len(ids) == 4, "fixture wrote 4 messages")

    p = subprocess.run([ctl, "--help"], capture_output=True)
    check(p.returncode == 0 and b"list" in p.stdout and b"verify" in p.stdout, "--help")
    p = subprocess.run([ctl, "--spool", spool, "bogus"], capture_output=True)
    check(p.returncode == 2, "unknown command exits 2")

    lines = run("list").stdout.decode().splitlines()
    check(len(lines) == 4, f"list prints 4 lines, got {lines}")
    check(all(l.split()[0] in ids for l in lines), "list ids")

    objs = [json.loads(l) for l in run("list", "--json").stdout.decode("utf-8").splitlines()]
    check([o["id"] for o in objs] == ids, "json ids in commit order")
    o = objs[0]
    check(o["mail_from"] == "alice@example.org" and o["rcpt_to"] == ["bob@localhost"], "json envelope 1")
    check(o["received_at"] == "2023-11-14T22:13:20.123456Z", f"received_at {o['received_at']}")
    check(o["size"] == len(open(os.path.join(out, ids[0] + ".eml"), "rb").read()), "size")
    check(o["client_addr"] == "127.0.0.1" and o["helo"] == "client.example" and o["proto"] == "ESMTP", "fields")
    check(o["tls"] == "" and o["mail_params"] == "", "empty fields")
    o = objs[1]
    check(o["mail_from"] == 'we"ird\\x@example.org', f"escaping quote/backslash: {o['mail_from']!r}")
    check(o["helo"] == 'h\te\x01lo "x"', f"control chars: {o['helo']!r}")
    check(o["rcpt_to"] == ["jörg@例え.jp"], f"UTF-8 passthrough: {o['rcpt_to']!r}")
    check(o["tls"].startswith("TLSv1.3") and o["mail_params"] == "SMTPUTF8 BODY=8BITMIME", "tls/params")
    check(objs[2]["mail_from"] == "" and len(objs[2]["rcpt_to"]) == 3 and objs[2]["size"] == 300000, "null path")
    check(objs[3]["size"] == 0, "empty body")
    raw = run("list", "--json").stdout
    check(b"\\u0001" in raw and b"\\t" in raw, "control characters escaped as JSON escapes")

    for i in ids:
        want = open(os.path.join(out, i + ".eml"), "rb").read()
        got = run("cat", i).stdout
        check(got == want, f"cat {i} byte for byte ({len(got)} vs {len(want)})")
        check(run("cat", i.lower()).stdout == want, "cat accepts lower case")
    p = run("cat", "0100000000FFFFFF", ok=False)
    check(p.returncode == 1 and b"not found" in p.stderr and p.stdout == b"", "cat missing id")

    # cat goes to the id's segment: two lanes of small segments, bodies spanning segments, commits
    # segments after their ids' (interleaved txns).
    spool2, out2 = os.path.join(tmp, "spool2"), os.path.join(tmp, "out2")
    os.mkdir(out2)
    subprocess.run([fixture, spool2, out2, "multi"], check=True, timeout=60)
    ids2 = open(os.path.join(out2, "ids")).read().split()
    check(len(ids2) == 48 and len({i[:2] for i in ids2}) == 2, "multi fixture: 48 messages in 2 lanes")
    for lane in ("lane-02", "lane-05"):
        check(len(os.listdir(os.path.join(spool2, lane))) >= 5, f"{lane} has several segments")
    check(sum(1 for i in ids2 if i[2:10] != ids2[0][2:10]) > 0, "ids name several segments")
    for i in ids2:
        want = open(os.path.join(out2, i + ".eml"), "rb").read()
        p = run("cat", i, spool_dir=spool2)
        check(p.stdout == want and p.stderr == b"", f"multi: cat {i} byte for byte ({len(p.stdout)} vs {len(want)})")
    lines = run("list", spool_dir=spool2).stdout.decode().splitlines()
    check(sorted(l.split()[0] for l in lines) == sorted(ids2), "multi: list shows every message once")
    p = run("verify", spool_dir=spool2)
    check(b"OK" in p.stdout and b"48 messages" in p.stdout, f"multi: verify {p.stdout!r}")
    last_seq = max(int(n[:12]) for n in os.listdir(os.path.join(spool2, "lane-02")) if n.endswith(".seg"))
    missing = [
        ids2[0][:10] + "FFFFFE",  # existing segment, counter never used
        ids2[5][:10] + "000400",
        "02%08X000000" % (last_seq + 1),  # segment past the lane's end
        "02%08X000003" % (last_seq + 5000),
        "0200000000000000",  # segment 0
        "07" + ids2[0][2:],  # a lane that does not exist
        "0000000000000000",
    ]
    for i in missing:
        p = run("cat", i, ok=False, spool_dir=spool2)
        check(p.returncode == 1 and p.stdout == b"" and p.stderr == f"dotspool-ctl: message {i} not found\n".encode(),
              f"multi: cat {i}: exit {p.returncode}, stderr {p.stderr!r}")
    p = run("cat", "02XYZ", ok=False, spool_dir=spool2)
    check(p.returncode == 1 and b"bad message id" in p.stderr, "cat bad id")

    p = run("verify")
    check(b"OK" in p.stdout and b"4 messages" in p.stdout, f"verify summary {p.stdout!r}")
    p = run("stats")
    check(b"messages 4" in p.stdout and b"lane 1" in p.stdout, f"stats {p.stdout!r}")

    # Corrupt a body byte of the big message: verify must fail, cat reports the checksum.
    seg = sorted(os.listdir(os.path.join(spool, "lane-01")))[0]
    path = os.path.join(spool, "lane-01", seg)
    with open(path, "r+b") as f:
        data = f.read()
        pos = data.find(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)
        check(pos > 0, "found body bytes in segment")
        f.seek(pos + 10)
        f.write(b"#")
    p = run("verify", ok=False)
    check(p.returncode == 1 and b"INCONSISTENT" in p.stdout, f"verify detects corruption {p.stdout!r}")
    p = run("cat", ids[2], ok=False)
    check(p.returncode == 1 and b"checksum" in p.stderr, "cat reports checksum mismatch")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print("ctl tests:", "FAILED" if fails else "ok")
sys.exit(1 if fails else 0)
