// Package model defines swarmnode's GPT once, for the CPU (package stages) and the
// GPU (package cuda) alike: its shape (Config), the optimizer and its schedule
// (Optim), how a model is cut into pipeline stages (Part), the flat parameter
// layout of a stage with its GPT-2 names (Layout, View) and initial weights, and
// what a stage takes and keeps (Input, State). It imports nothing of swarmnode's,
// so a change of the model is made here once.
//
// # Model
//
// GPT-2: token + learned position embeddings; pre-LN blocks (LayerNorm, causal
// multi-head self-attention with fused QKV, residual, LayerNorm, MLP of width 4·d
// with tanh-GELU, residual); final LayerNorm, an untied LM head and mean
// cross-entropy. LayerNorm eps is 1e-5, attention is scaled by 1/sqrt(head size).
//
// # Stages
//
// A model of n_layer blocks is split into S stages by a list of blocks per stage
// (Split). Stage 0 also owns the embeddings (wte, wpe) and takes token ids; the
// last stage also owns ln_f and lm_head and computes the loss from targets. Every
// other stage maps activations [B,T,d] to activations [B,T,d]. Any split of the
// same (config, seed) starts from the same weights, because each parameter tensor
// is initialised from a generator seeded by (seed, name) (Layout.Init).
//
// # Parameter layout
//
// A stage keeps its parameters in one flat []float32 and its gradients and AdamW
// moments in others of the same layout, llm.c style. Layout.Views lists the named
// tensors in layout order, with HF GPT-2 names; layer indices are global, so stage
// 1 of [2,2] starts with "h.2.ln_1.weight":
//
//	wte                      [vocab, d]        stage 0 only
//	wpe                      [seq_len, d]      stage 0 only
//	h.L.ln_1.weight, .bias   [d]
//	h.L.attn.c_attn.weight   [d, 3d]           (in, out): HF Conv1D layout, y = x·W + b
//	h.L.attn.c_attn.bias     [3d]              columns: q | k | v, each head-major
//	h.L.attn.c_proj.weight   [d, d]            (in, out)
//	h.L.attn.c_proj.bias     [d]
//	h.L.ln_2.weight, .bias   [d]
//	h.L.mlp.c_fc.weight      [d, 4d]           (in, out)
//	h.L.mlp.c_fc.bias        [4d]
//	h.L.mlp.c_proj.weight    [4d, d]           (in, out)
//	h.L.mlp.c_proj.bias      [d]
//	ln_f.weight, ln_f.bias   [d]               last stage only
//	lm_head.weight           [vocab, d]        last stage only; (out, in) like HF's
//	                                           nn.Linear, logits = x·Wᵀ, no bias
//
// The block weights use HF's Conv1D (in, out) orientation so that a Hugging Face
// GPT-2 state dict loads by copying tensors into the views of the same names;
// PyTorch nn.Linear weights (out, in) must be transposed first. Views with
// two-dimensional shapes (the matrices) have Decay set: AdamW applies weight decay
// to them only.
package model
