// Package stages is the GPT model of swarmnode, cut into pipeline stages, on the CPU.
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
// (New's layers argument). Stage 0 also owns the embeddings (wte, wpe) and takes
// token ids; the last stage also owns ln_f and lm_head and computes the loss from
// targets. Every other stage maps activations [B,T,d] to activations [B,T,d].
// Any split of the same (config, seed) starts from the same weights, because each
// parameter tensor is initialised from a generator seeded by (seed, name).
//
// # Parameter layout
//
// A stage keeps its parameters in one flat []float32 (Params) and its gradients in
// another of the same layout (Grads), llm.c style. Views lists the named tensors in
// layout order, with HF GPT-2 names; layer indices are global, so stage 1 of [2,2]
// starts with "h.2.ln_1.weight":
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
//
// # Concurrency
//
// Forward holds a read lock on the parameters, so several forwards (and backwards)
// may run at once from different goroutines. Backward computes into per-call
// buffers and adds into Grads under a mutex. Step, WithState and ZeroGrad take the
// write lock. A Pass owns pooled activation buffers until Backward or Release.
//
// # Matrix products
//
// All matrix products go through package stages/blas (OpenBLAS when it can be
// loaded, gonum otherwise). Exponentials of softmax rows and GELU run in package
// stages/vec (AVX2 C kernels with cgo, Go otherwise). The remaining ops are Go
// loops. Ops are parallelised over rows or (batch, head) pairs; buffers for
// activations and backward scratch come from per-stage pools.
package stages
