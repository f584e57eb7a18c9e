package cuda

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The ops below queue work on the device's stream; they validate shapes and types
// and return an error instead of launching on a mismatch. A zero Buf (Ptr 0) stands
// for an absent optional operand.

const (
	ewBlock   = 256 // threads per block of element-wise kernels
	sumBlocks = 512 // partial sums of reductions: fixed, so results are deterministic
)

func (c *Ctx) ewGrid(n int) dim3 {
	g := (n + ewBlock - 1) / ewBlock
	if lim := c.d.info.SMs * 16; g > lim {
		g = lim
	}
	return dim3{uint32(max(g, 1)), 1, 1}
}

var ewThreads = dim3{ewBlock, 1, 1}

func need(name string, b Buf, t DType, n int) error {
	if b.Ptr == 0 {
		return fmt.Errorf("cuda: %s: missing buffer", name)
	}
	if b.DType != t {
		return fmt.Errorf("cuda: %s: want %v, got %v", name, t, b.DType)
	}
	if b.N < n {
		return fmt.Errorf("cuda: %s: want %d elements, buffer has %d", name, n, b.N)
	}
	return nil
}

func needOpt(name string, b Buf, t DType, n int) error {
	if b.Ptr == 0 {
		return nil
	}
	return need(name, b, t, n)
}

// suffix names the kernel variant that writes type t (float32 or bfloat16).
func suffix(name string, t DType) (string, error) {
	switch t {
	case F32:
		return name + "_f32", nil
	case BF16:
		return name + "_bf16", nil
	}
	return "", fmt.Errorf("cuda: %s: no %v variant", name, t)
}

// Cast converts between float32 and bfloat16 (round to nearest even).
func (c *Ctx) Cast(dst, src Buf) error {
	if dst.N != src.N {
		return fmt.Errorf("cuda: cast of %d elements into %d", src.N, dst.N)
	}
	switch {
	case src.DType == F32 && dst.DType == BF16 && src.N%8 == 0 && src.N < math.MaxInt32 && aligned16(src, dst):
		return c.launch("cast_f32_bf16_v8", c.ewGrid(src.N/8), ewThreads, 0, dst, src, src.N/8)
	case src.DType == F32 && dst.DType == BF16:
		return c.launch("cast_f32_bf16", c.ewGrid(src.N), ewThreads, 0, dst, src, int64(src.N))
	case src.DType == BF16 && dst.DType == F32:
		return c.launch("cast_bf16_f32", c.ewGrid(src.N), ewThreads, 0, dst, src, int64(src.N))
	case src.DType == dst.DType:
		return c.Copy(dst, src)
	}
	return fmt.Errorf("cuda: cast %v to %v", src.DType, dst.DType)
}

// AddInPlace computes dst += src (float32).
func (c *Ctx) AddInPlace(dst, src Buf) error {
	if err := need("add dst", dst, F32, src.N); err != nil {
		return err
	}
	if err := need("add src", src, F32, dst.N); err != nil {
		return err
	}
	return c.launch("add_inplace", c.ewGrid(dst.N), ewThreads, 0, dst, src, int64(dst.N))
}

// LinearForward computes out = resid + inp·w + bias for N rows: inp [N,IC], w
// [IC,OC] (HF Conv1D orientation), bias [OC], resid [N,OC] (both optional), out
// [N,OC] float32. inp and w are both float32 or both bfloat16.
func (c *Ctx) LinearForward(out, inp, w, bias, resid Buf, N, IC, OC int, mode Compute) error {
	if err := need("linear out", out, F32, N*OC); err != nil {
		return err
	}
	if err := needOpt("linear bias", bias, F32, OC); err != nil {
		return err
	}
	if err := needOpt("linear resid", resid, F32, N*OC); err != nil {
		return err
	}
	beta := float32(0)
	if bias.Ptr != 0 || resid.Ptr != 0 {
		if err := c.launch("bias_rows", c.ewGrid(N*OC), ewThreads, 0, out, resid.Ptr, bias.Ptr, N, OC); err != nil {
			return err
		}
		beta = 1
	}
	return c.Gemm(false, false, N, OC, IC, 1, inp, IC, w, OC, beta, out, OC, mode)
}

