#!/bin/sh
# Install what is missing, build, and run the whole test suite with ctest.
# Env: BUILD_DIR (default build), DS_SANITIZE=1 for an ASan+UBSan build.
set -eu
cd "$(dirname "$0")/.."
./scripts/build.sh
cd "${BUILD_DIR:-build}"
# Every seal summary a lane accumulates is compared with one built from the
# segment itself (spool_sum.h); a difference stops the process.
export DS_SPOOL_SUM_CHECK=1
ctest --output-on-failure -j2 --timeout 600
