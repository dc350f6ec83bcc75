#!/usr/bin/env python3
"""Parse every sample DSN of deliver/dlv_dsn.c with Python's email package (stdlib only).

    check_dsn.py TEST_DSN     runs TEST_DSN --write DIR (a temporary directory), then checks
                              every DIR/NAME.eml listed in DIR/manifest.jsonl

Checks per DSN: it parses without defects under both the compat32 and the default policy;
multipart/report with report-type=delivery-status and exactly three parts: text/plain,
message/delivery-status (a per-message block with Reporting-MTA and Arrival-Date, then one block
per reported recipient with Final-Recipient, Action failed|delayed, Status x.y.z, matching the
manifest's counts), and the original as message/rfc822 (its bytes equal NAME.orig) or
text/rfc822-headers (decoded, it equals the start of NAME.orig's header section). The bounce is
7-bit unless the manifest says body_8bit / smtputf8; every line ends in CRLF and is at most 998
octets. Exit 0 pass, 1 fail.
"""

import email
import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def fail(name, msg):
    raise AssertionError("%s: %s" % (name, msg))


def header_section(orig):
    """The header section of a stored message, through the CRLF of its last line."""
    if orig.startswith(b"\r\n"):
        return b""
    i = orig.find(b"\r\n\r\n")
    return orig if i < 0 else orig[:i + 2]


def raw_parts(raw, boundary):
    """Split the raw bytes at the boundary: (preamble, [part bytes...]) with each part's headers."""
    delim = b"\r\n--" + boundary.encode()
    pieces = raw.split(delim)
    if not pieces[-1].startswith(b"--\r\n"):
        raise AssertionError("no close delimiter")
    return pieces[0], [p[2:] for p in pieces[1:-1]]  # strip the CRLF after the delimiter


