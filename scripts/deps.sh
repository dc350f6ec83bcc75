#!/bin/sh
# Install every build and test dependency from Debian's packages.
# Idempotent and quiet: only calls apt-get when something is missing.
#
# rabbitmq-server (issue 18's broker), prometheus (promtool checks the alert rules) and the
# Debian packaging tools (debhelper, lintian, mandoc) are test tools too: the broker and
# prometheus are services and are kept stopped exactly like the mail servers below.
#
# postfix (smtpd, smtp-sink), dovecot-core and dovecot-lmtpd are the real next hops of the
# delivery tests (tests/peer/peers.py starts private instances of them). Their system
# instances must never run here: they would hold ports 25 and 24 and are not what the tests
# talk to. So they are installed with service starts denied (policy-rc.d), postfix without any
# configuration, then disabled, and on every run any system instance found running is stopped.
set -eu
PKGS="build-essential cmake pkg-config clang liburing-dev libjemalloc-dev libmbedtls-dev \
libbenchmark-dev libcmocka-dev libclang-rt-14-dev python3 python3-yaml swaks libnet-ssleay-perl openssl haproxy libinih-dev curl iproute2 fuse3 libfuse3-dev \
postfix dovecot-core dovecot-lmtpd \
librabbitmq-dev rabbitmq-server python3-pika libxxhash-dev libcdb-dev tinycdb \
prometheus debhelper dpkg-dev fakeroot lintian mandoc"
MAIL_SERVICES="postfix dovecot rabbitmq-server prometheus prometheus-node-exporter"
if [ "${DOTSPOOL_DEPS_EXTRA:-}" != "" ]; then PKGS="$PKGS $DOTSPOOL_DEPS_EXTRA"; fi

# systemd as PID 1 (a CI VM) or not (a container, where PID 1 is something else).
has_systemd() { [ -d /run/systemd/system ]; }

# Stop (not just disable) system instances that are running: the package's postinst may have
# started them on a machine without our policy-rc.d, or someone started them by hand. Checks are
# cheap (pid files, /proc) so a run with nothing to do stays silent.
stop_system_mail() {
	if has_systemd; then
		for s in postfix dovecot dovecot.socket rabbitmq-server prometheus prometheus-node-exporter epmd epmd.socket; do
			if systemctl is-active --quiet "$s" 2>/dev/null; then
				systemctl stop "$s" >/dev/null 2>&1 || true
			fi
			if systemctl is-enabled --quiet "$s" 2>/dev/null; then
				systemctl disable "$s" >/dev/null 2>&1 || true
			fi
		done
	fi
	# The system RabbitMQ (without systemd): its node runs as user rabbitmq under beam.
	if ! has_systemd && pgrep -u rabbitmq beam.smp >/dev/null 2>&1; then
		pkill -u rabbitmq >/dev/null 2>&1 || true
	fi
	# The system Postfix: its master.pid lives in the default queue directory.
	pf=/var/spool/postfix/pid/master.pid
	if [ -s "$pf" ] && kill -0 "$(tr -dc 0-9 <"$pf")" 2>/dev/null; then
		postfix stop >/dev/null 2>&1 || kill "$(tr -dc 0-9 <"$pf")" 2>/dev/null || true
	fi
	# The system Dovecot: master.pid in its default base_dir.
	df=/run/dovecot/master.pid
	if [ -s "$df" ] && kill -0 "$(tr -dc 0-9 <"$df")" 2>/dev/null; then
		if has_systemd; then systemctl stop dovecot >/dev/null 2>&1 || true; fi
		kill "$(tr -dc 0-9 <"$df")" 2>/dev/null || true
	fi
}

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps.sh: missing packages:$missing (run as root to install)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	# Postfix without a system configuration: the tests bring their own main.cf.
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	# Deny every service start during the install (invoke-rc.d and deb-systemd-invoke ask
	# policy-rc.d); removed again afterwards unless it was there before (containers have one).
	rc_policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		rc_policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' >"$rc_policy"
		chmod 755 "$rc_policy"
		trap 'rm -f "$rc_policy"' EXIT
	fi
	apt-get update -qq >/dev/null
	# shellcheck disable=SC2086 # a list of package names, split on purpose
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
	# Never started at boot either.
	for s in $MAIL_SERVICES; do
		if has_systemd; then
			systemctl disable "$s" >/dev/null 2>&1 || true
		elif command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$s" ]; then
			update-rc.d "$s" disable >/dev/null 2>&1 || true
		fi
	done
	if [ -n "$rc_policy" ]; then
		rm -f "$rc_policy"
		trap - EXIT
	fi
fi
if [ "$(id -u)" = 0 ]; then stop_system_mail; fi
exit 0
