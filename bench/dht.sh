#!/usr/bin/env bash
# DHT speed: 64 swarmnode hosts in one process, 4 stages of 16 holders; a
# client-mode node looks up the holders of a stage N times. Prints the 64 hosts'
# start-up time, the lookup's p50/p99, and ratios against hivemind's DHT figures
# from issue 3 (64 peers on this kind of machine: get p50 42 ms, swarm start
# 31-36 s) and against, measured in the same run, the lookup over kad-dht's
# full provider walk and the bare walk alone. "lookup paths" says how many
# lookups the short walk answered and how many fell back to the full walk.
#
# Usage: bench/dht.sh            (N=200 lookups by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}
GO=${GO:-go}
"$GO" test -run '^$' -bench '^BenchmarkSwarm64Lookup$' -benchtime "${N}x" ./swarm/ | tee /dev/stderr |
  grep -oE '(64 hosts up|holders lookup|lookup paths|provider walk stopping).*' | tail -4
