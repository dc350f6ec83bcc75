#!/bin/bash
# SPDX-License-Identifier: MIT
# Install test of the Debian package, by hand (root; a few minutes; needs the Debian archive):
#
#   tests/dist/install_test.sh [WORKDIR]
#
# 1. builds dotspool_0.1.0 and a copy with a bumped version (0.1.0+it1) with dist/build-deb.sh
#    (DS_IT_REF=REF builds that commit; DS_DEB_OVERLAY is passed on),
# 2. debootstraps a fresh Debian 12 root (minbase + systemd) from the mirror this machine's apt
#    uses (DS_IT_BASE=DIR copies a root made earlier instead),
# 3. installs the first package with apt (dependencies from the archive) and checks the files,
#    the dotspool user, /var/lib/dotspool (0750), the conffile, the unit enabled and not started,
# 4. boots the root with systemd-nspawn -b (a private network: only its loopback) so the real unit
#    runs under the real systemd; when nspawn cannot boot here it falls back to chroot + unshare -n
#    and runs /usr/sbin/dotspool as the dotspool user directly (the summary says which),
# 5. sends a message with swaks, edits the configuration (delivery to a next hop that refuses
#    connections, so messages stay queued), sends more, upgrades to the second package with the
#    server running and messages queued, and checks the server was restarted, the edited
#    configuration and every queued message survived, and mail is accepted again,
# 6. checks that this dotspool refuses a spool of a newer format by name and leaves it untouched
#    (a segment header patched to the next version); with DS_IT_OLD_REF=89e1978 (format 2) the
#    first package is that older dotspool, so the upgrade reads a format 2 spool and the old
#    binary is shown the format 3 segments the new one wrote,
# 7. removes (service stopped, spool kept) and purges (user gone, spool kept, handed to root,
#    message printed), reinstalls (spool given back, messages still there).
# Needs debootstrap and systemd-container (apt-get install debootstrap systemd-container): not in
# scripts/deps.sh, CI does not run this test. DS_IT_BASE=DIR reuses a root made earlier by
#   debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates bookworm DIR MIRROR
# Example (the upgrade across spool formats 2 -> 3, as run for issue 20):
#   DS_IT_OLD_REF=89e1978 tests/dist/install_test.sh /var/tmp/dotspool-it
# DS_IT_MODE=chroot forces the fallback (chroot + unshare -n, no systemd) where nspawn works.
# Exit status: 0 every check passed, 1 otherwise. Work files stay in WORKDIR.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d /var/tmp/dotspool-install.XXXXXX)}
mkdir -p "$work"
work=$(realpath "$work")
root="$work/root"
debs="$work/debs"
mkdir -p "$debs"
fails=0
checks=0
t0=$(date +%s)

say() { printf '== %s (%ds)\n' "$*" $(($(date +%s) - t0)); }
ok() { # ok DESCRIPTION COMMAND...
	local what=$1
	shift
	checks=$((checks + 1))
	if "$@" >>"$work/checks.log" 2>&1; then
		echo "ok   $what"
	else
		echo "FAIL $what"
		fails=$((fails + 1))
	fi
}
die() {
	echo "FATAL $*"
	cleanup
	exit 1
}

[ "$(id -u)" = 0 ] || { echo "install_test.sh: needs root (debootstrap, chroot)" >&2; exit 1; }

# --- 1. packages -----------------------------------------------------------------------------
# One snapshot of the tree for both packages (a shared tree changes under us): the commit
# DS_IT_REF (plus DS_DEB_OVERLAY paths from the working tree) or the working tree as git sees it.
say "building the packages"
snap="$work/src"
rm -rf "$snap" && mkdir -p "$snap"
if [ -n "${DS_IT_REF:-}" ]; then
	(cd "$top" && git archive --format=tar "$DS_IT_REF") | tar -C "$snap" -xf -
	for p in ${DS_DEB_OVERLAY:-}; do rm -rf "${snap:?}/$p"; (cd "$top" && tar -cf - "$p") | tar -C "$snap" -xf -; done
else
	(cd "$top" && git ls-files -z --cached --others --exclude-standard | xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
		tar --null -T - -cf -) | tar -C "$snap" -xf -
