#!/bin/bash
# SPDX-License-Identifier: MIT
# Peer comparison (issue 7 item 3): the same dotspool-bench load against
#   postfix    Postfix smtpd, queueing only (fsync per message), discard transport
#   smtp-sink  Postfix's smtp-sink (stores nothing: the protocol floor)
#   dotspool   build/dotspool (skipped if not built)
#   dotspool-tmpfs  the same server with its spool on tmpfs (/dev/shm): NOT durable,
#              only with --legs; it shows what the server costs without the disk
# plus the disk's own flush latency (dotspool-diskprobe), in one run, inside
# a loopback-only network namespace. Prints one table.
#
# Usage: bench/peers/run.sh [--size BYTES] [--connections N] [--duration SEC]
#                           [--rate R] [--pipelining] [--threads N] [--out FILE]
#                           [--legs LIST] [--rounds N]
#   --legs LIST   comma-separated legs to run (default dotspool,postfix,smtp-sink;
#                 also dotspool-tmpfs)
#   --rounds N    run the legs N times, alternating (default 1); the table shows the
#                 median of each column and the p99 range over the rounds
# Environment: DS_BENCH (dotspool-bench), DS_DISKPROBE, DS_DOTSPOOL (server binary).
# Needs root (installs postfix if missing, creates a network namespace).
# Real mail sizes (4 KiB, 64 KiB over 4 GiB, the size mix; every --spool-io mode against tmpfs,
# dd's figure in the same run): bench/sizes/run.py, or `run.sh --sizes [ARGS...]` which runs it.
set -eu

SIZE=4096
CONNS=32
DURATION=10
RATE=""
PIPE=""
THREADS=1
OUT=""
LEGS=dotspool,postfix,smtp-sink
ROUNDS=1
if [ "${1:-}" = --sizes ]; then
	shift
	exec python3 "$(dirname "$0")/../sizes/run.py" "$@"
fi
while [ $# -gt 0 ]; do
	case "$1" in
	--size) SIZE=$2; shift 2 ;;
	--connections) CONNS=$2; shift 2 ;;
	--duration) DURATION=$2; shift 2 ;;
	--rate) RATE=$2; shift 2 ;;
	--pipelining) PIPE=--pipelining; shift ;;
	--threads) THREADS=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--legs) LEGS=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	-h|--help) sed -n '2,24p' "$0"; exit 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
case "$DURATION" in *[!0-9]*|"") echo "run.sh: --duration must be whole seconds" >&2; exit 2 ;; esac
case "$ROUNDS" in *[!0-9]*|""|0) echo "run.sh: --rounds must be a positive whole number" >&2; exit 2 ;; esac
for leg in ${LEGS//,/ }; do
	case "$leg" in dotspool|dotspool-tmpfs|postfix|smtp-sink) ;;
	*) echo "run.sh: unknown leg $leg (dotspool, dotspool-tmpfs, postfix, smtp-sink)" >&2; exit 2 ;;
	esac
