// Package cuda runs the GPT stage math on an NVIDIA GPU.
//
// It binds the CUDA driver (libcuda.so.1), cuBLAS (libcublas.so.13, then .so.12)
// and NVRTC (libnvrtc.so.13, then .so.12) at run time with dlopen, declaring only
// the functions it calls, so the package and every binary importing it build
// without CUDA headers or libraries and run on machines without a GPU: Available
// and Open then return an error that says what is missing. SWARMNODE_LIBCUDA,
// SWARMNODE_LIBCUBLAS and SWARMNODE_LIBNVRTC name other library files.
//
// A Device owns the GPU's primary context and one goroutine locked to its OS
// thread; every GPU call runs on that thread through Device.Do, whose callback
// gets a *Ctx: the device's stream, cuBLAS handle, kernels, launch-argument block
// in C memory and pinned staging buffer for host transfers. Every driver, cuBLAS
// and NVRTC status is checked; launches are checked when queued, asynchronous
// faults surface at the next synchronisation, and SWARMNODE_CUDA_SYNC=1 (or
// Ctx.SetSyncCheck) synchronises after every launch to name the faulting kernel.
//
// Kernels are CUDA C (common.cuh, kernels.cu, attention_f32.cu, embedded) compiled
// with NVRTC for the device's compute capability when first needed and cached on
// disk (SWARMNODE_CUDA_CACHE, default the user cache directory).
//
// Decoder runs a whole GPT-2 one token at a time over a KV cache on the device,
// for sampling.
//
// Ops (Ctx methods) cover a GPT stage forward and backward: GEMMs (float32, TF32,
// bf16 with float32 accumulation), embedding, LayerNorm, GELU, residual, causal
// flash attention (memory linear in T; bf16 tensor cores for head size 64),
// cross-entropy, AdamW, gradient norm and clipping, and int8 blockwise
// quantisation, so activations leave the GPU already compressed.
//
// Stage is a pipeline stage over flat device buffers. Its parameter vector has
// the layout of package model, the CPU stages' own, so parameters, gradients and
// AdamW moments copy between the two as flat vectors. In BF16Mixed precision it
// keeps float32 master weights and optimizer state, a bf16 copy of the weights
// for the GEMMs, and bf16 activations where the next GEMM reads them. Of
// swarmnode's packages it imports package model only.
package cuda
