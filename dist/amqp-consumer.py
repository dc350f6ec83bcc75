#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Example consumer of dotspool's amqp:// hand-off (doc/amqp.md): reads a (quorum) queue,
drops the duplicates that at-least-once hand-off allows by message_id (the spool id), writes
each new message to DIR/<message_id>.eml with its envelope beside it as <message_id>.json, and
acks only once both are on disk (fsync), so a crash of this consumer redelivers instead of
losing. Debian 12: apt-get install python3-pika.

    dist/amqp-consumer.py --url amqp://USER:PASS@127.0.0.1:5672/%2F --queue mail --dir /srv/mail

The duplicate check is the file itself: a message whose <message_id>.eml already exists is
acked and dropped (dotspool re-publishes a message when a confirm did not reach it: a lost
connection, a confirm timeout, a restart between publish and confirm). Keep the files (or a
record of the ids) at least as long as dotspool's retry horizon (--queue-lifetime-s).
"""
import argparse
import json
import os
import sys

try:
    import pika
except ImportError:
    sys.exit("amqp-consumer: python3-pika is missing (apt-get install python3-pika)")


def write_durable(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="amqp://USER:PASS@HOST:PORT/VHOST")
    ap.add_argument("--queue", required=True)
    ap.add_argument("--dir", required=True, help="where messages are written")
    ap.add_argument("--prefetch", type=int, default=200)
    ap.add_argument("--count", type=int, default=0, help="stop after N messages (0: run forever)")
    ap.add_argument("--idle-exit-s", type=float, default=0, help="stop when the queue is idle this long")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    conn = pika.BlockingConnection(pika.URLParameters(a.url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=a.prefetch)  # quorum queues: per-consumer prefetch only
    seen = dups = 0
    for method, props, body in ch.consume(a.queue, inactivity_timeout=a.idle_exit_s or None):
        if method is None:
            break  # idle
        mid = props.message_id or ""
        if not mid or not all(c in "0123456789ABCDEF" for c in mid):
            ch.basic_nack(method.delivery_tag, requeue=False)  # not from dotspool
            continue
        eml = os.path.join(a.dir, mid + ".eml")
        if os.path.exists(eml):
            dups += 1  # at-least-once: already stored, drop
        else:
            env = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()}
            env["message_id"] = mid
            env["timestamp"] = props.timestamp
            write_durable(os.path.join(a.dir, mid + ".json"), json.dumps(env, default=list).encode())
            write_durable(eml, body)
            dfd = os.open(a.dir, os.O_RDONLY)
            os.fsync(dfd)  # the renames
            os.close(dfd)
        ch.basic_ack(method.delivery_tag)
        seen += 1
        if a.count and seen >= a.count:
            break
    ch.cancel()
    conn.close()
    print("amqp-consumer: %d messages, %d duplicates dropped" % (seen, dups))


if __name__ == "__main__":
    main()
