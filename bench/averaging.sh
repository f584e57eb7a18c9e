#!/usr/bin/env bash
# Speed of averaging's butterfly all-reduce and state transfer, each next to a
# reference measured in the same run (go test benchmarks in averaging/):
#   - 50M-float vector among 4 in-process members over loopback TCP (libp2p's
#     default security and muxer): vector MB/s per round, the raw stream
#     bandwidth (one stream, and the butterfly's exact traffic pattern as plain
#     streams), ideal_ratio = raw pattern time / round time (target >= 0.8),
#     and the survivors' round time when one member dies mid-round vs the deadline;
#   - state transfer of 3x4M floats from one holder and from two (each capped at
#     100 MB/s of serving): speedup_2holders (ideal 2).
#
# Usage: bench/averaging.sh   (FLOATS=50000000 CODECS="fp32 bf16 int8" ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
FLOATS=${FLOATS:-50000000}
CODECS=${CODECS:-fp32 bf16 int8}
ROUNDS=${ROUNDS:-3}
GO=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$GO" test -c -o "$tmp/avg.test" ./averaging

metric() { awk -v unit="$1" '/^Benchmark/ {for (i=2; i<=NF; i++) if ($i==unit) print $(i-1)}'; }

printf '%-6s %12s %10s %14s %14s %12s %14s %10s\n' codec vector_MB/s round_s raw_1stream_MB/s raw_pattern_s ideal_ratio killed_round_s deadline_s
for c in $CODECS; do
	out=$(AVG_BENCH_FLOATS=$FLOATS AVG_BENCH_CODEC=$c "$tmp/avg.test" -test.run '^$' -test.bench '^BenchmarkAllReduce$' -test.benchtime "${ROUNDS}x" 2>&1) || { echo "$out"; exit 1; }
	printf '%-6s %12s %10s %14s %14s %12s %14s %10s\n' "$c" \
		"$(metric vector_MB/s <<<"$out")" "$(metric round_s <<<"$out")" \
		"$(metric raw_1stream_MB/s <<<"$out")" "$(metric raw_pattern_s <<<"$out")" \
		"$(metric ideal_ratio <<<"$out")" "$(metric killed_round_s <<<"$out")" "$(metric deadline_s <<<"$out")"
done
out=$("$tmp/avg.test" -test.run '^$' -test.bench '^BenchmarkFetchState$' -test.benchtime "${ROUNDS}x" 2>&1) || { echo "$out"; exit 1; }
printf '\nstate transfer: 1 holder %s MB/s, 2 holders %s MB/s, speedup %s (ideal 2)\n' \
	"$(metric 1holder_MB/s <<<"$out")" "$(metric 2holders_MB/s <<<"$out")" "$(metric speedup_2holders <<<"$out")"
