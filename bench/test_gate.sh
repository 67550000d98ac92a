#!/bin/sh
# test_gate.sh - prove that the bench regression gate works both ways:
#   1. a dotproxy built with -DDP_BENCH_DELAY_US=N (it busy-waits N us per
#      query) must FAIL `bench/run.py --smoke` (exit status 1, the gate);
#   2. the normal build must PASS it (exit status 0).
# The gate compares against the committed bench/baseline-smoke.json; see
# bench/README.md for what it measures and why.
#
#   sh bench/test_gate.sh
#
# Environment: BENCH_BUILD (default build) is the normal build directory,
# BENCH_SLOW_BUILD (default build-slow) the slowed one, DP_BENCH_DELAY_US
# (default 50) the delay. Exits non-zero when either expectation fails.
set -eu
cd "$(dirname "$0")/.."
build=${BENCH_BUILD:-build}
slow=${BENCH_SLOW_BUILD:-build-slow}
delay=${DP_BENCH_DELAY_US:-50}
py=/usr/bin/python3
out=bench/out/test-gate

echo "== test_gate: building $build and $slow (DP_BENCH_DELAY_US=$delay)"
cmake -S . -B "$build" -G Ninja >/dev/null
cmake --build "$build"
cmake -S . -B "$slow" -G Ninja -DDP_TESTS=OFF -DDP_BENCH_DELAY_US="$delay" >/dev/null
cmake --build "$slow"

echo "== test_gate: slowed build ($delay us per query) must FAIL the gate"
st=0
$py bench/run.py --smoke --build-dir "$slow" --out "$out/slow" || st=$?
if [ "$st" -ne 1 ]; then
	echo "test_gate: FAIL: the slowed build should fail the gate (exit 1), run.py exited $st" >&2
	exit 1
fi

# The unchanged build must pass. One retry: a run disturbed by other load on
# the machine should not fail CI, a real regression fails both.
echo "== test_gate: normal build must PASS the gate"
st=0
$py bench/run.py --smoke --build-dir "$build" --out "$out/normal" || st=$?
if [ "$st" -eq 1 ]; then
	echo "test_gate: normal build failed the gate once; running the smoke again"
	st=0
	$py bench/run.py --smoke --build-dir "$build" --out "$out/normal-retry" || st=$?
fi
if [ "$st" -ne 0 ]; then
	echo "test_gate: FAIL: the normal build should pass the gate, run.py exited $st" >&2
	exit 1
fi
echo "test_gate: OK (slowed build fails the gate, normal build passes)"
