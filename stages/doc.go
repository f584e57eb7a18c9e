// Package stages is the GPT of swarmnode (defined in package model) cut into
// pipeline stages, computed on the CPU or on a GPU: the stage API that the
// pipeline, averaging and the local trainer use.
//
// # Stages
//
// New builds stage k of a split on the CPU, NewOnGPU on a GPU (SharedGPU opens
// the process's GPU once; GPUAvailable says whether there is one). Both start
// from the same weights, model.Layout.Init's, and a Stage looks the same either
// way: Forward and Backward, Step (AdamW with the schedule of model.Optim),
// WithState, ReadState and AddState for averaging and state transfer. Stage
// validates every input, holds the locks and the parameter version, and hands
// the math to an engine: cpu.go computes over flat host vectors in llm.c's
// manner, one plain forward and backward function per layer (block.go,
// attention.go, layernorm.go, ...); gpu.go hands it to package cuda, which keeps
// the vectors in device memory in the same layout. A Chain runs every stage of a
// model in one process: the centralized baseline, and on one GPU a path that
// keeps activations in device memory from stage to stage.
//
// On a GPU stage Params, Grads, View and GradView return host copies, and a call
// without an error return reports a device error through DeviceErr.
//
// # Tensors between stages
//
// The pipeline hands a stage each tensor as it arrived (Receive) and asks for
// the stage's own in a Wire format (ForwardTensor, BackwardTensor). A stage on a
// GPU keeps the pipeline's int8 wire layout all the way to the device and
// quantizes and dequantizes there, so activations and gradients cross the bus
// compressed; a CPU stage has them decoded and encoded on the host by the
// pipeline's codec. The pipeline itself never asks where a stage computes.
//
// # Concurrency
//
// Forward holds a read lock on the parameters, so several forwards (and backwards)
// may run at once from different goroutines. Backward computes into per-call
// buffers and adds into Grads under a mutex. Step and WithState take the write
// lock, ZeroGrad the gradients' mutex. A Pass owns pooled activation buffers until Backward or Release.
//
// # Matrix products on the CPU
//
// All matrix products go through package stages/blas (OpenBLAS when it can be
// loaded, gonum otherwise). Exponentials of softmax rows and GELU run in package
// stages/vec (AVX2 C kernels with cgo, Go otherwise). The remaining ops are Go
// loops. Ops are parallelised over rows or (batch, head) pairs; buffers for
// activations and backward scratch come from per-stage pools.
package stages
