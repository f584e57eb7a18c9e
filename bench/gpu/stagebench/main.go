// Command stagebench times forward+backward of a GPT block-stack stage on the GPU
// with swarmnode's CUDA backend and prints one JSON line per measurement, for
// bench/gpu.sh to set against PyTorch measured in the same run.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"sort"

	"swarmnode/cuda"
	"swarmnode/model"
)

type result struct {
	Impl     string  `json:"impl"`
	Mode     string  `json:"mode"`
	MsMedian float64 `json:"ms_median"`
	MsMin    float64 `json:"ms_min"`
	TokPerS  float64 `json:"tokens_per_s"`
	TFLOPs   float64 `json:"tflops"`
	Note     string  `json:"note,omitempty"`
}

func main() {
	C := flag.Int("d", 768, "model width")
	NH := flag.Int("heads", 12, "attention heads")
	L := flag.Int("blocks", 6, "blocks in the stage")
	T := flag.Int("T", 1024, "sequence length")
	B := flag.Int("B", 8, "sequences per microbatch")
	prec := flag.String("prec", "bf16", "fp32, tf32 or bf16")
	iters := flag.Int("iters", 20, "timed iterations")
	warm := flag.Int("warmup", 3, "untimed iterations")
	dump := flag.String("dump", "", "write params, input, dout, output, dx and grads (float32 little-endian) to this directory and exit")
	flag.Parse()
	if err := run(*C, *NH, *L, *T, *B, *prec, *iters, *warm, *dump); err != nil {
		fmt.Fprintln(os.Stderr, "stagebench:", err)
		os.Exit(1)
	}
}

