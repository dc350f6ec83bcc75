# SPDX-License-Identifier: MIT
"""The shape of dotspool-bench's --json output, shared by run_modes.py (against the Python sink) and
run_against_dotspool.py (against a real dotspool). Stdlib only.

Fail, Skip and check are dslib's (tests/integration/dslib.py), so one exception type serves the
scripts and every helper they share.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import dslib  # noqa: E402

Fail = dslib.Fail
Skip = dslib.Skip

LAT_PHASES = ["connect", "banner", "ehlo", "starttls", "mail", "rcpt", "data", "final_dot", "message"]
LAT_KEYS = ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"]
# What every run's JSON has; run_against_dotspool.py checks the whole configuration too.
TOP_KEYS = ["messages_ok", "messages_failed", "errors_by_code", "elapsed_s", "messages_per_s",
            "mb_per_s", "latency_us", "bytes_ok", "server_pipelining"]


def check(cond, what):
    if not cond:
        raise Fail(what)


def check_shape(j, top_keys=TOP_KEYS):
    """Keys present, latency percentiles monotonic, rates consistent with counts and elapsed time."""
    for k in top_keys:
        check(k in j, "JSON lacks %s" % k)
    check(isinstance(j["errors_by_code"], dict), "errors_by_code not an object")
    for ph in LAT_PHASES:
        check(ph in j["latency_us"], "latency_us lacks %s" % ph)
        l = j["latency_us"][ph]
        for k in LAT_KEYS:
            check(isinstance(l.get(k), (int, float)), "latency_us.%s.%s missing" % (ph, k))
        if l["count"] > 0:
            check(l["min"] <= l["p50"] <= l["p90"] <= l["p99"] <= l["p999"] <= l["max"],
                  "latency_us.%s not monotonic: %r" % (ph, l))
    if j["elapsed_s"] > 0:
        check(abs(j["messages_per_s"] - j["messages_ok"] / j["elapsed_s"]) <= 0.01 * j["messages_per_s"] + 0.01,
              "messages_per_s inconsistent: %r" % j)
        check(abs(j["mb_per_s"] - j["bytes_ok"] / 1e6 / j["elapsed_s"]) <= 0.01 * j["mb_per_s"] + 1e-6,
              "mb_per_s inconsistent: %r" % j)
    check(j["messages_ok"] + j["messages_failed"] >= 0, "counts")


def parse_one(stdout, top_keys=TOP_KEYS):
    """The single JSON line a --json run prints, shape-checked."""
    lines = [l for l in stdout.splitlines() if l.strip()]
    check(len(lines) == 1, "want exactly one JSON line, got %r" % stdout[:500])
    j = json.loads(lines[0])
    check_shape(j, top_keys)
    return j
