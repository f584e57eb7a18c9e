#!/usr/bin/python3
"""PyTorch reference for bench/cpu.sh: forward+backward of one GPT-2-small block.

Same block as swarmnode's BenchmarkBlockGPT2Small (pre-LN, fused QKV, causal
attention, tanh-GELU MLP; d 768, 12 heads, B 4, T 256, float32), same thread
count. Prints one line: "tokens/s <value>".

Usage: /usr/bin/python3 bench/cpu/torch_block.py [threads] [iterations]
"""
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
ITERS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
B, T, D, NH = 4, 256, 768, 12


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D, eps=1e-5)
        self.c_attn = nn.Linear(D, 3 * D)
        self.c_proj = nn.Linear(D, D)
        self.ln_2 = nn.LayerNorm(D, eps=1e-5)
        self.c_fc = nn.Linear(D, 4 * D)
        self.mlp_proj = nn.Linear(4 * D, D)
        self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def forward(self, x):
        hs = D // NH
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=-1)
        q = q.view(B, T, NH, hs).transpose(1, 2)
        k = k.view(B, T, NH, hs).transpose(1, 2)
        v = v.view(B, T, NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(~self.mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.c_proj(y)
        h = F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")
        return x + self.mlp_proj(h)


def main():
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    blk = Block()
    x = torch.randn(B, T, D, requires_grad=True)
    dout = torch.randn(B, T, D)

    def step():
        x.grad = None
        out = blk(x)
        out.backward(dout)

    step()
    step()
    t0 = time.perf_counter()
    for _ in range(ITERS):
        step()
    dt = (time.perf_counter() - t0) / ITERS
    print("tokens/s %.1f" % (B * T / dt))


if __name__ == "__main__":
    main()
