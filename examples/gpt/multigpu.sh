#!/usr/bin/env bash
# A swarm of GPU peers on one host, each a separate swarmnode process talking
# libp2p over loopback exactly as over the internet: HOLDERS stage servers per
# stage, process i on GPU i % GPUS (CUDA_VISIBLE_DEVICES), the first one the
# bootstrap, and a trainer. Optionally trains the same model with `swarmnode
# local` on one GPU first (the centralized baseline and the ideal throughput),
# kills one holder with SIGKILL in the middle of the run, and writes under OUT:
#   <peer>.log / <peer>.out        every process's output
#   status/<peer>.jsonl            each peer's /api/status, sampled every POLL seconds
#   status/<peer>.final.json       each peer's last /api/status (history included)
#   local.log, local-summary.json  the baseline run (LOCAL_STEPS > 0)
#   summary.json                   the figures (see the end of this script)
#   loss.svg                       the swarm's loss curve against the baseline's
#
#   IN_FLIGHT=16 examples/gpt/multigpu.sh                      # 8 GPUs: 4 stages x 2 holders, one per GPU
#   GPUS=2 STEPS=60 LOCAL_STEPS=60 examples/gpt/multigpu.sh    # the same swarm on 2 GPUs
#   DEADLINE=300 examples/gpt/multigpu.sh                      # stop training 300 s after the start
#   CONFIG=examples/gpt/tiny.yaml GPUS=0 DEVICE=cpu STEPS=30 examples/gpt/multigpu.sh   # CPU dry run
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/gpt/swarm-lib.sh

CONFIG=${CONFIG:-examples/gpt/gpt-1b.yaml}
HOLDERS=${HOLDERS:-2}
STEPS=${STEPS:-}             # empty: the config's train.steps
LOCAL_STEPS=${LOCAL_STEPS:-} # empty: same as the swarm; 0: no baseline run
KILL_AT=${KILL_AT:-}         # trainer step at which one holder is killed; empty: half-way; 0: never
BIN=${BIN:-bin/swarmnode}
OUT=${OUT:-out/multigpu}
PORT=${PORT:-7200}
POLL=${POLL:-5}
DEADLINE=${DEADLINE:-}       # seconds after this script starts: stop the trainer (SIGTERM; it writes its summary)
DEVICE=${DEVICE:-}           # empty: the config's device
IN_FLIGHT=${IN_FLIGHT:-}     # set: the trainer keeps this many microbatches in flight (pipeline.in_flight)
script_start=$(date +%s.%N)
if [ -z "${GPUS:-}" ]; then
  GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi

nstages=$(sed -n 's/^stages:[[:space:]]*\[\(.*\)\].*/\1/p' "$CONFIG" | tr ',' '\n' | grep -c '[0-9]')
[ "$nstages" -ge 1 ] || { echo "cannot read 'stages: [...]' from $CONFIG" >&2; exit 2; }
steps=${STEPS:-$(sed -n 's/^[[:space:]]*steps:[[:space:]]*\([0-9]*\).*/\1/p' "$CONFIG" | head -1)}
LOCAL_STEPS=${LOCAL_STEPS:-$steps}
if [ -z "$KILL_AT" ]; then KILL_AT=$((steps / 2)); fi
[ "$HOLDERS" -ge 2 ] || KILL_AT=0 # with one holder a stage would die with it
devflag=(${DEVICE:+--device "$DEVICE"})
rm -rf "$OUT"
mkdir -p "$OUT/status"
if [ -n "${IN_FLIGHT:-}" ]; then # a copy of the config with pipeline.in_flight replaced
  sed "s/^\([[:space:]]*in_flight:\).*/\1 $IN_FLIGHT/" "$CONFIG" >"$OUT/config.yaml"
  grep -q "^[[:space:]]*in_flight: $IN_FLIGHT\$" "$OUT/config.yaml" || { echo "no pipeline.in_flight in $CONFIG to replace" >&2; exit 2; }
  CONFIG=$OUT/config.yaml
fi

gpu_of() { # gpu_of I: the GPU process I runs on, empty without GPUs
  if [ "$GPUS" -gt 0 ]; then echo $(($1 % GPUS)); fi
}
# pinned GPU: sets pin to the env(1) assignments that keep a process on that GPU
# (none for an empty GPU). Processes start as `env "${pin[@]}" CMD` so that $! is
# the process itself, which the kill below relies on.
pinned() { pin=(); if [ -n "$1" ]; then pin=("CUDA_VISIBLE_DEVICES=$1"); fi; }

