#!/usr/bin/env bash
# Honest runs lose nothing to the robust reducer: trains tiny.yaml through a
# local swarm of 3 stages x HOLDERS holders (so that every gradient all-reduce
# has HOLDERS members) once with `averaging.reducer: mean` and once with
# `centered_clip`, same seed and steps, and prints each run's val loss and
# tokens/s and the ratios, all measured in this run.
#
#   STEPS=300 HOLDERS=3 bash bench/robust.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
HOLDERS=${HOLDERS:-3}
make -s build
declare -A val tps
for r in mean centered_clip; do
  cfg=$(mktemp --suffix=.yaml)
  sed "s/^  optimizer: false$/  optimizer: false\n  reducer: $r/" examples/gpt/tiny.yaml >"$cfg"
  grep -q "reducer: $r" "$cfg" || { echo "could not set averaging.reducer in $cfg" >&2; exit 1; }
  out=out/robust-$r
  FRESH=1 CONFIG=$cfg STEPS=$STEPS HOLDERS=$HOLDERS OUT=$out SAMPLE_TOKENS=1 \
    bash examples/gpt/local-swarm.sh >"$out.log" 2>&1 || { echo "run with $r failed: $out.log" >&2; tail -5 "$out.log" >&2; exit 1; }
  rm -f "$cfg"
  val[$r]=$(sed -n 's/.*"val_loss":[[:space:]]*\([0-9.]*\).*/\1/p' "$out/summary.json")
  tps[$r]=$(sed -n 's/.*"tokens_per_sec":[[:space:]]*\([0-9.]*\).*/\1/p' "$out/summary.json")
  echo "$r: val loss ${val[$r]}, ${tps[$r]} tokens/s ($STEPS steps, 3 stages x $HOLDERS holders)"
done
awk -v a="${val[centered_clip]}" -v b="${val[mean]}" -v c="${tps[centered_clip]}" -v d="${tps[mean]}" \
  'BEGIN { printf "centered_clip / mean: val loss %+.2f%%, throughput %.2f\n", 100*(a/b-1), c/d }'
