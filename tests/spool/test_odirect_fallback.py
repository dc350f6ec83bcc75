#!/usr/bin/env python3
"""--spool-io direct where O_DIRECT is refused: the real server falls back to buffered writes.

tmpfs and ext4 on this kernel accept O_DIRECT, so the refusal is simulated: the LD_PRELOAD shim
ds_odirect_einval.so (tests/spool/odirect_einval.c, built next to dotspool) makes every
open/open64/openat with O_DIRECT fail with EINVAL. Under it, `dotspool --spool-io direct`
(two worker lanes, a fresh spool on loopback) must:

  * answer 250 to every message (two connections, several sizes);
  * log "O_DIRECT refused ... falls back to buffered" exactly once (for all lanes), and nothing at
    error level;
  * write no block padding (dotspool_spool_pad_bytes_total stays 0: the lanes really are buffered);
  * leave a spool that `dotspool-ctl verify` passes and `dotspool-ctl list` shows in full, each
    message byte for byte (`cat`);
  * exit 0 on SIGTERM (stopped by its PID).

A control run without the shim, when the spool's file system takes O_DIRECT, shows no such log
line and pad bytes > 0, so the fallback above is the shim's doing.

Sanitizer builds: the ASan runtime wants to be first in the library list; the shim is preloaded
with ASAN_OPTIONS=verify_asan_link_order=0. If the server still cannot run under the shim in that
configuration, the test exits 77 and says why (only there: in other builds that is a failure).

Usage: test_odirect_fallback.py --build BUILD_DIR   (exit 0 pass, 1 fail, 77 skip)
"""
import os
import re
import smtplib
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import dslib  # noqa: E402

SHIM = "ds_odirect_einval.so"
REFUSED_RE = re.compile(r"O_DIRECT refused on \S+ \(EINVAL\): spool-io direct falls back to buffered")
SHIM_LINE = "odirect_einval shim: O_DIRECT open of"
METRICS_REFRESH_S = 2.5  # the worker refreshes spool gauges once a second


