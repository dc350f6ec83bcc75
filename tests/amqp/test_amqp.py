#!/usr/bin/env python3
"""amqp:// hand-off into a real RabbitMQ quorum queue (issue 18), one node, CI-sized.

A private rabbitmq-server (tests/amqp/rabbit.py: own node name, ports, data, cookie, epmd) in a
loopback-only namespace; exchange `dotspool` (direct) with quorum queue `mail` bound by key
`mail`. dotspool runs with --deliver-to amqp://guest:guest@127.0.0.1:PORT/%2F?exchange=dotspool
&routing_key=mail (credentials in the URL) and a second one with --deliver-credentials and a
routing key no queue is bound to yet.

1. Every accepted message arrives exactly once, with the documented properties (doc/amqp.md):
   message_id = the queue id of the 250, content_type message/rfc822, delivery_mode 2,
   timestamp, app_id, headers envelope-from / envelope-to / mail-params / rcpt-params /
   client-addr / helo / proto / tls / received-at-us / size / attempt; the body is what
   `dotspool-ctl cat` shows. Metrics: confirms counted, nothing unconfirmed, connection up.
2. Mandatory publish to a key nothing is bound to: basic.return, then ack -> deferred (returned
   counted, nothing confirmed); once a queue is bound the retries deliver each message once.
0. --check-config takes an amqp URL with encoded credentials and vhost.
3. The broker stops (rabbitmqctl stop_app): dotspool keeps accepting (250), logs hop_down, the
   connection gauge says 0; the broker comes back (start_app, from its data): hop_up, the
   backlog drains, every message arrives once, and what was in the queue before the stop is
   still there (quorum queue on disk). This batch
   is read by dist/amqp-consumer.py, with one planted duplicate message_id it must drop.
4. The broker frozen (SIGSTOP) past --deliver-timeout-confirm-s: the publishes time out, are
   counted as possible duplicates and published again after SIGCONT; every message is in the
   queue (duplicates only as repeated message_ids). A message spooled earlier and larger than
   --amqp-max-message-size fails with a bounce (5.3.4) that is itself handed off.
5. dotspool killed -9 right after accepting a batch, restarted on its spool: every accepted
   message is in the queue at least once, nothing else.
"""

import os
import signal
import stat
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "delivery"))
sys.path.insert(0, HERE)
import dlvlib  # noqa: E402
from dlvlib import dslib  # noqa: E402
import rabbit  # noqa: E402

CONSUMER = os.path.join(HERE, "..", "..", "dist", "amqp-consumer.py")
N1 = 40
N_RET = 5
N_DOWN = 20


def check_props(t, props, body, sent, srv):
    qid = props.message_id
    t.check(props.content_type == "message/rfc822", "content_type %r" % props.content_type)
    t.check(props.delivery_mode == 2, "delivery_mode %r" % props.delivery_mode)
    t.check(props.app_id == "dotspool", "app_id %r" % props.app_id)
    t.check(abs(props.timestamp - time.time()) < 300, "timestamp %r" % props.timestamp)
    h = props.headers or {}
    s = sent[qid]
    t.check(h.get("envelope-from") == s["sender"], "envelope-from %r" % h.get("envelope-from"))
    t.check(list(h.get("envelope-to", [])) == s["rcpts"], "envelope-to %r" % h.get("envelope-to"))
    t.check(len(h.get("rcpt-params", [])) == len(s["rcpts"]), "rcpt-params %r" % h.get("rcpt-params"))
    for k in ("mail-params", "client-addr", "helo", "proto", "tls", "received-at-us", "size", "attempt"):
        t.check(k in h, "header %s present" % k)
    t.check(h.get("client-addr") == "127.0.0.1" and h.get("helo") == "client.test", "client %r" % h)
    t.check(h.get("size") == len(body), "size header %r vs body %d" % (h.get("size"), len(body)))
    if "ENVID" in " ".join(s.get("mail_opts", [])):
        t.check("ENVID=" in h.get("mail-params", ""), "mail-params %r" % h.get("mail-params"))
    t.check(body.startswith(b"Received: "), "body starts with our Received: header")
    want = srv.cat(qid)
    if isinstance(want, str):
        want = want.encode()
    t.check(body == want, "body of %s is what dotspool-ctl cat shows (%d vs %d bytes)"
            % (qid, len(body), len(want)))