done
# Bounded: the whole script stays under 5 minutes (leg count x rounds x duration).
NLEGS=$(echo "$LEGS" | tr ',' '\n' | grep -c .)
[ $((NLEGS * ROUNDS * (DURATION + 2))) -le 240 ] || {
	echo "run.sh: legs x rounds x (duration + 2 s) must stay under 240 s" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
pick() { for f in "$@"; do [ -x "$f" ] && { echo "$f"; return; }; done; echo ""; }
BENCH=${DS_BENCH:-$(pick "$ROOT/build/dotspool-bench" "$ROOT/build-bench/dotspool-bench")}
PROBE=${DS_DISKPROBE:-$(pick "$ROOT/build/dotspool-diskprobe" "$ROOT/build-bench/dotspool-diskprobe")}
DOTSPOOL=${DS_DOTSPOOL:-$ROOT/build/dotspool}
[ -n "$BENCH" ] || { echo "run.sh: dotspool-bench not built (cmake --build build)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (postfix install, network namespace)" >&2; exit 2; }

if [ -z "${DS_PEERS_IN_NETNS:-}" ]; then
	if ! command -v smtp-sink >/dev/null 2>&1 || ! [ -x /usr/sbin/postfix ]; then
		echo "run.sh: installing postfix from Debian's packages (no configuration)" >&2
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
	fi
	# Loopback-only namespace: nothing the peers do can reach another host.
	DS_PEERS_IN_NETNS=1 exec timeout -k 10 280 unshare -n "$0" --size "$SIZE" --connections "$CONNS" \
		--duration "$DURATION" --threads "$THREADS" ${RATE:+--rate "$RATE"} $PIPE ${OUT:+--out "$OUT"} \
		--legs "$LEGS" --rounds "$ROUNDS"
fi

ip link set lo up
T=$(mktemp -d /var/tmp/dotspool-peers.XXXXXX)
chmod 755 "$T"
SINK_PID=""
DS_PID=""
DSM_PID=""
SHM=""
has_leg() { case ",$LEGS," in *",$1,"*) return 0 ;; esac; return 1; }
cleanup() {
	postfix -c "$T/etc" stop >/dev/null 2>&1 || true
	[ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
	[ -n "$DS_PID" ] && kill "$DS_PID" 2>/dev/null || true
	[ -n "$DSM_PID" ] && kill "$DSM_PID" 2>/dev/null || true
	sleep 0.5
	[ -n "$SHM" ] && rm -rf "$SHM"
	[ -n "${DS_PEERS_KEEP:-}" ] && echo "run.sh: kept $T" >&2 || rm -rf "$T"
}
trap cleanup EXIT INT TERM

P_POSTFIX=10025
P_SINK=10026
P_DOTSPOOL=10027
P_DOTSPOOL_TMPFS=10028

# --- Postfix: private config, queue in $T, discard everything -------------
if has_leg postfix; then
mkdir -p "$T/etc" "$T/queue" "$T/data"
chown postfix "$T/data"
extra=""
postconf -d disable_dns_lookups >/dev/null 2>&1 && extra="disable_dns_lookups = yes"
cat >"$T/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $T/queue
data_directory = $T/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = peers.localdomain
mydomain = localdomain
mydestination = localhost, localhost.localdomain
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
local_transport = discard:
default_transport = discard:
relay_transport = discard:
virtual_transport = discard:
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_peername_lookup = no
smtp_host_lookup = native
$extra
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 200
maillog_file = $T/maillog
biff = no
CF
cat >"$T/etc/master.cf" <<CF
127.0.0.1:$P_POSTFIX inet n - n - 200 smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
CF
postfix -c "$T/etc" set-permissions >/dev/null 2>&1 || true
postfix -c "$T/etc" start >/dev/null 2>"$T/postfix-start.err" || {
	echo "run.sh: postfix did not start:" >&2; cat "$T/postfix-start.err" >&2; exit 1; }
fi

# --- smtp-sink ------------------------------------------------------------
if has_leg smtp-sink; then
	smtp-sink -u postfix 127.0.0.1:$P_SINK 1024 &
	SINK_PID=$!
fi

# --- dotspool (spool beside the others on disk) and dotspool-tmpfs --------
if [ -x "$DOTSPOOL" ]; then
	if has_leg dotspool; then
		mkdir -p "$T/spool"
		"$DOTSPOOL" --listen 127.0.0.1:$P_DOTSPOOL --spool "$T/spool" --accept-domain localhost \
			>"$T/dotspool.log" 2>&1 &
		DS_PID=$!
	fi
	if has_leg dotspool-tmpfs; then
		SHM=$(mktemp -d /dev/shm/dotspool-peers.XXXXXX)
		"$DOTSPOOL" --listen 127.0.0.1:$P_DOTSPOOL_TMPFS --spool "$SHM" --accept-domain localhost \
			--segment-size 64M >"$T/dotspool-tmpfs.log" 2>&1 &
		DSM_PID=$!
	fi
else
	echo "run.sh: $DOTSPOOL not built: dotspool legs skipped" >&2
fi

# Ready = answers with a 220 banner (then QUIT politely), tried for up to 10 s.
wait_port() {
	python3 - "$1" <<'PY'
import socket, sys, time
deadline = time.time() + 10
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                s.recv(512)
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
}

LOAD="--timeout-ms 5000 --threads $THREADS --connections $CONNS --duration $DURATION --size $SIZE ${RATE:+--rate $RATE} $PIPE --json --quiet"
run_leg() { # name port round
	if ! wait_port "$2" 2>/dev/null; then
		echo "run.sh: $1 is not listening on $2: leg skipped" >&2
		return
	fi
	echo "run.sh: round $3: $1 (127.0.0.1:$2): $LOAD" >&2
	# shellcheck disable=SC2086
	"$BENCH" --server 127.0.0.1:$2 $LOAD >"$T/$1.r$3.json" || true
}
for r in $(seq "$ROUNDS"); do
	for leg in ${LEGS//,/ }; do
		case "$leg" in
		dotspool) [ -n "$DS_PID" ] && run_leg dotspool $P_DOTSPOOL "$r" ;;
		dotspool-tmpfs) [ -n "$DSM_PID" ] && run_leg dotspool-tmpfs $P_DOTSPOOL_TMPFS "$r" ;;
		postfix) run_leg postfix $P_POSTFIX "$r" ;;
		smtp-sink) run_leg smtp-sink $P_SINK "$r" ;;
		esac
	done
