#!/bin/sh
# Install what is missing, configure and build. Env: BUILD_DIR (default build),
# DS_SANITIZE=1 for ASan+UBSan, CMAKE_BUILD_TYPE (default RelWithDebInfo).
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
BUILD_DIR=${BUILD_DIR:-build}
SAN=OFF
[ "${DS_SANITIZE:-0}" = 1 ] && SAN=ON
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" \
	-DDS_WERROR=ON -DDS_SANITIZE=$SAN >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
