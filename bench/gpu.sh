#!/usr/bin/env bash
# GPU stage benchmark: forward+backward of a GPT-2-small stage (d 768, 12 heads,
# 6 blocks, T 1024, B 8, bf16) with swarmnode's CUDA backend, PyTorch eager
# (autocast bf16, SDPA) and torch.compile, all in this one run on this GPU; prints
# tokens/s, the ratios and MFU. Needs bin/stagebench (go build -o bin/stagebench
# ./bench/gpu/stagebench; the GPU machine has no Go) and python3 with torch.
# Usage: bench/gpu.sh [out-dir]   (shape overridable: B=4 T=512 bench/gpu.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/gpu-bench}
mkdir -p "$out"
B=${B:-8} T=${T:-1024} D=${D:-768} H=${H:-12} L=${L:-6}
if [ ! -x bin/stagebench ]; then
	go build -o bin/stagebench ./bench/gpu/stagebench
fi
echo "== swarmnode (CUDA backend)" >&2
bin/stagebench -B "$B" -T "$T" -d "$D" -heads "$H" -blocks "$L" -prec bf16 -iters "${ITERS:-50}" -warmup "${WARMUP:-10}" | tee "$out/swarmnode.jsonl"
echo "== PyTorch" >&2
PYTHONUNBUFFERED=1 python3 bench/gpu/torch_stage.py --B "$B" --T "$T" --d "$D" --heads "$H" --blocks "$L" \
	--iters "${ITERS:-50}" --warmup "${WARMUP:-10}" | tee "$out/torch.jsonl"
echo "== GPT-2-small stage (d $D, $H heads, $L blocks, T $T, B $B), forward+backward" >&2
python3 bench/gpu/report.py "$out/swarmnode.jsonl" "$out/torch.jsonl" | tee "$out/report.txt"