// LinearBackward computes dinp = dout·wᵀ (added to dinp when accum is set; skipped
// when dinp is absent), dw += inpᵀ·dout and dbias += column sums of dout (when
// dbias is present). dout has the operand type of inp and w; dinp and dw are float32.
func (c *Ctx) LinearBackward(dinp, dw, dbias, dout, inp, w Buf, N, IC, OC int, accum bool, mode Compute) error {
	if dinp.Ptr != 0 {
		beta := float32(0)
		if accum {
			beta = 1
		}
		if err := c.Gemm(false, true, N, IC, OC, 1, dout, OC, w, OC, beta, dinp, IC, mode); err != nil {
			return err
		}
	}
	if err := c.Gemm(true, false, IC, OC, N, 1, inp, IC, dout, OC, 1, dw, OC, mode); err != nil {
		return err
	}
	if dbias.Ptr != 0 {
		return c.BiasGrad(dbias, dout, N, OC)
	}
	return nil
}

// BiasGrad adds the column sums of dout [N,C] (float32 or bfloat16) into dbias [C].
func (c *Ctx) BiasGrad(dbias, dout Buf, N, C int) error {
	if err := need("bias grad", dbias, F32, C); err != nil {
		return err
	}
	if dout.N < N*C {
		return fmt.Errorf("cuda: bias grad: dout has %d elements, want %d", dout.N, N*C)
	}
	name, err := suffix("bias_grad", dout.DType)
	if err != nil {
		return err
	}
	splits := min((N+63)/64, 64)
	if dout.DType == BF16 && vec8(N, C, dout, dbias) {
		return c.launch("bias_grad_bf16_v8", dim3{uint32((C + 255) / 256), uint32(max(splits, 1)), 1}, dim3{32, 8, 1}, 0, dbias, dout, N, C)
	}
	return c.launch(name, dim3{uint32((C + 31) / 32), uint32(max(splits, 1)), 1}, dim3{32, 8, 1}, 0, dbias, dout, N, C)
}

// EncoderForward computes out[b,t,:] = wte[tok[b,t],:] + wpe[t,:]. Token ids must
// already be checked against the vocabulary (the kernel indexes wte with them).
func (c *Ctx) EncoderForward(out, tok, wte, wpe Buf, B, T, C int) error {
	if err := need("encoder out", out, F32, B*T*C); err != nil {
		return err
	}
	if err := need("encoder tokens", tok, I32, B*T); err != nil {
		return err
	}
	if err := need("encoder wpe", wpe, F32, T*C); err != nil {
		return err
	}
	if err := need("encoder wte", wte, F32, C); err != nil {
		return err
	}
	return c.launch("encoder_fwd", c.ewGrid(B*T*C), ewThreads, 0, out, tok, wte, wpe, B, T, C)
}

// EncoderBackward adds the gradient dout [B,T,C] into dwte (rows of the tokens) and dwpe.
func (c *Ctx) EncoderBackward(dwte, dwpe, dout, tok Buf, B, T, C int) error {
	if err := need("encoder dout", dout, F32, B*T*C); err != nil {
		return err
	}
	if err := need("encoder dwpe", dwpe, F32, T*C); err != nil {
		return err
	}
	if err := need("encoder tokens", tok, I32, B*T); err != nil {
		return err
	}
	if err := need("encoder dwte", dwte, F32, C); err != nil {
		return err
	}
	if err := c.launch("encoder_bwd_wte", c.ewGrid(B*T*C), ewThreads, 0, dwte, tok, dout, B*T, C); err != nil {
		return err
	}
	return c.launch("encoder_bwd_wpe", c.ewGrid(T*C), ewThreads, 0, dwpe, dout, B, T, C)
}