fi
# DS_IT_OLD_REF=REF: the first package is built from that older commit instead (with this tree's
# debian/, dist/, doc/man/ and install rules), e.g. 89e1978, the last writer of spool format 2:
# the upgrade then crosses a format change, and the old binary meets the new format.
v1src="$snap"
if [ -n "${DS_IT_OLD_REF:-}" ]; then
	v1src="$work/src-old"
	rm -rf "$v1src" && mkdir -p "$v1src"
	(cd "$top" && git archive --format=tar "$DS_IT_OLD_REF") | tar -C "$v1src" -xf -
	for p in debian dist doc/man; do rm -rf "${v1src:?}/$p"; mkdir -p "$v1src/$(dirname $p)"; cp -a "$snap/$p" "$v1src/$p"; done
	grep -q 'install(TARGETS dotspool ' "$v1src/CMakeLists.txt" ||
		sed -n '/^# cmake --install (and the Debian package/,$p' "$snap/CMakeLists.txt" >>"$v1src/CMakeLists.txt"
fi
"$v1src/dist/build-deb.sh" "$work/v1" >"$work/build-v1.log" 2>&1 || { cat "$work/build-v1.log"; exit 1; }
grep -E '^dist/build-deb.sh' "$work/build-v1.log"
# The upgrade also ships a changed configuration file, as real upgrades do: dpkg must keep the
# operator's edited copy (no prompt with --force-confold) and leave the new one as .dpkg-dist.
printf '# 0.1.0+it1: this line is new in the packaged file\n' >>"$snap/dist/dotspool.conf"
"$snap/dist/build-deb.sh" "$work/v2" 0.1.0+it1 >"$work/build-v2.log" 2>&1 || { cat "$work/build-v2.log"; exit 1; }
grep -E '^dist/build-deb.sh' "$work/build-v2.log"
cp "$work"/v1/dotspool_*.deb "$debs/v1.deb"
cp "$work"/v2/dotspool_*.deb "$debs/v2.deb"
ok "upgrade package has a higher version" dpkg --compare-versions "$(dpkg-deb -f "$debs/v2.deb" Version)" gt \
	"$(dpkg-deb -f "$debs/v1.deb" Version)"
# Enabled but never started by a fresh install: no start in the maintainer scripts, a restart only
# on upgrade ($2 = the old version) and only of a running server.
rm -rf "$work/ctrl" && dpkg-deb -e "$debs/v1.deb" "$work/ctrl"
ok "postinst enables the unit" grep -q "deb-systemd-helper enable 'dotspool.service'" "$work/ctrl/postinst"
ok "postinst never starts it (only try-restart on upgrade)" sh -c "! grep -E 'deb-systemd-invoke (start|restart)' $work/ctrl/postinst && grep -q 'try-restart' $work/ctrl/postinst"