def send_batch(t, srv, n, tag):
    sent = {}
    for i in range(n):
        rcpts = ["r%d.%d@dest.test" % (i, k) for k in range(1 + i % 3)]
        mail_opts = ["RET=HDRS", "ENVID=env-%s-%d" % (tag, i)] if i % 2 == 0 else []
        rcpt_opts = {rcpts[0]: ["NOTIFY=FAILURE"]} if i % 2 == 0 else {}
        body = dlvlib.body("%s%03d" % (tag, i), 300 + (i * 997) % 20000, dots=i % 3 == 0)
        qid = dlvlib.send_ex(srv.port, "%s%d@client.test" % (tag, i), rcpts, body, mail_opts, rcpt_opts)
        sent[qid] = {"sender": "%s%d@client.test" % (tag, i), "rcpts": rcpts, "mail_opts": mail_opts}
    return sent


def once(t, got, sent, what):
    ids = [p.message_id for p, _ in got]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    t.check(not dup, "%s: no duplicates (%s)" % (what, dup[:5]))
    missing = sorted(set(sent) - set(ids))
    t.check(not missing, "%s: every accepted message arrived (%d missing: %s)" % (what, len(missing), missing[:5]))
    extra = sorted(set(ids) - set(sent))
    t.check(not extra, "%s: nothing else arrived (%s)" % (what, extra[:5]))


