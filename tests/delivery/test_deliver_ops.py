#!/usr/bin/env python3
"""Operator queue commands (issue 15 point 4 and the operator half of point 5): dotspool-ctl
queue / queue --summary against a running server, and hold, release, retry, delete, bounce,
reload through its control socket. The next hop (tests/peer/peer.py) answers 450 to every
later*@ recipient, so those messages stay queued; retry back-off 30 s, so nothing is retried
by itself during the test.

1. listing: two queued messages (one with a delivered and a deferred recipient), one delivered:
   queue --json lists exactly the two with per-recipient state, attempts and the 450 reply;
   --sender/--recipient (POSIX ERE, case-insensitive), --state, --older-than filter; --summary
   (text and --json) counts them by state and in the 0-5 min age bucket.
2. hold: confirmed per id, queue says held, dotspool_queue_held 1, one event=operator log line
   (action, uid, pid, ids); unknown and malformed ids reported per id, exit 1; retry of a held
   message keeps it held.
3. delete: gone from the queue, nothing more reaches the next hop for it.
4. restart: the held message is still held, the deleted one still gone (list: done).
5. release: attempted again at once (the peer sees it again); bounce: the open recipient fails,
   exactly one DSN reaches the sender (also after another restart); retry --all: a deferred
   message is attempted again at once; reload: the server logs its SIGHUP reload.
6. metrics: dotspool_operator_actions_total by action. Every lane: after a restart with one
   thread, a lane-1 message is held and released through worker 0.
7. permissions: another uid (nobody) is refused: by the socket's mode (connect EACCES, the
   client says so), and, with the mode opened up, by the server's SO_PEERCRED check (told
   "permission denied", logged as event=operator_refused).
8. no server: a changing command says the server is not running, exit 1.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402


def ctl(srv, *args):
    exe = os.path.join(srv.build, "dotspool-ctl")
    cp = subprocess.run([exe, "--spool", srv.spool] + [str(a) for a in args], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=60)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def queue(srv, *args):
    rc, out, err = ctl(srv, "queue", "--json", *args)
    if rc != 0:
        raise dslib.Fail("queue %s -> %d: %s" % (args, rc, err))
    return {m["id"]: m for m in (json.loads(line) for line in out.splitlines() if line.strip())}


def ok_cmd(t, srv, *args):
    rc, out, err = ctl(srv, *args)
    t.eq(rc, 0, "%s: exit 0" % " ".join(args), out + err)
    for i in args[1:]:
        if i != "--all":
            t.check("%s ok" % i in out, "%s: %s ok" % (args[0], i), out)
    return out


def peer_count(peer, rcpt):
    """Entries at the peer for rcpt (a 450 at RCPT stores nothing; the log shows the tries)."""
    return len([e for e in peer.index() if e["rcpt"] == rcpt])


def rcpt_tries(peer, rcpt):
    try:
        with open(os.path.join(peer.outdir, "peer.log")) as f:
            return f.read().count("<%s>" % rcpt)
    except OSError:
        return 0


def main(t):
    dlvlib.enter_netns()
    peer = dlvlib.Peer(args=["--rule", "rcpt:^later=450 4.2.0 try again later"])
    peer.start()
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2, retry_min_s=30)
    srv.start()
    try:
        run(t, peer, srv)
    finally:
        srv.stop()
        peer.stop()


def run(t, peer, srv):
    print("-- 1. listing")
    m1 = dlvlib.send_ex(srv.port, "alice@client.test", ["later1@dest.test", "ok1@dest.test"],
                        dlvlib.body("m1", 3000))
    m2 = dlvlib.send_ex(srv.port, "bob@client.test", ["later2@dest.test"], dlvlib.body("m2", 5000))
    m3 = dlvlib.send_ex(srv.port, "carol@client.test", ["ok3@dest.test"], dlvlib.body("m3", 1000))
    dlvlib.wait_for("m1, m2 deferred and m3 delivered", lambda: (
        set(queue(srv)) == {m1, m2} and all(m["state"] == "deferred" for m in queue(srv).values())
        and peer_count(peer, "ok3@dest.test") == 1), 20)
    q = queue(srv)
    r1 = {r["addr"]: r for r in q[m1]["recipients"]}
    t.eq(r1["ok1@dest.test"]["state"], "delivered", "m1: ok1 delivered")
    t.eq(r1["later1@dest.test"]["state"], "deferred", "m1: later1 deferred")
    t.eq(r1["later1@dest.test"].get("code"), 450, "m1: later1's reply code")
    t.eq(q[m1].get("last_reply", {}).get("code"), 450, "m1: last reply 450")
    t.eq(q[m1]["sender"], "alice@client.test", "m1: sender")
    t.check(q[m1]["attempts"] >= 1 and q[m1].get("next_attempt", 0) > time.time(), "m1: attempts, next",
            str(q[m1]))
    t.eq(q[m2]["size"] > q[m1]["size"], True, "sizes")
    t.eq(set(queue(srv, "--sender", "^ALICE@")), {m1}, "--sender is case-insensitive ERE")
    t.eq(set(queue(srv, "--recipient", "later2|nobody")), {m2}, "--recipient ERE")
    t.eq(set(queue(srv, "--state", "deferred")), {m1, m2}, "--state deferred")
    t.eq(set(queue(srv, "--state", "held")), set(), "--state held")
    t.eq(set(queue(srv, "--older-than", "1h")), set(), "--older-than 1h")
    t.eq(set(queue(srv, "--older-than", "0")), {m1, m2}, "--older-than 0")
    rc, out, err = ctl(srv, "queue", "--sender", "(")
    t.eq(rc, 2, "a bad regex is a usage error", err)
    rc, out, err = ctl(srv, "queue")
    t.check(rc == 0 and m1 in out and m2 in out and m3 not in out and "<later1@dest.test> deferred 450" in out,
            "queue (text)", out)
    rc, out, err = ctl(srv, "queue", "--summary", "--json")
    s = json.loads(out)
    t.eq(s["by_state"]["deferred"]["messages"], 2, "summary: 2 deferred")
    t.eq(s["by_age_minutes"][0]["messages"], 2, "summary: both in 0-5 min")
    t.eq(s["bytes"], q[m1]["size"] + q[m2]["size"], "summary: bytes")
    rc, out, err = ctl(srv, "queue", "--summary")
    t.check(rc == 0 and "deferred" in out and "320+" in out, "summary (text)", out)

    print("-- 2. hold, unknown ids")
    ok_cmd(t, srv, "hold", m1)
    q = queue(srv)
    t.check(q[m1]["held"] and q[m1]["state"] == "held", "m1 held in the listing", str(q[m1]))
    dlvlib.wait_for("dotspool_queue_held 1", lambda: srv.metric("dotspool_queue_held") == 1, 5)
    ev = dlvlib.wait_log(srv, lambda evs: [e for e in evs if e.get("event") == "operator"
                                           and e.get("action") == "hold"], "operator log line", 5)
    t.check(ev[0].get("ids") == m1 and ev[0].get("uid") == str(os.getuid()) and ev[0].get("pid")
            and ev[0].get("ok") == "1", "event=operator action=hold uid pid ids", str(ev[0]))
    rc, out, err = ctl(srv, "hold", "0000000000000001", m2[:8], "zz")
    t.eq(rc, 1, "unknown ids: exit 1", out + err)
    t.check("0000000000000001 unknown" in out and "%s invalid" % m2[:8] in out and "zz invalid" in out,
            "unknown ids reported per id", out)
    t.check(not queue(srv)[m2]["held"], "m2 not held by a malformed id")
    rc, out, err = ctl(srv, "retry", "--reason", "after the 50% spam wave", m1)
    t.check(rc == 0 and "%s ok" % m1 in out, "retry --reason TEXT", out + err)
    t.check(queue(srv)[m1]["held"], "retry keeps a held message held")
    ev = dlvlib.wait_log(srv, lambda evs: [e for e in evs if e.get("event") == "operator"
                                           and e.get("action") == "retry"], "operator retry line", 5)
    t.eq(ev[0].get("reason"), "after the 50% spam wave", "the reason in the log line")
    tries_held = rcpt_tries(peer, "later1@dest.test")

    print("-- 3. delete")
    ok_cmd(t, srv, "delete", m2)
    t.eq(set(queue(srv)), {m1}, "m2 gone from the queue")
    tries_m2 = rcpt_tries(peer, "later2@dest.test")
    ok_cmd(t, srv, "retry", "--all")
    time.sleep(1.5)
    t.eq(rcpt_tries(peer, "later2@dest.test"), tries_m2, "a deleted message is not tried again")
    t.eq(rcpt_tries(peer, "later1@dest.test"), tries_held, "a held message is not tried (retry --all)")
    actions = {a: srv.metric("dotspool_operator_actions_total", {"action": a})
               for a in ("hold", "release", "delete", "bounce", "retry")}
    t.eq(actions, {"hold": 1, "release": 0, "delete": 1, "bounce": 0, "retry": 1},
         "dotspool_operator_actions_total by action")

    print("-- 4. restart")
    t.eq(srv.stop(), 0, "clean stop")
    t.check(not os.path.exists(os.path.join(srv.spool, "control.sock")), "socket removed at stop")
    rc, out, err = ctl(srv, "hold", m1)
    t.check(rc == 1 and "server not running" in err, "no server: a clear refusal", out + err)
    srv.start()
    q = queue(srv)
    t.eq(set(q), {m1}, "after restart: m1 queued, m2 still gone")
    t.check(q[m1]["held"], "after restart: m1 still held")
    states = {m["id"]: m.get("state") for m in srv.list()}
    t.check(states.get(m2, "done") == "done", "list: the deleted message is done (or reclaimed)", str(states))
    dlvlib.wait_for("dotspool_queue_held 1 after restart", lambda: srv.metric("dotspool_queue_held") == 1, 5)
    time.sleep(1.0)
    t.eq(rcpt_tries(peer, "later1@dest.test"), tries_held, "held across the restart: not tried")
    t.eq(rcpt_tries(peer, "later2@dest.test"), tries_m2, "deleted across the restart: not tried")

    print("-- 5. release, bounce, retry --all, reload")
    ok_cmd(t, srv, "release", m1)
    dlvlib.wait_for("m1 tried again after release", lambda: rcpt_tries(peer, "later1@dest.test") > tries_held, 10)
    t.check(not queue(srv).get(m1, {}).get("held", True), "released: not held")
    ok_cmd(t, srv, "bounce", m1)
    dlvlib.wait_for("the DSN at the sender", lambda: peer_count(peer, "alice@client.test") >= 1, 15)
    dlvlib.wait_for("m1 out of the queue", lambda: m1 not in queue(srv), 10)
    ent = [m for m in srv.list() if m["id"] == m1]
    if ent:  # else final and already reclaimed (--reclaim)
        r = {x["addr"]: x for x in ent[0]["recipients"]}
        t.eq(r["later1@dest.test"]["state"], "failed", "bounced: the open recipient failed")
        t.eq(r["ok1@dest.test"]["state"], "delivered", "bounced: the delivered one stays delivered")
    dsn = [e for e in peer.index() if e["rcpt"] == "alice@client.test"]
    t.eq(len(dsn), 1, "exactly one DSN")
    t.eq(dsn[0]["mail_from"], "", "the DSN is from <>")
    text = peer.data(dsn[0]).decode("utf-8", "replace")
    t.check("later1@dest.test" in text and "Action: failed" in text, "the DSN names the bounced recipient",
            text[:1500])
    t.check("Diagnostic-Code: x-dotspool; bounced by the operator" in text and "bounced by the operator" in
            text.split("Content-Type: message/delivery-status")[0], "the DSN says why, in both parts", text[:3000])
    ev = [e for e in srv.events("delivery") if e.get("queue_id") == m1 and e.get("hop") == "operator"]
    t.check(len(ev) == 1 and ev[0].get("outcome") == "failed" and ev[0].get("dsn_id"),
            "one event=delivery hop=operator outcome=failed with its dsn_id", str(ev))
    rc, out, err = ctl(srv, "bounce", m1)
    t.check(rc == 1 and "%s unknown" % m1 in out, "a bounced message cannot be bounced again", out + err)
    m4 = dlvlib.send_ex(srv.port, "dave@client.test", ["later4@dest.test"], dlvlib.body("m4", 800))
    dlvlib.wait_for("m4 deferred", lambda: queue(srv).get(m4, {}).get("attempts", 0) >= 1, 15)
    before = rcpt_tries(peer, "later4@dest.test")
    out = ok_cmd(t, srv, "retry", "--all")
    t.check("retry --all" in out, "retry --all says how many", out)
    dlvlib.wait_for("m4 tried again after retry --all", lambda: rcpt_tries(peer, "later4@dest.test") > before, 10)
    out = ok_cmd(t, srv, "reload")
    dlvlib.wait_for("the reload in the server's log", lambda: "SIGHUP" in (srv.log_text() or ""), 5)
    t.eq(srv.stop(), 0, "clean stop")
    srv.start()
    time.sleep(2.0)
    t.eq(len([e for e in peer.index() if e["rcpt"] == "alice@client.test"]), 1, "still one DSN after a restart")
    t.check(m1 not in queue(srv), "the bounced message stays final after a restart")

    print("-- 6. every lane: a lane-1 message after a restart with one thread (owed by worker 0)")
    lane1 = None
    for i in range(40):
        mid = dlvlib.send_ex(srv.port, "erin%d@client.test" % i, ["later-l%d@dest.test" % i], dlvlib.body("l%d" % i, 500))
        if mid.startswith("01"):
            lane1, rcpt1 = mid, "later-l%d@dest.test" % i
            break
    t.check(lane1 is not None, "a message on lane 1 within 40 sends")
    dlvlib.wait_for("the lane-1 message deferred", lambda: queue(srv).get(lane1, {}).get("attempts", 0) >= 1, 15)
    t.eq(srv.stop(), 0, "clean stop")
    srv.threads = 1
    srv.start()
    ok_cmd(t, srv, "hold", lane1)
    t.check(queue(srv)[lane1]["held"], "lane 1 through worker 0: held")
    before = rcpt_tries(peer, rcpt1)
    ok_cmd(t, srv, "release", lane1)
    dlvlib.wait_for("the lane-1 message tried again after release", lambda: rcpt_tries(peer, rcpt1) > before, 10)

    print("-- 7. permissions")
    perm_checks(t, srv, m4)
    t.eq(srv.stop(), 0, "clean stop at the end (sanitizers: no report)")


def perm_checks(t, srv, mid):
    if os.getuid() != 0:
        raise dslib.Fail("the permission check needs root (it runs the client as nobody)")
    # nobody must be able to run the client and reach the socket's directory.
    exe = os.path.join(dslib.mkdtemp("ds-ctl-bin-"), "dotspool-ctl")
    shutil.copy(os.path.join(srv.build, "dotspool-ctl"), exe)
    d = os.path.dirname(exe)
    while d != "/":
        os.chmod(d, os.stat(d).st_mode | stat.S_IXOTH)
        d = os.path.dirname(d)
    d = srv.spool
    while d != "/":
        os.chmod(d, os.stat(d).st_mode | stat.S_IXOTH)
        d = os.path.dirname(d)
    sock = os.path.join(srv.spool, "control.sock")
    t.eq(stat.S_IMODE(os.stat(sock).st_mode), 0o600, "control.sock mode 0600")
    argv = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", exe, "--spool", srv.spool,
            "hold", mid]
    cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    t.check(cp.returncode == 1 and b"permission denied" in cp.stderr, "nobody: refused by the socket's mode",
            repr(cp.stdout + cp.stderr))
    os.chmod(sock, 0o666)  # past the mode: the server's own check
    cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    t.check(cp.returncode == 1 and b"permission denied: uid 65534" in cp.stderr,
            "nobody: refused by SO_PEERCRED", repr(cp.stdout + cp.stderr))
    dlvlib.wait_log(srv, lambda evs: [e for e in evs if e.get("event") == "operator_refused"
                                      and e.get("uid") == "65534"], "event=operator_refused", 5)
    t.check(not queue(srv)[mid]["held"], "nothing done for nobody")


if __name__ == "__main__":
    dslib.run(main)