// LayerNormForward normalises the N rows of inp [N,C] with eps 1e-5 and applies w,
// b; out is float32 or bfloat16; mean and rstd [N] are kept for the backward pass.
func (c *Ctx) LayerNormForward(out, mean, rstd, inp, w, b Buf, N, C int) error {
	if out.N < N*C {
		return fmt.Errorf("cuda: layernorm out has %d elements, want %d", out.N, N*C)
	}
	for _, x := range []struct {
		name string
		b    Buf
		n    int
	}{{"layernorm mean", mean, N}, {"layernorm rstd", rstd, N}, {"layernorm inp", inp, N * C}, {"layernorm w", w, C}, {"layernorm b", b, C}} {
		if err := need(x.name, x.b, F32, x.n); err != nil {
			return err
		}
	}
	if out.DType == BF16 {
		if j := regRowJ(C); j > 0 {
			return c.launch(fmt.Sprintf("layernorm_fwd_bf16_%d", j), grid1(N, 8), dim3{256, 1, 1}, 0, out, mean, rstd, inp, w, b, N, C)
		}
	}
	name, err := suffix("layernorm_fwd", out.DType)
	if err != nil {
		return err
	}
	return c.launch(name, grid1(N, 8), dim3{256, 1, 1}, 0, out, mean, rstd, inp, w, b, N, C)
}

// LayerNormBackward adds the input gradient into dinp and the parameter gradients
// into dw and db (all float32).
func (c *Ctx) LayerNormBackward(dinp, dw, db, dout, inp, w, mean, rstd Buf, N, C int) error {
	return c.LayerNormBackwardOp(dinp, Buf{}, Buf{}, dw, db, dout, inp, w, mean, rstd, N, C)
}

// LayerNormBackwardOp is LayerNormBackward that also writes the updated dinp in
// bfloat16 to dop and adds its column sums into dcol [C] (each when present): the
// operand of the GEMMs and the bias gradient of the branch that consume it next.
func (c *Ctx) LayerNormBackwardOp(dinp, dop, dcol, dw, db, dout, inp, w, mean, rstd Buf, N, C int) error {
	for _, x := range []struct {
		name string
		b    Buf
		n    int
	}{{"layernorm dinp", dinp, N * C}, {"layernorm dw", dw, C}, {"layernorm db", db, C}, {"layernorm dout", dout, N * C},
		{"layernorm inp", inp, N * C}, {"layernorm w", w, C}, {"layernorm mean", mean, N}, {"layernorm rstd", rstd, N}} {
		if err := need(x.name, x.b, F32, x.n); err != nil {
			return err
		}
	}
	if err := needOpt("layernorm dinp bf16", dop, BF16, N*C); err != nil {
		return err
	}
	if err := needOpt("layernorm dinp column sums", dcol, F32, C); err != nil {
		return err
	}
	shmem := 2 * C * 4
	if dcol.Ptr != 0 {
		shmem = 3 * C * 4
	}
	if shmem > 48<<10 {
		return fmt.Errorf("cuda: layernorm backward supports C <= 6144, got %d", C)
	}
	// Few rows per block: enough blocks in flight to cover memory latency, at the
	// price of one global atomic per element of dw, db and block.
	const rows = 16
	if j := regRowJ(C); j > 0 {
		// ~170 registers a thread: blocks of 4 warps let 3 blocks share an SM.
		const regRows = 8
		return c.launch(fmt.Sprintf("layernorm_bwd_%d", j), grid1(N, regRows), dim3{128, 1, 1}, shmem, dinp, dop.Ptr, dcol.Ptr, dw, db, dout, inp, w, mean, rstd, N, C, regRows)
	}
	return c.launch("layernorm_bwd", grid1(N, rows), dim3{256, 1, 1}, shmem, dinp, dop.Ptr, dcol.Ptr, dw, db, dout, inp, w, mean, rstd, N, C, rows)
}

// GeluForward computes out = gelu(inp) (tanh form); out is float32 or bfloat16.
func (c *Ctx) GeluForward(out, inp Buf) error {
	if err := need("gelu inp", inp, F32, out.N); err != nil {
		return err
	}
	name, err := suffix("gelu_fwd", out.DType)
	if err != nil {
		return err
	}
	return c.launch(name, c.ewGrid(out.N), ewThreads, 0, out, inp, int64(out.N))
}

// GeluBackward computes dinp = gelu'(inp)·dout; dinp is float32 (it may be dout
// itself) or bfloat16.
func (c *Ctx) GeluBackward(dinp, inp, dout Buf) error {
	if err := need("gelu inp", inp, F32, dinp.N); err != nil {
		return err
	}
	if err := need("gelu dout", dout, F32, dinp.N); err != nil {
		return err
	}
	name, err := suffix("gelu_bwd", dinp.DType)
	if err != nil {
		return err
	}
	return c.launch(name, c.ewGrid(dinp.N), ewThreads, 0, dinp, inp, dout, int64(dinp.N))
}

