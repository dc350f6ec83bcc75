#!/usr/bin/env python3
"""A scripted SMTP/LMTP next hop for delivery tests (Python 3 stdlib only, asyncio).

It does on demand what no packaged server does: per-recipient 250/450/550 mixes, stalls, a
connection dropped right after the final dot (the RFC 1047 gap), refused connections, 421.

Usage
-----
    peer.py --listen 127.0.0.1:PORT --outdir DIR [--lmtp] [--script FILE.json] [flags...]
    peer.py --unix /path/to/socket --lmtp --outdir DIR ...

PORT 0 picks a free port; --port-file FILE receives the bound port (written once listening, so
a test waits for the file). The peer runs until SIGTERM or SIGINT (exit 0), or --max-seconds.

Script (JSON file, --script) -- every key optional; flags given on the command line override:
    {
      "lmtp": false,                      speak LMTP (LHLO, one reply per recipient after data)
      "hostname": "peer.test",            in the greeting and the EHLO/LHLO reply
      "extensions": ["PIPELINING", "DSN", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES"],
                                          advertised as given; "SIZE" alone gets max_message_size;
                                          CHUNKING (BDAT), PRDR and SMTPUTF8 are off unless listed
      "rules": [                          first matching rule wins, per recipient
        {"rcpt": "^bad@", "at": "rcpt", "reply": "550 5.1.1 no such user"},
        {"rcpt": "^later@", "at": "rcpt", "reply": "450 4.2.0 try again", "times": 1},
        {"rcpt": "^full@", "at": "data", "reply": "552 5.2.2 mailbox full"}
      ],
          "rcpt": a Python regex searched in the recipient address (no angle brackets);
          "at": "rcpt" (the RCPT reply) or "data" (after the final dot: LMTP's reply for that
          recipient; PRDR's per-recipient reply; plain SMTP: the message's single reply is that of
          the first accepted recipient with a data rule, else 250); "times": the rule fires only
          that many times in the peer's life, then is skipped (a deferral that later succeeds)
      "stall": {"greeting": 0, "ehlo": 0, "mail": 0, "rcpt": 0, "data": 0, "in_data": 0, "dot": 0},
          seconds to sleep before replying in that phase ("data": before the 354; "in_data":
          after the first line of message data, reading nothing meanwhile, so a big message
          blocks the client's writes; "dot": after the final dot or BDAT LAST, before the reply).
          A value may be {"seconds": S, "times": N} (only the first N times)
      "drop_after_dot": 0,                close without any reply after the final dot, this many
                                          times (-1: always); the message is stored first (and
                                          marked "dropped") unless "drop_stores": false
      "drop_stores": true,
      "refuse_first": 0,                  close the first K connections at once (no greeting)
      "reply_421": null,                  a phase name, or {"at": PHASE, "times": N}: reply
                                          "421 4.3.2 ..." there instead, then close
      "final_reply": "250 2.0.0 Ok: queued as {id}",   SMTP's reply after the dot ({id}: msg id)
      "max_connections": 16,              concurrent; more get 421 4.7.0 and are closed
      "max_message_size": 10485760,       bytes after un-dot-stuffing; more: 552 5.3.4
      "max_seconds": 0,                   exit after this long (0: no limit)
      "idle_timeout_s": 120               close a connection idle this long between commands
    }

Flags: --lmtp, --hostname, --ext EXT (repeatable; replaces the list), --rule AT:REGEX=REPLY
(repeatable, e.g. --rule 'rcpt:^bad@=550 5.1.1 no'; AT:REGEX=REPLY@N for "times": N),
--stall PHASE=SECONDS[@N], --drop-after-dot N, --no-drop-store, --refuse-first K,
--reply-421 PHASE[@N], --final-reply TEXT, --max-connections N, --max-message-size BYTES,
--max-seconds S, --idle-timeout S, --log FILE (default OUTDIR/peer.log).

Output (in --outdir)
--------------------
    NNNNNN.eml      one file per message with at least one accepting recipient: the exact bytes
                    received after un-dot-stuffing (DATA) or the chunks concatenated (BDAT)
    index.jsonl     one JSON line per accepting recipient of a message:
                    {"msg": N, "file": "NNNNNN.eml", "conn": C, "mail_from": "...",
                     "mail_params": "...", "rcpt": "...", "rcpt_params": "...", "size": BYTES,
                     "sha256": "...", "reply": "250 ...", "dropped": false, "proto": "SMTP"}
                    written (and flushed) when the reply is about to go out: after the "dot"
                    stall, before the reply (or before the drop, for "drop_after_dot")
    peer.log        every connection, command and reply (C: / S:), every transaction's outcome
"""

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import sys
import time

