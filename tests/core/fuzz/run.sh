#!/bin/sh
# Build the core/ session fuzzer with clang (libFuzzer + ASan + UBSan) in
# build-fuzz and run it for SECONDS (default 60). Exit non-zero on a crash.
set -eu
SECS=${1:-60}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
B="$ROOT/build-fuzz"
mkdir -p "$B/corpus"
# Compiled directly (not through the top-level CMake) so the fuzzer only
# depends on core/ and common/.
clang -std=gnu17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE \
	-I"$ROOT/core" -I"$ROOT/common" \
	"$ROOT"/core/smtp_parse.c "$ROOT"/core/smtp_data.c "$ROOT"/core/smtp_session.c \
	"$ROOT/tests/core/fuzz/fuzz_session.c" -o "$B/fuzz_session"
cp -n "$ROOT"/tests/core/fuzz/corpus/* "$B/corpus/" 2>/dev/null || true
cd "$B"
exec ./fuzz_session -max_total_time="$SECS" -max_len=4096 -timeout=10 -rss_limit_mb=1024 \
	-dict="$ROOT/tests/core/fuzz/smtp.dict" -print_final_stats=1 corpus "$ROOT/tests/core/fuzz/corpus"
