#!/usr/bin/env bash
# Starts a local swarm on loopback from one config: a bootstrap peer, HOLDERS
# stage servers per stage (the bootstrap is the first holder of stage 0) and a
# trainer. Prints every status URL, trains STEPS steps through the swarm, checks
# that the loss fell, and stops every process it started. Run again after being
# stopped part-way, it resumes from the peers' checkpoints.
#
#   examples/gpt/local-swarm.sh                # make demo runs this
#   STEPS=500 HOLDERS=3 examples/gpt/local-swarm.sh
#   GPUS=2 HOLDERS=1 CONFIG=examples/gpt/gpt2-small-gpu.yaml examples/gpt/local-swarm.sh
#     (stage servers spread over GPUs 0..GPUS-1 with CUDA_VISIBLE_DEVICES)
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/gpt/swarm-lib.sh

CONFIG=${CONFIG:-examples/gpt/tiny.yaml}
STEPS=${STEPS:-}   # empty: the config's train.steps
HOLDERS=${HOLDERS:-2}
BIN=${BIN:-bin/swarmnode}
OUT=${OUT:-out/local-swarm}
PORT=${PORT:-7100} # status pages on PORT, PORT+1, ...
GPUS=${GPUS:-}     # set: give server i the GPU i % GPUS

nstages=$(sed -n 's/^stages:[[:space:]]*\[\(.*\)\].*/\1/p' "$CONFIG" | tr ',' '\n' | grep -c '[0-9]')
[ "$nstages" -ge 1 ] || { echo "cannot read 'stages: [...]' from $CONFIG" >&2; exit 2; }
# A run stopped before its last step (killed, Ctrl-C) is resumed: the peers keep
# their data dirs (identities, checkpoints) and the trainer its step (README,
# Checkpoints). A finished run, or FRESH=1, starts over.
steps=${STEPS:-$(sed -n 's/^[[:space:]]*steps:[[:space:]]*\([0-9]*\).*/\1/p' "$CONFIG" | head -1)}
saved=$(sed -n 's/.*"step":[[:space:]]*\([0-9]*\).*/\1/p' "$OUT/trainer/checkpoints/trainer.json" 2>/dev/null || true)
resume=
if [ -z "${FRESH:-}" ] && [ -n "$saved" ] && [ -n "$steps" ] && [ "$saved" -lt "$steps" ]; then
  echo "resuming the run stopped at step $saved of $steps (FRESH=1 starts over)"
  resume=1
  rm -f "$OUT"/*.log "$OUT"/*.out "$OUT/summary.json"
else
  rm -rf "$OUT"
fi

# stage_of NAME K: the stage NAME served last (the rebalancer may have moved it:
# its newest checkpoint says which) when resuming, else K.
stage_of() {
  local last
  last=$(ls -td "$OUT/$1"/checkpoints/stage*/step-* 2>/dev/null | head -1)
  if [ -n "$resume" ] && [ -n "$last" ]; then
    basename "$(dirname "$last")" | sed 's/^stage//'
  else
    echo "$2"
  fi
}
mkdir -p "$OUT"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

urls=()
start() { # start NAME ARGS...: one peer, its output under $OUT
  local name=$1; shift
  local port=$((PORT + ${#urls[@]}))
  local gpu=()
  if [ -n "$GPUS" ] && [ "$name" != trainer ]; then
    gpu=(env CUDA_VISIBLE_DEVICES=$((${#urls[@]} % GPUS)))
  fi
  "${gpu[@]}" "$BIN" run --config "$CONFIG" --data-dir "$OUT/$name" --listen /ip4/127.0.0.1/tcp/0 \
    --status "127.0.0.1:$port" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  pids+=($!)
  urls+=("$name http://127.0.0.1:$port/")
}

start s0-0 --role server --stage "$(stage_of s0-0 0)"
boot=$(bootstrap_address "$OUT/s0-0.out" "$OUT/s0-0.log" "${pids[0]}" 100) || exit 1
echo "bootstrap: $boot"

for k in $(seq 0 $((nstages - 1))); do
  for i in $(seq 0 $((HOLDERS - 1))); do
    [ "$k-$i" = "0-0" ] && continue
    start "s$k-$i" --role server --stage "$(stage_of "s$k-$i" "$k")" --bootstrap "$boot"
  done
done
start trainer --role trainer --bootstrap "$boot" ${STEPS:+--steps "$STEPS"} --summary "$OUT/summary.json"
trainer=${pids[-1]}

echo "status pages:"
printf '  %s\n' "${urls[@]}"
echo "training ${STEPS:-train.steps} steps through $nstages stages x $HOLDERS holders (logs in $OUT/) ..."
grep --line-buffered 'msg=eval' <(tail -n +1 -F "$OUT/trainer.log" 2>/dev/null) &
follower=$!
status=0
wait "$trainer" || status=$?
kill "$follower" 2>/dev/null || true
if [ "$status" -ne 0 ]; then
  echo "trainer failed (exit $status):" >&2
  tail -20 "$OUT/trainer.log" >&2
  exit 1
fi
echo "summary: $(tr -d '\n ' <"$OUT/summary.json")"

# The loss must fall: the last evaluation's val loss below the first one's, and
# below the 5.55 nats (ln 256) of a uniform guess over bytes.
first=$(grep -m1 -o 'val_loss=[0-9.]*' "$OUT/trainer.log" | cut -d= -f2)
last=$(grep -o 'val_loss=[0-9.]*' "$OUT/trainer.log" | tail -1 | cut -d= -f2)
echo "val loss: first eval $first, last eval $last (uniform guess: 5.55)"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 5.0 && (b < a || a == b)) }' || { echo "loss did not fall" >&2; exit 1; }

# Keep the model: stop the peers (each writes its last checkpoint), export the
# newest step all stages have as a Hugging Face GPT-2, and sample from it.
cleanup
pids=()
dirs=()
for d in "$OUT"/s*-*/checkpoints; do dirs+=(--checkpoints "$d"); done
"$BIN" export --config "$CONFIG" "${dirs[@]}" --out "$OUT/model" 2>"$OUT/export.log" ||
  { echo "export failed:" >&2; tail -5 "$OUT/export.log" >&2; exit 1; }
echo "model: $OUT/model (model.safetensors, config.json); a sample:"
"$BIN" sample --model "$OUT/model" --prompt "${PROMPT:-ROMEO:}" --tokens "${SAMPLE_TOKENS:-300}" --seed 1