def odirect_works(path):
    probe = os.path.join(path, ".odirect-probe")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def pad_bytes(port):
    """Sum of dotspool_spool_pad_bytes_total over the workers."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        body = r.read().decode("utf-8", "replace")
    vals = [float(m.group(1)) for m in re.finditer(r"(?m)^dotspool_spool_pad_bytes_total(?:\{[^}]*\})? (\S+)$",
                                                   body)]
    if not vals:
        raise dslib.Fail("no dotspool_spool_pad_bytes_total in /metrics:\n%s" % body[:2000])
    return sum(vals)


def message(n, size):
    head = ("From: it@localhost\r\nTo: u@localhost\r\nSubject: odirect fallback %d\r\n"
            "Message-ID: <odirect.%d@it.example>\r\n\r\n" % (n, n)).encode()
    return head + dslib.body_lines(size, tag="m%d" % n)


def send(t, srv, sizes, first=0):
    """One connection per two messages; every final dot must get 250. Returns [(qid, data)]."""
    sent = []
    n = first
    for k in range(0, len(sizes), 2):
        smtp = smtplib.SMTP("127.0.0.1", srv.port, timeout=30)
        try:
            t.eq(smtp.ehlo("it.example")[0], 250, "EHLO -> 250")
            for size in sizes[k:k + 2]:
                data = message(n, size)
                t.eq(smtp.mail("a@localhost")[0], 250, "message %d: MAIL -> 250" % n)
                t.eq(smtp.rcpt("u@localhost")[0], 250, "message %d: RCPT -> 250" % n)
                code, resp = smtp.data(data)
                t.eq(code, 250, "message %d (%d bytes): final dot -> 250" % (n, len(data)), resp)
                qid = dslib.queued_id(resp)
                t.check(qid is not None, "message %d: reply names the queue id (%r)" % (n, resp))
                sent.append((qid, data))
                n += 1
            smtp.quit()
        finally:
            smtp.close()
    return sent


def server(t, spool, env):
    mport = dslib.free_port()
    srv = t.server(spool=spool, threads=2, env=env,
                   extra=["--spool-io", "direct", "--segment-size", "1M", "--spool-buffer-size", "256K",
                          "--metrics", "127.0.0.1:%d" % mport])
    srv.metrics_port = mport
    return srv


def stop(t, srv, what):
    rc = srv.stop()
    t.eq(rc, 0, "%s: server stopped by its PID (SIGTERM) exits 0" % what)


def check_spool(t, srv, sent, what):
    cp = srv.verify()
    out = cp.stdout.decode("utf-8", "replace")
    t.eq(cp.returncode, 0, "%s: dotspool-ctl verify exits 0" % what, out + cp.stderr.decode("utf-8", "replace"))
    m = re.search(r"verify: OK: .* (\d+) messages,", out)
    t.check(m is not None and int(m.group(1)) == len(sent), "%s: verify counts %d messages" % (what, len(sent)),
            out)
    entries = srv.list()
    t.eq(sorted(str(e["id"]) for e in entries), sorted(q for q, _ in sent),
         "%s: dotspool-ctl list shows exactly the acknowledged messages" % what)
    for qid, data in sent:
        t.check_stored(srv, dslib.entry_by_id(entries, qid), data, "%s: message %s" % (what, qid))


def main(t):
    shim = os.path.join(t.build, SHIM)
    if not os.path.exists(shim):
        raise dslib.Fail("shim missing: %s (build target ds_odirect_einval)" % shim)
    asan = dslib.sanitized_build(t.build)
    env = {"LD_PRELOAD": shim}
    if asan:
        env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":")
    sizes = [300, 5000, 70000, 700, 200000]

    # Under the shim: O_DIRECT refused, buffered lanes.
    spool = os.path.join(dslib.mkdtemp("ds-odirect-"), "spool")
    srv = server(t, spool, env)
    try:
        srv.start()
    except dslib.Fail as e:
        if asan:
            raise dslib.Skip("sanitizer build: the server does not start with the LD_PRELOAD shim "
                             "(ASan runtime and preloaded library order): %s" % str(e)[:500])
        raise
    log = srv.log_text() or ""
    if asan and SHIM_LINE not in log and not REFUSED_RE.search(log):
        srv.stop()
        raise dslib.Skip("sanitizer build: the LD_PRELOAD shim did not take effect on the server's open() "
                         "(ASan interceptors), so O_DIRECT was not refused")
    sent = send(t, srv, sizes)
    time.sleep(METRICS_REFRESH_S)
    t.eq(pad_bytes(srv.metrics_port), 0.0, "shim: no block padding written (lanes fell back to buffered)")
    stop(t, srv, "shim")
    log = srv.log_text() or ""
    t.check(SHIM_LINE in log, "shim: the preloaded shim refused an O_DIRECT open", log[-3000:])
    hits = REFUSED_RE.findall(log)
    t.eq(len(hits), 1, "shim: 'O_DIRECT refused ... falls back to buffered' logged exactly once", log[-3000:])
    for bad in ("level=error", "AddressSanitizer", "LeakSanitizer", "runtime error:"):
        t.check(bad not in log, "shim: no %r in the server log" % bad, log[-3000:])
    check_spool(t, srv, sent, "shim")

    # Control: the same server without the shim takes the direct path where O_DIRECT works.
    spool = os.path.join(dslib.mkdtemp("ds-odirect-ctl-"), "spool")
    os.makedirs(spool)
    if not odirect_works(spool):
        print("  note: %s refuses O_DIRECT itself; control run skipped" % spool)
        return
    srv = server(t, spool, {})
    srv.start()
    sent = send(t, srv, sizes[:2], first=100)
    deadline = time.monotonic() + 3 * METRICS_REFRESH_S
    pad = pad_bytes(srv.metrics_port)
    while pad == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        pad = pad_bytes(srv.metrics_port)
    t.check(pad > 0, "control (no shim): direct lanes write block padding (%d bytes)" % pad)
    stop(t, srv, "control")
    log = srv.log_text() or ""
    t.check(not REFUSED_RE.search(log) and SHIM_LINE not in log, "control: no O_DIRECT refusal logged",
            log[-3000:])
    check_spool(t, srv, sent, "control")


if __name__ == "__main__":
    dslib.run(main, "spool_odirect_einval")
