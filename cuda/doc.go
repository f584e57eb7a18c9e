// Package cuda runs the GPT stage math on an NVIDIA GPU.
//
// It binds the CUDA driver (libcuda.so.1), cuBLAS and NVRTC at run time with
// dlopen, declaring only the functions it calls, so the package (and every binary
// that imports it) builds without CUDA headers or libraries and runs on machines
// without a GPU: Open then returns an error that says what is missing.
//
// A Device owns the GPU's primary context and one goroutine locked to its OS
// thread; every GPU call runs on that thread through Device.Do, which hands the
// callback a *Ctx holding the device's stream, cuBLAS handle, kernels and pinned
// staging memory. Kernels are CUDA C (kernels.cu, embedded) compiled with NVRTC for
// the device's compute capability on first use and cached on disk.
//
// Buffers are flat and typed (float32, bfloat16, int8, int32), and the stage
// (Stage) keeps its parameters in one flat float32 vector with the same layout,
// names and order as the CPU stages package (docs/stage-api.md), so parameters,
// gradients and optimizer moments can be copied between the two as flat vectors.
// This package imports nothing else of swarmnode's.
package cuda
