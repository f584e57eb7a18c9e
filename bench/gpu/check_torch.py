"""Checks a swarmnode CUDA stage dump (bin/stagebench -dump DIR) against PyTorch.

Rebuilds the same blocks in float64 from the flat parameter vector (HF GPT-2
layout: Conv1D weights are [in, out]), runs forward and backward on the dumped
input and output gradient, and compares output, input gradient and every
parameter gradient by relative L2 error.
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


def load(d, name):
    return torch.from_numpy(np.fromfile(f"{d}/{name}.f32", dtype="<f4").astype(np.float64))


def main():
    d = sys.argv[1]
    tol = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-4
    meta = json.load(open(f"{d}/meta.json"))
    B, T, C, NH = meta["B"], meta["T"], meta["C"], meta["NH"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    P = load(d, "params").to(dev).requires_grad_(True)
    x = load(d, "x").to(dev).view(B, T, C).requires_grad_(True)
    dout = load(d, "dout").to(dev).view(B, T, C)
    views = {v["Name"]: v for v in meta["views"]}

    def p(name):
        v = views[name]
        return P[v["Offset"]:v["Offset"] + v["Len"]].view(*v["Shape"])

    blocks = sorted({int(n.split(".")[1]) for n in views if n.startswith("h.")})
    h = x
    for i in blocks:
        q = lambda s: p(f"h.{i}.{s}")
        a = F.layer_norm(h, (C,), q("ln_1.weight"), q("ln_1.bias"), 1e-5)
        qkv = a @ q("attn.c_attn.weight") + q("attn.c_attn.bias")
        qq, kk, vv = qkv.split(C, dim=2)
        hd = C // NH
        qq, kk, vv = [t.view(B, T, NH, hd).transpose(1, 2) for t in (qq, kk, vv)]
        y = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)
        h = h + y @ q("attn.c_proj.weight") + q("attn.c_proj.bias")
        m = F.layer_norm(h, (C,), q("ln_2.weight"), q("ln_2.bias"), 1e-5)
        m = F.gelu(m @ q("mlp.c_fc.weight") + q("mlp.c_fc.bias"), approximate="tanh")
        h = h + m @ q("mlp.c_proj.weight") + q("mlp.c_proj.bias")
    h.backward(dout)

    def rel(got, ref):
        return (torch.linalg.norm(got.to(dev) - ref) / torch.linalg.norm(ref)).item()

    rows = [("out", rel(load(d, "out"), h.detach().flatten())),
            ("dx", rel(load(d, "dx"), x.grad.flatten())),
            ("grads", rel(load(d, "grads"), P.grad))]
    g = load(d, "grads").to(dev)
    for name, v in views.items():
        o, n = v["Offset"], v["Len"]
        ref = P.grad[o:o + n]
        if torch.linalg.norm(ref) > 0:
            rows.append((f"grad {name}", rel(g[o:o + n], ref)))
    worst = max(e for _, e in rows[:3])
    for name, e in rows[:3]:
        print(f"torch check {name}: relative error {e:.3g}")
    print(f"torch check: worst per-tensor gradient error {max(e for _, e in rows[3:]):.3g}")
    print(f"torch check vs float64 PyTorch (B={B} T={T} C={C} heads={NH} blocks={len(blocks)}): "
          f"{'PASS' if worst < tol else 'FAIL'} (tolerance {tol:g})")
    sys.exit(0 if worst < tol else 1)


if __name__ == "__main__":
    main()