// attnHeadDims are the head sizes the attention kernels are built for.
var attnHeadDims = map[int]bool{16: true, 32: true, 64: true}

func attnCheck(qkv Buf, B, T, C, NH int) (int, error) {
	if NH <= 0 || C%NH != 0 {
		return 0, fmt.Errorf("cuda: attention: %d heads do not divide %d", NH, C)
	}
	hd := C / NH
	if !attnHeadDims[hd] {
		return 0, fmt.Errorf("cuda: attention: head size %d is not supported (16, 32 or 64)", hd)
	}
	if qkv.N < B*T*3*C {
		return 0, fmt.Errorf("cuda: attention: qkv has %d elements, want %d", qkv.N, B*T*3*C)
	}
	switch {
	case qkv.DType == F32:
	case qkv.DType == BF16 && hd == 64:
	default:
		return 0, fmt.Errorf("cuda: attention: %v qkv with head size %d (bf16 needs 64)", qkv.DType, hd)
	}
	return hd, nil
}

// AttentionForward runs causal multi-head attention on qkv [B,T,3C], writing the
// head outputs side by side to out [B,T,C] and the per-row log2-sum-exp2 of the
// scores to lse [B,NH,T]; no T×T matrix is stored. With bfloat16 qkv (head size
// 64; out bfloat16) it runs on the tensor cores with float32 accumulation; with
// float32 qkv in float32 arithmetic (out float32 or bfloat16).
func (c *Ctx) AttentionForward(out, lse, qkv Buf, B, T, C, NH int) error {
	hd, err := attnCheck(qkv, B, T, C, NH)
	if err != nil {
		return err
	}
	if err := need("attention lse", lse, F32, B*NH*T); err != nil {
		return err
	}
	if out.N < B*T*C {
		return fmt.Errorf("cuda: attention out has %d elements, want %d", out.N, B*T*C)
	}
	scale := float32(1 / math.Sqrt(float64(hd)))
	if qkv.DType == BF16 {
		if out.DType != BF16 {
			return fmt.Errorf("cuda: attention: bf16 qkv needs a bf16 output")
		}
		w := c.attnWarps()
		return c.launch(fmt.Sprintf("attn_fwd_tc_w%d", w), dim3{uint32((T + 16*w - 1) / (16 * w)), uint32(B * NH), 1}, dim3{uint32(32 * w), 1, 1}, 0, out, lse, qkv, B, T, NH, scale)
	}
	name, err := suffix(fmt.Sprintf("attn_fwd_%d", hd), out.DType)
	if err != nil {
		return err
	}
	return c.launch(name, dim3{uint32((T + 63) / 64), uint32(B * NH), 1}, dim3{64, 1, 1}, 0, out, lse, qkv, B, T, NH, scale)
}