# --- 2. a fresh Debian 12 root -----------------------------------------------------------------
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -z "$mirror" ] && mirror=$(sed -n 's/^deb \[*[^]]*\]* *\(http[^ ]*\) bookworm main.*/\1/p; s/^deb \(http[^ ]*\) bookworm .*/\1/p' \
	/etc/apt/sources.list 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
rm -rf "$root"
if [ -n "${DS_IT_BASE:-}" ]; then
	say "copying the Debian 12 root $DS_IT_BASE"
	cp -a "$DS_IT_BASE" "$root" || die "cannot copy $DS_IT_BASE"
else
	say "debootstrap bookworm from $mirror"
	debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates bookworm "$root" "$mirror" \
		>"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; die "debootstrap failed"; }
fi

# Commands in the root before it boots (host network, for apt): nspawn when it works, else chroot.
mounted=()
cleanup() {
	if [ -n "${boot_pid:-}" ] && kill -0 "$boot_pid" 2>/dev/null; then
		inside systemctl poweroff >/dev/null 2>&1
		for _ in $(seq 30); do kill -0 "$boot_pid" 2>/dev/null || break; sleep 1; done
		kill "$boot_pid" 2>/dev/null
		wait "$boot_pid" 2>/dev/null
	fi
	if [ -n "${srv_pid:-}" ] && kill -0 "$srv_pid" 2>/dev/null; then
		kill "$srv_pid" 2>/dev/null
		wait "$srv_pid" 2>/dev/null
	fi
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null; done
	mounted=()
}
trap cleanup EXIT
nspawn=(systemd-nspawn -q --register=no --keep-unit --bind-ro="$debs:/debs" -D "$root")
mode=chroot
if [ "${DS_IT_MODE:-}" != chroot ] && command -v systemd-nspawn >/dev/null && "${nspawn[@]}" /bin/true >/dev/null 2>&1; then
	mode=nspawn
fi
run_root() {
	if [ "$mode" = chroot ]; then
		chroot "$root" "$@"
	else
		"${nspawn[@]}" "$@"
	fi
}
if [ "$mode" = chroot ]; then
	for m in proc sys dev dev/pts; do
		mount --bind "/$m" "$root/$m" && mounted+=("$root/$m")
	done
	mkdir -p "$root/debs" && mount --bind "$debs" "$root/debs" && mounted+=("$root/debs")
	cp /etc/resolv.conf "$root/etc/resolv.conf"
fi

# --- 3. install --------------------------------------------------------------------------------
say "apt-get install ./v1.deb swaks ($mode)"
run_root sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q /debs/v1.deb swaks' \
	>"$work/install-v1.log" 2>&1 || { tail -30 "$work/install-v1.log"; die "apt-get install failed"; }
# The upgrade runs where the booted root has no network (--private-network): apt fetches what the
# new package depends on now (new libraries included), and installs it offline later.
run_root sh -c 'apt-get install -q -y --download-only /debs/v2.deb' >"$work/download-v2.log" 2>&1 ||
	{ tail -20 "$work/download-v2.log"; die "apt-get --download-only of the upgrade failed"; }
ok "installed version 0.1.0" sh -c "chroot $root dpkg-query -W -f='\${Version}' dotspool | grep -qx 0.1.0"
for f in /usr/sbin/dotspool /usr/bin/dotspool-ctl /usr/bin/dotspool-bench /etc/dotspool/dotspool.conf \
	/lib/systemd/system/dotspool.service /usr/share/man/man8/dotspool.8.gz /usr/share/man/man8/dotspool-ctl.8.gz \
	/usr/share/man/man5/dotspool.conf.5.gz /usr/share/man/man1/dotspool-bench.1.gz; do
	ok "installed $f" test -e "$root$f"
done
ok "dotspool system user and group" sh -c "chroot $root getent passwd dotspool | grep -q ':/var/lib/dotspool:/usr/sbin/nologin' && chroot $root getent group dotspool"
ok "/var/lib/dotspool is dotspool:dotspool 0750" sh -c "[ \"\$(chroot $root stat -c '%U:%G %a' /var/lib/dotspool)\" = 'dotspool:dotspool 750' ]"
ok "/etc/dotspool/dotspool.conf is a conffile" sh -c "chroot $root dpkg-query -W -f='\${Conffiles}' dotspool | grep -q /etc/dotspool/dotspool.conf"
ok "unit enabled (multi-user.target.wants)" test -L "$root/etc/systemd/system/multi-user.target.wants/dotspool.service"
ok "shipped configuration listens on loopback only" sh -c "grep -E '^(listen|lmtp-listen|proxy-listen) *=' $root/etc/dotspool/dotspool.conf | grep -vqE '= *(127\\.|\\[::1\\])' && exit 1 || exit 0"
ok "man dotspool.conf(5) renders" sh -c "zcat $root/usr/share/man/man5/dotspool.conf.5.gz | mandoc -T utf8 | grep -q 'accept-domain'"
ok "dotspool --check-config accepts the shipped file" chroot "$root" /usr/sbin/dotspool --check-config /etc/dotspool/dotspool.conf

# --- 4. boot (or run by hand) --------------------------------------------------------------------
boot_pid=
srv_pid=
leader=
inside() {
	if [ -n "$leader" ]; then
		nsenter -t "$leader" -m -u -i -n -p -- "$@"
	else
		# chroot fallback: the root's own private network namespace, made once (netns below).
		nsenter --net="$work/netns" -- chroot "$root" "$@"
	fi
}
booted=no
if [ "$mode" = nspawn ]; then
	say "booting the root with systemd-nspawn -b --private-network"
	"${nspawn[@]}" --private-network -b >"$work/boot.log" 2>&1 &
	boot_pid=$!
	for _ in $(seq 60); do
		leader=$(ps -o pid= --ppid "$boot_pid" 2>/dev/null | head -1 | tr -d ' ')
		if [ -n "$leader" ] && [ "$(cat /proc/"$leader"/comm 2>/dev/null)" = systemd ]; then
			st=$(nsenter -t "$leader" -m -u -i -n -p -- systemctl is-system-running 2>/dev/null)
			case "$st" in running | degraded) booted=yes; break ;; esac
		fi
		sleep 1
	done
	[ "$booted" = yes ] || { tail -20 "$work/boot.log"; say "nspawn boot failed: chroot fallback"; cleanup; leader=; mode=chroot-fallback; }
