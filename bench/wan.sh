#!/usr/bin/env bash
# Training speed over an emulated WAN: a CPU swarm of real swarmnode processes,
# each in its own network namespace (bench/wanemu: every link shaped to RATE
# with a one-way DELAY, in userspace, as this kernel has no netem). Peers:
# one server per stage of CONFIG (the stage-0 server is the bootstrap) and a
# trainer. For each codec of CODECS (set as both compression.activations and
# compression.gradients; subspaceK trains the model with model.subspace: K and
# int8 on the wire) it trains STEPS steps twice, unshaped (rate off, delay
# 0, through the same emulator) and shaped, and prints a table: the trainer's
# tokens/s (median of its eval lines after the first), the ratio shaped ÷
# unshaped, and the bytes per training token of the shaped run: pipeline frames
# the servers sent (their /api/status wire.bytes), and every IP byte the
# emulator carried (DHT, gossip, commits, TCP/IP headers and evaluations too).
#
# Usage (as root): bench/wan.sh
#   RATE=5mbit DELAY=80ms STEPS=100 CODECS="fp32 bf16 int8" bench/wan.sh
#
# Choosing RATE: a stage's output is seq_len × d_model values per sequence, so
# a link between stages carries d_model × (bytes per value) bytes per token
# each way: 128 B/token in bf16 (64 in int8, about 66 with its scales) for
# wan.yaml's d_model 64. At the unshaped speed U tokens/s, bf16 needs
# U × 128 × 8 bit/s; RATE = U × 128 bit/s makes it need 8× the link's rate.
# The default 3mbit is about that for U ≈ 23000; measure U with an unshaped
# run first (RATE=off) and pick RATE for how tight the link should be.
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/gpt/swarm-lib.sh

RATE=${RATE:-3mbit}      # each directed link's rate (wanemu -rate)
DELAY=${DELAY:-40ms}     # each link's one-way delay
STEPS=${STEPS:-40}       # optimizer steps per run
CODECS=${CODECS:-"bf16 int8 subspace8"} # subspaceK: model.subspace K, int8 on the wire
ZSTD=${ZSTD:-off}        # compression.zstd for every run: off, on or auto
CONFIG=${CONFIG:-examples/gpt/wan.yaml}
BIN=${BIN:-bin/swarmnode}
PREFIX=${PREFIX:-swnwan} # namespaces PREFIX0 … PREFIXn
OUT=${OUT:-out/wan}
SYSCTL=${SYSCTL:-}       # KEY=VALUE ... set in every namespace, e.g. net.ipv4.tcp_slow_start_after_idle=0
RUN_TIMEOUT=${RUN_TIMEOUT:-600} # seconds a trainer may take
GO=${GO:-go}

[ "$(id -u)" = 0 ] || { echo "bench/wan.sh needs root (network namespaces, TUN devices)" >&2; exit 2; }
nstages=$(sed -n 's/^stages:[[:space:]]*\[\(.*\)\].*/\1/p' "$CONFIG" | tr ',' '\n' | grep -c '[0-9]')
[ "$nstages" -ge 1 ] || { echo "cannot read 'stages: [...]' from $CONFIG" >&2; exit 2; }
yaml() { sed -n "s/^  $1:[[:space:]]*\([0-9]*\).*/\1/p" "$CONFIG" | head -1; } # a number of CONFIG
tokens=$((STEPS * $(yaml batch) * $(yaml seq_len)))                            # trained per run
rm -rf "$OUT"
mkdir -p "$OUT"
"$GO" build -o "$OUT/wanemu" ./bench/wanemu
[ -x "$BIN" ] || "$GO" build -o "$BIN" ./cmd/swarmnode