// AttentionBackward writes the gradient of qkv into dqkv [B,T,3C] from dout
// [B,T,C], the forward's out and lse; scratch holds B·NH·T floats. The tensor-core
// path (bfloat16 qkv) takes bfloat16 dout, out and dqkv; the float32 path float32
// dout and dqkv of either type.
func (c *Ctx) AttentionBackward(dqkv, scratch, dout, qkv, out, lse Buf, B, T, C, NH int) error {
	hd, err := attnCheck(qkv, B, T, C, NH)
	if err != nil {
		return err
	}
	if err := need("attention lse", lse, F32, B*NH*T); err != nil {
		return err
	}
	if err := need("attention scratch", scratch, F32, B*NH*T); err != nil {
		return err
	}
	if dqkv.N < B*T*3*C || out.N < B*T*C || dout.N < B*T*C {
		return fmt.Errorf("cuda: attention backward: short dqkv, out or dout")
	}
	scale := float32(1 / math.Sqrt(float64(hd)))
	if qkv.DType == BF16 {
		if dout.DType != BF16 || out.DType != BF16 || dqkv.DType != BF16 {
			return fmt.Errorf("cuda: attention backward: bf16 qkv needs bf16 dout, out and dqkv")
		}
		if err := c.launch("attn_bwd_pre_tc", grid1(B*NH*T*8, 256), dim3{256, 1, 1}, 0, scratch, dout, out, B, T, NH, hd); err != nil {
			return err
		}
		w := c.attnWarps()
		g, blk := dim3{uint32((T + 16*w - 1) / (16 * w)), uint32(B * NH), 1}, dim3{uint32(32 * w), 1, 1}
		if err := c.launch(fmt.Sprintf("attn_bwd_dkdv_tc_w%d", w), g, blk, 0, dqkv, dout, qkv, lse, scratch, B, T, NH, scale); err != nil {
			return err
		}
		return c.launch(fmt.Sprintf("attn_bwd_dq_tc_w%d", w), g, blk, 0, dqkv, dout, qkv, lse, scratch, B, T, NH, scale)
	}
	if dout.DType != F32 {
		return fmt.Errorf("cuda: attention backward: float32 qkv needs float32 dout")
	}
	pre, err := suffix("attn_bwd_pre", out.DType)
	if err != nil {
		return err
	}
	if err := c.launch(pre, c.ewGrid(B*NH*T), ewThreads, 0, scratch, dout, out, B, T, NH, hd); err != nil {
		return err
	}
	dkdv, err := suffix(fmt.Sprintf("attn_bwd_dkdv_%d", hd), dqkv.DType)
	if err != nil {
		return err
	}
	if err := c.launch(dkdv, dim3{uint32((T + 31) / 32), uint32(B * NH), 1}, dim3{32, 1, 1}, 0, dqkv, dout, qkv, lse, scratch, B, T, NH, scale); err != nil {
		return err
	}
	dq, _ := suffix(fmt.Sprintf("attn_bwd_dq_%d", hd), dqkv.DType)
	return c.launch(dq, dim3{uint32((T + 63) / 64), uint32(B * NH), 1}, dim3{64, 1, 1}, 0, dqkv, dout, qkv, lse, scratch, B, T, NH, scale)
}

// CrossEntropy writes losses[n] = -log softmax(logits[n])[targets[n]] for the N
// rows of logits [N,V] and, when dlogits is present, the gradient of
// dscale·sum(losses) with respect to the logits (float32, possibly logits itself,
// or bfloat16). Targets must already be checked to lie in [0, V).
func (c *Ctx) CrossEntropy(losses, dlogits, logits, targets Buf, N, V int, dscale float32) error {
	if err := need("crossentropy losses", losses, F32, N); err != nil {
		return err
	}
	if err := need("crossentropy logits", logits, F32, N*V); err != nil {
		return err
	}
	if err := need("crossentropy targets", targets, I32, N); err != nil {
		return err
	}
	dt := F32
	if dlogits.Ptr != 0 {
		dt = dlogits.DType
		if dlogits.N < N*V {
			return fmt.Errorf("cuda: crossentropy dlogits has %d elements, want %d", dlogits.N, N*V)
		}
	}
	name, err := suffix("crossentropy", dt)
	if err != nil {
		return err
	}
	return c.launch(name, dim3{uint32(N), 1, 1}, dim3{512, 1, 1}, 0, losses, dlogits.Ptr, logits, targets, N, V, dscale)
}

// Sum writes the sum of x into out[0], using partial (at least 512 floats).
func (c *Ctx) Sum(out, partial, x Buf) error {
	if err := need("sum partial", partial, F32, sumBlocks); err != nil {
		return err
	}
	if err := c.launch("sum_partial", dim3{sumBlocks, 1, 1}, ewThreads, 0, partial, x, int64(x.N)); err != nil {
		return err
	}
	return c.launch("sum_final", dim3{1, 1, 1}, dim3{512, 1, 1}, 0, out, partial, sumBlocks)
}

