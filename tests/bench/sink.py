#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Tiny SMTP/LMTP sink for dotspool-bench's tests (127.0.0.1 only).

Accepts everything, checks the DATA wire form (CRLF only, lines <= 78
characters after unstuffing, a Message-ID header) and appends each
accepted message's Message-ID to --ids-file. Writes its port to
--port-file once listening.
"""
import argparse
import asyncio
import os
import re
import ssl
import sys

MSGID_RE = re.compile(rb"^Message-ID: (<[^>]+>)\r$", re.M | re.I)


class Sink:
    def __init__(self, args):
        self.args = args
        self.count = 0
        self.ids = open(args.ids_file, "a", buffering=1) if args.ids_file else None
        self.bad = 0
        self.tls_ctx = None
        if args.tls_cert:
            self.tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_ctx.load_cert_chain(args.tls_cert, args.tls_key)

    async def handle(self, reader, writer):
        a = self.args

        async def reply(text):
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        await reply("220 sink ESMTP")
        rcpts = []
        mail = False
        tls = False
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if not line.endswith(b"\r\n"):
                    await reply("500 bare LF")
                    continue
                cmd = line[:-2].decode("ascii", "replace")
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "LHLO"):
                    if (verb == "LHLO") != a.lmtp:
                        await reply("500 wrong greeting for this protocol")
                        continue
                    ext = ["250-sink"]
                    if not a.no_pipelining:
                        ext.append("250-PIPELINING")
                    if self.tls_ctx and not tls:
                        ext.append("250-STARTTLS")
                    ext.append("250-8BITMIME")
                    ext.append("250 SIZE 100000000")
                    writer.write(("\r\n".join(ext) + "\r\n").encode())
                    await writer.drain()
                elif verb == "STARTTLS" and self.tls_ctx and not tls:
                    await reply("220 ready to start TLS")
                    await writer.start_tls(self.tls_ctx)
                    tls = True
                    mail = False
                    rcpts = []
                elif verb == "MAIL":
                    if a.require_tls and not tls:
                        await reply("530 must issue STARTTLS first")
                        continue
                    mail = True
                    rcpts = []
                    await reply("250 ok")
                elif verb == "RCPT":
                    if not mail:
                        await reply("503 need MAIL")
                    elif a.reject_rcpt and a.reject_rcpt in cmd:
                        await reply("550 no such user")
                    else:
                        rcpts.append(cmd)
                        await reply("250 ok")
                elif verb == "DATA":
                    if not rcpts:
                        await reply("503 no valid recipients")
                        continue
                    await reply("354 go ahead")
                    body = []
                    while True:
                        l = await reader.readline()
                        if not l:
                            return
                        if l == b".\r\n":
                            break
                        if not l.endswith(b"\r\n") or b"\n" in l[:-2] or b"\r" in l[:-2]:
                            self.bad += 1
                        if l.startswith(b"."):
                            l = l[1:]
                        if len(l) - 2 > 78:
                            self.bad += 1
                        body.append(l)
                    msg = b"".join(body)
                    m = MSGID_RE.search(msg)
                    self.count += 1
                    fail = a.fail_every and self.count % a.fail_every == 0
                    if a.delay_ms:
                        await asyncio.sleep(a.delay_ms / 1000.0)
                    if not fail and m and self.ids:
                        self.ids.write("%s %d %d\n" % (m.group(1).decode(), len(msg), self.bad))
                    n = len(rcpts) if a.lmtp else 1
                    for _ in range(n):
                        await reply("451 try later" if fail or not m else "250 queued")
                    mail = False
                    rcpts = []
                elif verb == "RSET":
                    mail = False
                    rcpts = []
                    await reply("250 ok")
                elif verb == "NOOP":
                    await reply("250 ok")
                elif verb == "QUIT":
                    await reply("221 bye")
                    return
                else:
                    await reply("502 unknown")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--ids-file")
    p.add_argument("--lmtp", action="store_true")
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--reject-rcpt")
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--delay-ms", type=float, default=0)
    p.add_argument("--tls-cert", help="offer STARTTLS with this certificate (PEM)")
    p.add_argument("--tls-key")
    p.add_argument("--require-tls", action="store_true", help="530 to MAIL before STARTTLS")
    a = p.parse_args()
    sink = Sink(a)
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0, limit=1 << 20, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, a.port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