pids=()
emu=""
stop_swarm() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
stop_emulator() { # SIGTERM: it deletes its namespaces and prints its counters
  [ -n "$emu" ] || return 0
  kill -TERM "$emu" 2>/dev/null || true
  wait "$emu" 2>/dev/null || true
  emu=""
}
cleanup() {
  stop_swarm
  stop_emulator
  "$OUT/wanemu" -cleanup -prefix "$PREFIX" 2>/dev/null || true # after a kill -9
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_emulator DIR RATE DELAY: starts wanemu for the swarm, ahead of the peers
# for the CPU (nice -5) so that packets leave on time, waits for "ready", then
# sets SYSCTL in every namespace.
start_emulator() {
  local dir=$1
  nice -n -5 "$OUT/wanemu" -peers $((nstages + 1)) -rate "$2" -delay "$3" -prefix "$PREFIX" \
    >"$dir/wanemu.out" 2>"$dir/wanemu.log" &
  emu=$!
  for _ in $(seq 300); do
    if grep -q '^ready$' "$dir/wanemu.out"; then
      for i in $(seq 0 "$nstages"); do
        for kv in $SYSCTL; do ip netns exec "$PREFIX$i" sysctl -qw "$kv"; done
      done
      return 0
    fi
    kill -0 "$emu" 2>/dev/null || break
    sleep 0.1
  done
  echo "wanemu did not start:" >&2
  cat "$dir/wanemu.log" >&2
  return 1
}

# peer DIR I NAME ARGS...: starts swarmnode as peer I, in namespace PREFIX<I>
# at 10.77.0.<I+1>, its status page on 127.0.0.1:7100 there.
peer() {
  local dir=$1 i=$2 name=$3
  shift 3
  ip netns exec "$PREFIX$i" "$BIN" run --config "$dir/run.yaml" --data-dir "$dir/$name" \
    --listen "/ip4/10.77.0.$((i + 1))/tcp/4001" --status 127.0.0.1:7100 "$@" \
    >"$dir/$name.out" 2>"$dir/$name.log" &
  pids+=($!)
}

# frame_bytes: the pipeline frame bytes the stage servers have sent.
frame_bytes() {
  local sum=0 b
  for i in $(seq 0 $((nstages - 1))); do
    b=$(ip netns exec "$PREFIX$i" curl -sf --max-time 5 http://127.0.0.1:7100/api/status |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["wire"]["bytes"])' 2>/dev/null) || b=0
    sum=$((sum + b))
  done
  echo "$sum"
}

# median: the median of the numbers on stdin, one a line.
median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# run_swarm NAME CODEC RATE DELAY: one training run, its files in OUT/NAME;
# sets tps (the trainer's tokens/s), frames and ipbytes (bytes sent).
run_swarm() {
  local dir=$OUT/$1 codec=$2
  mkdir -p "$dir"
  local rank=""
  if [[ $codec =~ ^subspace([0-9]+)$ ]]; then # model.subspace: rank, int8 on the wire
    rank=${BASH_REMATCH[1]}
    codec=int8
  fi
  sed -e "s/^\(  activations:\).*/\1 $codec/" -e "s/^\(  gradients:\).*/\1 $codec/" \
    -e "s/^\(  zstd:\).*/\1 $ZSTD/" "$CONFIG" >"$dir/run.yaml"
  if [ -n "$rank" ]; then
    sed -i "s/^\(  seq_len:.*\)/\1\n  subspace: $rank/" "$dir/run.yaml"
  fi
  start_emulator "$dir" "$3" "$4"
  peer "$dir" 0 s0 --role server --stage 0
  local boot
  boot=$(bootstrap_address "$dir/s0.out" "$dir/s0.log" "${pids[0]}" 300)
  for k in $(seq 1 $((nstages - 1))); do
    peer "$dir" "$k" "s$k" --role server --stage "$k" --bootstrap "$boot"
  done
  peer "$dir" "$nstages" trainer --role trainer --bootstrap "$boot" --steps "$STEPS" \
    --summary "$dir/summary.json"
  local trainer=${pids[-1]} status=0
  for _ in $(seq "$RUN_TIMEOUT"); do
    kill -0 "$trainer" 2>/dev/null || break
    sleep 1
  done
  kill -0 "$trainer" 2>/dev/null && { echo "$1: trainer still running after ${RUN_TIMEOUT}s" >&2; kill -TERM "$trainer"; }
  wait "$trainer" || status=$?
  frames=$(frame_bytes)
  stop_swarm
  stop_emulator
  if [ "$status" -ne 0 ]; then
    echo "$1: trainer failed (exit $status):" >&2
    tail -20 "$dir/trainer.log" >&2
    return 1
  fi
  local evals
  evals=$(grep 'msg=eval' "$dir/trainer.log" | grep -o 'tokens_per_sec=[0-9]*' | cut -d= -f2)
  [ -n "$evals" ] || { echo "$1: the trainer logged no eval line" >&2; return 1; }
  if [ "$(wc -l <<<"$evals")" -gt 1 ]; then evals=$(tail -n +2 <<<"$evals"); fi # the first: start-up
  tps=$(median <<<"$evals")
  ipbytes=$(sed -n 's/^total: \([0-9]*\) bytes.*/\1/p' "$dir/wanemu.log")
}

echo "swarm: $nstages stage servers + trainer, $STEPS steps ($tokens tokens) per run; shaped: $RATE, $DELAY one way; zstd $ZSTD"
rows=()
for codec in $CODECS; do
  run_swarm "$codec-unshaped" "$codec" off 0s
  u=$tps
  echo "$codec unshaped: $u tokens/s"
  run_swarm "$codec-shaped" "$codec" "$RATE" "$DELAY"
  echo "$codec shaped:   $tps tokens/s"
  rows+=("$(awk -v c="$codec" -v u="$u" -v s="$tps" -v fb="$frames" -v ib="${ipbytes:-0}" -v t="$tokens" \
    'BEGIN { printf "%-6s %15d %13d %7.2f %12.0f %9.0f", c, u, s, (u > 0 ? s / u : 0), fb / t, ib / t }')")
done
echo
echo "rate $RATE, delay $DELAY one way, $STEPS steps, zstd $ZSTD (logs in $OUT/)"
printf '%-6s %15s %13s %7s %12s %9s\n' codec "unshaped tok/s" "shaped tok/s" ratio "frame B/tok" "IP B/tok"
printf '%s\n' "${rows[@]}"