// SumSquares writes the sum of the squares of the float32 buffers xs into out[0]
// (their joint squared L2 norm), using partial (at least 512·len(xs) floats).
func (c *Ctx) SumSquares(out, partial Buf, xs ...Buf) error {
	if err := need("sumsq partial", partial, F32, sumBlocks*len(xs)); err != nil {
		return err
	}
	for i, x := range xs {
		if err := need("sumsq input", x, F32, x.N); err != nil {
			return err
		}
		if err := c.launch("sumsq_partial", dim3{sumBlocks, 1, 1}, ewThreads, 0, partial.Slice(i*sumBlocks, sumBlocks), x, int64(x.N)); err != nil {
			return err
		}
	}
	return c.launch("sum_final", dim3{1, 1, 1}, dim3{512, 1, 1}, 0, out, partial, sumBlocks*len(xs))
}

// AdamWArgs are the hyper-parameters of one AdamW step.
type AdamWArgs struct {
	LR, Beta1, Beta2, Eps, WeightDecay float32
	Step                               int     // 1-based step number, for bias correction
	GradScale                          float32 // applied to the gradient first (e.g. 1/microbatches)
	Clip                               float32 // global-norm clip (<= 0: none); needs SumSq
	SumSq                              Buf     // sum of squares of the unscaled gradient (optional)
	ZeroGrad                           bool    // clear the gradient after the step
}

// AdamW updates params p (float32) from grads g with moments m, v; decay (bytes,
// optional) marks the elements that get weight decay; pbf (optional) receives the
// new parameters in bfloat16.
func (c *Ctx) AdamW(p, g, m, v, decay, pbf Buf, a AdamWArgs) error {
	n := p.N
	for _, x := range []struct {
		name string
		b    Buf
	}{{"adamw params", p}, {"adamw grads", g}, {"adamw m", m}, {"adamw v", v}} {
		if err := need(x.name, x.b, F32, n); err != nil {
			return err
		}
	}
	if err := needOpt("adamw decay", decay, U8, n); err != nil {
		return err
	}
	if err := needOpt("adamw bf16 params", pbf, BF16, n); err != nil {
		return err
	}
	if a.Step < 1 {
		return fmt.Errorf("cuda: adamw step %d, want >= 1", a.Step)
	}
	bc1 := float32(1 - math.Pow(float64(a.Beta1), float64(a.Step)))
	bc2 := float32(1 - math.Pow(float64(a.Beta2), float64(a.Step)))
	zg := 0
	if a.ZeroGrad {
		zg = 1
	}
	gs := a.GradScale
	if gs == 0 {
		gs = 1
	}
	return c.launch("adamw", c.ewGrid(n), ewThreads, 0, p, g, m, v, decay.Ptr, pbf.Ptr, int64(n),
		a.LR, a.Beta1, a.Beta2, a.Eps, a.WeightDecay, bc1, bc2, gs, a.SumSq.Ptr, a.Clip, zg)
}

// WireLen is the size in bytes of n values in the int8 wire layout with blocks
// of bs values: a 4-byte scale per block and a byte per value.
func WireLen(n, bs int) int { return n + 4*((n+bs-1)/bs) }

// QuantizeInt8Wire compresses x (float32) into out in the pipeline wire's int8
// layout (see WireLen: per block a little-endian float32 scale absmax/127, then
// the block's values rounded half away from zero to int8), so activations leave
// the GPU already compressed.
func (c *Ctx) QuantizeInt8Wire(out, x Buf, bs int) error {
	if bs < 1 {
		return fmt.Errorf("cuda: int8 block size %d", bs)
	}
	if err := need("quantize x", x, F32, x.N); err != nil {
		return err
	}
	if err := need("quantize wire out", out, U8, WireLen(x.N, bs)); err != nil {
		return err
	}
	return c.launch("quantize_int8_wire", grid1((x.N+bs-1)/bs, 8), dim3{256, 1, 1}, 0, out, x, int64(x.N), bs)
}

// DequantizeInt8Wire expands a message in the int8 wire layout into x (float32).
// The scales are not checked here: see CheckInt8Wire.
func (c *Ctx) DequantizeInt8Wire(x, in Buf, bs int) error {
	if bs < 1 {
		return fmt.Errorf("cuda: int8 block size %d", bs)
	}
	if err := need("dequantize wire in", in, U8, WireLen(x.N, bs)); err != nil {
		return err
	}
	if err := need("dequantize x", x, F32, x.N); err != nil {
		return err
	}
	return c.launch("dequantize_int8_wire", c.ewGrid(x.N), ewThreads, 0, x, in, int64(x.N), bs)
}