func run(C, NH, L, T, B int, precName string, iters, warm int, dump string) error {
	prec := map[string]cuda.Precision{"fp32": cuda.FP32, "tf32": cuda.TF32, "bf16": cuda.BF16Mixed}
	p, ok := prec[precName]
	if !ok {
		return fmt.Errorf("unknown precision %q", precName)
	}
	d, err := cuda.Open(0)
	if err != nil {
		return err
	}
	defer d.Close()
	info := d.Info()
	fmt.Fprintf(os.Stderr, "device %s (cc %d.%d, %d SMs), cuBLAS %d, NVRTC %d.%d\n", info.Name, info.CCMajor, info.CCMinor, info.SMs, info.CUBLAS, info.NVRTC[0], info.NVRTC[1])
	// A middle stage of a GPT-2-sized model: blocks only, no embeddings or head.
	cfg := model.Config{Vocab: 50257, DModel: C, NHead: NH, NLayer: 12, SeqLen: T}
	part := model.Part{Index: 1, Count: 3, First: 0, Blocks: L}
	s, err := cuda.NewStage(d, cuda.StageConfig{Model: cfg, Part: part, Precision: p})
	if err != nil {
		return err
	}
	defer s.Close()
	params := make([]float32, s.NumParams())
	s.Layout().Init(params, 1)
	if err := s.SetParams(params); err != nil {
		return err
	}
	r := rand.New(rand.NewSource(1))
	N := B * T
	x, dout := make([]float32, N*C), make([]float32, N*C)
	for i := range x {
		x[i] = float32(r.NormFloat64())
		dout[i] = float32(r.NormFloat64() * 1e-2)
	}
	if dump != "" {
		return dumpRun(s, params, x, dout, B, T, dump)
	}
	pass, err := s.NewPass(B, T)
	if err != nil {
		return err
	}
	var res []result
	var profile map[string]float64
	flops := float64(L) * (72*float64(C)*float64(C) + 12*float64(T)*float64(C)) * float64(N) // per fwd+bwd, attention counted as in PaLM/llm.c
	err = d.Do(func(c *cuda.Ctx) error {
		if err := c.Upload(pass.Input(), x); err != nil {
			return err
		}
		dbuf, err := c.Alloc(cuda.F32, N*C)
		if err != nil {
			return err
		}
		if err := c.Upload(dbuf, dout); err != nil {
			return err
		}
		step := func() error {
			if err := s.ForwardOn(c, pass); err != nil {
				return err
			}
			return s.BackwardOn(c, pass, dbuf)
		}
		timeIt := func(mode string, fn func() error) error {
			for i := 0; i < warm; i++ {
				if err := fn(); err != nil {
					return err
				}
			}
			if err := c.Sync(); err != nil {
				return err
			}
			ms := make([]float64, iters)
			for i := range ms {
				t, err := c.Time(fn)
				if err != nil {
					return err
				}
				ms[i] = float64(t)
			}
			sort.Float64s(ms)
			med := ms[len(ms)/2]
			res = append(res, result{Impl: "swarmnode", Mode: mode, MsMedian: med, MsMin: ms[0],
				TokPerS: float64(N) / (med / 1e3), TFLOPs: flops / (med / 1e3) / 1e12})
			return nil
		}
		if err := timeIt("eager-"+precName, step); err != nil {
			return err
		}
		g, err := c.Capture(step)
		if err != nil {
			return fmt.Errorf("graph capture: %w", err)
		}
		if err := timeIt("graph-"+precName, func() error { return c.Launch(g) }); err != nil {
			return err
		}
		if err := c.Destroy(g); err != nil {
			return err
		}
		for _, k := range []string{"attn_fwd_tc_w8", "attn_bwd_dkdv_tc_w8", "attn_bwd_dq_tc_w8", "attn_fwd_tc_w4", "attn_bwd_dkdv_tc_w4", "attn_bwd_dq_tc_w4", "layernorm_bwd_24"} {
			regs, local, shared, err := c.KernelResources(k)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "kernel %-18s %3d registers, %4d B local (spills), %5d B shared\n", k, regs, local, shared)
		}
		// Where the time goes: per-step times over 3 profiled iterations (each step
		// synchronised, so they add up to more than a free-running pass).
		s.SetProfile(true)
		for i := 0; i < 3; i++ {
			if err := step(); err != nil {
				return err
			}
		}
		prof := s.Profile()
		s.SetProfile(false)
		for k := range prof {
			prof[k] /= 3
		}
		profile = prof
		// Forward alone, and one block's attention kernels.
		if err := timeIt("forward-only-"+precName, func() error { return s.ForwardOn(c, pass) }); err != nil {
			return err
		}
		res[len(res)-1].Note = "forward only; tokens_per_s and tflops are not comparable"
		qkv, err := c.Alloc(cuda.F32, 3*N*C)
		if err != nil {
			return err
		}
		rnd := make([]float32, 3*N*C)
		for i := range rnd {
			rnd[i] = float32(r.NormFloat64())
		}
		if err := c.Upload(qkv, rnd); err != nil {
			return err
		}
		qkvb, _ := c.Alloc(cuda.BF16, 3*N*C)
		if err := c.Cast(qkvb, qkv); err != nil {
			return err
		}
		doutb, _ := c.Alloc(cuda.BF16, N*C)
		if err := c.Cast(doutb, dbuf); err != nil {
			return err
		}
		out, _ := c.Alloc(cuda.BF16, N*C)
		lse, _ := c.Alloc(cuda.F32, B*NH*T)
		dq, _ := c.Alloc(cuda.BF16, 3*N*C)
		tmp, _ := c.Alloc(cuda.F32, B*NH*T)
		for _, w := range []int{8, 4} {
			if err := c.SetAttentionWarps(w); err != nil {
				return err
			}
			if err := timeIt(fmt.Sprintf("attention-fwd-1block-w%d", w), func() error { return c.AttentionForward(out, lse, qkvb, B, T, C, NH) }); err != nil {
				return err
			}
			res[len(res)-1].Note = "one block's attention forward; tflops counts causal work"
			res[len(res)-1].TFLOPs = 2 * float64(B*NH) * float64(T) * float64(T) * float64(C/NH) / (res[len(res)-1].MsMedian / 1e3) / 1e12
			if err := timeIt(fmt.Sprintf("attention-bwd-1block-w%d", w), func() error { return c.AttentionBackward(dq, tmp, doutb, qkvb, out, lse, B, T, C, NH) }); err != nil {
				return err
			}
			res[len(res)-1].Note = "one block's attention backward; tflops counts causal work"
			res[len(res)-1].TFLOPs = 5 * float64(B*NH) * float64(T) * float64(T) * float64(C/NH) / (res[len(res)-1].MsMedian / 1e3) / 1e12
		}
		if err := c.SetAttentionWarps(0); err != nil {
			return err
		}
		// The bf16 GEMM ceiling on this GPU, for MFU.
		const n = 8192
		A, _ := c.Alloc(cuda.BF16, n*n)
		Bm, _ := c.Alloc(cuda.BF16, n*n)
		Cm, _ := c.Alloc(cuda.F32, n*n)
		big := make([]float32, n*n)
		for i := range big {
			big[i] = float32(r.NormFloat64())
		}
		f, _ := c.Alloc(cuda.F32, n*n)
		if err := c.Upload(f, big); err != nil {
			return err
		}
		if err := c.Cast(A, f); err != nil {
			return err
		}
		if err := c.Cast(Bm, f); err != nil {
			return err
		}
		if err := timeIt("gemm-bf16-8192", func() error {
			return c.Gemm(false, false, n, n, n, 1, A, n, Bm, n, 0, Cm, n, cuda.ComputeFP32)
		}); err != nil {
			return err
		}
		last := &res[len(res)-1]
		last.TFLOPs = 2 * n * n * n / (last.MsMedian / 1e3) / 1e12
		last.TokPerS = 0
		last.Note = "cuBLAS bf16 GEMM ceiling for MFU"
		return nil
	})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	for _, r := range res {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return enc.Encode(map[string]any{"impl": "swarmnode", "mode": "profile", "tokens_per_s": 0, "ms_per_step": profile})
}

// dumpRun runs one forward+backward in float32 and writes everything PyTorch needs
// to check the stage (bench/gpu/check_torch.py).
func dumpRun(s *cuda.Stage, params, x, dout []float32, B, T int, dir string) error {
	pass, err := s.Forward(model.Input{B: B, T: T, X: x})
	if err != nil {
		return err
	}
	out := pass.Out
	dx, err := s.Backward(pass, dout)
	if err != nil {
		return err
	}
	grads, err := s.Grads()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, v := range map[string][]float32{"params": params, "x": x, "dout": dout, "out": out, "dx": dx, "grads": grads} {
		b := make([]byte, 4*len(v))
		for i, f := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
		}
		if err := os.WriteFile(filepath.Join(dir, name+".f32"), b, 0o644); err != nil {
			return err
		}
	}
	meta := map[string]any{"B": B, "T": T, "C": s.Config().Model.DModel, "NH": s.Config().Model.NHead, "views": s.Layout().Views}
	mb, _ := json.Marshal(meta)
	return os.WriteFile(filepath.Join(dir, "meta.json"), mb, 0o644)
}