# The baseline first, alone on GPU 0, so it neither slows nor is slowed by the swarm.
if [ "$LOCAL_STEPS" -gt 0 ]; then
  echo "baseline: swarmnode local, $LOCAL_STEPS steps on one GPU ..."
  pinned "$(gpu_of 0)"
  env "${pin[@]}" "$BIN" local --config "$CONFIG" "${devflag[@]}" --steps "$LOCAL_STEPS" \
    --summary "$OUT/local-summary.json" 2>"$OUT/local.log" || { tail -20 "$OUT/local.log" >&2; exit 1; }
  echo "baseline: $(tr -d '\n ' <"$OUT/local-summary.json")"
fi

pids=() names=() ports=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

start() { # start NAME GPU ARGS...: one peer (GPU empty: not pinned), its output under $OUT
  local name=$1 port=$((PORT + ${#names[@]}))
  pinned "$2"
  shift 2
  env "${pin[@]}" "$BIN" run --config "$CONFIG" "${devflag[@]}" --data-dir "$OUT/$name" --listen /ip4/127.0.0.1/tcp/0 \
    --status "127.0.0.1:$port" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  pids+=($!) names+=("$name") ports+=("$port")
}

i=0
start s0-0 "$(gpu_of $i)" --role server --stage 0
i=$((i + 1))
boot=$(bootstrap_address "$OUT/s0-0.out" "$OUT/s0-0.log" "${pids[0]}" 600) || exit 1
echo "bootstrap: $boot"
for k in $(seq 0 $((nstages - 1))); do
  for h in $(seq 0 $((HOLDERS - 1))); do
    [ "$k-$h" = "0-0" ] && continue
    start "s$k-$h" "$(gpu_of $i)" --role server --stage "$k" --bootstrap "$boot"
    i=$((i + 1))
  done
done
peers=$i
# The victim: the last holder of a middle stage (not the bootstrap, not stage 0).
victim=s$((nstages / 2))-$((HOLDERS - 1))
start trainer "" --role trainer --bootstrap "$boot" --steps "$steps" --summary "$OUT/summary-trainer.json"
trainer=${pids[-1]}
echo "$peers stage servers on ${GPUS} GPUs, $nstages stages x $HOLDERS holders; status pages:"
for j in "${!names[@]}"; do echo "  ${names[$j]} http://127.0.0.1:${ports[$j]}/"; done

poll() { # poll: one /api/status sample of every live peer; the latest is also <peer>.final.json
  local j doc
  for j in "${!names[@]}"; do
    kill -0 "${pids[$j]}" 2>/dev/null || continue
    doc=$(curl -sf --max-time 2 "http://127.0.0.1:${ports[$j]}/api/status" | tr -d '\n') || continue
    echo "$doc" >>"$OUT/status/${names[$j]}.jsonl"
    echo "$doc" >"$OUT/status/${names[$j]}.final.json"
  done
}
trainer_step() {
  curl -sf --max-time 2 "http://127.0.0.1:${ports[-1]}/api/status" | sed -n 's/.*"step": *\([0-9]*\).*/\1/p' | head -1
}

killed_at="" killed_time=""
start_time=$(date +%s.%N)
while kill -0 "$trainer" 2>/dev/null; do
  poll
  if [ "$KILL_AT" -gt 0 ] && [ -z "$killed_at" ]; then
    s=$(trainer_step || true)
    if [ -n "$s" ] && [ "$s" -ge "$KILL_AT" ]; then
      poll
      for j in "${!names[@]}"; do
        if [ "${names[$j]}" = "$victim" ]; then kill -KILL "${pids[$j]}"; fi
      done
      killed_at=$s killed_time=$(date +%s.%N)
      echo "step $s: killed $victim (SIGKILL)"
    fi
  fi
  if [ -n "$DEADLINE" ] && awk -v a="$script_start" -v b="$(date +%s.%N)" -v d="$DEADLINE" 'BEGIN { exit !(b - a > d) }'; then
    echo "deadline of ${DEADLINE}s: stopping the trainer"
    kill -TERM "$trainer" 2>/dev/null || true
    DEADLINE=""
  fi
  sleep "$POLL"
done
status=0
wait "$trainer" || status=$?
end_time=$(date +%s.%N)
poll # the servers' last word (the trainer has exited: its last sample stands)
if [ "$status" -ne 0 ]; then
  echo "trainer failed (exit $status):" >&2
  tail -20 "$OUT/trainer.log" >&2
  exit 1
fi
echo "trainer: $(tr -d '\n ' <"$OUT/summary-trainer.json")"

python3 examples/gpt/multigpu_report.py --out "$OUT" --config "$CONFIG" --gpus "$GPUS" --peers "$peers" \
  --victim "$victim" --killed-at "${killed_at:-0}" --killed-time "${killed_time:-0}" \
  --start-time "$start_time" --end-time "$end_time"
