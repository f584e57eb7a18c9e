package stages

import "swarmnode/model"

// blockActs are the activations one transformer block keeps for its backward pass.
type blockActs struct {
	in              []float32 // [N,C] block input (owned by the previous block or the stage)
	ln1, ln1m, ln1r []float32 // [N,C], [N], [N]
	qkv             []float32 // [N,3C]
	att             []float32 // [B,NH,T,T]
	atty            []float32 // [N,C]
	res2            []float32 // [N,C] in + attention branch
	ln2, ln2m, ln2r []float32
	fch, th         []float32 // [N,4C] MLP hidden before GELU, and GELU's tanh
	out             []float32 // [N,C] res2 + MLP branch
}

// blockActLen is the number of floats carve needs for one block's activations.
func blockActLen(B, T, C, NH int) int {
	N := B * T
	return 3*N*C + 4*N + 3*N*C + B*NH*T*T + 2*N*C + 8*N*C
}

func (a *blockActs) carve(cv *carver, B, T, C, NH int) {
	N := B * T
	a.ln1, a.ln1m, a.ln1r = cv.take(N*C), cv.take(N), cv.take(N)
	a.qkv = cv.take(3 * N * C)
	a.att = cv.take(B * NH * T * T)
	a.atty = cv.take(N * C)
	a.res2 = cv.take(N * C)
	a.ln2, a.ln2m, a.ln2r = cv.take(N*C), cv.take(N), cv.take(N)
	a.fch, a.th = cv.take(4*N*C), cv.take(4*N*C)
	a.out = cv.take(N * C)
}

// blockForward runs one pre-LN transformer block on a.in, filling a. tmp holds
// N·4C floats of scratch.
func blockForward(a *blockActs, params []float32, bp *model.Block, tmp []float32, B, T, C, NH int) {
	N := B * T
	p := func(v model.View) []float32 { return v.Of(params) }
	layernormForward(a.ln1, a.ln1m, a.ln1r, a.in, p(bp.LN1W), p(bp.LN1B), N, C)
	linearForward(a.qkv, a.ln1, p(bp.QKVW), p(bp.QKVB), N, C, 3*C)
	attentionForward(a.atty, a.att, a.qkv, B, T, C, NH)
	residualLinearForward(a.res2, a.in, a.atty, p(bp.AttnProjW), p(bp.AttnProjB), N, C, C)
	layernormForward(a.ln2, a.ln2m, a.ln2r, a.res2, p(bp.LN2W), p(bp.LN2B), N, C)
	linearForward(a.fch, a.ln2, p(bp.FCW), p(bp.FCB), N, C, 4*C)
	gl := tmp[:N*4*C]
	geluForward(gl, a.th, a.fch)
	residualLinearForward(a.out, a.res2, gl, p(bp.FCProjW), p(bp.FCProjB), N, 4*C, C)
}

// blockScratch is the backward scratch of one block, shared by all blocks of a stage.
type blockScratch struct {
	big   []float32 // [N,4C]: d(MLP hidden), then d(qkv)
	hid   []float32 // [N,4C]: GELU output, recomputed
	small []float32 // [N,C]: d(ln2 out), d(attention out), d(ln1 out)
	attn  []float32 // attnScratchLen floats
}

// blockBackward turns dres, the gradient of the block's output, into the gradient
// of its input (in place) and adds the parameter gradients into grads.
func blockBackward(dres []float32, a *blockActs, params, grads []float32, bp *model.Block, sc *blockScratch, B, T, C, NH int) {
	N := B * T
	p := func(v model.View) []float32 { return v.Of(params) }
	g := func(v model.View) []float32 { return v.Of(grads) }

	// MLP branch: out = res2 + gelu(ln2·Wfc + bfc)·Wp + bp.
	dh := sc.big[:N*4*C]
	geluRecompute(sc.hid, a.th, a.fch)
	linearBackward(dh, g(bp.FCProjW), g(bp.FCProjB), dres, sc.hid, p(bp.FCProjW), N, 4*C, C, false)
	geluBackward(dh, a.th, a.fch, dh)
	dln := sc.small[:N*C]
	linearBackward(dln, g(bp.FCW), g(bp.FCB), dh, a.ln2, p(bp.FCW), N, C, 4*C, false)
	layernormBackward(dres, g(bp.LN2W), g(bp.LN2B), dln, a.res2, p(bp.LN2W), a.ln2m, a.ln2r, N, C)

	// Attention branch: res2 = in + attn(ln1·Wqkv + bqkv)·Wp + bp.
	datty := sc.small[:N*C]
	linearBackward(datty, g(bp.AttnProjW), g(bp.AttnProjB), dres, a.atty, p(bp.AttnProjW), N, C, C, false)
	dqkv := sc.big[:N*3*C]
	attentionBackward(dqkv, datty, a.qkv, a.att, sc.attn, B, T, C, NH)
	dln = sc.small[:N*C]
	linearBackward(dln, g(bp.QKVW), g(bp.QKVB), dqkv, a.ln1, p(bp.QKVW), N, C, 3*C, false)
	layernormBackward(dres, g(bp.LN1W), g(bp.LN1B), dln, a.in, p(bp.LN1W), a.ln1m, a.ln1r, N, C)
}