fi
start_server() { # the packaged unit under systemd, or the same command line by hand
	if [ "$booted" = yes ]; then
		inside systemctl restart dotspool
	else
		if [ -n "$srv_pid" ]; then kill "$srv_pid"; wait "$srv_pid"; fi
		nsenter --net="$work/netns" -- chroot "$root" setpriv --reuid=dotspool --regid=dotspool --init-groups \
			--inh-caps=+net_bind_service --ambient-caps=+net_bind_service \
			/usr/sbin/dotspool --config /etc/dotspool/dotspool.conf >>"$work/server.log" 2>&1 &
		srv_pid=$!
	fi
}
if [ "$booted" != yes ]; then
	mode=chroot
	[ ${#mounted[@]} = 0 ] && for m in proc sys dev dev/pts; do mount --bind "/$m" "$root/$m" && mounted+=("$root/$m"); done
	touch "$work/netns"
	unshare --net="$work/netns" ip link set lo up 2>/dev/null || unshare --net="$work/netns" true
	mounted+=("$work/netns")
	nsenter --net="$work/netns" ip link set lo up 2>/dev/null
	start_server
fi
wait_banner() { # the server answers 220 on 127.0.0.1:25 inside the root
	for _ in $(seq 30); do
		inside swaks --server 127.0.0.1:25 --quit-after CONNECT >/dev/null 2>&1 && return 0
		sleep 1
	done
	return 1
}
server_pid() {
	if [ "$booted" = yes ]; then inside systemctl show -p MainPID --value dotspool; else echo "$srv_pid"; fi
}
if [ "$booted" = yes ]; then
	ok "enabled unit started at boot (systemctl is-active)" sh -c "for i in \$(seq 30); do [ \"\$(nsenter -t $leader -m -u -i -n -p -- systemctl is-active dotspool)\" = active ] && exit 0; sleep 1; done; exit 1"
fi
ok "server answers 220 on 127.0.0.1:25" wait_banner
send() { # send TAG: one message to postmaster@localhost, 250 expected
	inside swaks --server 127.0.0.1:25 --from "it@example.org" --to postmaster@localhost \
		--header "Subject: install test $1" --body "install test $1" >"$work/swaks-$1.log" 2>&1 &&
		grep -q '<-  250 2.0.0 Ok: queued as' "$work/swaks-$1.log"
}
ctl_list() { inside /usr/bin/dotspool-ctl --spool /var/lib/dotspool/spool list --json; }
ok "swaks: message 1 accepted (250 ... queued as)" send m1
if [ "$booted" = yes ]; then
	ok "journal: listening on 127.0.0.1:25 only" sh -c "nsenter -t $leader -m -u -i -n -p -- journalctl -u dotspool --no-pager | grep 'listening on' | grep -v '127.0.0.1:25' | grep -q . && exit 1 || exit 0"
fi
ctl_list >"$work/list-1.json" 2>&1
ok "dotspool-ctl list shows message 1" sh -c "[ \$(grep -c '\"id\"' $work/list-1.json) = 1 ]"

# --- 5. edit the configuration, queue messages, upgrade --------------------------------------------
say "editing /etc/dotspool/dotspool.conf: delivery to a next hop that refuses (127.0.0.1:9)"
cat >>"$root/etc/dotspool/dotspool.conf" <<'CONF'
# edited by the install test: a next hop that refuses connections keeps messages queued
deliver-to = smtp://127.0.0.1:9
retry-min-s = 3600
deliver-hop-backoff-min-s = 3600
CONF
cp "$root/etc/dotspool/dotspool.conf" "$work/conf.edited"
start_server
ok "server restarted with the edited configuration" wait_banner
ok "swaks: message 2 accepted" send m2
ok "swaks: message 3 accepted" send m3
sleep 3
ctl_list >"$work/list-before.json" 2>&1
ok "3 messages queued before the upgrade (next hop refuses)" sh -c "[ \$(grep -c '\"state\":\"queued\"' $work/list-before.json) = 3 ]"
ok "a delivery attempt was deferred (connection refused)" sh -c "grep -q '\"deferred\"' $work/list-before.json"
pid_before=$(server_pid)
say "upgrading to $(dpkg-deb -f "$debs/v2.deb" Version) with the server running (pid $pid_before) and 3 messages queued"
if [ "$booted" = yes ]; then
	inside sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /debs/v2.deb' \
		>"$work/upgrade.log" 2>&1
	rc=$?
else
	run_root sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /debs/v2.deb' \
		>"$work/upgrade.log" 2>&1
	rc=$?
	start_server # no systemd to restart it: by hand, as postinst's try-restart would
fi
ok "apt-get install of the upgrade succeeded (offline, dependencies fetched before)" test "$rc" = 0
ok "installed version 0.1.0+it1" sh -c "chroot $root dpkg-query -W -f='\${Version}' dotspool | grep -qx 0.1.0+it1"
ok "edited configuration kept (byte for byte)" cmp "$work/conf.edited" "$root/etc/dotspool/dotspool.conf"
ok "the new packaged configuration left beside it as dotspool.conf.dpkg-dist" sh -c "grep -q 'this line is new' $root/etc/dotspool/dotspool.conf.dpkg-dist && ! grep -q 'this line is new' $root/etc/dotspool/dotspool.conf"
ok "server answers again after the upgrade" wait_banner
if [ "$booted" = yes ]; then
	pid_after=$(server_pid)
	ok "running server restarted by the upgrade (pid $pid_before -> $pid_after)" test "$pid_after" != "$pid_before" -a "$pid_after" != 0
	inside journalctl -u dotspool --no-pager >"$work/journal.log" 2>&1
	ok "journal: recovery after the upgrade found the 3 queued messages" grep -q '3 messages queued' "$work/journal.log"
fi
ctl_list >"$work/list-after.json" 2>&1
ids() { grep -o '"id":"[^"]*"' "$1" | sort; }
ok "the same 3 messages queued after the upgrade" sh -c "[ \$(grep -c '\"state\":\"queued\"' $work/list-after.json) = 3 ] && [ \"\$(grep -o '\"id\":\"[^\"]*\"' $work/list-before.json | sort)\" = \"\$(grep -o '\"id\":\"[^\"]*\"' $work/list-after.json | sort)\" ]"
ok "swaks: message 4 accepted after the upgrade" send m4
ok "dotspool-ctl verify: spool consistent" inside /usr/bin/dotspool-ctl --spool /var/lib/dotspool/spool verify

# --- 6. a spool of a newer format is refused by name and left alone -----------------------------------
say "newer spool format: this dotspool must refuse it, untouched"
rm -rf "$root/root/newer" && cp -a "$root/var/lib/dotspool/spool" "$root/root/newer"
seg=$(cd "$root/root/newer" && ls lane-00/*.seg | sort | tail -1)
python3 - "$root/root/newer/$seg" <<'PY'
import struct, sys
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
with open(sys.argv[1], "r+b") as f:
    h = bytearray(f.read(64))
    assert h[:8] == b"DSPOOLSG", h[:8]
    ver = struct.unpack_from("<I", h, 8)[0]
    struct.pack_into("<I", h, 8, ver + 1)          # one format above this binary's
    struct.pack_into("<I", h, 60, crc32c(bytes(h[:60])))
    f.seek(0); f.write(h)
PY
sum_before=$(cd "$root/root/newer" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
inside timeout 30 /usr/sbin/dotspool --spool /root/newer --listen 127.0.0.1:2599 --threads 1 >"$work/newer.log" 2>&1
rc=$?
sum_after=$(cd "$root/root/newer" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
ok "newer spool refused: exit 1" test "$rc" = 1
ok "newer spool refused by name: '$(grep -o 'written by a newer dotspool[^)]*)' "$work/newer.log" | head -1)'" grep -q "$seg was written by a newer dotspool" "$work/newer.log"
ok "newer spool untouched (no file changed, none quarantined)" test "$sum_before" = "$sum_after"

if [ -n "${DS_IT_OLD_REF:-}" ]; then
	say "the old package's dotspool ($DS_IT_OLD_REF) on the spool the new one wrote"
	rm -rf "$work/old-bin" && dpkg-deb -x "$debs/v1.deb" "$work/old-bin"
	install -m 0755 "$work/old-bin/usr/sbin/dotspool" "$root/root/dotspool-old"
	rm -rf "$root/root/after" && cp -a "$root/var/lib/dotspool/spool" "$root/root/after"
	vers=$(cd "$root/root/after" && for f in lane-*/*.seg; do od -An -tu4 -j8 -N4 "$f"; done | sort -u | tr -s ' \n' ' ')
	ok "spool holds segments of formats:$vers (old and new)" sh -c "[ \$(echo $vers | wc -w) -ge 2 ]"
	sum_before=$(cd "$root/root/after" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
	inside timeout 30 /root/dotspool-old --spool /root/after --listen 127.0.0.1:2598 --threads 1 >"$work/old-on-new.log" 2>&1
	rc=$?
	sum_after=$(cd "$root/root/after" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
	ok "old dotspool refuses the newer spool: exit 1" test "$rc" = 1
	ok "old dotspool names it: '$(grep -o 'written by a newer dotspool[^)]*)' "$work/old-on-new.log" | head -1)'" \
		grep -q "was written by a newer dotspool" "$work/old-on-new.log"
	ok "newer spool untouched by the old dotspool" test "$sum_before" = "$sum_after"
fi

# --- 7. remove, purge, reinstall ----------------------------------------------------------------------
say "remove, purge, reinstall"
if [ "$booted" = yes ]; then
	inside sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -r dotspool' >"$work/remove.log" 2>&1
	ok "remove stops the service" sh -c "[ \"\$(nsenter -t $leader -m -u -i -n -p -- systemctl is-active dotspool)\" != active ]"
else
	kill "$srv_pid"; wait "$srv_pid"; srv_pid=
	run_root sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -r dotspool' >"$work/remove.log" 2>&1
fi
ok "remove keeps the spool, the configuration and the user" sh -c "[ -d $root/var/lib/dotspool/spool ] && [ -e $root/etc/dotspool/dotspool.conf ] && chroot $root getent passwd dotspool"
if [ "$booted" = yes ]; then
	inside sh -c 'dpkg --purge dotspool' >"$work/purge.log" 2>&1
else
	run_root sh -c 'dpkg --purge dotspool' >"$work/purge.log" 2>&1
fi
ok "purge removes the user and group" sh -c "! chroot $root getent passwd dotspool && ! chroot $root getent group dotspool"
ok "purge removes the configuration" test ! -e "$root/etc/dotspool/dotspool.conf"
ok "purge keeps the spool, handed to root 0700" sh -c "[ -d $root/var/lib/dotspool/spool ] && [ \"\$(stat -c '%U:%G %a' $root/var/lib/dotspool)\" = 'root:root 700' ]"
ok "purge says where the spool is" grep -q "purge kept the spool in /var/lib/dotspool" "$work/purge.log"
if [ "$booted" = yes ]; then
	inside sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /debs/v2.deb' >"$work/reinstall.log" 2>&1
else
	run_root sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /debs/v2.deb' >"$work/reinstall.log" 2>&1
fi
ok "reinstall gives the kept spool to the new dotspool user" sh -c "[ \"\$(chroot $root stat -c '%U:%G %a' /var/lib/dotspool)\" = 'dotspool:dotspool 750' ] && [ \"\$(chroot $root stat -c '%U' /var/lib/dotspool/spool)\" = dotspool ]"
ok "the 4 messages are still in the kept spool" sh -c "chroot $root dotspool-ctl --spool /var/lib/dotspool/spool list | wc -l | grep -qx 4"

cleanup
say "done: $checks checks, $fails failed; mode: $mode ($([ "$booted" = yes ] && echo 'systemd-nspawn -b: the packaged unit under systemd' || echo 'chroot + unshare -n, dotspool run as the dotspool user by hand')); work files in $work"
[ "$fails" = 0 ]
