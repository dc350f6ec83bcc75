#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Strict checker of the Prometheus text exposition format 0.0.4.

Usage: check_exposition.py FILE|-            check a body
       check_exposition.py --exe DUMP         run DUMP body and DUMP http, check both
       check_exposition.py --url URL          fetch URL (GET) and check the response
       ... --dlv                              also require the delivery families (issue 14)

Checks every line parses (HELP, TYPE, sample with labels and a float
value), that a family's TYPE comes before its samples and its samples are
contiguous, no duplicate series, counters >= 0, histogram buckets are
cumulative with increasing le ending in +Inf, +Inf == _count, and every
name starts with dotspool_. Exits 0 when valid, 1 with the first error.
With --dlv: every delivery family is there with its type, the same
non-empty set of hops in each per-hop family, every outcome per hop,
every queue state, hop_up 0 or 1, and no worker label (server totals).
"""
import math
import re
import subprocess
import sys
import urllib.request

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"[+-]?(?:Inf|NaN|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
SAMPLE_RE = re.compile(
    rf"^(?P<name>{NAME})(?:\{{(?P<labels>(?:{LABEL})(?:,{LABEL})*)?,?\}})? (?P<value>{VALUE})(?: -?[0-9]+)?$"
)
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
HELP_RE = re.compile(rf"^# HELP (?P<name>{NAME}) (?P<doc>.*)$")
TYPE_RE = re.compile(rf"^# TYPE (?P<name>{NAME}) (?P<type>counter|gauge|histogram|summary|untyped)$")
PREFIX = "dotspool_"


class Bad(Exception):
    pass


def parse_value(v):
    if v.lstrip("+-") == "Inf":
        return -math.inf if v.startswith("-") else math.inf
    return float(v)


def family_of(name, types):
    if name in types:
        return name
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and name[: -len(suf)] in types:
            return name[: -len(suf)]
    return None


def check(text):
    if not text.endswith("\n"):
        raise Bad("text does not end with a newline")
    types = {}
    helps = set()
    seen_series = set()
    done_families = set()
    current = None
    hist = {}  # (family, labels without le) -> {"buckets": [(le, v)], "count": v, "sum": v}
    samples = 0
    for no, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {no}: {line!r}"
        if line == "":
            raise Bad(f"{where}: empty line")
        if line.startswith("#"):
            m = HELP_RE.match(line)
            if m:
                if m["name"] in helps:
                    raise Bad(f"{where}: second HELP")
                helps.add(m["name"])
                continue
            m = TYPE_RE.match(line)
            if m:
                if m["name"] in types:
                    raise Bad(f"{where}: second TYPE")
                types[m["name"]] = m["type"]
                continue
            if line.startswith("# HELP") or line.startswith("# TYPE"):
                raise Bad(f"{where}: malformed HELP/TYPE")
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise Bad(f"{where}: not a sample")
        name = m["name"]
        if not name.startswith(PREFIX):
            raise Bad(f"{where}: name without {PREFIX}")
        fam = family_of(name, types)
        if fam is None:
            raise Bad(f"{where}: sample before its TYPE")
        if fam != current:
            if fam in done_families:
                raise Bad(f"{where}: family {fam} not contiguous")
            if current:
                done_families.add(current)
            current = fam
        labels = LABEL_RE.findall(m["labels"] or "")
        names = [k for k, _ in labels]
        if len(set(names)) != len(names):
            raise Bad(f"{where}: duplicate label")
        key = (name, tuple(sorted(labels)))
        if key in seen_series:
            raise Bad(f"{where}: duplicate series")
        seen_series.add(key)
        value = parse_value(m["value"])
        samples += 1
        t = types[fam]
        if t == "counter" and not (value >= 0):
            raise Bad(f"{where}: negative counter")
        if t == "histogram":
            rest = tuple(sorted((k, v) for k, v in labels if k != "le"))
            h = hist.setdefault((fam, rest), {"buckets": [], "count": None, "sum": None})
            if name == fam + "_bucket":
                le = dict(labels).get("le")
                if le is None:
                    raise Bad(f"{where}: bucket without le")
                h["buckets"].append((parse_value(le), value, no))
            elif name == fam + "_count":
                h["count"] = value
            elif name == fam + "_sum":
                h["sum"] = value
            else:
                raise Bad(f"{where}: stray sample in histogram {fam}")
        elif name != fam:
            raise Bad(f"{where}: sample name differs from its family {fam}")
    for (fam, rest), h in hist.items():
        b = h["buckets"]
        what = f"histogram {fam}{dict(rest)}"
        if not b or h["count"] is None or h["sum"] is None:
            raise Bad(f"{what}: missing buckets, _sum or _count")
        for (le0, v0, _), (le1, v1, no) in zip(b, b[1:]):
            if not le1 > le0:
                raise Bad(f"{what}: le not increasing at line {no}")
            if v1 < v0:
                raise Bad(f"{what}: buckets not cumulative at line {no}")
        if b[-1][0] != math.inf:
            raise Bad(f"{what}: last bucket is not +Inf")
        if b[-1][1] != h["count"]:
            raise Bad(f"{what}: +Inf bucket {b[-1][1]} != _count {h['count']}")
        if h["sum"] < 0:
            raise Bad(f"{what}: negative _sum")
    for fam in types:
        if fam not in helps:
            raise Bad(f"family {fam} without HELP")
    return samples, len(types), len(hist)


DLV_FAMILIES = {
    "dotspool_queue_messages": ("gauge", ("state",)),
    "dotspool_queue_bytes": ("gauge", ("state",)),
    "dotspool_queue_recipients_open": ("gauge", ()),
    "dotspool_queue_oldest_message_age_seconds": ("gauge", ()),
    "dotspool_deliveries_total": ("counter", ("hop", "outcome")),
    "dotspool_delivery_attempts_total": ("counter", ("hop",)),
    "dotspool_delivery_latency_seconds": ("histogram", ()),
    "dotspool_redeliveries_total": ("counter", ()),
    "dotspool_delivery_possible_duplicates_total": ("counter", ()),
    "dotspool_deliver_connections": ("gauge", ("hop",)),
    "dotspool_deliver_connections_total": ("counter", ("hop",)),
    "dotspool_deliver_connect_failures_total": ("counter", ("hop",)),
    "dotspool_deliver_hop_up": ("gauge", ("hop",)),
    "dotspool_dsn_total": ("counter", ()),
    "dotspool_outcome_records_total": ("counter", ()),
    "dotspool_outcome_record_errors_total": ("counter", ()),
}


def check_dlv(text):
    """The delivery families of issue 14, on a text check() accepted."""
    types = dict(m.groups() for m in re.finditer(rf"^# TYPE ({NAME}) (\S+)$", text, re.M))
    series = {}  # family -> list of (labels dict, value)
    for line in text.split("\n"):
        m = SAMPLE_RE.match(line)
        if m and m["name"] in DLV_FAMILIES:
            series.setdefault(m["name"], []).append((dict(LABEL_RE.findall(m["labels"] or "")), parse_value(m["value"])))
    hops = None
    for fam, (want_type, keys) in DLV_FAMILIES.items():
        if types.get(fam) != want_type:
            raise Bad(f"--dlv: family {fam} has type {types.get(fam)}, want {want_type}")
        if want_type == "histogram":
            continue
        got = series.get(fam, [])
        if not got and "hop" not in keys:
            raise Bad(f"--dlv: family {fam} has no sample")
        for labels, value in got:
            if tuple(sorted(labels)) != tuple(sorted(keys)):
                raise Bad(f"--dlv: {fam} labels {sorted(labels)}, want {sorted(keys)}")
            if want_type == "gauge" and value < 0:
                raise Bad(f"--dlv: {fam} negative")
        if "state" in keys and sorted(l["state"] for l, _ in got) != ["active", "deferred", "new"]:
            raise Bad(f"--dlv: {fam} states {[l['state'] for l, _ in got]}")
        if "hop" in keys:
            fam_hops = sorted({l["hop"] for l, _ in got})
            if not fam_hops:
                raise Bad(f"--dlv: {fam} has no hop")
            if hops is None:
                hops = fam_hops
            elif fam_hops != hops:
                raise Bad(f"--dlv: {fam} hops {fam_hops} differ from {hops}")
            per_hop = 3 if "outcome" in keys else 1
            if len(got) != per_hop * len(hops):
                raise Bad(f"--dlv: {fam} has {len(got)} samples for {len(hops)} hops")
        if "outcome" in keys:
            for h in hops:
                outs = sorted(l["outcome"] for l, _ in got if l["hop"] == h)
                if outs != ["deferred", "delivered", "failed"]:
                    raise Bad(f"--dlv: {fam} hop {h!r} outcomes {outs}")
        if fam == "dotspool_deliver_hop_up" and any(v not in (0, 1) for _, v in got):
            raise Bad(f"--dlv: {fam} not 0/1")
    if not re.search(r'^dotspool_delivery_latency_seconds_bucket\{le="\+Inf"\} ', text, re.M):
        raise Bad("--dlv: dotspool_delivery_latency_seconds has no server-wide +Inf bucket")
    return len(hops)


def selftest_dlv(text):
    """check_dlv must reject broken variants of a valid text with the delivery families."""
    lines = text.split("\n")
    hop_line = next(l for l in lines if l.startswith("dotspool_deliver_hop_up{"))
    out_line = next(l for l in lines if l.startswith("dotspool_deliveries_total{") and 'outcome="failed"' in l)
    up_line = next(l for l in lines if l.startswith("dotspool_deliver_hop_up{"))
    mutants = {
        "raw quote in a hop": text.replace(hop_line, hop_line.replace('{hop="', '{hop="a"b', 1)),
        "missing outcome": "\n".join(l for l in lines if l != out_line),
        "hop_up 2": text.replace(up_line, up_line.rsplit(" ", 1)[0] + " 2"),
        "missing family": "\n".join(l for l in lines if not l.startswith("dotspool_dsn_total")),
        "worker label": text.replace("dotspool_queue_recipients_open ", 'dotspool_queue_recipients_open{worker="0"} ', 1),
    }
    for what, t in mutants.items():
        try:
            check(t)
            check_dlv(t)
        except Bad:
            continue
        raise Bad(f"selftest --dlv: mutant '{what}' was accepted")
    return len(mutants)


def selftest(text):
    """The checker must reject broken variants of a valid text."""
    lines = text.split("\n")
    bucket = next(i for i, l in enumerate(lines) if "_bucket{" in l and 'le="0.0001"' in l and not l.endswith(" 0"))
    inf = next(i for i, l in enumerate(lines) if 'le="+Inf"' in l)
    count = next(i for i, l in enumerate(lines) if "_count{" in l)
    mutants = {
        "no final newline": text[:-1],
        "non-cumulative": "\n".join(l if i != bucket else l.rsplit(" ", 1)[0] + " 0" for i, l in enumerate(lines)),
        "inf != count": "\n".join(l if i != count else l.rsplit(" ", 1)[0] + " 999999999" for i, l in enumerate(lines)),
        "no +Inf": "\n".join(l for i, l in enumerate(lines) if i != inf),
        "duplicate": text + lines[count] + "\n",
        "bad value": text.replace(lines[count], lines[count].rsplit(" ", 1)[0] + " 12x", 1),
        "bad label": text.replace('worker="0"', "worker=0", 1),
        "not contiguous": text + "dotspool_connections_total{worker=\"9\"} 1\n",
        "no TYPE": text + "dotspool_new_thing 1\n",
        "negative counter": "\n".join(l.rsplit(" ", 1)[0] + " -1" if l.startswith("dotspool_connections_total{") else l for l in lines),
        "empty line": text + "\n",
    }
    for what, t in mutants.items():
        try:
            check(t)
        except Bad:
            continue
        raise Bad(f"selftest: mutant '{what}' was accepted")
    return len(mutants)


def check_http(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise Bad("no end of headers")
    lines = head.decode("ascii").split("\r\n")
    if lines[0] != "HTTP/1.0 200 OK":
        raise Bad(f"status line {lines[0]!r}")
    hdr = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    if not hdr.get("content-type", "").startswith("text/plain; version=0.0.4"):
        raise Bad(f"content-type {hdr.get('content-type')!r}")
    if int(hdr.get("content-length", "-1")) != len(body):
        raise Bad(f"content-length {hdr.get('content-length')} != body {len(body)}")
    return body.decode("utf-8")


def main(argv):
    dlv = "--dlv" in argv
    argv = [a for a in argv if a != "--dlv"]
    try:
        if len(argv) == 3 and argv[1] == "--exe":
            body = subprocess.run([argv[2], "body"], check=True, capture_output=True, timeout=30).stdout
            s, f, h = check(body.decode("utf-8"))
            raw = subprocess.run([argv[2], "http"], check=True, capture_output=True, timeout=30).stdout
            body2 = check_http(raw)
            if body2 != body.decode("utf-8"):
                raise Bad("HTTP body differs from the rendered text")
            n = selftest(body.decode("utf-8"))
            if dlv:
                check_dlv(body.decode("utf-8"))
                n += selftest_dlv(body.decode("utf-8"))
            print(f"check_exposition: selftest: {n} broken variants rejected")
        elif len(argv) == 3 and argv[1] == "--url":
            with urllib.request.urlopen(argv[2], timeout=10) as r:
                if r.status != 200 or not r.headers["Content-Type"].startswith("text/plain; version=0.0.4"):
                    raise Bad(f"status {r.status}, content-type {r.headers['Content-Type']}")
                text = r.read().decode("utf-8")
                s, f, h = check(text)
            if dlv:
                check_dlv(text)
        elif len(argv) == 2:
            text = sys.stdin.read() if argv[1] == "-" else open(argv[1], encoding="utf-8").read()
            s, f, h = check(text)
            if dlv:
                check_dlv(text)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Bad as e:
        print(f"check_exposition: INVALID: {e}", file=sys.stderr)
        return 1
    print(f"check_exposition: OK: {s} samples, {f} families, {h} histograms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
