#!/usr/bin/env bash
# Val loss of a subspace model against its rank, at equal tokens: `swarmnode
# local` on CONFIG with model.subspace set to each of RANKS (0: full width, the
# reference), STEPS steps each, in one run. Prints rank, final val loss, its
# change against rank 0 and tokens/s (the median of the eval windows after the
# first). Works on the CPU too (CONFIG=examples/gpt/tiny.yaml).
#
#   bench/gpu/subspace-sweep.sh                         # GPU config, ranks 0 16 32 64
#   RANKS="0 8 16" STEPS=1000 CONFIG=examples/gpt/tiny.yaml bench/gpu/subspace-sweep.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${CONFIG:-examples/gpt/gpt2-small-gpu.yaml}
RANKS=${RANKS:-0 16 32 64}
STEPS=${STEPS:-1000}
OUT=${OUT:-out/subspace-sweep}
BIN=${BIN:-bin/swarmnode}
mkdir -p "$OUT"

median_tps() {
  grep -o 'tokens_per_sec=[0-9.]*' "$1" | cut -d= -f2 | tail -n +2 | sort -n |
    awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}'
}
last_val() { grep -o 'val_loss=[0-9.]*' "$1" | tail -1 | cut -d= -f2; }

ref=
printf '%-6s %10s %8s %12s\n' rank val_loss change tokens/s
for k in $RANKS; do
  cfg="$OUT/rank$k.yaml"
  # model.subspace goes right under model.d_model.
  sed "s/^\(  d_model:.*\)$/\1\n  subspace: $k/" "$CONFIG" >"$cfg"
  "$BIN" local --config "$cfg" --steps "$STEPS" 2>"$OUT/rank$k.log" || { tail -5 "$OUT/rank$k.log"; exit 1; }
  v=$(last_val "$OUT/rank$k.log")
  [ -n "$ref" ] || ref=$v
  awk -v k="$k" -v v="$v" -v r="$ref" -v t="$(median_tps "$OUT/rank$k.log")" \
    'BEGIN { printf "%-6s %10.4f %+7.2f%% %12.0f\n", k, v, 100 * (v - r) / r, t }'
done
