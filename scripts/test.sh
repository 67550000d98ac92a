#!/bin/sh
# test.sh - install what is needed, build, and run the whole test suite:
#   1. release build: unit + integration tests (ctest),
#   2. ASan+UBSan build: the same tests,
#   3. libFuzzer targets, a bounded run each (DP_FUZZ_SECONDS, default 20).
# Exits non-zero when anything fails.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
jobs=$(nproc)
fuzz_seconds=${DP_FUZZ_SECONDS:-20}

echo "== release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j 1

echo "== ASan+UBSan build and tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDP_SANITIZE=ON >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	ctest --test-dir build-asan --output-on-failure -j 1

echo "== fuzzers (${fuzz_seconds}s each)"
CC=clang cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDP_FUZZ=ON \
	-DDP_FUZZ_SECONDS="$fuzz_seconds" >/dev/null
cmake --build build-fuzz -j "$jobs" --target fuzz_dns_query fuzz_dns_answer fuzz_tcpframe fuzz_tcpconn fuzz_http fuzz_edns_cache fuzz_route \
	fuzz_tlsconn fuzz_doh
ctest --test-dir build-fuzz --output-on-failure -R '^fuzz_' -j 1
