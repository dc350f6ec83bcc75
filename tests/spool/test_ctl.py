#!/usr/bin/env python3
"""dotspool-ctl tests: list, list --json, cat, verify, stats on a spool written by the lane."""
import json, os, re, shutil, subprocess, sys, tempfile

ctl, fixture = sys.argv[1], sys.argv[2]
queue_fixture = sys.argv[3] if len(sys.argv) > 3 else None  # test_spool_queue (ctl-fixture mode)
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
    check(all(l.endswith(" queued") for l in lines), f"plain list ends with the state: {lines}")
    check(lines[2].split(" -> ")[1].split()[:3] == ["<a@localhost>", "<b@localhost>", "<c@localhost>"],
          f"plain list recipients unchanged: {lines[2]}")

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
    # No outcome records: every message queued, every recipient pending, never attempted.
    for o in objs:
        check(o["state"] == "queued" and o["attempts"] == 0 and "dsn_id" not in o, f"state of {o['id']}")
        check([r["addr"] for r in o["recipients"]] == o["rcpt_to"], "recipients follow rcpt_to")
        check(all(r == {"addr": r["addr"], "state": "pending"} for r in o["recipients"]),
              f"pending recipients carry nothing else: {o['recipients']}")
    old_keys = ["id", "lane", "size", "received_at", "mail_from", "rcpt_to", "rcpt_params", "mail_params",
                "helo", "client_addr", "client_port", "tls", "proto"]
    check(list(objs[0].keys())[:len(old_keys)] == old_keys, f"existing fields first, same order: {list(objs[0])}")

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
    # Every seal summary (the lanes' closed segments have one) is rebuilt from its segment and compared.
    nsum = sum(1 for lane in ("lane-02", "lane-05") for n in os.listdir(os.path.join(spool2, lane)) if n.endswith(".sum"))
    m = re.search(rb"^verify: seal summaries: (\d+) checked, 0 differing from their segment$", p.stdout, re.M)
    check(nsum >= 2 and m and int(m.group(1)) == nsum, f"multi: verify checked all {nsum} summaries {p.stdout!r}")
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

    # SIGBUS guard (issue 15): a segment that fails under the reader's map (reclaimed, or a FUSE read error)
    # raises SIGBUS; the half-done output is dropped and the command runs again. The hook raises one at the end
    # of the first run: the output must appear exactly once, and agree with a run without it.
    for args in (("list",), ("list", "--json"), ("verify",), ("stats",), ("cat", ids[2])):
        want = run(*args)
        p = subprocess.run([ctl, "--spool", spool] + list(args), capture_output=True, timeout=30,
                           env=dict(os.environ, DOTSPOOL_CTL_TEST_SIGBUS="1"))
        check(p.returncode == 0 and p.stdout == want.stdout and b"changed under the reader (SIGBUS)" in p.stderr,
              f"SIGBUS guard {args}: exit {p.returncode}, same output {p.stdout == want.stdout}, {p.stderr[-200:]!r}")

    # Format 5: a segment recycled under the reader (spool_reader_changed at the end of a command) makes the
    # command run again the same way; the hook reports one at the end of the first run.
    for args in (("list",), ("verify",), ("cat", ids[2])):
        want = run(*args)
        p = subprocess.run([ctl, "--spool", spool] + list(args), capture_output=True, timeout=30,
                           env=dict(os.environ, DOTSPOOL_CTL_TEST_RECYCLED="1"))
        check(p.returncode == 0 and p.stdout == want.stdout and b"changed under the reader (recycled)" in p.stderr,
              f"recycled guard {args}: exit {p.returncode}, same output {p.stdout == want.stdout}, {p.stderr[-200:]!r}")

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
    # Delivery state (format 2): outcome records in two lanes, an aborted commit, a DSN.
    if queue_fixture:
        spool3, idfile = os.path.join(tmp, "spool3"), os.path.join(tmp, "ids3")
        subprocess.run([queue_fixture, "ctl-fixture", spool3, idfile], check=True, timeout=60)
        a, b, c, d, e = open(idfile).read().split()
        objs = {o["id"]: o for o in
                (json.loads(l) for l in run("list", "--json", spool_dir=spool3).stdout.decode().splitlines())}
        check(set(objs) == {a, b, c, e} | {i for i in objs if i.startswith("02")} and len(objs) == 5,
              f"aborted commit {d} not listed: {sorted(objs)}")
        o = objs[a]
        check(o["state"] == "queued" and o["attempts"] == 1 and o["dsn_id"] == e, f"A message level: {o}")
        check(o["next_attempt"] == 1800000000, f"A next_attempt: {o}")
        r0, r1, r2 = o["recipients"]
        check(r0 == {"addr": "r0@x", "state": "delivered", "attempts": 1, "code": 250, "reply": "ok",
                     "hop": "lmtp:/run/x.sock"}, f"A r0: {r0}")
        check(r1 == {"addr": "r1@x", "state": "deferred", "attempts": 1, "code": 451, "esc": "4.0.0",
                     "reply": "try later", "next_attempt": 1800000000, "hop": "lmtp:/run/x.sock"}, f"A r1: {r1}")
        check(r2["state"] == "failed" and r2["code"] == 550 and r2["esc"] == "4.0.0", f"A r2: {r2}")
        o = objs[b]
        check(o["state"] == "queued" and o["attempts"] == 2 and "dsn_id" not in o and "next_attempt" not in o,
              f"B: {o}")
        check([r["state"] for r in o["recipients"]] == ["attempt", "attempt"] and
              all(r["attempts"] == 2 and "code" not in r for r in o["recipients"]), f"B rcpts: {o['recipients']}")
        o = objs[c]
        check(o["state"] == "done" and [r["state"] for r in o["recipients"]] == ["delivered"], f"C: {o}")
        o = objs[e]
        check(o["state"] == "queued" and o["recipients"][0]["state"] == "pending", f"E (the DSN): {o}")
        plain = {l.split()[0]: l.split()[-1] for l in run("list", spool_dir=spool3).stdout.decode().splitlines()}
        check(plain.get(c) == "done" and plain.get(a) == "queued" and d not in plain, f"plain states {plain}")
        p = run("verify", spool_dir=spool3)
        check(b"OK" in p.stdout and b"5 messages" in p.stdout and b"1 refused commits" in p.stdout and
              b"5 outcome records" in p.stdout, f"verify with an aborted commit: {p.stdout!r}")
        check(b"messages 5" in run("stats", spool_dir=spool3).stdout, "stats skips the aborted commit")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print("ctl tests:", "FAILED" if fails else "ok")
sys.exit(1 if fails else 0)
