#!/usr/bin/env bash
# A network partition of a live swarm, in network namespaces (bench/wanemu
# -split): 2 stages × 2 holders and a trainer, each in its own namespace, the
# network cut in two halves (peers 0-2 | 3-4) for CUT seconds, then healed.
# Two layouts (LAYOUTS):
#   whole:   s0a s1a trainer | s0b s1b. Half A holds every stage and must keep
#            training; half B, cut off from every trainer, waits cleanly.
#   lacking: s0a s0b trainer | s1a s1b. Half A lacks stage 1: its trainer
#            waits cleanly (no failed microbatch, no error storm), and no
#            holder of stage 0 moves to stage 1 from initial weights (the
#            stage's trained state is behind the cut, not gone).
# Within HEAL seconds of the heal the swarm must be one again: the trainer
# sees both holders of each stage and trains through all of them. Every
# holder's goroutines must stay bounded through the cut.
#
# Usage (as root): bench/partition.sh
#   CUT=60 HEAL=60 LAYOUTS="whole lacking" bench/partition.sh
# Prints the figures and PASS or FAIL for each check; exit 1 on a FAIL.
# Every peer's log and samples.csv (every peer every SAMPLE seconds) are in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/gpt/swarm-lib.sh

CUT=${CUT:-60}           # seconds the network stays partitioned
HEAL=${HEAL:-60}         # seconds after the heal before the checks
WARM=${WARM:-30}         # trainer steps before the cut
SAMPLE=${SAMPLE:-2}      # seconds between status samples
BIN=${BIN:-bin/swarmnode}
PREFIX=${PREFIX:-swnpart}
OUT=${OUT:-out/partition}
GO=${GO:-go}

[ "$(id -u)" = 0 ] || { echo "bench/partition.sh needs root (network namespaces, TUN devices)" >&2; exit 2; }
LAYOUTS=${LAYOUTS:-"whole lacking"}
rm -rf "$OUT"
mkdir -p "$OUT"
"$GO" build -o "$OUT/wanemu" ./bench/wanemu
[ -x "$BIN" ] || "$GO" build -o "$BIN" ./cmd/swarmnode

cat >"$OUT/run.yaml.in" <<'EOF'
run: partition
model: {vocab: 256, d_model: 64, n_head: 4, n_layer: 2, seq_len: 64}
stages: [1, 1]
data: {path: examples/gpt/data/tinyshakespeare.txt, val_fraction: 0.1}
train: {microbatch: 8, batch: 32, steps: 1000000, warmup: 10, eval_every: 20, eval_batches: 2, lr: 0.003, min_lr: 0.0003}
node: {record_ttl: 20s, gossip_every: 1s}
pipeline: {hop_timeout: 5s, retries: 3}
EOF

