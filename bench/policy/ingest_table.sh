#!/bin/sh
# SPDX-License-Identifier: MIT
# Ingest msg/s with and without a 1 M-address recipient table (issue 17), in
# one run: two servers (same flags but --recipients), measured alternately
# ROUNDS times each with the same dotspool-bench load; prints every round and
# the ratio of the medians. Loopback, temporary spools under $TMPDIR, servers
# stopped by PID. A shared machine is noisy: read the ratio, not the numbers.
#
#   bench/policy/ingest_table.sh [BUILD_DIR] [SECONDS] [ROUNDS] [ADDRESSES]
#
# A third server has the table and the throttles on for loopback too
# (--trusted-network none, limits far above the load): the cost of the shared
# throttle table (a striped mutex at connect, MAIL and RCPT).
set -eu
BUILD=${1:-build}
SECS=${2:-5}
ROUNDS=${3:-3}
N=${4:-1000000}
T=$(mktemp -d "${TMPDIR:-/tmp}/ds-ingest-table.XXXXXX")
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$T"; }
trap cleanup EXIT INT TERM
# The bench's recipients (user0..999@localhost) and N - 1000 others, several domains.
python3 - "$T/recipients" "$N" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    for i in range(1000):
        f.write("user%d@localhost\n" % i)
    for i in range(n - 1000):
        f.write("first.last%d@dom%d.example\n" % (i, i % 100))
PY
port_a=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
port_b=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
port_c=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BUILD/dotspool" --listen 127.0.0.1:$port_a --spool "$T/a" --threads 1 >"$T/a.log" 2>&1 & PIDS="$PIDS $!"
"$BUILD/dotspool" --listen 127.0.0.1:$port_b --spool "$T/b" --threads 1 --recipients "$T/recipients" >"$T/b.log" 2>&1 & PIDS="$PIDS $!"
"$BUILD/dotspool" --listen 127.0.0.1:$port_c --spool "$T/c" --threads 1 --recipients "$T/recipients" \
	--trusted-network none --client-connection-rate-max 1000000 --client-message-rate-max 1000000 \
	--client-recipient-rate-max 10000000 >"$T/c.log" 2>&1 & PIDS="$PIDS $!"
sleep 4
grep -h "recipients:" "$T/b.log" || { cat "$T/b.log"; exit 1; }
run() { "$BUILD/dotspool-bench" --server 127.0.0.1:$1 --connections 16 --size 4096 --duration "$SECS" --json 2>/dev/null |
	python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%.0f %d" % (r["messages_per_s"], r["messages_failed"]))'; }
a=""; b=""; c=""
for i in $(seq 1 "$ROUNDS"); do
	ra=$(run $port_a); rb=$(run $port_b); rc=$(run $port_c)
	echo "round $i: without table ${ra%% *} msg/s (failed ${ra##* }), with ${N}-address table ${rb%% *} msg/s (failed ${rb##* }), table + throttles ${rc%% *} msg/s (failed ${rc##* })"
	a="$a ${ra%% *}"; b="$b ${rb%% *}"; c="$c ${rc%% *}"
done
python3 - "$a" "$b" "$c" <<'PY'
import statistics, sys
a, b, c = ([float(x) for x in v.split()] for v in sys.argv[1:4])
ma, mb, mc = statistics.median(a), statistics.median(b), statistics.median(c)
print("median msg/s: without %.0f, with table %.0f, table + throttles %.0f; ratios with/without %.3f, "
      "table+throttles/without %.3f" % (ma, mb, mc, mb / ma, mc / ma))
PY
