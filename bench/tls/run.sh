#!/bin/sh
# TLS numbers for issue 6, in one run on this machine:
#  1. handshakes per second per core (server side only, dotspool-tlsbench);
#  2. messages/s over STARTTLS vs plaintext, 32 connections, closed loop;
#  3. final-dot p50/p99 of plaintext sessions on ONE worker (one core), alone
#     and while the same worker does full handshakes at HS_RATE/s
#     (one new STARTTLS connection per message).
# Usage: bench/tls/run.sh [BUILD_DIR]   env: SECONDS_PER_RUN (10), HS_RATE (100), PT_RATE (2000)
set -eu
cd "$(dirname "$0")/../.."
B=${1:-build}
T=${SECONDS_PER_RUN:-10}
HS_RATE=${HS_RATE:-100}
PT_RATE=${PT_RATE:-2000}
W=$(mktemp -d /tmp/ds-tlsbench.XXXXXX)
PID=
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT
scripts/gen-test-cert.sh "$W/cert" >/dev/null 2>&1

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # threads
	P=$(port)
	rm -rf "$W/spool"
	"$B/dotspool" --listen "127.0.0.1:$P" --spool "$W/spool" --threads "$1" --log-level warn \
		--segment-size 64M --tls-cert "$W/cert/server.pem" --tls-key "$W/cert/server.key" \
		>"$W/server.log" 2>&1 &
	PID=$!
	for _ in $(seq 50); do
		python3 -c "import socket; socket.create_connection(('127.0.0.1',$P),0.2).close()" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "server did not start" >&2
	cat "$W/server.log" >&2
	exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }

# jq is not assumed: a tiny reader for the bench's JSON.
row() { # label json-file
	python3 - "$1" "$2" <<'EOF'
import json, sys
j = json.load(open(sys.argv[2]))
fd = j["latency_us"]["final_dot"]
print("| %-44s | %9.0f | %9d | %8.3f | %8.3f | %8.3f |" % (sys.argv[1], j["messages_per_s"], j["messages_failed"],
      fd["p50"] / 1000, fd["p99"] / 1000, fd["p999"] / 1000))
EOF
}

echo "## dotspool TLS numbers, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r)"
echo
echo "### Handshakes per second per core (server side, dotspool-tlsbench --seconds 3)"
"$B/dotspool-tlsbench" --seconds 3 2>&1 | sed 's/^/    /'
echo
echo "| run | msg/s | failed | final-dot p50 ms | p99 ms | p99.9 ms |"
echo "|---|---|---|---|---|---|"
start 2
"$B/dotspool-bench" --server "127.0.0.1:$P" --connections 32 --duration "$T" --json --quiet >"$W/pt.json"
row "plaintext, 32 conns, closed loop, 2 workers" "$W/pt.json"
"$B/dotspool-bench" --server "127.0.0.1:$P" --connections 32 --duration "$T" --starttls --json --quiet >"$W/tls.json"
row "STARTTLS, 32 conns, closed loop, 2 workers" "$W/tls.json"
stop

start 1
"$B/dotspool-bench" --server "127.0.0.1:$P" --connections 16 --rate "$PT_RATE" --duration "$T" --json --quiet \
	>"$W/alone.json"
row "plaintext $PT_RATE/s, 1 worker, alone" "$W/alone.json"
"$B/dotspool-bench" --server "127.0.0.1:$P" --connections 8 --rate "$HS_RATE" --duration "$T" --starttls \
	--new-connection-per-message --json --quiet >"$W/hs.json" &
HSPID=$!
"$B/dotspool-bench" --server "127.0.0.1:$P" --connections 16 --rate "$PT_RATE" --duration "$T" --json --quiet \
	>"$W/mixed.json"
wait "$HSPID" || true
row "plaintext $PT_RATE/s, 1 worker, + $HS_RATE handshakes/s" "$W/mixed.json"
row "  (the handshake load itself: new conn + TLS per msg)" "$W/hs.json"
stop
