#!/bin/sh
# Install every build and test dependency from Debian's packages.
# Idempotent and quiet: only calls apt-get when something is missing.
set -eu
PKGS="build-essential cmake pkg-config clang liburing-dev libjemalloc-dev libmbedtls-dev \
libbenchmark-dev libcmocka-dev libclang-rt-14-dev python3 swaks libnet-ssleay-perl openssl haproxy libinih-dev curl iproute2 fuse3 libfuse3-dev"
if [ "${DOTSPOOL_DEPS_EXTRA:-}" != "" ]; then PKGS="$PKGS $DOTSPOOL_DEPS_EXTRA"; fi
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing packages:$missing (run as root to install)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends $missing >/dev/null
