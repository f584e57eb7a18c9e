"""PyTorch reference for bench/gpu.sh: forward+backward of a GPT-2 block stack.

Times eager PyTorch (autocast bf16, SDPA flash attention) and torch.compile on the
same stage shape as bin/stagebench and prints one JSON line per measurement.
"""
import argparse
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """Pre-LN GPT-2 block (tanh GELU), the layout of swarmnode's stages."""

    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        hd = C // self.NH
        q = q.view(B, T, self.NH, hd).transpose(1, 2)
        k = k.view(B, T, self.NH, hd).transpose(1, 2)
        v = v.view(B, T, self.NH, hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


def make_stage(C, NH, L):
    m = nn.Sequential(*[Block(C, NH) for _ in range(L)])
    for name, p in m.named_parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    return m


def time_it(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(iters):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ms.append(e0.elapsed_time(e1))
    ms.sort()
    return ms[len(ms) // 2], ms[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", file=sys.stderr)
    N, C, T, L = a.B * a.T, a.d, a.T, a.blocks
    flops = L * (72 * C * C + 12 * T * C) * N
    model = make_stage(C, a.heads, L).to(dev)
    x = torch.randn(a.B, a.T, C, device=dev, requires_grad=True)
    dout = torch.randn(a.B, a.T, C, device=dev) * 1e-2

    def step(m):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = m(x)
            y.backward(dout)
        return run

    def report(mode, med, mn, note=""):
        r = {"impl": "pytorch", "mode": mode, "ms_median": med, "ms_min": mn,
             "tokens_per_s": N / (med / 1e3), "tflops": flops / (med / 1e3) / 1e12}
        if note:
            r["note"] = note
        print(json.dumps(r), flush=True)

    med, mn = time_it(step(model), a.warmup, a.iters)
    report("eager-autocast-bf16-sdpa", med, mn)
    if not a.no_compile:
        cm = torch.compile(model)
        t0 = time.time()
        step(cm)()
        torch.cuda.synchronize()
        compile_s = time.time() - t0
        med, mn = time_it(step(cm), a.warmup, a.iters)
        report("torch.compile-autocast-bf16", med, mn, f"first call (compile) {compile_s:.1f} s")


if __name__ == "__main__":
    main()
