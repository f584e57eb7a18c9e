# Shell functions shared by local-swarm.sh and multigpu.sh (sourced, not run).

# bootstrap_address OUT_FILE LOG_FILE PID TRIES: waits (TRIES × 0.1 s at most)
# until the peer with PID prints its TCP address to OUT_FILE, and prints it. If
# the peer exits first, its log goes to stderr; either failure returns 1.
bootstrap_address() {
  local out=$1 log=$2 pid=$3 tries=$4 addr=""
  for _ in $(seq "$tries"); do
    addr=$(grep -m1 '^address: .*/tcp/' "$out" 2>/dev/null | cut -d' ' -f2 || true)
    if [ -n "$addr" ]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "bootstrap peer did not start" >&2
  return 1
}
