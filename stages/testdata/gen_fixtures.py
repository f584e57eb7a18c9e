#!/usr/bin/python3
"""Generates the PyTorch reference fixtures for swarmnode/stages tests.

Run with Debian's python3 (python3-torch 1.13, numpy):

    /usr/bin/python3 stages/testdata/gen_fixtures.py

It writes gpt_tiny.json (config, tokens, scalars, tensor index) and gpt_tiny.bin
(little-endian float32 tensors). The reference runs in float64; the Go side runs
in float32 and compares within 1e-5 relative (per tensor, in the 2-norm).

Weights are not stored: both sides compute them from fixture_weight() below, a
hash of (tensor name, element index), so the fixture stays small. The layout and
orientation follow the stages package doc: HF Conv1D (in, out) block weights,
lm_head.weight (vocab, d).
"""
import json
import math
import os
import struct

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

CFG = dict(vocab=65, d_model=64, n_head=4, n_layer=4, seq_len=32)
B, T = 3, 32
SPLIT = [1, 2, 1]
MICRO = 2
STEPS = 4
# eps is 1e-5, not the usual 1e-8: Adam's m/sqrt(v) turns rounding noise in gradients
# that are exactly zero (the key bias of c_attn: softmax ignores a per-row shift) or
# nearly cancel into steps of about +-lr. With eps 1e-8 PyTorch's own float32 run
# differs from this float64 reference by 2.7e-4 relative on those tensors, so a 1e-5
# comparison would measure noise, not correctness. A larger eps keeps the problem well
# conditioned in float32 while still checking every term of the update.
OPT = dict(lr=1e-2, min_lr=1e-3, warmup=2, steps=4, weight_decay=0.1,
           beta1=0.9, beta2=0.95, eps=1e-5, clip=0.5)
MASK64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xcbf29ce484222325
    for c in s.encode():
        h ^= c
        h = (h * 0x100000001b3) & MASK64
    return h


def fixture_weight(name, n, lo_hi):
    """Uniform values in [center-a, center+a): splitmix64(fnv1a64(name) + i)."""
    center, a = lo_hi
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(fnv1a64(name))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    return (center + (u - 0.5) * 2 * a).astype(np.float32)


def weight_range(name, shape):
    """Mirrors fixtureRange in the Go tests."""
    if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
        return (1.0, 0.1)
    if len(shape) == 1:
        return (0.0, 0.05)
    if name in ("wte", "wpe"):
        return (0.0, 0.1)
    return (0.0, 0.05)


def layout():
    d, v = CFG["d_model"], CFG["vocab"]
    out = [("wte", (v, d)), ("wpe", (CFG["seq_len"], d))]
    for i in range(CFG["n_layer"]):
        p = "h.%d." % i
        out += [(p + "ln_1.weight", (d,)), (p + "ln_1.bias", (d,)),
                (p + "attn.c_attn.weight", (d, 3 * d)), (p + "attn.c_attn.bias", (3 * d,)),
                (p + "attn.c_proj.weight", (d, d)), (p + "attn.c_proj.bias", (d,)),
                (p + "ln_2.weight", (d,)), (p + "ln_2.bias", (d,)),
                (p + "mlp.c_fc.weight", (d, 4 * d)), (p + "mlp.c_fc.bias", (4 * d,)),
                (p + "mlp.c_proj.weight", (4 * d, d)), (p + "mlp.c_proj.bias", (d,))]
    out += [("ln_f.weight", (d,)), ("ln_f.bias", (d,)), ("lm_head.weight", (v, d))]
    return out


def stage_of(name):
    """Stage index of a tensor under SPLIT."""
    if name in ("wte", "wpe"):
        return 0
    if name.startswith("h."):
        layer = int(name.split(".")[1])
        acc = 0
        for k, n in enumerate(SPLIT):
            acc += n
            if layer < acc:
                return k
    return len(SPLIT) - 1


def layernorm(x, w, b):
    m = x.mean(-1, keepdim=True)
    var = ((x - m) ** 2).mean(-1, keepdim=True)
    return (x - m) / torch.sqrt(var + 1e-5) * w + b


def gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(P, tokens, targets):
    d, nh = CFG["d_model"], CFG["n_head"]
    hs = d // nh
    Bn, Tn = tokens.shape
    x = P["wte"][tokens] + P["wpe"][:Tn]
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    for i in range(CFG["n_layer"]):
        p = lambda s: P["h.%d.%s" % (i, s)]
        h = layernorm(x, p("ln_1.weight"), p("ln_1.bias"))
        qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = qkv.split(d, dim=-1)
        q = q.view(Bn, Tn, nh, hs).transpose(1, 2)
        k = k.view(Bn, Tn, nh, hs).transpose(1, 2)
        v = v.view(Bn, Tn, nh, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, d)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = layernorm(x, p("ln_2.weight"), p("ln_2.bias"))
        f = gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
        x = x + f @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    x = layernorm(x, P["ln_f.weight"], P["ln_f.bias"])
    logits = x @ P["lm_head.weight"].t()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return logits, loss


def lr_at(step):
    o = OPT
    if step < o["warmup"]:
        return o["lr"] * (step + 1) / o["warmup"]
    if o["steps"] <= 0:
        return o["lr"]
    span = o["steps"] - o["warmup"]
    if span <= 0:
        return o["min_lr"]
    p = min(1.0, (step - o["warmup"]) / span)
    return o["min_lr"] + 0.5 * (1 + math.cos(math.pi * p)) * (o["lr"] - o["min_lr"])


def batch(rng):
    toks = rng.integers(0, CFG["vocab"], size=(B, T + 1))
    return toks[:, :-1].astype(np.int64), toks[:, 1:].astype(np.int64)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    names = layout()
    P = {}
    for name, shape in names:
        n = int(np.prod(shape))
        w = fixture_weight(name, n, weight_range(name, shape)).astype(np.float64)
        P[name] = torch.tensor(w.reshape(shape), requires_grad=True)

    rng = np.random.default_rng(1234)
    micro = [batch(rng) for _ in range(STEPS * MICRO)]

    blobs = []
    index = {}
    offset = 0

    def put(key, arr):
        nonlocal offset
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
        index[key] = dict(offset=offset, shape=list(a.shape))
        blobs.append(a.astype("<f4").tobytes())
        offset += a.size

    # Logits, loss and every gradient of the first microbatch alone.
    tok, tgt = micro[0]
    logits, loss = forward(P, torch.tensor(tok), torch.tensor(tgt))
    loss.backward()
    put("logits", logits.detach().numpy())
    for name, _ in names:
        put("grad/" + name, P[name].grad.numpy())
    first_loss = loss.item()

    # STEPS AdamW steps over MICRO microbatches each, clipped per stage.
    m = {n: torch.zeros_like(P[n]) for n, _ in names}
    v = {n: torch.zeros_like(P[n]) for n, _ in names}
    losses, norms = [], []
    for step in range(STEPS):
        for n, _ in names:
            P[n].grad = None
        for j in range(MICRO):
            tok, tgt = micro[step * MICRO + j]
            _, l = forward(P, torch.tensor(tok), torch.tensor(tgt))
            l.backward()
            losses.append(l.item())
        with torch.no_grad():
            step_norms = []
            for k in range(len(SPLIT)):
                group = [n for n, _ in names if stage_of(n) == k]
                for n in group:
                    P[n].grad /= MICRO
                norm = math.sqrt(sum(float((P[n].grad ** 2).sum()) for n in group))
                step_norms.append(norm)
                coef = OPT["clip"] / (norm + 1e-6)
                if coef < 1:
                    for n in group:
                        P[n].grad *= coef
            norms.append(step_norms)
            lr = lr_at(step)
            t = step + 1
            b1, b2 = OPT["beta1"], OPT["beta2"]
            for n, shape in names:
                g = P[n].grad
                if len(shape) == 2:
                    P[n].mul_(1 - lr * OPT["weight_decay"])
                m[n].mul_(b1).add_(g, alpha=1 - b1)
                v[n].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v[n].sqrt() / math.sqrt(1 - b2 ** t)).add_(OPT["eps"])
                P[n].addcdiv_(m[n], denom, value=-lr / (1 - b1 ** t))
    for name, _ in names:
        put("final/" + name, P[name].detach().numpy())

    meta = dict(config=CFG, B=B, T=T, split=SPLIT, micro=MICRO, steps=STEPS, opt=OPT,
                tokens=[t.reshape(-1).tolist() for t, _ in micro],
                targets=[t.reshape(-1).tolist() for _, t in micro],
                loss=first_loss, train_losses=losses, grad_norms=norms,
                tensors=index)
    with open(os.path.join(here, "gpt_tiny.bin"), "wb") as f:
        for b in blobs:
            f.write(b)
    with open(os.path.join(here, "gpt_tiny.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("loss %.6f  train losses %s  grad norms %s" % (first_loss, losses, norms))


if __name__ == "__main__":
    main()
