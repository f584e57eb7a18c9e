"""Prints bench/gpu.sh's table: tokens/s, ratios against PyTorch and MFU."""
import json
import sys


def main():
    rows = []
    for path in sys.argv[1:]:
        with open(path) as f:
            rows += [json.loads(l) for l in f if l.strip().startswith("{")]
    prof = [r for r in rows if r["mode"] == "profile"]
    rows = [r for r in rows if r["mode"] != "profile"]
    peak = next((r["tflops"] for r in rows if r["mode"] == "gemm-bf16-8192"), None)
    stage = [r for r in rows if r["tokens_per_s"] and not r.get("note", "").startswith(("forward only", "one block"))]
    ref = {r["mode"]: r["tokens_per_s"] for r in rows if r["impl"] == "pytorch"}
    eager = ref.get("eager-autocast-bf16-sdpa")
    comp = ref.get("torch.compile-autocast-bf16")
    print(f"{'impl':10} {'mode':30} {'ms':>8} {'tokens/s':>11} {'TFLOP/s':>8} {'MFU':>6} {'MFU809':>6} {'x eager':>8} {'x compile':>9}")
    for r in stage:
        mfu = f"{100 * r['tflops'] / peak:5.1f}%" if peak else "   n/a"
        mfu += f" {100 * r['tflops'] / 809:5.1f}%"
        xe = f"{r['tokens_per_s'] / eager:8.2f}" if eager else "     n/a"
        xc = f"{r['tokens_per_s'] / comp:9.2f}" if comp else "      n/a"
        print(f"{r['impl']:10} {r['mode']:30} {r['ms_median']:8.2f} {r['tokens_per_s']:11.0f} {r['tflops']:8.1f} {mfu} {xe} {xc}")
    for r in rows:
        if r.get("note", "").startswith(("forward only", "one block")) or r["mode"] == "gemm-bf16-8192":
            print(f"  {r['impl']} {r['mode']}: {r['ms_median']:.3f} ms, {r['tflops']:.1f} TFLOP/s ({r.get('note', '')})")
    for p in prof:
        steps = sorted(p["ms_per_step"].items(), key=lambda kv: -kv[1])
        total = sum(v for _, v in steps)
        print(f"  swarmnode profile, ms per fwd+bwd summed over blocks (each step synchronised; total {total:.2f} ms):")
        for k, v in steps:
            print(f"    {k:24} {v:7.3f} ms {100 * v / total:5.1f}%")
    if peak:
        print(f"MFU is against the cuBLAS bf16 8192^3 GEMM measured in this run: {peak:.1f} TFLOP/s (MFU809: against 809 TFLOP/s, the issue's figure); "
              "FLOPs per token = blocks x (72 d^2 + 12 T d), fwd+bwd, attention counted in full as in PaLM/llm.c")


if __name__ == "__main__":
    main()
