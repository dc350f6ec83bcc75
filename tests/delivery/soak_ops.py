#!/usr/bin/env python3
"""By hand (not in ctest): operator commands racing delivery under load.

    python3 tests/delivery/soak_ops.py --build build [--seconds 30]   (DS_SOAK_S also sets it)

2 workers, retry back-off 1 s, the next hop answers 450 to later*@ recipients (and 250 to the
rest), 4 client threads sending, 2 operator threads picking random queued ids and sending hold,
release, retry, delete or bounce (busy answers are retried by the client). Then a clean stop and a
restart. Checks: the server never dies and stops with exit 0 (sanitizer builds: no report); every
delete confirmed: the message is not queued after the restart; the last confirmed of hold/release
is a hold and nothing final came later: still held after the restart; every bounce confirmed: not
queued after the restart, and at most one DSN reached its (unique) sender per bounce.
"""

import json
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402


def ctl(srv, *args):
    exe = os.path.join(srv.build, "dotspool-ctl")
    cp = subprocess.run([exe, "--spool", srv.spool] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        timeout=60)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def queue(srv):
    rc, out, err = ctl(srv, "queue", "--json")
    return {m["id"]: m for m in (json.loads(x) for x in out.splitlines() if x.strip())} if rc == 0 else {}


def main(t):
    dlvlib.enter_netns()
    secs = SECONDS
    peer = dlvlib.Peer(args=["--rule", "rcpt:^later=450 4.2.0 later"])
    peer.start()
    srv = dlvlib.DServer(t.build, [peer.url()], threads=2, retry_min_s=1)
    srv.start()
    stop = threading.Event()
    sent, lock = [], threading.Lock()
    confirmed = []  # (time, id, action)

    def sender(no):
        i = 0
        while not stop.is_set():
            rc = ["later%d-%d@dest.test" % (no, i)] + (["ok%d-%d@dest.test" % (no, i)] if i % 2 else [])
            try:
                mid = dlvlib.send_ex(srv.port, "s%d-%d@client.test" % (no, i), rc, dlvlib.body("k%d-%d" % (no, i), 800))
                with lock:
                    sent.append(mid)
            except Exception as e:  # noqa: BLE001
                print("  send failed: %s" % e)
            i += 1
            time.sleep(0.02)

    def operator(no):
        rnd = random.Random(no)
        while not stop.is_set():
            q = list(queue(srv))
            if not q:
                time.sleep(0.1)
                continue
            ids = rnd.sample(q, min(len(q), rnd.randint(1, 4)))
            action = rnd.choice(["hold", "hold", "release", "retry", "delete", "bounce"])
            rc, out, err = ctl(srv, action, *ids)
            now = time.monotonic()
            for line in out.splitlines():
                w = line.split()
                if len(w) == 2 and w[1] == "ok":
                    with lock:
                        confirmed.append((now, w[0], action))

    th = [threading.Thread(target=sender, args=(i,)) for i in range(4)] + \
         [threading.Thread(target=operator, args=(i,)) for i in range(2)]
    for x in th:
        x.start()
    time.sleep(secs)
    stop.set()
    for x in th:
        x.join()
    t.check(srv.running(), "server alive after the soak")
    t.eq(srv.stop(), 0, "clean stop")
    srv.start()
    time.sleep(3)
    q = queue(srv)
    last = {}
    counts = {}
    for when, mid, action in sorted(confirmed):
        counts[action] = counts.get(action, 0) + 1
        if action in ("hold", "release", "delete", "bounce"):
            if last.get(mid) not in ("delete", "bounce"):
                last[mid] = action
    print("  sent %d, confirmed %s, queued after restart %d" % (len(sent), counts, len(q)))
    for mid, action in last.items():
        if action == "delete":
            t.check(mid not in q, "deleted %s not queued" % mid)
        elif action == "bounce":
            t.check(mid not in q, "bounced %s not queued" % mid, str(q.get(mid)))
        elif action == "hold" and mid in q:
            t.check(q[mid]["held"], "held %s still held" % mid)
    senders = {}
    for e in peer.index():
        if e["mail_from"] == "":
            senders[e["rcpt"]] = senders.get(e["rcpt"], 0) + 1
    t.check(all(n == 1 for n in senders.values()), "one DSN per bounced message",
            str({k: v for k, v in senders.items() if v != 1}))
    t.eq(srv.stop(), 0, "clean stop after the checks")
    peer.stop()


SECONDS = float(os.environ.get("DS_SOAK_S", "30"))

if __name__ == "__main__":
    if "--seconds" in sys.argv:
        i = sys.argv.index("--seconds")
        SECONDS = float(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    dslib.run(main)
