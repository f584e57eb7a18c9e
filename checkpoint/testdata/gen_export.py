#!/usr/bin/python3
"""Computes the logits of the exported fixture model as a Hugging Face GPT-2.

Run with Debian's python3-torch from the repository root, after
`GEN_EXPORT_FIXTURE=1 go test -run TestExportMatchesPyTorch ./checkpoint`:

    /usr/bin/python3 checkpoint/testdata/gen_export.py

It reads checkpoint/testdata/export/{config.json,model.safetensors} with a
small safetensors reader (no extra packages) and runs GPT-2's forward pass the
way transformers' GPT2LMHeadModel does, from the tensors' HF names: Conv1D
layers x @ W + b with W stored (in, out), pre-LayerNorm blocks with eps
layer_norm_epsilon, causal attention, the tanh GELU (gelu_new), a final
LayerNorm and lm_head.weight (vocab, d) applied as x @ W.T. It writes the
logits of the tokens below, in float64, to logits.json.
"""
import json
import math
import os
import struct

import torch

torch.set_default_dtype(torch.float64)
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export")
TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]  # B 2, T 8
B, T = 2, 8


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        lo, hi = info["data_offsets"]
        vals = struct.unpack("<%df" % ((hi - lo) // 4), data[lo:hi])
        out[name] = torch.tensor(vals).reshape(info["shape"])
    return out


def layer_norm(x, w, b, eps):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def main():
    cfg = json.load(open(os.path.join(HERE, "config.json")))
    w = read_safetensors(os.path.join(HERE, "model.safetensors"))
    d, nh, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    hd = d // nh
    tok = torch.tensor(TOKENS).reshape(B, T)
    x = w["wte.weight"][tok] + w["wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg["n_layer"]):
        p = "h.%d." % i
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = qkv.split(d, dim=-1)
        q, k, v = (t.reshape(B, T, nh, hd).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, d)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        h = gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    logits = x @ w["lm_head.weight"].T
    with open(os.path.join(HERE, "logits.json"), "w") as f:
        json.dump([round(v, 10) for v in logits.reshape(-1).tolist()], f)
    print("wrote", os.path.join(HERE, "logits.json"), tuple(logits.shape))


if __name__ == "__main__":
    main()