// CheckInt8Wire checks, on the host, a message of n values in the int8 wire
// layout before it goes to the device: its exact length, and every scale finite,
// not negative and small enough that no value (at most 128·scale) overflows, so
// the dequantized tensor is finite without a look at its values.
func CheckInt8Wire(msg []byte, n, bs int) error {
	if bs < 1 || n < 0 {
		return fmt.Errorf("cuda: int8 wire tensor of %d values in blocks of %d", n, bs)
	}
	if want := WireLen(n, bs); len(msg) != want {
		return fmt.Errorf("cuda: int8 wire tensor of %d values in blocks of %d takes %d bytes, got %d", n, bs, want, len(msg))
	}
	for off, i := 0, 0; i < n; i += bs {
		scale := math.Float32frombits(binary.LittleEndian.Uint32(msg[off:]))
		if !(scale >= 0 && scale <= math.MaxFloat32/128) { // false for NaN too
			return fmt.Errorf("cuda: int8 wire scale %g of the block at value %d", scale, i)
		}
		off += 4 + min(bs, n-i)
	}
	return nil
}

// BiasAdd adds bias [C] to every row of the bfloat16 matrix x [N,C] in place.
func (c *Ctx) BiasAdd(x, bias Buf, N, C int) error {
	if err := need("bias add x", x, BF16, N*C); err != nil {
		return err
	}
	if err := need("bias add bias", bias, F32, C); err != nil {
		return err
	}
	if vec8(N, C, x, bias) {
		return c.launch("bias_add_bf16_v8", c.ewGrid(N*C/8), ewThreads, 0, x, bias, N, C)
	}
	return c.launch("bias_add_bf16", c.ewGrid(N*C), ewThreads, 0, x, bias, N, C)
}

// ResidualBias computes out += resid + bias for out, resid [N,C] and bias [C]
// (float32): the end of a residual branch whose GEMM wrote its product into out.
func (c *Ctx) ResidualBias(out, resid, bias Buf, N, C int) error {
	if err := need("residual bias out", out, F32, N*C); err != nil {
		return err
	}
	if err := need("residual bias resid", resid, F32, N*C); err != nil {
		return err
	}
	if err := need("residual bias bias", bias, F32, C); err != nil {
		return err
	}
	if vec8(N, C, out, resid, bias) {
		return c.launch("residual_bias_v8", c.ewGrid(N*C/8), ewThreads, 0, out, resid, bias, N, C)
	}
	return c.launch("residual_bias", c.ewGrid(N*C), ewThreads, 0, out, resid, bias, N, C)
}

// ResidualBiasLayerNorm computes res += resid + bias (float32, res holding a GEMM
// product), then ln = LayerNorm(res) with w, b in bfloat16, keeping mean and rstd.
func (c *Ctx) ResidualBiasLayerNorm(res, resid, bias, ln, mean, rstd, w, b Buf, N, C int) error {
	for _, x := range []struct {
		name string
		b    Buf
		n    int
	}{{"res", res, N * C}, {"resid", resid, N * C}, {"bias", bias, C}, {"mean", mean, N}, {"rstd", rstd, N}, {"w", w, C}, {"b", b, C}} {
		if err := need("residual layernorm "+x.name, x.b, F32, x.n); err != nil {
			return err
		}
	}
	if err := need("residual layernorm out", ln, BF16, N*C); err != nil {
		return err
	}
	name := "residual_bias_ln"
	if j := regRowJ(C); j > 0 {
		name = fmt.Sprintf("residual_bias_ln_%d", j) // the row in registers
	}
	return c.launch(name, grid1(N, 8), dim3{256, 1, 1}, 0, res, resid, bias, ln, mean, rstd, w, b, N, C)
}

func aligned16(bs ...Buf) bool {
	for _, b := range bs {
		if b.Ptr%16 != 0 {
			return false
		}
	}
	return true
}

// vec8 reports whether rows of C elements can go through the 8-wide kernels.
func vec8(N, C int, bs ...Buf) bool {
	return C%8 == 0 && int64(N)*int64(C) < math.MaxInt32 && aligned16(bs...)
}

