#!/usr/bin/env bash
# End to end on a GPU machine: the same config trained by `swarmnode local` (all
# stages in one process on GPU 0) and by a local swarm on loopback (one stage
# server per stage, spread over GPUS GPUs, and a trainer), STEPS steps each.
# Prints each run's tokens/s (median over its eval windows, the first left out:
# it includes start-up and kernel compilation), their ratio and the val losses.
# With PROFILE=1 it also saves 5-second CPU profiles of every swarm process
# (go tool pprof bin/swarmnode OUT/swarm/port<P>.pprof; ports from 7100
# in local-swarm.sh's order: servers of stage 0, 1, ..., then the trainer).
#
#   bench/gpu/e2e.sh                        # GPT-2-small-shaped, 300 steps, 1 GPU
#   GPUS=2 STEPS=300 bench/gpu/e2e.sh       # two stage servers on two GPUs
#   HOLDERS=2 STEPS=600 bench/gpu/e2e.sh    # two holders of each stage, stepping together
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${CONFIG:-examples/gpt/gpt2-small-gpu.yaml}
STEPS=${STEPS:-300}
GPUS=${GPUS:-1}
HOLDERS=${HOLDERS:-1}
OUT=${OUT:-out/gpu-e2e}
BIN=${BIN:-bin/swarmnode}
PROFILE=${PROFILE:-0}
mkdir -p "$OUT"

median_tps() { # median tokens_per_sec of a log's eval lines, the first left out
  grep -o 'tokens_per_sec=[0-9.]*' "$1" | cut -d= -f2 | tail -n +2 | sort -n |
    awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}'
}
last_val() { grep -o 'val_loss=[0-9.]*' "$1" | tail -1 | cut -d= -f2; }
first_val() { grep -m1 -o 'val_loss=[0-9.]*' "$1" | cut -d= -f2; }

echo "== swarmnode local, $STEPS steps ($CONFIG)"
CUDA_VISIBLE_DEVICES=0 "$BIN" local --config "$CONFIG" --steps "$STEPS" --summary "$OUT/local-summary.json" 2>"$OUT/local.log" ||
  { tail -20 "$OUT/local.log"; exit 1; }
grep 'msg=eval' "$OUT/local.log"

echo "== local swarm on $GPUS GPU(s), $HOLDERS holder(s) per stage, $STEPS steps"
PORT=7100 GPUS=$GPUS HOLDERS=$HOLDERS STEPS=$STEPS CONFIG=$CONFIG BIN=$BIN OUT="$OUT/swarm" examples/gpt/local-swarm.sh &
swarm=$!
if [ "$PROFILE" = 1 ]; then
  # Profile mid-run: once the trainer has logged two evals.
  for _ in $(seq 600); do
    n=$(grep -c 'msg=eval' "$OUT/swarm/trainer.log" 2>/dev/null || true)
    [ "${n:-0}" -ge 2 ] && break
    kill -0 $swarm 2>/dev/null || break
    sleep 0.5
  done
  curls=()
  for port in $(seq 7100 7110); do
    curl -sf --max-time 8 "http://127.0.0.1:$port/debug/pprof/profile?seconds=5" -o "$OUT/swarm/port$port.pprof" &
    curls+=($!)
  done
  for c in "${curls[@]}"; do wait "$c" || true; done
fi
wait $swarm

l=$(median_tps "$OUT/local.log")
s=$(median_tps "$OUT/swarm/trainer.log")
echo "== $CONFIG, $STEPS steps"
printf 'local (1 GPU):        %10.0f tokens/s   val loss %s -> %s\n' "$l" "$(first_val "$OUT/local.log")" "$(last_val "$OUT/local.log")"
printf 'swarm (%d GPU(s), %d holders/stage): %10.0f tokens/s   val loss %s -> %s\n' "$GPUS" "$HOLDERS" "$s" "$(first_val "$OUT/swarm/trainer.log")" "$(last_val "$OUT/swarm/trainer.log")"
awk -v l="$l" -v s="$s" 'BEGIN { if (l > 0) printf "swarm / local:        %10.2f\n", s / l }'
