#!/usr/bin/env bash
# CPU speed of swarmnode's model core next to PyTorch, measured in the same run:
#   - SGEMM 1024³ GFLOP/s through the project's BLAS path (stages/blas) and gonum;
#   - one GPT-2-small block (d 768, 12 heads, B 4, T 256) forward+backward tokens/s,
#     swarmnode vs PyTorch (/usr/bin/python3, python3-torch) at the same thread count,
#     and their ratio;
#   - training tokens/s of the tiny example model (examples/gpt/tiny.yaml shape).
# Runs alternate between the two sides (ROUNDS rounds; medians reported) so that load
# from other processes hits both alike.
#
# Usage: bench/cpu.sh            (THREADS=2 ROUNDS=3 ITERS=10 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-10}
PY=${PYTHON:-/usr/bin/python3}
GO=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$GO" test -c -o "$tmp/blas.test" ./stages/blas
"$GO" test -c -o "$tmp/stages.test" ./stages

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
metric() { awk -v unit="$1" '{for (i=2; i<=NF; i++) if ($i==unit) print $(i-1)}'; }

export GOMAXPROCS=$THREADS
blasname=$(SWARMNODE_BLAS=${SWARMNODE_BLAS:-auto} "$tmp/blas.test" -test.run '^$' -test.bench '^BenchmarkSgemm1024$' -test.benchtime 1x -test.v 2>&1 | awk '/backend/ {print $NF; exit}')
sg=$("$tmp/blas.test" -test.run '^$' -test.bench '^BenchmarkSgemm1024$' -test.benchtime 20x -test.count "$ROUNDS" | metric GFLOP/s | median)
sgg=$("$tmp/blas.test" -test.run '^$' -test.bench '^BenchmarkSgemm1024Gonum$' -test.benchtime 3x -test.count "$ROUNDS" | metric GFLOP/s | median)

: >"$tmp/go" ; : >"$tmp/pt"
for ((r = 1; r <= ROUNDS; r++)); do
	"$tmp/stages.test" -test.run '^$' -test.bench '^BenchmarkBlockGPT2Small$' -test.benchtime "${ITERS}x" | metric tokens/s >>"$tmp/go"
	OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS "$PY" bench/cpu/torch_block.py "$THREADS" "$ITERS" | awk '{print $2}' >>"$tmp/pt"
done
tiny=$("$tmp/stages.test" -test.run '^$' -test.bench '^BenchmarkTinyChain$' -test.benchtime 100x -test.count "$ROUNDS" | metric tokens/s | median)
gotok=$(median <"$tmp/go")
pttok=$(median <"$tmp/pt")
torchv=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "?")

printf '%-58s %12s\n' "measurement (threads=$THREADS, median of $ROUNDS)" "value"
printf '%-58s %12.1f\n' "SGEMM 1024^3 GFLOP/s, swarmnode BLAS path ($blasname)" "$sg"
printf '%-58s %12.1f\n' "SGEMM 1024^3 GFLOP/s, gonum (reference)" "$sgg"
printf '%-58s %12.1f\n' "GPT-2-small block fwd+bwd tokens/s, swarmnode" "$gotok"
printf '%-58s %12.1f\n' "GPT-2-small block fwd+bwd tokens/s, PyTorch $torchv" "$pttok"
printf '%-58s %12.2f\n' "ratio swarmnode / PyTorch" "$(awk -v a="$gotok" -v b="$pttok" 'BEGIN {print a/b}')"
printf '%-58s %12.1f\n' "tiny example model (3 stages) training tokens/s, swarmnode" "$tiny"
echo "raw swarmnode: $(tr '\n' ' ' <"$tmp/go")"
echo "raw PyTorch:   $(tr '\n' ' ' <"$tmp/pt")"
