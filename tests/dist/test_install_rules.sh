#!/bin/sh
# SPDX-License-Identifier: MIT
# cmake --install of a build installs the three programs and the four man pages where the
# Debian package expects them (debian/rules runs the same rules with DESTDIR).
# Usage: test_install_rules.sh BUILD_DIR
set -eu
build=$1
dest=$(mktemp -d /tmp/dotspool-install-rules.XXXXXX)
trap 'rm -rf "$dest"' EXIT
DESTDIR="$dest" cmake --install "$build" --prefix /usr >"$dest.log" 2>&1 || { cat "$dest.log"; rm -f "$dest.log"; exit 1; }
rm -f "$dest.log"
fail=0
for f in usr/sbin/dotspool usr/bin/dotspool-ctl usr/bin/dotspool-bench usr/share/man/man8/dotspool.8 \
	usr/share/man/man8/dotspool-ctl.8 usr/share/man/man5/dotspool.conf.5 usr/share/man/man1/dotspool-bench.1; do
	if [ -e "$dest/$f" ]; then echo "ok   installs /$f"; else echo "FAIL installs /$f"; fail=1; fi
done
[ -x "$dest/usr/sbin/dotspool" ] && "$dest/usr/sbin/dotspool" --version | grep -q '^dotspool ' || { echo "FAIL installed dotspool --version"; fail=1; }
exit $fail
