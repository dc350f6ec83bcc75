#!/bin/sh
# Install what is missing, build, and start the server on its built-in defaults:
# SMTP on 127.0.0.1:2525, spool in ./var/spool, mail accepted for localhost.
# Extra arguments go to dotspool (see build/dotspool --help).
set -eu
cd "$(dirname "$0")/.."
./scripts/build.sh
exec "${BUILD_DIR:-build}/dotspool" "$@"
