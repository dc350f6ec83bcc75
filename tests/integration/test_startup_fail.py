#!/usr/bin/env python3
"""Start-up that fails after the worker threads exist: one worker's spool lane
cannot be opened (its directory takes no new files), the other workers are
already up with their rings, provided buffers and connection tables.

The server must exit 1, say which lane failed and that start-up failed, and
tear down everything the workers set up: in an ASan build (DS_SANITIZE=1) the
output must hold no LeakSanitizer or AddressSanitizer report. In an optimized
build the exit status and the messages are still checked. Afterwards the same
spool, repaired, starts normally (the failed start left no lock or state)."""
import os
import re

import dslib

EXIT_TIMEOUT_S = 30.0


def make_lane_unwritable(spool, lane):
    """Make SPOOL/lane-NN a directory that lists fine (recovery reads it) but takes no new file
    (the lane creates its first segment there). Returns how, for the log."""
    path = os.path.join(spool, "lane-%02d" % lane)
    if os.geteuid() != 0:
        os.mkdir(path, 0o500)
        how = "mode 0500"
    else:
        # root ignores permission bits: point the lane at a read-only kernel directory instead.
        os.symlink("/proc/sys", path)
        how = "symlink to /proc/sys"
    probe = os.path.join(path, "000000000001.seg")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError:
        return path, how
    os.close(fd)
    os.unlink(probe)
    raise dslib.Skip("cannot make %s refuse new files here (%s)" % (path, how))


def repair_lane(path):
    if os.path.islink(path):
        os.unlink(path)
    else:
        os.chmod(path, 0o750)


def failed_start(t, threads, lane, asan):
    srv = t.server(threads=threads, extra=["--log-level", "warn"])
    os.makedirs(srv.spool)
    path, how = make_lane_unwritable(srv.spool, lane)
    print("  lane %d of %d: %s (%s)" % (lane, threads, path, how))
    srv.start(wait=False)
    rc = srv.wait(EXIT_TIMEOUT_S)
    if rc is None:
        srv.kill()
        raise dslib.Fail("server still running %.0f s after a failed start\n%s" % (EXIT_TIMEOUT_S, srv.log()))
    srv.stop()
    out = srv.log_text() or ""
    what = "lane %d of %d workers" % (lane, threads)
    t.eq(rc, 1, "%s unusable: exit status 1" % what, out)
    t.check(re.search(r"dotspool: worker %d: spool lane %s: \S" % (lane, re.escape(path)), out),
            "%s: the worker names the lane and the error" % what, out)
    t.check(re.search(r"dotspool: start-up failed: 1 of %d worker\(s\) could not start" % threads, out),
            "%s: 'start-up failed' names how many workers failed" % what, out)
    t.check("ready" not in out and "listening on" not in out, "%s: never says ready" % what, out)
    t.check("LeakSanitizer" not in out, "%s: no LeakSanitizer report%s" % (what, "" if asan else " (not an ASan build)"),
            out)
    t.check("ERROR: AddressSanitizer" not in out and "runtime error:" not in out,
            "%s: no AddressSanitizer/UBSan report" % what, out)
    return srv, path


def main(t):
    asan = dslib.sanitized_build(t.build)
    print("  %s build" % ("ASan" if asan else "non-ASan (leak checks are vacuous)"))
    # Leak checking on whatever the caller's ASAN_OPTIONS say (it is the point of the test).
    opts = os.environ.get("ASAN_OPTIONS", "")
    os.environ["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "detect_leaks=1"

    # The last worker fails while the first is up, and the first fails while the others come up.
    failed_start(t, threads=2, lane=1, asan=asan)
    srv, path = failed_start(t, threads=3, lane=0, asan=asan)

    # Repaired, the same spool starts, takes a message and stops cleanly.
    repair_lane(path)
    srv.start()
    c = dslib.RawSMTP("127.0.0.1", srv.port)
    t.eq(c.reply()[0], 220, "repaired spool: greeting")
    t.eq(c.cmd("EHLO it.example")[0], 250, "EHLO")
    t.eq(c.cmd("MAIL FROM:<a@localhost>")[0], 250, "MAIL")
    t.eq(c.cmd("RCPT TO:<u@localhost>")[0], 250, "RCPT")
    t.eq(c.cmd("DATA")[0], 354, "DATA")
    t.eq(c.cmd("Subject: after a failed start\r\n\r\nhello\r\n.")[0], 250, "message accepted")
    c.quit()
    t.eq(srv.stop(), 0, "repaired spool: server exits 0")
    out = srv.log_text() or ""
    t.check("LeakSanitizer" not in out and "ERROR: AddressSanitizer" not in out,
            "repaired spool: no sanitizer report on a normal stop", out)
    t.eq(len(srv.list()), 1, "the message is in the spool")


dslib.run(main)
