#!/usr/bin/env python3
"""Back-pressure before the disk is full (issue 15 point 3).

1. spool-max-bytes: a 4 MiB limit with 1 MiB segments, one worker. A
   transaction is opened (MAIL, RCPT) first, then messages are sent until
   MAIL is answered 452 4.3.1; then: a new connection's MAIL gets 452, the
   log has event=spool_watermark state=high reason=spool_max, the metrics say
   dotspool_spool_watermark_high 1 with the bytes it compared, RSET/NOOP
   still work and the connection stays usable, and the transaction opened
   before finishes with its 250. Every message that got a 250 is in the
   spool (dotspool-ctl list) and verify is clean. Nothing reclaims segments
   yet, so the server is restarted with a larger limit: MAIL 250 again, the
   gauge 0, a message accepted.
2. spool-min-free-bytes (root: a tmpfs of 24 MiB mounted by the test): the
   floor of 12 MiB is crossed while spool-max-bytes is 100%: 452 at MAIL,
   reason=min_free, the free bytes under the floor in the metrics.
3. The spool's own last line of defence (root, the same tmpfs refilled with
   no floor): the file system itself fills; mail is refused with 452 (at
   MAIL, DATA or the final dot), never a 250 for a message that is not in
   the spool, and everything stored verifies.
"""

import os
import re
import subprocess
import time
import urllib.request

import dslib