PHASES = ("greeting", "ehlo", "mail", "rcpt", "data", "in_data", "dot")
CMD_LINE_MAX = 4096
DEFAULTS = {
    "lmtp": False,
    "hostname": "peer.test",
    "extensions": ["PIPELINING", "DSN", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES"],
    "rules": [],
    "stall": {},
    "drop_after_dot": 0,
    "drop_stores": True,
    "refuse_first": 0,
    "reply_421": None,
    "final_reply": "250 2.0.0 Ok: queued as {id}",
    "max_connections": 16,
    "max_message_size": 10 * 1024 * 1024,
    "max_seconds": 0,
    "idle_timeout_s": 120,
}


class Budget:
    """A rule that fires a limited number of times (times < 0: always)."""

    def __init__(self, times):
        self.left = -1 if times is None else int(times)

    def take(self):
        if self.left == 0:
            return False
        if self.left > 0:
            self.left -= 1
        return True


class Rule:
    def __init__(self, d):
        self.at = d.get("at", "rcpt")
        if self.at not in ("rcpt", "data"):
            raise ValueError("rule 'at' must be rcpt or data: %r" % d)
        self.rx = re.compile(d["rcpt"])
        self.reply = str(d["reply"])
        if not re.match(r"^[2-5]\d\d( |$)", self.reply):
            raise ValueError("rule reply must start with a 3-digit code: %r" % d)
        self.budget = Budget(d.get("times"))
        self.desc = d


def load_config(args):
    cfg = json.loads(json.dumps(DEFAULTS))
    if args.script:
        with open(args.script) as f:
            sc = json.load(f)
        unknown = set(sc) - set(DEFAULTS)
        if unknown:
            raise SystemExit("peer: unknown script keys: %s" % ", ".join(sorted(unknown)))
        cfg.update(sc)
    if args.lmtp:
        cfg["lmtp"] = True
    if args.hostname:
        cfg["hostname"] = args.hostname
    if args.ext:
        cfg["extensions"] = args.ext
    for r in args.rule or []:
        m = re.match(r"^(rcpt|data):(.*?)=([2-5]\d\d(?: .*?)?)(?:@(-?\d+))?$", r)
        if not m:
            raise SystemExit("peer: --rule AT:REGEX=REPLY[@N]: %r" % r)
        cfg["rules"].append({"at": m.group(1), "rcpt": m.group(2), "reply": m.group(3),
                             "times": int(m.group(4)) if m.group(4) else None})
    for s in args.stall or []:
        m = re.match(r"^(\w+)=([\d.]+)(?:@(-?\d+))?$", s)
        if not m:
            raise SystemExit("peer: --stall PHASE=SECONDS[@N]: %r" % s)
        cfg["stall"][m.group(1)] = {"seconds": float(m.group(2)),
                                    "times": int(m.group(3)) if m.group(3) else None}
    if args.drop_after_dot is not None:
        cfg["drop_after_dot"] = args.drop_after_dot
    if args.no_drop_store:
        cfg["drop_stores"] = False
    if args.refuse_first is not None:
        cfg["refuse_first"] = args.refuse_first
    if args.reply_421:
        m = re.match(r"^(\w+)(?:@(-?\d+))?$", args.reply_421)
        if not m:
            raise SystemExit("peer: --reply-421 PHASE[@N]: %r" % args.reply_421)
        cfg["reply_421"] = {"at": m.group(1), "times": int(m.group(2)) if m.group(2) else None}
    for key in ("final_reply", "max_connections", "max_message_size", "max_seconds"):
        v = getattr(args, key)
        if v is not None:
            cfg[key] = v
    if args.idle_timeout is not None:
        cfg["idle_timeout_s"] = args.idle_timeout
    return cfg


class Peer:
    def __init__(self, cfg, outdir, log_path):
        self.cfg = cfg
        self.outdir = outdir
        self.lmtp = bool(cfg["lmtp"])
        self.host = cfg["hostname"]
        self.rules = [Rule(r) for r in cfg["rules"]]
        self.stall = {}
        for ph, v in (cfg["stall"] or {}).items():
            if ph not in PHASES:
                raise SystemExit("peer: unknown stall phase %r (one of %s)" % (ph, ", ".join(PHASES)))
            if isinstance(v, dict):
                self.stall[ph] = (float(v.get("seconds", 0)), Budget(v.get("times")))
            else:
                self.stall[ph] = (float(v), Budget(None))
        r421 = cfg["reply_421"]
        if isinstance(r421, str):
            r421 = {"at": r421}
        self.r421 = None
        if r421:
            if r421["at"] not in PHASES:
                raise SystemExit("peer: unknown reply_421 phase %r" % r421["at"])
            self.r421 = (r421["at"], Budget(r421.get("times")))
        self.drop = Budget(None if int(cfg["drop_after_dot"]) < 0 else int(cfg["drop_after_dot"]))
        self.refuse_left = int(cfg["refuse_first"])
        self.max_size = int(cfg["max_message_size"])
        self.exts = []
        for e in cfg["extensions"]:
            self.exts.append("SIZE %d" % self.max_size if e.upper() == "SIZE" else e)
        names = {e.split()[0].upper() for e in self.exts}
        self.chunking = "CHUNKING" in names
        self.prdr = "PRDR" in names and not self.lmtp
        self.conns = 0
        self.active = 0
        self.tasks = set()
        self.msgs = 0
        os.makedirs(outdir, exist_ok=True)
        self.index = open(os.path.join(outdir, "index.jsonl"), "a")
        self.logf = open(log_path, "a")
        self.t0 = time.monotonic()

    def log(self, conn, text):
        self.logf.write("%.3f conn=%s %s\n" % (time.monotonic() - self.t0, conn, text))
        self.logf.flush()

    async def maybe_stall(self, conn, phase):
        st = self.stall.get(phase)
        if st and st[0] > 0 and st[1].take():
            self.log(conn, "stall %s %.1fs" % (phase, st[0]))
            await asyncio.sleep(st[0])

    def want_421(self, phase):
        return self.r421 is not None and self.r421[0] == phase and self.r421[1].take()

    def rule_reply(self, at, rcpt):
        for r in self.rules:
            if r.at == at and r.rx.search(rcpt) and r.budget.take():
                return r.reply
        return None

    def store(self, conn, mail_from, mail_params, rcpts, data, proto, dropped=False):
        """Write the message once and one index line per (rcpt, params, reply) in rcpts."""
        self.msgs += 1
        name = "%06d.eml" % self.msgs
        path = os.path.join(self.outdir, name)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)
        digest = hashlib.sha256(data).hexdigest()
        for rcpt, params, reply in rcpts:
            self.index.write(json.dumps({
                "msg": self.msgs, "file": name, "conn": conn, "mail_from": mail_from,
                "mail_params": mail_params, "rcpt": rcpt, "rcpt_params": params, "size": len(data),
                "sha256": digest, "reply": reply, "dropped": dropped, "proto": proto}) + "\n")
        self.index.flush()
        self.log(conn, "stored msg=%d file=%s size=%d rcpts=%s dropped=%s"
                 % (self.msgs, name, len(data), ",".join(r[0] for r in rcpts), dropped))
        return self.msgs

    async def handle(self, reader, writer):
        self.conns += 1
        conn = self.conns
        if self.refuse_left > 0:
            self.refuse_left -= 1
            self.log(conn, "refused (refuse_first)")
            writer.close()
            return
        if self.active >= int(self.cfg["max_connections"]):
            self.log(conn, "refused (max_connections)")
            writer.write(b"421 4.7.0 %s too many connections\r\n" % self.host.encode())
            try:
                await writer.drain()
            except OSError:
                pass
            writer.close()
            return
        self.active += 1
        task = asyncio.current_task()
        self.tasks.add(task)
        self.log(conn, "open")
        try:
            await Session(self, conn, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
            self.log(conn, "connection lost: %r" % e)
        except asyncio.CancelledError:
            self.log(conn, "cancelled: the peer is stopping")
        finally:
            self.tasks.discard(task)
            self.active -= 1
            try:
                writer.close()
            except Exception:
                pass
            self.log(conn, "close")


class Close(Exception):
    pass


class Session:
    def __init__(self, peer, conn, reader, writer):
        self.p = peer
        self.conn = conn
        self.r = reader
        self.w = writer
        self.reset()
        self.helo = None

    def reset(self):
        self.mail_from = None
        self.mail_params = ""
        self.use_prdr = False
        self.rcpts = []  # (addr, params)
        self.bdat = None  # bytearray while BDAT chunks arrive
        self.bdat_over = False

    async def reply(self, text):
        lines = text.split("\n")
        out = b""
        for i, l in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            out += ("%s%s%s\r\n" % (l[:3], sep, l[4:])).encode("utf-8") if len(l) > 3 else (l + "\r\n").encode()
        for l in out.decode("utf-8", "replace").splitlines():
            self.p.log(self.conn, "S: " + l)
        self.w.write(out)
        await self.w.drain()

    async def phase(self, name):
        """Stall and/or 421 at this phase; raises Close after a 421."""
        await self.p.maybe_stall(self.conn, name)
        if self.p.want_421(name):
            await self.reply("421 4.3.2 %s closing (scripted)" % self.p.host)
            raise Close()

    async def readline(self):
        try:
            line = await asyncio.wait_for(self.r.readuntil(b"\n"), self.p.cfg["idle_timeout_s"])
        except asyncio.TimeoutError:
            await self.reply("421 4.4.2 %s idle timeout" % self.p.host)
            raise Close()
        except asyncio.LimitOverrunError:
            await self.reply("500 5.5.2 line too long")
            raise Close()
        except asyncio.IncompleteReadError as e:
            if e.partial:
                self.p.log(self.conn, "C: (partial at close) %r" % e.partial[:200])
            raise Close()
        return line

    async def run(self):
        try:
            await self.phase("greeting")
            await self.reply("220 %s %s scripted peer" % (self.p.host, "LMTP" if self.p.lmtp else "ESMTP"))
            while True:
                line = await self.readline()
                self.p.log(self.conn, "C: " + line.decode("utf-8", "replace").rstrip("\r\n"))
                if len(line) > CMD_LINE_MAX:
                    await self.reply("500 5.5.2 line too long")
                    continue
                if not await self.command(line.decode("utf-8", "replace").rstrip("\r\n")):
                    break
        except Close:
            pass

    async def command(self, line):
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb in ("EHLO", "HELO", "LHLO"):
            if self.p.lmtp != (verb == "LHLO"):
                await self.reply("500 5.5.1 %s not accepted here" % verb)
                return True
            await self.phase("ehlo")
            self.helo = arg
            self.reset()
            if verb == "HELO":
                await self.reply("250 %s" % self.p.host)
            else:
                await self.reply("\n".join(["250 %s" % self.p.host] + ["250 %s" % e for e in self.p.exts]))
            return True
        if verb == "QUIT":
            await self.reply("221 2.0.0 bye")
            return False
        if verb == "RSET":
            self.reset()
            await self.reply("250 2.0.0 Ok")
            return True
        if verb == "NOOP":
            await self.reply("250 2.0.0 Ok")
            return True
        if verb == "MAIL":
            return await self.mail(arg)
        if verb == "RCPT":
            return await self.rcpt(arg)
        if verb == "DATA":
            return await self.data()
        if verb == "BDAT" and self.p.chunking:
            return await self.bdat_cmd(arg)
        await self.reply("502 5.5.1 command not implemented")
        return True

    @staticmethod
    def path_and_params(arg, prefix):
        m = re.match(r"^%s\s*<([^>]*)>\s*(.*)$" % prefix, arg, re.I)
        if not m:
            return None, None
        return m.group(1), m.group(2).strip()

    async def mail(self, arg):
        if self.helo is None:
            await self.reply("503 5.5.1 say hello first")
            return True
        if self.mail_from is not None:
            await self.reply("503 5.5.1 nested MAIL")
            return True
        addr, params = self.path_and_params(arg, "FROM:")
        if addr is None:
            await self.reply("501 5.5.4 syntax: MAIL FROM:<address>")
            return True
        await self.phase("mail")
        m = re.search(r"(?:^|\s)SIZE=(\d+)", params, re.I)
        if m and int(m.group(1)) > self.p.max_size:
            await self.reply("552 5.3.4 message too big for %s" % self.p.host)
            return True
        self.mail_from = addr
        self.mail_params = params
        self.use_prdr = self.p.prdr and re.search(r"(?:^|\s)PRDR(?:\s|$)", params, re.I) is not None
        await self.reply("250 2.1.0 Ok")
        return True

    async def rcpt(self, arg):
        if self.mail_from is None:
            await self.reply("503 5.5.1 need MAIL first")
            return True
        addr, params = self.path_and_params(arg, "TO:")
        if addr is None:
            await self.reply("501 5.5.4 syntax: RCPT TO:<address>")
            return True
        await self.phase("rcpt")
        rep = self.p.rule_reply("rcpt", addr)
        if rep is None or rep.startswith("2"):
            self.rcpts.append((addr, params))
            await self.reply(rep or "250 2.1.5 Ok")
        else:
            await self.reply(rep)
        return True

    async def data(self):
        if self.mail_from is None or not self.rcpts:
            await self.reply("503 5.5.1 need MAIL and RCPT first" if self.mail_from is None
                             else "554 5.5.1 no valid recipients")
            return True
        await self.phase("data")
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        buf = bytearray()
        over = False
        first = True
        at_start = True  # the piece read begins a line (dot-stuffing and the terminator apply)
        while True:
            try:
                line = await asyncio.wait_for(self.r.readuntil(b"\n"), self.p.cfg["idle_timeout_s"])
            except asyncio.LimitOverrunError as e:
                # a line longer than the reader's buffer: take the part without a line end
                line = await self.r.readexactly(e.consumed)
            except asyncio.TimeoutError:
                await self.reply("421 4.4.2 %s data timeout" % self.p.host)
                raise Close()
            except asyncio.IncompleteReadError as e:
                self.p.log(self.conn, "connection closed in DATA after %d bytes" % (len(buf) + len(e.partial)))
                raise Close()
            if first:
                first = False
                await self.p.maybe_stall(self.conn, "in_data")
            if at_start and line == b".\r\n":
                break
            if at_start and line.startswith(b"."):
                line = line[1:]
            at_start = line.endswith(b"\n")
            if not over:
                if len(buf) + len(line) > self.p.max_size:
                    over = True
                    buf = bytearray()
                else:
                    buf += line
        self.p.log(self.conn, "C: (%d bytes of data) ." % len(buf))
        return await self.finish(bytes(buf), over, "DATA")

    async def bdat_cmd(self, arg):
        m = re.match(r"^(\d+)(\s+LAST)?\s*$", arg, re.I)
        if not m:
            await self.reply("501 5.5.4 syntax: BDAT size [LAST]")
            return True
        n, last = int(m.group(1)), bool(m.group(2))
        try:
            chunk = await asyncio.wait_for(self.r.readexactly(n), self.p.cfg["idle_timeout_s"])
        except (asyncio.TimeoutError, asyncio.IncompleteReadError):
            raise Close()
        if self.mail_from is None or not self.rcpts:
            await self.reply("503 5.5.1 need MAIL and RCPT first")
            return True
        if self.bdat is None:
            self.bdat = bytearray()
            await self.p.maybe_stall(self.conn, "in_data")
        if len(self.bdat) + n > self.p.max_size:
            self.bdat_over = True
            self.bdat = bytearray()
        elif not self.bdat_over:
            self.bdat += chunk
        if not last:
            await self.reply("250 2.0.0 %d octets received" % n)
            return True
        data, over = bytes(self.bdat), self.bdat_over
        return await self.finish(data, over, "BDAT")

    async def finish(self, data, over, how):
        rcpts = list(self.rcpts)
        mail_from, mail_params, prdr = self.mail_from, self.mail_params, self.use_prdr
        self.reset()
        await self.phase("dot")
        proto = "LMTP" if self.p.lmtp else "SMTP"
        per_rcpt = self.p.lmtp or prdr
        if over:
            self.p.log(self.conn, "transaction from=<%s> refused: too big" % mail_from)
            if prdr:
                await self.reply("353 2.0.0 PRDR content analysis beginning")
            for _ in range(len(rcpts) if per_rcpt else 1):
                await self.reply("552 5.3.4 message too big")
            if prdr:
                await self.reply("552 5.3.4 message too big")
            return True
        if per_rcpt:
            # one reply per accepted RCPT, in order: a data rule or 250
            replies = [(a, pa, self.p.rule_reply("data", a) or "250 2.1.5 <%s> delivered" % a) for a, pa in rcpts]
        else:
            # one reply for the message: the first accepted recipient's data rule, else final_reply
            found = [self.p.rule_reply("data", a) for a, _ in rcpts]
            final = next((r for r in found if r), None) or self.p.cfg["final_reply"]
            replies = [(a, pa, final) for a, pa in rcpts]
        ok = [x for x in replies if x[2].startswith("2")]
        if self.p.drop.take():
            if ok and self.p.cfg["drop_stores"]:
                self.p.store(self.conn, mail_from, mail_params, ok, data, proto, dropped=True)
            self.p.log(self.conn, "drop after the dot (%s), no reply" % how)
            raise Close()
        msg_id = self.p.store(self.conn, mail_from, mail_params, ok, data, proto) if ok else None
        self.p.log(self.conn, "transaction from=<%s> %s" % (
            mail_from, " ".join("<%s>=%s" % (a, r[:3]) for a, _, r in replies)))
        if self.p.lmtp:
            for _, _, r in replies:
                await self.reply(r.replace("{id}", str(msg_id)))
        elif prdr:
            await self.reply("353 2.0.0 PRDR content analysis beginning")
            for _, _, r in replies:
                await self.reply(r.replace("{id}", str(msg_id)))
            await self.reply("250 2.0.0 Ok: queued as %s" % msg_id if ok else "550 5.0.0 no recipients accepted")
        else:
            await self.reply(replies[0][2].replace("{id}", str(msg_id)))
        return True


async def serve(args, cfg):
    log_path = args.log or os.path.join(args.outdir, "peer.log")
    os.makedirs(args.outdir, exist_ok=True)
    peer = Peer(cfg, args.outdir, log_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    limit = max(CMD_LINE_MAX * 2, 65536)
    if args.unix:
        try:
            os.unlink(args.unix)
        except FileNotFoundError:
            pass
        server = await asyncio.start_unix_server(peer.handle, path=args.unix, limit=limit)
        where = args.unix
    else:
        host, _, port = args.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        server = await asyncio.start_server(peer.handle, host, int(port), limit=limit, reuse_address=True)
        port = server.sockets[0].getsockname()[1]
        where = "%s:%d" % (host, port)
        if args.port_file:
            with open(args.port_file + ".tmp", "w") as f:
                f.write("%d\n" % port)
            os.rename(args.port_file + ".tmp", args.port_file)
    peer.log("-", "listening on %s (%s) pid=%d" % (where, "LMTP" if peer.lmtp else "SMTP", os.getpid()))
    print("peer: listening on %s" % where, flush=True)
    try:
        max_s = float(cfg["max_seconds"] or 0)
        if max_s > 0:
            try:
                await asyncio.wait_for(stop.wait(), max_s)
            except asyncio.TimeoutError:
                peer.log("-", "max_seconds reached")
        else:
            await stop.wait()
    finally:
        server.close()
        for t in list(peer.tasks):
            t.cancel()
        if peer.tasks:
            await asyncio.wait(list(peer.tasks), timeout=5)
        peer.log("-", "stopping: %d connections, %d messages stored" % (peer.conns, peer.msgs))
        if args.unix:
            try:
                os.unlink(args.unix)
            except OSError:
                pass
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="scripted SMTP/LMTP next hop (see the module docstring)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", help="HOST:PORT (loopback only; PORT 0: any free port)")
    where.add_argument("--unix", help="unix socket path (LMTP)")
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--script", help="JSON script file")
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    ap.add_argument("--lmtp", action="store_true")
    ap.add_argument("--hostname")
    ap.add_argument("--ext", action="append")
    ap.add_argument("--rule", action="append")
    ap.add_argument("--stall", action="append")
    ap.add_argument("--drop-after-dot", type=int)
    ap.add_argument("--no-drop-store", action="store_true")
    ap.add_argument("--refuse-first", type=int)
    ap.add_argument("--reply-421")
    ap.add_argument("--final-reply")
    ap.add_argument("--max-connections", type=int)
    ap.add_argument("--max-message-size", type=int)
    ap.add_argument("--max-seconds", type=float)
    ap.add_argument("--idle-timeout", type=float)
    args = ap.parse_args(argv)
    if args.listen:
        host = args.listen.rpartition(":")[0].strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost", ""):
            raise SystemExit("peer: loopback addresses only (got %r)" % host)
    cfg = load_config(args)
    try:
        return asyncio.run(serve(args, cfg))
    except ValueError as e:
        raise SystemExit("peer: %s" % e)


if __name__ == "__main__":
    sys.exit(main())