// SetAttentionWarps picks the tensor-core attention kernels' block size: 4 or 8
// warps (64 or 128 rows of 16); 0 restores the default (4). For tuning.
func (c *Ctx) SetAttentionWarps(w int) error {
	if w != 0 && w != 4 && w != 8 {
		return fmt.Errorf("cuda: attention blocks of %d warps (want 4 or 8)", w)
	}
	c.attnW = w
	return nil
}

func (c *Ctx) attnWarps() int {
	if c.attnW == 0 {
		return 4 // measured a little faster than 8 on an H100 (bench/gpu/NOTES.md)
	}
	return c.attnW
}

// GeluBias computes g = gelu(h + bias) for the bfloat16 GEMM product h [N,C]
// (left unchanged; the backward adds the bias again) and bias [C].
func (c *Ctx) GeluBias(g, h, bias Buf, N, C int) error {
	if err := need("gelu bias g", g, BF16, N*C); err != nil {
		return err
	}
	if err := need("gelu bias h", h, BF16, N*C); err != nil {
		return err
	}
	if err := need("gelu bias bias", bias, F32, C); err != nil {
		return err
	}
	if vec8(N, C, g, h, bias) {
		return c.launch("gelu_bias_bf16_v8", c.ewGrid(N*C/8), ewThreads, 0, g, h, bias, N, C)
	}
	return c.launch("gelu_bias_bf16", c.ewGrid(N*C), ewThreads, 0, g, h, bias, N, C)
}

// GeluBackwardBiasGrad computes d = gelu'(h + hbias)·d in place for bfloat16 d, h
// [N,C] (hbias [C] optional) and adds the column sums of the result into dbias
// [C]: the MLP's GELU backward and its first bias gradient in one pass.
func (c *Ctx) GeluBackwardBiasGrad(d, h, hbias, dbias Buf, N, C int) error {
	if err := need("gelu bwd d", d, BF16, N*C); err != nil {
		return err
	}
	if err := need("gelu bwd h", h, BF16, N*C); err != nil {
		return err
	}
	if err := needOpt("gelu bwd hbias", hbias, F32, C); err != nil {
		return err
	}
	if err := need("gelu bwd dbias", dbias, F32, C); err != nil {
		return err
	}
	if !vec8(N, C, d, h, hbias) {
		if err := c.launch("gelu_bwd_bias_bf16", c.ewGrid(N*C), ewThreads, 0, d, h, hbias.Ptr, N, C); err != nil {
			return err
		}
		return c.BiasGrad(dbias, d.Slice(0, N*C), N, C)
	}
	splits := max(min((N+63)/64, 64), 1)
	return c.launch("gelu_bwd_bias_grad_bf16_v8", dim3{uint32((C + 255) / 256), uint32(splits), 1}, dim3{32, 8, 1}, 0, d, h, hbias.Ptr, dbias, N, C)
}

// regRowJ picks the instance of the row-in-registers kernels for rows of C
// elements (32·J >= C), or 0 when C is too wide for them.
func regRowJ(C int) int {
	for _, j := range []int{8, 16, 24, 32} {
		if C <= 32*j {
			return j
		}
	}
	return 0
}

// maxDecodePositions bounds DecodeAttention's cache: its scores sit in 32 KiB
// of shared memory.
const maxDecodePositions = 8192

// DecodeAttention computes, for each of NH heads, causal attention of one query
// q [C] over the n positions of a KV cache kc, vc (at least [n,C]; the query's
// own key and value last), into out [C]: sampling's one-token step.
func (c *Ctx) DecodeAttention(out, q, kc, vc Buf, n, C, NH int) error {
	if n < 1 || n > maxDecodePositions || NH < 1 || C%NH != 0 {
		return fmt.Errorf("cuda: decode attention over %d positions, %d channels, %d heads", n, C, NH)
	}
	for _, x := range []struct {
		name string
		b    Buf
		n    int
	}{{"decode out", out, C}, {"decode q", q, C}, {"decode k cache", kc, n * C}, {"decode v cache", vc, n * C}} {
		if err := need(x.name, x.b, F32, x.n); err != nil {
			return err
		}
	}
	return c.launch("decode_attention", dim3{uint32(NH), 1, 1}, dim3{128, 1, 1}, 4*n, out, q, kc, vc, n, C, NH)
}
