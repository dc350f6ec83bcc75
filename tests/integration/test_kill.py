#!/usr/bin/env python3
"""SIGKILL durability.
(1) One message, 250, SIGKILL at once, restart: listed and byte-identical.
(2) Kill loop (issue 4 item 7): DS_KILL_CYCLES cycles (default 20) of 8
    concurrent clients sending uniquely Message-ID'd messages, SIGKILL at a
    random moment 0.2-1.0 s in, restart on the same spool. At the end:
    acked <= recovered <= sent (by Message-ID), every recovered message
    intact and present once, dotspool-ctl verify exits 0.
By hand, for a longer soak: DS_KILL_BUDGET_S (default 75) bounds the loop,
DS_KILL_ARGS adds server options (e.g. "--spool-io direct")."""
import os
import random
import smtplib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import dslib

CLIENTS = 8
# Each recovered message is read back with one `dotspool-ctl cat` (tens of ms
# each), so the number of messages is what bounds this test's run time.
PER_CLIENT_CAP = 8      # messages per client per cycle
PACE_S = (0.05, 0.25)   # pause between messages, so the kill lands mid-stream
# Small segments: every start creates fresh segments per lane, and rollover
# under load is exercised too.
SEGMENT = ["--segment-size", "16M", "--spool-buffer-size", "4M"] + os.environ.get("DS_KILL_ARGS", "").split()
BUDGET_S = float(os.environ.get("DS_KILL_BUDGET_S", "75"))  # whole kill loop: the test stays under ~90 s


def make_message(mid, rnd):
    size = rnd.choice([200, 2000, 9000, 40000])
    head = ("From: k@localhost\r\nTo: u@localhost\r\nSubject: kill\r\nMessage-ID: <%s>\r\n\r\n" % mid).encode()
    return head + dslib.body_lines(size, mid[:12])


def single_kill(t):
    srv = t.server(extra=SEGMENT).start()
    mid = "%s@single" % uuid.uuid4()
    data = make_message(mid, random.Random(1))
    s = smtplib.SMTP("127.0.0.1", srv.port, timeout=20)
    s.ehlo("it.example")
    s.mail("a@localhost")
    s.rcpt("u@localhost")
    code, resp = s.data(data)
    srv.kill()  # SIGKILL right after the 250
    s.close()
    t.eq(code, 250, "single: final dot 250", resp)
    qid = dslib.queued_id(resp)
    srv.listen = [("127.0.0.1", dslib.free_port())]
    srv.port = srv.listen[0][1]
    srv.start()
    entries = srv.list()
    e = dslib.entry_by_id(entries, qid)
    t.check_stored(srv, e, data, "single: after SIGKILL and restart")
    t.eq(srv.stop(), 0, "single: restarted server exits 0 on SIGTERM")


def client(port, cycle, idx, stop, sent, acked, lock, seed):
    rnd = random.Random(seed)
    n = 0
    while not stop.is_set() and n < PER_CLIENT_CAP:
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=5)
            s.ehlo("it.example")
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.02)
            continue
        try:
            while not stop.is_set() and n < PER_CLIENT_CAP:
                mid = "c%d.t%d.m%d.%s@kill" % (cycle, idx, n, uuid.uuid4().hex[:12])
                data = make_message(mid, rnd)
                with lock:
                    sent[mid] = data
                n += 1
                s.mail("k@localhost")
                s.rcpt("u@localhost")
                code, resp = s.data(data)
                if code == 250:
                    with lock:
                        acked[mid] = dslib.queued_id(resp)
                time.sleep(rnd.uniform(*PACE_S))
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass


def kill_loop(t):
    cycles = int(os.environ.get("DS_KILL_CYCLES", "20"))
    rnd = random.Random(int(os.environ.get("DS_KILL_SEED", "4242")))
    spool = os.path.join(dslib.mkdtemp(), "spool")
    sent, acked = {}, {}
    lock = threading.Lock()
    t0 = time.monotonic()
    done = 0
    srv = None
    for cycle in range(cycles):
        if time.monotonic() - t0 > BUDGET_S:
            print("  note: time budget reached after %d cycles" % done)
            break
        tc = time.monotonic()
        srv = t.server(spool=spool, threads=2, extra=SEGMENT).start()
        t_start = time.monotonic() - tc
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(srv.port, cycle, i, stop, sent, acked, lock,
                                                         rnd.random()), daemon=True)
                   for i in range(CLIENTS)]
        for th in threads:
            th.start()
        kill_at = rnd.uniform(0.2, 1.0)
        time.sleep(kill_at)
        srv.kill()
        stop.set()
        for th in threads:
            th.join(10)
        if any(th.is_alive() for th in threads):
            raise dslib.Fail("cycle %d: client threads still running 10 s after the kill" % cycle)
        done += 1
        print("  cycle %d: start %.2f s, killed after %.2f s, cycle %.2f s; sent %d acked %d so far"
              % (cycle, t_start, kill_at, time.monotonic() - tc, len(sent), len(acked)))
    t.check(done >= min(cycles, 5), "ran %d kill cycles" % done)
    t.check(len(acked) > 0, "some messages were acknowledged (%d)" % len(acked))

    tc = time.monotonic()
    srv = t.server(spool=spool, threads=2, extra=SEGMENT).start()
    print("  restart (recovery) took %.2f s" % (time.monotonic() - tc))
    tc = time.monotonic()
    entries = srv.list()

    def fetch(e):
        _, data = dslib.split_received(srv.cat(e["id"]))
        return e["id"], data

    recovered = {}
    with ThreadPoolExecutor(3) as ex:
        for qid, data in ex.map(fetch, entries):
            mid = dslib.find_message_id(data)
            if mid is None:
                raise dslib.Fail("recovered %s has no Message-ID: %r" % (qid, data[:300]))
            if mid in recovered:
                raise dslib.Fail("message %s recovered twice (ids %s and %s)" % (mid, recovered[mid][0], qid))
            recovered[mid] = (qid, data)
    print("  list + cat of %d messages took %.2f s" % (len(entries), time.monotonic() - tc))
    missing = sorted(set(acked) - set(recovered))
    t.check(not missing, "acked <= recovered: all %d acknowledged messages recovered" % len(acked),
            "%d lost, e.g. %r" % (len(missing), missing[:10]))
    unknown = sorted(set(recovered) - set(sent))
    t.check(not unknown, "recovered <= sent (%d recovered, %d sent)" % (len(recovered), len(sent)),
            repr(unknown[:10]))
    bad = [mid for mid, (_, data) in recovered.items() if data != sent[mid]]
    t.check(not bad, "every recovered message is byte-identical to what was sent", repr(bad[:10]))
    t.eq(len(recovered), len(entries), "each recovered message listed exactly once")
    print("  summary: %d cycles, %d sent, %d acked, %d recovered (%d unacked but complete)"
          % (done, len(sent), len(acked), len(recovered), len(recovered) - len(acked)))
    v = srv.verify()
    t.eq(v.returncode, 0, "dotspool-ctl verify exits 0 after the kill loop", v.stdout + v.stderr)
    t.eq(srv.stop(), 0, "server exits 0 on SIGTERM")


def main(t):
    single_kill(t)
    kill_loop(t)


if __name__ == "__main__":
    dslib.run(main)