done

if [ -n "$PROBE" ]; then
	echo "run.sh: disk flush probe in $T" >&2
	"$PROBE" --dir "$T" --count 3000 --rounds 5 --duration 6 --json >"$T/diskprobe.json" || true
fi

python3 - "$T" "$SIZE" "$CONNS" "$DURATION" "${RATE:-closed}" "${PIPE:-no-pipelining}" "$LEGS" "$ROUNDS" <<'PY' | tee ${OUT:-/dev/null}
import json, os, sys, platform, datetime, statistics
t, size, conns, dur, rate, pipe, legs, rounds = sys.argv[1:]
rounds = int(rounds)


def load(name):
    out = []
    for r in range(1, rounds + 1):
        try:
            out.append(json.load(open(os.path.join(t, "%s.r%d.json" % (name, r)))))
        except (OSError, ValueError):
            pass
    return out


def med(runs, f):
    return statistics.median(f(j) for j in runs)


rows = [(name, load(name)) for name in legs.split(",") if name]
print("peer comparison, %s UTC, %s, %d cpus; %s-byte messages, %s connections, %s s, rate %s, %s, %d round(s)%s" % (
    datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), platform.release(), os.cpu_count(), size, conns,
    dur, rate, pipe, rounds, " (medians; p99 range)" if rounds > 1 else ""))
print("| server | msg/s | MB/s | final-dot p50 ms | p99 ms | p99.9 ms | failed | dotspool/peer msg/s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
ds = dict(rows).get("dotspool")
fd = lambda j: j["latency_us"]["final_dot"]
for name, runs in rows:
    if not runs:
        print("| %s | skipped | | | | | | |" % name)
        continue
    ratio = "-"
    if ds and name != "dotspool" and med(ds, lambda j: j["messages_ok"]) and med(runs, lambda j: j["messages_per_s"]):
        ratio = "%.2f" % (med(ds, lambda j: j["messages_per_s"]) / med(runs, lambda j: j["messages_per_s"]))
    p99 = "%.3f" % (med(runs, lambda j: fd(j)["p99"]) / 1e3)
    if len(runs) > 1:
        p99 += " (%.2f-%.2f)" % (min(fd(j)["p99"] for j in runs) / 1e3, max(fd(j)["p99"] for j in runs) / 1e3)
    print("| %s | %.0f | %.2f | %.3f | %s | %.3f | %d | %s |" % (name, med(runs, lambda j: j["messages_per_s"]),
          med(runs, lambda j: j["mb_per_s"]), med(runs, lambda j: fd(j)["p50"]) / 1e3, p99,
          med(runs, lambda j: fd(j)["p999"]) / 1e3, sum(j["messages_failed"] for j in runs), ratio))
    errs = {}
    for j in runs:
        for k, v in j["errors_by_code"].items():
            errs[k] = errs.get(k, 0) + v
    if errs:
        print("|   %s errors: %s | | | | | | | |" % (name, " ".join("%s=%d" % kv for kv in errs.items())))
if ds and med(ds, lambda j: j["messages_ok"]):
    a = med(ds, lambda j: fd(j)["p99"])
    for name, runs in rows:
        if runs and name != "dotspool":
            b = med(runs, lambda j: fd(j)["p99"])
            print("dotspool/%s final-dot p99 ratio: %.2f" % (name, a / b if b else 0))
try:
    d = json.load(open(os.path.join(t, "diskprobe.json")))
    print("disk flush (dotspool-diskprobe, %d-byte write + flush):" % d["block_bytes"])
    for m, r in d["modes"].items():
        if r["ok"]:
            print("  %-10s %8.0f flushes/s  p50 %.3f ms  p99 %.3f ms  max %.3f ms" % (
                m, r["flushes_per_s"], r["p50_us"] / 1e3, r["p99_us"] / 1e3, r["max_us"] / 1e3))
except (OSError, ValueError):
    print("disk flush probe: not run")
PY
