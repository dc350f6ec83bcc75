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
"$BUILD/dotspool" --listen 127.0.0.1:$port_a --spool "$T/a" --threads 1 >"$T/a.log" 2>&1 & pid_a=$!
"$BUILD/dotspool" --listen 127.0.0.1:$port_b --spool "$T/b" --threads 1 --recipients "$T/recipients" >"$T/b.log" 2>&1 & pid_b=$!
"$BUILD/dotspool" --listen 127.0.0.1:$port_c --spool "$T/c" --threads 1 --recipients "$T/recipients" \
	--trusted-network none --client-connection-rate-max 1000000 --client-message-rate-max 1000000 \
	--client-recipient-rate-max 10000000 >"$T/c.log" 2>&1 & pid_c=$!
PIDS="$pid_a $pid_b $pid_c"
sleep 4
grep -h "recipients:" "$T/b.log" || { cat "$T/b.log"; exit 1; }
# One measurement: "msg/s failed cpu_us_per_msg" (the server's user+system CPU time per message
# accepted, from /proc/PID/stat: far less sensitive than msg/s to other load on a shared machine).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {
	c0=$(cpu_ticks "$2")
	out=$("$BUILD/dotspool-bench" --server 127.0.0.1:$1 --connections 16 --size 4096 --duration "$SECS" --json 2>/dev/null)
	c1=$(cpu_ticks "$2")
	echo "$out" | python3 -c 'import json,os,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); hz=os.sysconf("SC_CLK_TCK"); n=max(r["messages_ok"],1); print("%.0f %d %.1f" % (r["messages_per_s"], r["messages_failed"], (int(sys.argv[2])-int(sys.argv[1]))*1e6/hz/n))' "$c0" "$c1"
}
a=""; b=""; c=""; ca=""; cb=""; cc=""
for i in $(seq 1 "$ROUNDS"); do
	set -- $(run $port_a $pid_a); ra=$1; fa=$2; ua=$3
	set -- $(run $port_b $pid_b); rb=$1; fb=$2; ub=$3
	set -- $(run $port_c $pid_c); rc=$1; fc=$2; uc=$3
	echo "round $i: without table $ra msg/s ($ua us CPU/msg, failed $fa); with ${N}-address table $rb msg/s ($ub us, failed $fb); table + throttles $rc msg/s ($uc us, failed $fc)"
	a="$a $ra"; b="$b $rb"; c="$c $rc"; ca="$ca $ua"; cb="$cb $ub"; cc="$cc $uc"
done
python3 - "$a" "$b" "$c" "$ca" "$cb" "$cc" <<'PY'
import statistics, sys
a, b, c, ca, cb, cc = ([float(x) for x in v.split()] for v in sys.argv[1:7])
m = [statistics.median(x) for x in (a, b, c, ca, cb, cc)]
print("median msg/s: without %.0f, with table %.0f, table + throttles %.0f; ratios with/without %.3f, "
      "table+throttles/without %.3f" % (m[0], m[1], m[2], m[1] / m[0], m[2] / m[0]))
print("median server CPU us/msg: without %.1f, with table %.1f, table + throttles %.1f; ratios %.3f, %.3f"
      % (m[3], m[4], m[5], m[4] / m[3], m[5] / m[3]))
PY
