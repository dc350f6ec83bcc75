#!/bin/sh
# Install what is missing, build, and run the whole test suite with ctest.
# Env: BUILD_DIR (default build), DS_SANITIZE=1 for an ASan+UBSan build.
set -eu
cd "$(dirname "$0")/.."
./scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j2 --timeout 600