SEG = 1 << 20
MSG = 200 * 1024  # bytes of one message body
FILL_MAX = 400  # messages: a bound on every fill loop


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def wait_for(pred, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def ehlo(c):
    code, _ = c.reply()
    if code != 220:
        raise dslib.Fail("banner %d" % code)
    code, _ = c.cmd("EHLO watermark.test")
    if code != 250:
        raise dslib.Fail("EHLO %d" % code)


def send_one(c, body, tag):
    """One transaction on c. Returns ("mail", code), ("data", code), ("dot", code, text) or ("ok", id)."""
    code, text = c.cmd("MAIL FROM:<fill-%s@example.org>" % tag)
    if code != 250:
        return ("mail", code, text)
    code, _ = c.cmd("RCPT TO:<r@localhost>")
    if code != 250:
        raise dslib.Fail("RCPT %d" % code)
    code, text = c.cmd("DATA")
    if code != 354:
        return ("data", code, text)
    c.send(body + b".\r\n")
    code, text = c.reply()
    if code != 250:
        return ("dot", code, text)
    return ("ok", dslib.queued_id(text))


def fill(t, srv, body, what):
    """Send messages until one is refused; returns (ids accepted, the refusal)."""
    ids = []
    c = dslib.RawSMTP(srv.host, srv.port, timeout_s=20)
    ehlo(c)
    for i in range(FILL_MAX):
        r = send_one(c, body, "%s-%d" % (what, i))
        if r[0] != "ok":
            c.quit()
            return ids, r
        ids.append(r[1])
        # Paced: the sampler looks every 250 ms; a flat-out fill would overshoot a small tmpfs.
        time.sleep(0.02)
    c.quit()
    raise dslib.Fail("%s: %d messages (%d bytes) and no refusal" % (what, FILL_MAX, FILL_MAX * len(body)))


def check_stored(t, srv, ids, what):
    listed = {str(e["id"]) for e in srv.list()}
    missing = [i for i in ids if i not in listed]
    t.check(not missing, "%s: every one of %d messages answered 250 is in the spool" % (what, len(ids)),
            "missing: %r" % missing[:10])
    v = srv.verify()
    t.check(v.returncode == 0, "%s: dotspool-ctl verify is clean" % what, v.stdout.decode()[-2000:])


def log_lines(srv, event):
    return [l for l in (srv.log_text() or "").splitlines() if "event=%s" % event in l]


def part_max(t):
    mport = dslib.free_port()
    limit = 4 * SEG
    common = ["--segment-size", str(SEG), "--spool-buffer-size", "256K", "--spool-min-free-bytes", "0",
              "--metrics", "127.0.0.1:%d" % mport]
    srv = t.server(threads=1, extra=common + ["--spool-max-bytes", str(limit)])
    srv.start()
    m = metrics(mport)
    t.eq(m.get("dotspool_spool_watermark_high"), 0.0, "empty spool: watermark low")
    t.eq(m.get("dotspool_spool_max_bytes"), float(limit), "the limit is in the metrics")

    # A transaction past MAIL before the spool fills up.
    early = dslib.RawSMTP(srv.host, srv.port, timeout_s=20)
    ehlo(early)
    t.eq(early.cmd("MAIL FROM:<early@example.org>")[0], 250, "early transaction: MAIL 250")
    t.eq(early.cmd("RCPT TO:<r@localhost>")[0], 250, "early transaction: RCPT 250")

    body = dslib.body_lines(MSG, "fill")
    ids, refusal = fill(t, srv, body, "max")
    t.check(refusal[0] == "mail" and refusal[1] == 452 and "Insufficient system storage" in refusal[2],
            "filled: refused at MAIL with 452 4.3.1 after %d messages" % len(ids), repr(refusal))
    t.check(len(ids) * MSG >= limit // 2, "the refusal came once the spool held about the limit",
            "%d messages" % len(ids))

    # A new connection: 452 at MAIL, the session goes on.
    c = dslib.RawSMTP(srv.host, srv.port, timeout_s=20)
    ehlo(c)
    code, text = c.cmd("MAIL FROM:<new@example.org>")
    t.eq((code, text), (452, "4.3.1 Insufficient system storage"), "new connection: MAIL 452 4.3.1")
    t.eq(c.cmd("RCPT TO:<r@localhost>")[0], 503, "no transaction after the refused MAIL")
    t.eq(c.cmd("RSET")[0], 250, "RSET still answered")
    t.eq(c.cmd("MAIL FROM:<new@example.org>")[0], 452, "MAIL again: still 452 (not closed, not 421)")

    lines = wait_for(lambda: log_lines(srv, "spool_watermark"))
    t.check(len(lines) == 1 and "state=high" in lines[0] and "reason=spool_max" in lines[0]
            and "max_bytes=%d" % limit in lines[0] and "level=warn" in lines[0],
            "one log line: event=spool_watermark state=high reason=spool_max", "\n".join(lines))
    b = int(re.search(r" bytes=(\d+)", lines[0]).group(1))
    t.check(b >= limit, "the line's bytes are at or above the limit", lines[0])
    refused = wait_for(lambda: [l for l in log_lines(srv, "refused") if "code=452" in l])
    t.check(refused, "the refusals are logged (event=refused code=452)")
    m = metrics(mport)
    t.eq(m.get("dotspool_spool_watermark_high"), 1.0, "metric dotspool_spool_watermark_high 1")
    t.eq(m.get("dotspool_spool_watermark_high_total"), 1.0, "metric: went high once")
    t.check(m.get("dotspool_spool_disk_bytes", 0) >= limit, "metric dotspool_spool_disk_bytes >= limit",
            repr(m.get("dotspool_spool_disk_bytes")))
    t.eq(m.get("dotspool_spool_resume_bytes"), float(limit - limit // 10), "metric: resume at 90%")
    t.check(m.get('dotspool_replies_total{worker="0",class="4xx"}', 0) >= 3, "the 452s are counted as 4xx")

    # The transaction opened before finishes.
    t.eq(early.cmd("DATA")[0], 354, "early transaction: DATA 354 while high")
    early.send(b"Subject: early\r\n\r\nkept\r\n.\r\n")
    code, text = early.reply()
    t.eq(code, 250, "early transaction: 250 while high", text)
    ids.append(dslib.queued_id(text))
    early.quit()
    c.quit()
    check_stored(t, srv, ids, "high watermark")
    t.eq(srv.stop(), 0, "server stops cleanly")

    # Nothing reclaims yet: a larger limit brings mail back.
    srv.extra = common + ["--spool-max-bytes", "64M"]
    srv.start()
    m = metrics(mport)
    t.eq(m.get("dotspool_spool_watermark_high"), 0.0, "restart with 64M: watermark low")
    t.check(not log_lines(srv, "spool_watermark"), "no watermark line after the restart")
    c = dslib.RawSMTP(srv.host, srv.port, timeout_s=20)
    ehlo(c)
    r = send_one(c, body, "after")
    t.check(r[0] == "ok", "restart with 64M: MAIL 250 and the message accepted", repr(r))
    c.quit()
    check_stored(t, srv, ids + [r[1]], "after the restart")
    t.eq(srv.stop(), 0, "server stops cleanly")


def mount_tmpfs(t, size):
    d = dslib.mkdtemp("ds-it-wm-")
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", d],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if cp.returncode != 0:
        raise dslib.Fail("mount tmpfs: %s" % cp.stderr.decode())
    return d


def umount(d):
    subprocess.run(["umount", "-l", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def part_floor(t):
    mport = dslib.free_port()
    mnt = mount_tmpfs(t, "24m")
    try:
        floor = 12 * SEG
        srv = t.server(threads=1, spool=os.path.join(mnt, "spool"),
                       extra=["--segment-size", str(SEG), "--spool-buffer-size", "256K",
                              "--spool-max-bytes", "100%", "--spool-min-free-bytes", str(floor),
                              "--metrics", "127.0.0.1:%d" % mport])
        srv.start()
        t.eq(metrics(mport).get("dotspool_spool_watermark_high"), 0.0, "tmpfs 24 MiB: watermark low at start")
        body = dslib.body_lines(MSG, "floor")
        ids, refusal = fill(t, srv, body, "floor")
        t.check(refusal[0] == "mail" and refusal[1] == 452,
                "tmpfs: refused at MAIL with 452 after %d messages" % len(ids), repr(refusal))
        lines = wait_for(lambda: log_lines(srv, "spool_watermark"))
        t.check(len(lines) == 1 and "state=high" in lines[0] and "reason=min_free" in lines[0]
                and "min_free_bytes=%d" % floor in lines[0],
                "log: event=spool_watermark state=high reason=min_free", "\n".join(lines))
        m = metrics(mport)
        t.eq(m.get("dotspool_spool_watermark_high"), 1.0, "tmpfs: metric high 1")
        t.check(m.get("dotspool_spool_fs_free_bytes", 1e18) < floor, "tmpfs: free bytes under the floor",
                repr(m.get("dotspool_spool_fs_free_bytes")))
        t.eq(m.get("dotspool_spool_min_free_bytes"), float(floor), "tmpfs: the floor in the metrics")
        check_stored(t, srv, ids, "free-space floor")
        t.eq(srv.stop(), 0, "server stops cleanly")

        # No floor, no max: the file system itself fills; the spool answers 452, never a false 250.
        srv.extra = ["--segment-size", str(SEG), "--spool-buffer-size", "256K", "--spool-max-bytes", "1024G",
                     "--spool-min-free-bytes", "0"]
        srv.start()
        more, refusal = fill(t, srv, body, "full")
        t.check(refusal[0] in ("data", "dot") and refusal[1] in (451, 452), "full tmpfs: refused with 4xx (%s) after %d more" % (refusal, len(more)),
                repr(refusal))
        check_stored(t, srv, ids + more, "full file system")
        t.eq(srv.stop(), 0, "server stops cleanly on a full file system")
    finally:
        dslib.kill_servers()
        umount(mnt)


def main(t):
    part_max(t)
    if os.geteuid() != 0:
        print("  note: not root: the tmpfs parts (free-space floor, full file system) are not run")
        return
    part_floor(t)


dslib.run(main)