pids=()
emu=""
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  if [ -n "$emu" ]; then
    kill -TERM "$emu" 2>/dev/null || true
    wait "$emu" 2>/dev/null || true
    emu=""
  fi
}
cleanup() {
  stop_all
  "$OUT/wanemu" -cleanup -prefix "$PREFIX" 2>/dev/null || true # after a kill -9
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_layout LAYOUT: one partition run, its files in OUT/LAYOUT.
run_layout() {
  local layout=$1 dir=$OUT/$1
  mkdir -p "$dir"
  cp "$OUT/run.yaml.in" "$dir/run.yaml"
  local -a names
  case $layout in
  whole) names=(s0a s1a trainer s0b s1b) ;;
  lacking) names=(s0a s0b trainer s1a s1b) ;;
  *) echo "unknown layout $layout" >&2; return 2 ;;
  esac
  declare -A pid
  nice -n -5 "$OUT/wanemu" -peers 5 -split 3 -prefix "$PREFIX" >"$dir/wanemu.out" 2>"$dir/wanemu.log" &
  emu=$!
  for _ in $(seq 300); do
    grep -q '^ready$' "$dir/wanemu.out" && break
    kill -0 "$emu" 2>/dev/null || { cat "$dir/wanemu.log" >&2; return 1; }
    sleep 0.1
  done
  # peer NAME ARGS...: swarmnode NAME in its namespace PREFIX<i> at
  # 10.77.0.<i+1>, its status page on 127.0.0.1:7100 there.
  peer() {
    local name=$1 i
    shift
    for i in "${!names[@]}"; do [ "${names[$i]}" = "$name" ] && break; done
    ip netns exec "$PREFIX$i" "$BIN" run --config "$dir/run.yaml" --data-dir "$dir/$name" \
      --listen "/ip4/10.77.0.$((i + 1))/tcp/4001" --status 127.0.0.1:7100 "$@" \
      >"$dir/$name.out" 2>"$dir/$name.log" &
    pid[$name]=$!
    pids+=($!)
  }
  # One holder of each stage first, so that no stage is ever empty and the
  # rebalancer keeps the layout.
  peer s0a --role server --stage 0
  local boot
  boot=$(bootstrap_address "$dir/s0a.out" "$dir/s0a.log" "${pid[s0a]}" 300)
  peer s1a --role server --stage 1 --bootstrap "$boot"
  for _ in $(seq 100); do grep -q 'msg="serving stage"' "$dir/s1a.log" && break; sleep 0.1; done
  sleep 2
  peer s0b --role server --stage 0 --bootstrap "$boot"
  peer s1b --role server --stage 1 --bootstrap "$boot"
  sleep 2
  peer trainer --role trainer --bootstrap "$boot"

  echo "phase,time,peer,step,completed,failed,holders0,holders1,connected,errors,goroutines,rss_kb,log_lines" >"$dir/samples.csv"
  sample() {
    local i name rss lines
    for i in "${!names[@]}"; do
      name=${names[$i]}
      rss=$(awk '/^VmRSS/ {print $2}' "/proc/${pid[$name]}/status" 2>/dev/null || echo 0)
      lines=$(wc -l <"$dir/$name.log")
      ip netns exec "$PREFIX$i" curl -sf --max-time 2 http://127.0.0.1:7100/api/status 2>/dev/null |
        python3 -c '
import json, sys, time
r = json.load(sys.stdin)
h = r.get("holders") or {}
m = r.get("microbatches") or {}
print(",".join(str(v) for v in [sys.argv[1], round(time.time(), 1), sys.argv[2], r.get("step", 0), m.get("completed", 0), m.get("failed", 0),
  len(h.get("0") or []), len(h.get("1") or []), r.get("connected_peers", 0), sum((r.get("errors") or {}).values()),
  r.get("goroutines", 0), sys.argv[3], sys.argv[4]]))
' "$1" "$name" "$rss" "$lines" >>"$dir/samples.csv" || true
    done
  }
  trainer_step() { ip netns exec "${PREFIX}2" curl -sf --max-time 2 http://127.0.0.1:7100/api/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["step"])' 2>/dev/null || echo 0; }
  phase_for() { # PHASE SECONDS: a sample every SAMPLE seconds for SECONDS
    local end=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$end" ]; do
      sample "$1"
      sleep "$SAMPLE"
    done
  }
  echo "layout $layout: ${names[*]:0:3} | ${names[*]:3}; warm-up to step $WARM, cut ${CUT}s, heal ${HEAL}s (logs in $dir/)"
  for _ in $(seq 600); do
    [ "$(trainer_step)" -ge "$WARM" ] && break
    kill -0 "${pid[trainer]}" 2>/dev/null || { echo "the trainer exited:" >&2; tail -20 "$dir/trainer.log" >&2; return 1; }
    sleep 0.5
  done
  phase_for warm 10
  kill -USR1 "$emu"
  phase_for cut "$CUT"
  kill -USR2 "$emu"
  phase_for healed "$HEAL"
  sample end
  local scratch
  scratch=$(cat "$dir"/s*.log | grep -c 'starting from initial weights' || true)
  stop_all
  python3 - "$dir/samples.csv" "$layout" "$scratch" "$((CUT * 2))" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
layout, scratch = sys.argv[2], int(sys.argv[3])
def at(phase, peer, which):
    xs = [r for r in rows if r["phase"] == phase and r["peer"] == peer]
    return xs[which] if xs else None
def num(r, k):
    return float(r[k]) if r and r[k] != "" else 0.0
ok = True
def check(cond, what):
    global ok
    ok &= bool(cond)
    print(("PASS " if cond else "FAIL ") + what)
def steps(ph, nxt):
    a, b = at(ph, "trainer", 0), at(nxt, "trainer", 0)
    return num(b, "step") - num(a, "step"), max(num(b, "time") - num(a, "time"), 1e-9)
for ph, nxt in [("warm", "cut"), ("cut", "healed"), ("healed", "end")]:
    n, t = steps(ph, nxt)
    print(f"trainer {ph:7s}: {n:5.0f} steps in {t:4.0f} s, {n / t:5.2f} steps/s")
print(f"{'peer':8s} {'served warm':>11s} {'cut':>6s} {'healed':>7s}  {'log lines in cut':>16s}  {'goroutines in cut':>17s}  {'RSS MB in cut':>13s}")
holders = sorted({r["peer"] for r in rows if r["peer"] != "trainer"})
for p in holders + ["trainer"]:
    d = lambda ph, nxt: num(at(nxt, p, 0), "completed") - num(at(ph, p, 0), "completed")
    cs, ce = at("cut", p, 0), at("cut", p, -1)
    print(f"{p:8s} {d('warm','cut'):11.0f} {d('cut','healed'):6.0f} {d('healed','end'):7.0f}  {num(ce,'log_lines')-num(cs,'log_lines'):16.0f}  {num(cs,'goroutines'):7.0f} → {num(ce,'goroutines'):<7.0f}  {num(cs,'rss_kb')/1024:5.1f} → {num(ce,'rss_kb')/1024:<5.1f}")
tc, te = at("cut", "trainer", -1), at("end", "trainer", 0)
print(f"trainer's view of the holders of stages 0/1: end of cut {num(tc,'holders0'):.0f}/{num(tc,'holders1'):.0f}, after the heal {num(te,'holders0'):.0f}/{num(te,'holders1'):.0f}")
cut_steps = steps("cut", "healed")[0]
if layout == "whole":
    check(cut_steps > 0, "half A, holding every stage, trained through the cut")
    # What was in flight in half B at the cut drains within the hop timeout (5 s).
    for p in ["s0b", "s1b"]:
        t0 = num(at("cut", p, 0), "time")
        settled = next((r for r in rows if r["phase"] == "cut" and r["peer"] == p and num(r, "time") >= t0 + 8), None)
        check(settled is not None and num(at("cut", p, -1), "completed") == num(settled, "completed"), f"{p}, cut off, served nothing once its in-flight work drained")
else:
    # A step whose microbatches were all back may still commit as the cut starts.
    check(cut_steps <= 2, f"half A, lacking stage 1, waited through the cut ({cut_steps:.0f} steps)")
    n = num(at("cut", "trainer", -1), "log_lines") - num(at("cut", "trainer", 0), "log_lines")
    check(n <= int(sys.argv[4]), f"the waiting trainer logged {n:.0f} lines in the cut (no error storm: at most {int(sys.argv[4])})")
check(steps("healed", "end")[0] > 0, "the trainer trains after the heal")
for p in holders:
    check(num(at("end", p, 0), "completed") > num(at("healed", p, 0), "completed"), f"{p} serves the trainer after the heal")
    cs, ce = at("cut", p, 0), at("cut", p, -1)
    check(num(ce, "goroutines") <= 1.5 * num(cs, "goroutines") + 20, f"{p}'s goroutines stayed bounded in the cut")
check(num(te, "holders0") == 2 and num(te, "holders1") == 2, "after the heal the trainer sees both holders of each stage")
check(num(at("end", "trainer", 0), "failed") == 0, "the trainer failed no microbatch")
check(scratch == 2, f"no stage restarted from initial weights but at the run's start ({scratch} times, 2 at start)")
sys.exit(0 if ok else 1)
PY
}

status=0
for layout in $LAYOUTS; do
  run_layout "$layout" || status=1
  echo
done
exit $status
