#!/usr/bin/env python3
"""A confirmed operator command survives a power cut (issue 15 point 4).

dotspool runs on ds-powercut (powercut_fs.c: everything not fsynced is lost at a cut) with the
scripted next hop answering 450 to later*@ recipients, so messages stay queued. The control
socket lives off the mount (--control-socket: the FUSE file system has no sockets). Rounds:

0. hold M0 while the next data fsync of a segment fails (EIO): the command answers "error" (exit 1),
   M0 is not held, neither in the listing nor after a cut.
1. hold M0; the moment dotspool-ctl says "ok": cut, SIGKILL, remount (the crash's disk), start:
   M0 is held (queue --json), not tried.
2. delete M1 the same way: M1 is gone from the queue (list: done), never tried again; M0 still held.
3. bounce M2 the same way: after the restart M2's open recipient is failed with a DSN that reaches
   the sender (at least once: a cut between the DSN's flush and its outcome record may bounce again;
   the count is printed), and M2 leaves the queue.
4. release M0 the same way: M0 is tried again after the restart.
Every reboot: dotspool-ctl verify exits 0. Exit 0 pass, 1 fail, 77 no /dev/fuse or fusermount3.
"""

import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "delivery"))
import dlvlib  # noqa: E402
import test_powercut as pc  # noqa: E402
from dlvlib import dslib  # noqa: E402


def ctl(tools, spool, *args):
    exe = os.path.join(tools.ctl_dir, "dotspool-ctl")
    cp = subprocess.run([exe, "--spool", spool] + [str(a) for a in args], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=60)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def queue(tools, spool):
    rc, out, err = ctl(tools, spool, "queue", "--json")
    if rc:
        raise dslib.Fail("queue -> %d: %s" % (rc, err))
    return {m["id"]: m for m in (json.loads(line) for line in out.splitlines() if line.strip())}


def tries(peer, rcpt):
    try:
        with open(os.path.join(peer.outdir, "peer.log")) as f:
            return f.read().count("<%s>" % rcpt)
    except OSError:
        return 0


def main(t):
    if not os.path.exists("/dev/fuse"):
        raise dslib.Skip("/dev/fuse is missing (FUSE not available here)")
    dslib.need_tool("fusermount3")
    tools = pc.Tools(t.build)
    seed = int(os.environ.get("DS_POWERCUT_SEED", str(int(time.time()) % 100000)))
    print("  seed %d (DS_POWERCUT_SEED=%d repeats it)" % (seed, seed))
    workdir = dslib.mkdtemp("ds-powercut-ops-")
    peer = dlvlib.Peer(outdir=os.path.join(workdir, "peer"), args=["--rule", "rcpt:^later=450 4.2.0 try again later"])
    os.makedirs(peer.outdir)
    peer.start()
    sock = os.path.join(workdir, "control.sock")
    disk = pc.Disk(workdir, 0)
    args = pc.SERVER_ARGS + dlvlib.deliver_args([peer.url()], retry_min_s=30) + ["--control-socket", sock]
    state = {"fs": None, "srv": None, "seed": seed}

    def start():
        state["seed"] += 1
        state["fs"] = pc.mount(tools, workdir, disk, state["seed"])
        srv = dslib.Server(tools.ctl_dir, spool=disk.spool, binary=tools.server, extra=args)
        srv.START_TIMEOUT_S = 30
        srv.start()
        state["srv"] = srv
        v = srv.verify()
        t.eq(v.returncode, 0, "verify after the start", (v.stdout + v.stderr).decode()[-1500:])

    def command_then_cut(*cmd):
        rc, out, err = ctl(tools, disk.spool, *cmd, "--socket", sock)
        t.check(rc == 0 and " ok" in out, "%s: confirmed" % " ".join(cmd), out + err)
        r = pc.cut_and_kill(state["fs"], state["srv"])
        state["fs"].stop()
        print("  cut after '%s': %s" % (" ".join(cmd), pc.cut_summary(r)))
        start()

    try:
        start()
        ids = []
        for i in range(3):
            ids.append(dlvlib.send_ex(state["srv"].port, "s%d@localhost" % i, ["later%d@localhost" % i],
                                      dlvlib.body("pc%d" % i, 1500 + 700 * i)))
        dlvlib.wait_for("three messages deferred", lambda: all(
            queue(tools, disk.spool).get(m, {}).get("attempts", 0) >= 1 for m in ids), 20)
        m0, m1, m2 = ids

        print("-- 0. the record's flush fails (EIO): the command says error, nothing held, also after a cut")
        state["fs"].cmd("eio-next-fsync /spool/lane-*.seg data")
        rc, out, err = ctl(tools, disk.spool, "hold", m0, "--socket", sock)
        t.check(rc == 1 and "%s error" % m0 in out, "hold with a failed flush: error, exit 1", out + err)
        t.check(not queue(tools, disk.spool).get(m0, {}).get("held", True), "not held in the spool")
        r = pc.cut_and_kill(state["fs"], state["srv"])
        state["fs"].stop()
        start()
        t.check(not queue(tools, disk.spool).get(m0, {}).get("held", True), "after the cut: not held")

        print("-- 1. hold, cut")
        before0 = tries(peer, "later0@localhost")
        command_then_cut("hold", m0)
        q = queue(tools, disk.spool)
        t.check(q.get(m0, {}).get("held"), "after the cut: M0 held", str(q.get(m0)))

        print("-- 2. delete, cut")
        command_then_cut("delete", m1)
        q = queue(tools, disk.spool)
        t.check(m1 not in q, "after the cut: M1 gone from the queue", str(sorted(q)))
        t.check(q.get(m0, {}).get("held"), "after the cut: M0 still held")
        st = {m["id"]: m.get("state") for m in state["srv"].list()}
        t.check(st.get(m1, "done") == "done", "list: M1 done (or reclaimed)", str(st))

        print("-- 3. bounce, cut")
        before1 = tries(peer, "later1@localhost")
        command_then_cut("bounce", m2)
        dlvlib.wait_for("M2's DSN at the sender", lambda: len([e for e in peer.index()
                                                              if e["rcpt"] == "s2@localhost"]) >= 1, 20)
        dlvlib.wait_for("M2 out of the queue", lambda: m2 not in queue(tools, disk.spool), 10)
        dsns = len([e for e in peer.index() if e["rcpt"] == "s2@localhost"])
        print("  M2: %d DSN(s) at the sender" % dsns)
        t.check(1 <= dsns <= 2, "M2 bounced: its DSN reached the sender", str(dsns))
        t.eq(tries(peer, "later1@localhost"), before1, "M1 (deleted) never tried again")
        t.eq(tries(peer, "later0@localhost"), before0, "M0 (held) not tried")

        print("-- 4. release, cut")
        command_then_cut("release", m0)
        dlvlib.wait_for("M0 tried again after the release survived the cut",
                        lambda: tries(peer, "later0@localhost") > before0, 15)
        t.check(not queue(tools, disk.spool).get(m0, {}).get("held", True), "M0 no longer held")
        t.eq(state["srv"].stop(), 0, "clean stop")
        state["fs"].stop()
    finally:
        pc._cleanup()
        peer.stop()


if __name__ == "__main__":
    dslib.run(main)