def check(d, m):
    name = m["name"]
    with open(os.path.join(d, name + ".eml"), "rb") as f:
        raw = f.read()
    with open(os.path.join(d, name + ".orig"), "rb") as f:
        orig = f.read()

    # line discipline
    for n, line in enumerate(raw.split(b"\r\n")[:-1]):
        if b"\n" in line or b"\r" in line:
            fail(name, "bare CR or LF in line %d" % (n + 1))
        if len(line) > 998:
            fail(name, "line %d is %d octets" % (n + 1, len(line)))
    if not raw.endswith(b"\r\n"):
        fail(name, "does not end in CRLF")
    head, _, body = raw.partition(b"\r\n\r\n")
    if any(b >= 0x80 for b in head) != m["smtputf8"]:
        fail(name, "8-bit header octets do not match smtputf8=%s" % m["smtputf8"])
    if any(b >= 0x80 for b in body) != m["body_8bit"]:
        fail(name, "8-bit body octets do not match body_8bit=%s" % m["body_8bit"])

    for policy in (email.policy.compat32, email.policy.default):
        msg = email.message_from_bytes(raw, policy=policy)
        if msg.defects:
            fail(name, "defects (%s): %r" % (policy, msg.defects))
        if msg.get_content_type() != "multipart/report":
            fail(name, "content type %s" % msg.get_content_type())
        if msg.get_param("report-type") != "delivery-status":
            fail(name, "report-type %r" % msg.get_param("report-type"))
        if msg.get_boundary() != m["boundary"]:
            fail(name, "boundary %r" % msg.get_boundary())
        if msg["Auto-Submitted"] != "auto-replied":
            fail(name, "Auto-Submitted %r" % msg["Auto-Submitted"])
        if not str(msg["From"]).startswith("MAILER-DAEMON@"):
            fail(name, "From %r" % msg["From"])
        for h in ("Date", "To", "Subject", "Message-ID", "MIME-Version"):
            if msg[h] is None:
                fail(name, "no %s" % h)
        parts = msg.get_payload()
        if not isinstance(parts, list) or len(parts) != 3:
            fail(name, "%s parts" % (len(parts) if isinstance(parts, list) else "no"))
        for p in parts:
            if p.defects:
                fail(name, "part defects: %r" % p.defects)
        if parts[0].get_content_type() != "text/plain":
            fail(name, "part 1 is %s" % parts[0].get_content_type())
        text = parts[0].get_payload(decode=True).decode(parts[0].get_content_charset() or "ascii")
        if "mail delivery system" not in text:
            fail(name, "text part: %r" % text[:200])

        if parts[1].get_content_type() != "message/delivery-status":
            fail(name, "part 2 is %s" % parts[1].get_content_type())
        blocks = parts[1].get_payload()
        if not isinstance(blocks, list) or len(blocks) < 2:
            fail(name, "delivery-status blocks: %r" % blocks)
        per_msg, per_rcpt = blocks[0], blocks[1:]
        if not str(per_msg["Reporting-MTA"]).startswith("dns; "):
            fail(name, "Reporting-MTA %r" % per_msg["Reporting-MTA"])
        if per_msg["Arrival-Date"] is None:
            fail(name, "no Arrival-Date")
        actions = {"failed": 0, "delayed": 0}
        for b in per_rcpt:
            fr = b["Final-Recipient"]
            if fr is None or not re.match(r"^(rfc822|utf-8); \S+$", str(fr)):
                fail(name, "Final-Recipient %r" % fr)
            act = str(b["Action"])
            if act not in actions:
                fail(name, "Action %r" % act)
            actions[act] += 1
            if not STATUS_RE.match(str(b["Status"])):
                fail(name, "Status %r" % b["Status"])
            if act == "delayed" and not str(b["Status"]).startswith("4."):
                fail(name, "delayed with Status %s" % b["Status"])
            dc = b["Diagnostic-Code"]
            if dc is not None and not re.match(r"^[a-z0-9-]+; ", re.sub(r"\s+", " ", str(dc))):
                fail(name, "Diagnostic-Code %r" % dc)
            orc = b["Original-Recipient"]
            if orc is not None and not re.match(r"^(rfc822|utf-8); \S+$", str(orc)):
                fail(name, "Original-Recipient %r" % orc)
        if actions["failed"] != m["failed"] or actions["delayed"] != m["delayed"]:
            fail(name, "actions %r, manifest %r" % (actions, m))

        ct = parts[2].get_content_type()
        if m["orig"] == "full":
            if ct != "message/rfc822":
                fail(name, "part 3 is %s, manifest full" % ct)
            inner = parts[2].get_payload()
            if not isinstance(inner, list) or len(inner) != 1:
                fail(name, "message/rfc822 payload %r" % inner)
        else:
            if ct != "text/rfc822-headers":
                fail(name, "part 3 is %s, manifest %s" % (ct, m["orig"]))
            got = parts[2].get_payload(decode=True)
            want = header_section(orig)
            if m["orig"] == "headers":
                # the part's content ends with the header section's last CRLF (the delimiter's CRLF
                # is not content); bare LF originals compare after the decoding
                if got != want:
                    fail(name, "headers part differs: %r vs %r" % (got[:200], want[:200]))
            elif not (want.startswith(got) and len(got) < len(want)):
                fail(name, "cut headers part is not a prefix of the header section")

    # byte for byte: the original as it travels
    boundary = m["boundary"]
    _, rparts = raw_parts(raw, boundary)
    if len(rparts) != 3:
        fail(name, "%d raw parts" % len(rparts))
    ph, _, content = rparts[2].partition(b"\r\n\r\n")
    if m["orig"] == "full":
        if content != orig:
            fail(name, "message/rfc822 content differs from the original")
    elif b"quoted-printable" not in ph.lower() and content != header_section(orig)[:len(content)]:
        fail(name, "7bit headers part differs from the original")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    d = tempfile.mkdtemp(prefix="ds-dsn-")
    try:
        cp = subprocess.run([sys.argv[1], "--write", d], timeout=60)
        if cp.returncode != 0:
            print("FAIL: %s --write exited %d" % (sys.argv[1], cp.returncode))
            return 1
        with open(os.path.join(d, "manifest.jsonl")) as f:
            manifest = [json.loads(line) for line in f if line.strip()]
        if len(manifest) < 10:
            print("FAIL: only %d samples" % len(manifest))
            return 1
        bad = 0
        for m in manifest:
            try:
                check(d, m)
                print("ok   %s (%s, failed %d, delayed %d)" % (m["name"], m["orig"], m["failed"], m["delayed"]))
            except AssertionError as e:
                print("FAIL", e)
                bad += 1
        return 1 if bad else 0
    finally:
        if os.environ.get("DS_KEEP"):
            print("kept", d)
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
