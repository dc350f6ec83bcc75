#!/usr/bin/env python3
"""A commit waits for the spool however long the flush takes: no client
timeout (command, data) fires while the spool flushes, the client gets its
250 once the flush completes, never a 421 or 451 in between (a 451 for a
commit that later became durable would make the client send it again).

The spool is put on a small loop-mounted ext4 that is frozen (fsfreeze)
just before the final dot, so the flush blocks until it is thawed. Needs
root, a loop device, mkfs.ext4 and fsfreeze; skipped (77) otherwise. The
mount lives in a private mount namespace (the script re-runs itself under
unshare -m), so nothing is left mounted if it dies."""
import os
import shutil
import socket
import subprocess
import sys
import time

import dslib

FREEZE_S = 4  # several times --timeout-command-s and --timeout-data-s


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def commit_wait(t, mnt):
    spool = os.path.join(mnt, "spool")
    srv = t.server(spool=spool, threads=1,
                   extra=["--timeout-command-s", "1", "--timeout-data-s", "1", "--segment-size", "4M",
                          "--spool-buffer-size", "256K"]).start()
    c = dslib.RawSMTP("127.0.0.1", srv.port)
    t.eq(c.reply()[0], 220, "banner")
    t.eq(c.cmd("EHLO freeze.example")[0], 250, "EHLO")
    t.eq(c.cmd("MAIL FROM:<a@localhost>")[0], 250, "MAIL")
    t.eq(c.cmd("RCPT TO:<u@localhost>")[0], 250, "RCPT")
    t.eq(c.cmd("DATA")[0], 354, "DATA")
    c.send(b"Subject: frozen spool\r\n\r\n" + dslib.body_lines(20000))
    frozen = False
    try:
        r = sh("fsfreeze", "-f", mnt)
        t.check(r.returncode == 0, "fsfreeze -f the spool's file system", r.stderr)
        frozen = True
        t0 = time.monotonic()
        c.send(b".\r\n")
        # The worker's loop still runs: another client is served, and its idle timeout fires.
        o = dslib.RawSMTP("127.0.0.1", srv.port)
        t.eq(o.reply()[0], 220, "while the flush waits: another client gets its banner")
        t.eq(o.cmd("NOOP")[0], 250, "and its NOOP answered")
        o.sock.settimeout(FREEZE_S)
        try:
            code = o.reply()[0]
        except (OSError, ConnectionError):
            code = None
        t.eq(code, 421, "and its idle timeout (1 s) fires: timers run")
        o.close()
        # The committing client hears nothing and is not closed while the flush waits.
        left = FREEZE_S - (time.monotonic() - t0)
        t.check(not c.closed(max(left, 0.5)) and c.buf == b"",
                "no reply and no close during a %d s flush (timeouts 1 s)" % FREEZE_S, c.text())
    finally:
        if frozen:
            sh("fsfreeze", "-u", mnt)
    c.sock.settimeout(20)
    code, text = c.reply()
    t.eq(code, 250, "after the thaw: 250 for the message", text)
    t.check("queued as" in text, "queued as (%r)" % text)
    c.quit()
    entries = dslib.list_json(t.build, srv.spool)
    t.eq(len(entries), 1, "the message is stored once")
    t.eq(srv.stop(), 0, "server exits 0")


def main(t):
    if os.geteuid() != 0:
        raise dslib.Skip("needs root (loop mount, fsfreeze)")
    for tool in ("unshare", "mount", "umount", "mkfs.ext4", "fsfreeze"):
        dslib.need_tool(tool)
    tmp = dslib.mkdtemp("ds-it-freeze-")
    img, mnt = os.path.join(tmp, "spool.img"), os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    r = sh("mkfs.ext4", "-q", "-F", img)
    if r.returncode != 0:
        raise dslib.Skip("mkfs.ext4 failed: " + r.stderr.strip())
    r = sh("mount", "-o", "loop", img, mnt)
    if r.returncode != 0:
        raise dslib.Skip("cannot loop-mount: " + r.stderr.strip())
    try:
        commit_wait(t, mnt)
    finally:
        sh("fsfreeze", "-u", mnt)
        dslib.kill_servers()
        sh("umount", mnt)


if __name__ == "__main__":
    if os.environ.get("DS_IN_MOUNT_NS") != "1" and os.geteuid() == 0 and shutil.which("unshare"):
        env = dict(os.environ, DS_IN_MOUNT_NS="1")
        try:
            os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", sys.executable] + sys.argv, env)
        except OSError:
            pass
    dslib.run(main)