def main(t):
    dlvlib.enter_netns()
    tmp = dslib.mkdtemp("ds-amqp-")
    c = rabbit.Cluster(tmp, nodes=1)
    t0 = time.monotonic()
    # 0. The URL as understood (password masked), before any broker exists.
    r = subprocess.run([os.path.join(t.build, "dotspool"), "--check-config", "/dev/null", "--deliver-to",
                        "amqp://u%40x:p%3Aw@127.0.0.1/v%2Fh?exchange=ex&routing_key=rk"],
                       capture_output=True, text=True, timeout=30)
    t.check(r.returncode == 0, "--check-config with an amqp URL: %s" % r.stderr)
    conf = os.path.join(tmp, "amqp.conf")
    with open(conf, "w") as f:
        f.write("deliver-to = amqp://u%40x:p%3Aw@127.0.0.1/v%2Fh?exchange=ex&routing_key=rk\n")
    r = subprocess.run([os.path.join(t.build, "dotspool"), "--check-config", conf],
                       capture_output=True, text=True, timeout=30)
    t.check(r.returncode == 0 and "deliver-to 1: amqp://u%40x:***@127.0.0.1/v%2Fh?exchange=ex&routing_key=rk "
            "kind=amqp addr=127.0.0.1 port=5672 vhost=v/h exchange=ex routing_key=rk user=u@x" in r.stdout
            and "p%3Aw" not in r.stdout + r.stderr and "amqp-window=256" in r.stdout,
            "the URL as understood, password masked: %r %r" % (r.stdout, r.stderr))
    # 4a. A message spooled while delivery was off, larger than the broker will take later.
    big_spool = os.path.join(tmp, "big-spool")
    off = dlvlib.DServer(t.build, [], threads=1, spool=big_spool).start()
    big_id = dlvlib.send_ex(off.port, "big@client.test", ["r@dest.test"], dlvlib.body("big", 100000),
                            ["RET=HDRS"], {"r@dest.test": ["NOTIFY=FAILURE"]})
    rc = off.stop()
    t.check(rc == 0, "off stopped cleanly (exit %r)" % (rc,))
    try:
        c.start()
        node = c.nodes[0]
        print("  rabbitmq node up in %.1f s (port %d)" % (node.start_s, node.port))
        rabbit.declare(node.port, "dotspool", "mail", "mail")
        url = "amqp://guest:guest@127.0.0.1:%d/%%2F?exchange=dotspool&routing_key=mail" % node.port
        srv = dlvlib.DServer(t.build, [url], threads=2, extra=["--deliver-timeout-confirm-s", "5"]).start()
        # A second server: credentials from a file, a key nothing is bound to (yet).
        cred = os.path.join(tmp, "cred")
        with open(cred, "w") as f:
            f.write("guest:guest\n")
        os.chmod(cred, stat.S_IRUSR | stat.S_IWUSR)
        url2 = "amqp://127.0.0.1:%d/?exchange=dotspool&routing_key=late" % node.port
        srv2 = dlvlib.DServer(t.build, [url2], threads=1, extra=["--deliver-credentials", cred]).start()

        # 1. Every message once, with its properties.
        sent = send_batch(t, srv, N1, "a")
        got = rabbit.drain(node.port, "mail", want=N1, timeout=30)
        once(t, got, sent, "first batch")
        for props, body in got:
            if props.message_id in sent:
                check_props(t, props, body, sent, srv)
        dlvlib.wait_for("confirms counted", lambda: srv.metric(
            "dotspool_handoff_results_total", {"result": "confirmed"}) >= N1, 10)
        t.check(srv.metric("dotspool_handoff_unconfirmed") == 0, "nothing unconfirmed")
        t.check(srv.metric("dotspool_handoff_connections_up") == 2, "both workers connected")
        t.check(srv.metric("dotspool_deliveries_total", {"outcome": "delivered"})
                == sum(len(s["rcpts"]) for s in sent.values()), "every recipient delivered")
        print("  batch 1: %d messages handed off once, properties checked (%.1f s)" % (N1, time.monotonic() - t0))

        # 2. Returned (no queue for the key): deferred, then delivered once a queue is bound.
        sent2 = send_batch(t, srv2, N_RET, "r")
        dlvlib.wait_for("returns counted", lambda: srv2.metric(
            "dotspool_handoff_results_total", {"result": "returned"}) >= N_RET, 15)
        t.check(srv2.metric("dotspool_handoff_results_total", {"result": "confirmed"}) == 0,
                "a returned publish's ack is not a confirm")
        states = [dlvlib.msg_state(srv2, q) for q in sent2]
        t.check(all(s is not None for s in states), "returned messages still queued in dotspool")
        rabbit.declare(node.port, "dotspool", "late", "late")
        got2 = rabbit.drain(node.port, "late", want=N_RET, timeout=30)
        once(t, got2, sent2, "returned then bound")
        print("  returns: %d deferred, delivered once bound (%.1f s)" % (N_RET, time.monotonic() - t0))

        # 3. The broker away for a while: accepted meanwhile, drained when it is back.
        keep = send_batch(t, srv, 5, "k")  # left in the queue across the restart
        dlvlib.wait_for("kept confirmed", lambda: srv.metric(
            "dotspool_handoff_results_total", {"result": "confirmed"}) >= N1 + 5, 15)
        # The broker application stopped (rabbitmqctl stop_app: listeners closed, connections
        # forced shut, quorum queues stopped; 1.7 s) and started again from its data (3 s):
        # a process restart costs 6-10 s of this test's budget for the same behaviour.
        tdown = time.monotonic()
        r = node.ctl("stop_app")
        t.check(r.returncode == 0, "rabbitmqctl stop_app: %s" % r.stderr[-300:])
        dlvlib.wait_for("hop_down logged", lambda: [e for e in srv.events("hop_down")], 15)
        t.check(srv.metric("dotspool_handoff_connections_up") == 0, "connection gauge 0 while down")
        sent3 = send_batch(t, srv, N_DOWN, "d")
        print("  broker down: %d more accepted (%.1f s)" % (N_DOWN, time.monotonic() - t0))
        time.sleep(1.0)
        r = node.ctl("start_app")
        t.check(r.returncode == 0, "rabbitmqctl start_app: %s" % r.stderr[-300:])
        print("  rabbitmq application down for %.1f s" % (time.monotonic() - tdown))
        dlvlib.wait_for("hop_up logged", lambda: [e for e in srv.events("hop_up")
                                                  if e.get("broker")], 30)
        # Read this time with the example consumer (dist/amqp-consumer.py), after planting a
        # duplicate of one message_id: it must store each message once and drop the copy.
        dlvlib.wait_for("all published again", lambda: rabbit.queue_depth(node.port, "mail")
                        >= N_DOWN + 5, 40, 0.5)
        dup_id = sorted(sent3)[0]
        conn = rabbit.connect(node.port)
        pika = rabbit._pika()
        conn.channel().basic_publish("dotspool", "mail", b"duplicate",
                                     pika.BasicProperties(message_id=dup_id, delivery_mode=2))
        conn.close()
        out = os.path.join(tmp, "consumed")
        py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        r = subprocess.run([py, CONSUMER, "--url",
                            "amqp://guest:guest@127.0.0.1:%d/%%2F" % node.port, "--queue", "mail",
                            "--dir", out, "--idle-exit-s", "1.5"], capture_output=True, text=True, timeout=60)
        print("  consumer: %s" % r.stdout.strip())
        t.check(r.returncode == 0, "consumer ran: %s" % r.stderr[-500:])
        t.check("1 duplicates dropped" in r.stdout, "consumer dropped the planted duplicate")
        stored = {f[:-4] for f in os.listdir(out) if f.endswith(".eml")}
        want_ids = set(sent3) | set(keep)
        t.check(stored == want_ids, "consumer stored every message once (%d of %d; extra %s)"
                % (len(stored & want_ids), len(want_ids), sorted(stored - want_ids)[:3]))
        with open(os.path.join(out, dup_id + ".eml"), "rb") as f:
            t.check(f.read().startswith(b"Received: "), "the first copy was kept, not the duplicate")
        down = [e for e in srv.events("hop_down")]
        t.check(down and down[0].get("reason"), "hop_down has a reason: %r" % (down[:1],))
        dlvlib.wait_for("dotspool queue empty", lambda: srv.metric(
            "dotspool_queue_messages") == 0, 15)
        print("  drained after the restart (%.1f s)" % (time.monotonic() - t0))
        rc = srv2.stop()
        t.check(rc == 0, "srv2 stopped cleanly (exit %r)" % (rc,))

        # 4. No confirm in time (the broker frozen with SIGSTOP): deferred as a possible
        # duplicate, published again once it runs; the queue then holds it at least once
        # (duplicates only by message_id).
        froze = send_batch(t, srv, 3, "f")  # the connection is up and confirming
        got_f = rabbit.drain(node.port, "mail", want=3, timeout=20)
        once(t, got_f, froze, "before the freeze")
        os.killpg(node.proc.pid, signal.SIGSTOP)
        try:
            frozen = send_batch(t, srv, 4, "z")
            dlvlib.wait_for("confirm timeouts", lambda: srv.metric(
                "dotspool_handoff_results_total", {"result": "timeout"}) >= 4, 20)
        finally:
            os.killpg(node.proc.pid, signal.SIGCONT)
        got_z = rabbit.drain(node.port, "mail", want=None, timeout=30, idle_s=2.0)
        ids = [p.message_id for p, _ in got_z]
        t.check(set(ids) == set(frozen), "after the freeze every message is in the queue (%s)" % ids)
        t.check(srv.metric("dotspool_delivery_possible_duplicates_total") >= 4,
                "timed-out publishes counted as possible duplicates")
        print("  confirm timeout: %d timed out, %d copies in the queue for %d messages (%.1f s)"
              % (srv.metric("dotspool_handoff_results_total", {"result": "timeout"}), len(ids), len(frozen),
                 time.monotonic() - t0))
        # 5. dotspool killed -9 in the middle of handing off, restarted on the same spool: every
        # accepted message reaches the queue at least once (ATTEMPT records: published again).
        crash = send_batch(t, srv, 30, "c")
        srv.kill()
        srv.start()
        got_c = rabbit.drain(node.port, "mail", want=None, timeout=30, idle_s=2.0)
        ids = [p.message_id for p, _ in got_c]
        t.check(set(crash) <= set(ids), "after kill -9 and restart every accepted message is in the queue "
                "(%d missing)" % len(set(crash) - set(ids)))
        t.check(set(ids) <= set(crash), "nothing else in the queue")
        dlvlib.wait_for("queue empty after the restart", lambda: srv.metric("dotspool_queue_messages") == 0, 15)
        print("  dotspool kill -9: %d accepted, %d in the queue (%d duplicates by message_id) (%.1f s)"
              % (len(crash), len(ids), len(ids) - len(set(ids)), time.monotonic() - t0))
        rc = srv.stop()
        t.check(rc == 0, "srv stopped cleanly (exit %r)" % (rc,))

        # 4b. The big message, now over --amqp-max-message-size: failed with a bounce (554 5.3.4),
        # and the bounce (small) is handed off like any message.
        big = dlvlib.DServer(t.build, [url], threads=1, spool=big_spool,
                             extra=["--max-message-size", "1024", "--amqp-max-message-size", "66560"]).start()
        dlvlib.wait_for("too_big counted", lambda: big.metric(
            "dotspool_handoff_results_total", {"result": "too_big"}) >= 1, 15)
        got_b = rabbit.drain(node.port, "mail", want=1, timeout=20)
        t.check(len(got_b) == 1 and (got_b[0][0].headers or {}).get("envelope-from") == ""
                and list(got_b[0][0].headers.get("envelope-to", [])) == ["big@client.test"],
                "the bounce of the too-big message was handed off (%r)" % [(p.message_id, p.headers) for p, _ in got_b])
        t.check(b"5.3.4" in got_b[0][1] if got_b else False, "the bounce says 5.3.4")
        t.check(big.metric("dotspool_deliveries_total", {"outcome": "failed"}) == 1,
                "the big message's recipient failed (final), %s" % big_id)
        rc = big.stop()
        t.check(rc == 0, "big stopped cleanly (exit %r)" % (rc,))
    finally:
        c.stop()


if __name__ == "__main__":
    dslib.run(main)
