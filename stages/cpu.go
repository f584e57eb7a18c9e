package stages

import (
	"math"

	"swarmnode/model"
)

// cpuEngine computes a stage on the CPU over flat host vectors, llm.c style.
type cpuEngine struct {
	cfg                 model.Config
	part                model.Part
	lay                 *model.Layout
	params, grads, m, v []float32
	sub                 *subspace // nil in a plain model
	acts, scratch       slabPool
}

func newCPUEngine(cfg model.Config, part model.Part, lay *model.Layout, params []float32, sub *subspace) *cpuEngine {
	n := lay.Size
	return &cpuEngine{cfg: cfg, part: part, lay: lay, params: params, sub: sub,
		grads: make([]float32, n), m: make([]float32, n), v: make([]float32, n)}
}

// cpuActs are what a CPU pass keeps for its backward, carved from one pooled slab.
type cpuActs struct {
	slab    []float32
	tokens  []int32
	targets []int32
	x0      []float32 // input of the first block (embeddings or a copy of X)
	blocks  []blockActs
	lnf     []float32
	lnfm    []float32
	lnfr    []float32
	logits  []float32 // [B·T, Vocab], last stage only
}

func (a *cpuActs) bytes() int64 { return int64(len(a.slab)+len(a.tokens)+len(a.targets)) * 4 }

// actLen is the size of the activation slab of one pass.
func (e *cpuEngine) actLen(B, T int) int {
	N, C := B*T, e.cfg.DModel
	n := N*C + len(e.lay.Blocks)*blockActLen(B, T, C, e.cfg.NHead)
	if e.part.IsLast() {
		n += N*C + 2*N + N*e.cfg.Vocab
	}
	return n
}

func (e *cpuEngine) forward(in model.Input, p *Pass) error {
	B, T, C, NH := in.B, in.T, e.cfg.DModel, e.cfg.NHead
	N := B * T
	a := &cpuActs{slab: e.acts.get(e.actLen(B, T))}
	p.cpu = a
	cv := &carver{buf: a.slab}
	a.x0 = cv.take(N * C)
	if e.part.IsFirst() {
		a.tokens = append([]int32(nil), in.Tokens...)
		encoderForward(a.x0, a.tokens, e.lay.WTE.Of(e.params), e.lay.WPE.Of(e.params), B, T, C)
	} else if e.sub != nil {
		// x = g·U·c + ê(tokens): the coordinates in the full width, plus the
		// stage's own input embeddings.
		a.tokens = append([]int32(nil), in.Tokens...)
		fromCoords(e.sub.in, a.x0, in.X, N, e.sub.in.Gain)
		encoderAdd(a.x0, a.tokens, e.lay.InWTE.Of(e.params), e.lay.InWPE.Of(e.params), B, T, C)
	} else {
		copy(a.x0, in.X)
	}
	x := a.x0
	a.blocks = make([]blockActs, len(e.lay.Blocks))
	if len(a.blocks) > 0 {
		tmp := e.scratch.get(N * 4 * C)
		for i := range a.blocks {
			b := &a.blocks[i]
			b.carve(cv, B, T, C, NH)
			b.in = x
			blockForward(b, e.params, &e.lay.Blocks[i], tmp, B, T, C, NH)
			x = b.out
		}
		e.scratch.put(tmp)
	}
	if !e.part.IsLast() {
		p.Out = e.leaving(x, N, false)
		return nil
	}
	V := e.cfg.Vocab
	a.targets = append([]int32(nil), in.Targets...)
	a.lnf, a.lnfm, a.lnfr = cv.take(N*C), cv.take(N), cv.take(N)
	a.logits = cv.take(N * V)
	layernormForward(a.lnf, a.lnfm, a.lnfr, x, e.lay.LNFW.Of(e.params), e.lay.LNFB.Of(e.params), N, C)
	linearForwardT(a.logits, a.lnf, e.lay.Head.Of(e.params), N, C, V)
	p.Loss = crossEntropyForward(a.logits, a.targets, N, V)
	return nil
}

// scratchLen is the size of the backward scratch slab.
func (e *cpuEngine) scratchLen(B, T int) int {
	N, C := B*T, e.cfg.DModel
	n := N*C + 2*N*4*C + N*C + attnScratchLen(B, T, e.cfg.NHead)
	if e.part.IsLast() {
		n += N * e.cfg.Vocab
	}
	return n
}

func (e *cpuEngine) backward(p *Pass, dout []float32) ([]float32, error) {
	a := p.cpu
	B, T, C, NH := p.B, p.T, e.cfg.DModel, e.cfg.NHead
	N := B * T
	slab := e.scratch.get(e.scratchLen(B, T))
	defer e.scratch.put(slab)
	cv := &carver{buf: slab}
	dres := cv.take(N * C)
	sc := blockScratch{big: cv.take(N * 4 * C), hid: cv.take(N * 4 * C), small: cv.take(N * C), attn: cv.take(attnScratchLen(B, T, NH))}
	if e.part.IsLast() {
		e.headBackward(a, dres, sc.small[:N*C], cv.take(N*e.cfg.Vocab), N)
	} else if e.sub != nil {
		fromCoords(e.sub.out, dres, dout, N, 1)
	} else {
		copy(dres, dout)
	}
	for i := len(a.blocks) - 1; i >= 0; i-- {
		blockBackward(dres, &a.blocks[i], e.params, e.grads, &e.lay.Blocks[i], &sc, B, T, C, NH)
	}
	if e.part.IsFirst() {
		encoderBackward(e.lay.WTE.Of(e.grads), e.lay.WPE.Of(e.grads), dres, a.tokens, B, T, C)
		return nil, nil
	}
	if e.sub != nil {
		encoderBackward(e.lay.InWTE.Of(e.grads), e.lay.InWPE.Of(e.grads), dres, a.tokens, B, T, C)
	}
	return e.leaving(dres, N, true), nil
}

// leaving returns a copy of x, N rows of the stage's output or of its input
// gradient (back), as it leaves the stage: in a subspace model its coordinates
// at the boundary it crosses, the gradient's times the boundary's gain.
func (e *cpuEngine) leaving(x []float32, N int, back bool) []float32 {
	if e.sub == nil {
		return append([]float32(nil), x...)
	}
	b, gain := e.sub.out, float32(1)
	if back {
		b, gain = e.sub.in, e.sub.in.Gain
	}
	c := make([]float32, N*b.K)
	toCoords(b, c, x, N, gain)
	return c
}

// headBackward writes into dres the gradient of the mean loss with respect to the
// last block's output, through the cross-entropy, the LM head and the final
// LayerNorm, adding their parameter gradients; dlnf and dlogits are scratch.
func (e *cpuEngine) headBackward(a *cpuActs, dres, dlnf, dlogits []float32, N int) {
	C, V := e.cfg.DModel, e.cfg.Vocab
	p, g := e.params, e.grads
	crossEntropyBackward(dlogits, a.logits, a.targets, N, V)
	linearBackwardT(dlnf, e.lay.Head.Of(g), dlogits, a.lnf, e.lay.Head.Of(p), N, C, V)
	clear(dres)
	x := a.x0
	if n := len(a.blocks); n > 0 {
		x = a.blocks[n-1].out
	}
	layernormBackward(dres, e.lay.LNFW.Of(g), e.lay.LNFB.Of(g), dlnf, x, e.lay.LNFW.Of(p), a.lnfm, a.lnfr, N, C)
}

func (e *cpuEngine) release(p *Pass) {
	if p.cpu != nil {
		e.acts.put(p.cpu.slab)
		p.cpu = nil
	}
}

func (e *cpuEngine) step(opt model.Optim, micro, step int) (float32, error) {
	g := e.grads
	inv := 1 / float32(micro)
	var sq float64
	for i := range g {
		g[i] *= inv
		sq += float64(g[i]) * float64(g[i])
	}
	norm := math.Sqrt(sq)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		clear(g)
		return float32(norm), nil
	}
	gscale := float32(1)
	if opt.Clip > 0 {
		if c := float64(opt.Clip) / (norm + 1e-6); c < 1 {
			gscale = float32(c)
		}
	}
	e.adamW(opt, step, gscale)
	clear(g)
	return float32(norm), nil
}

// adamW applies AdamW as step `step` of the schedule to the gradients scaled by
// gscale.
func (e *cpuEngine) adamW(opt model.Optim, step int, gscale float32) {
	lr := float64(opt.LRAt(step))
	t := float64(step + 1)
	b1, b2 := float64(opt.Beta1), float64(opt.Beta2)
	bc1 := 1 - math.Pow(b1, t)
	bc2 := 1 - math.Pow(b2, t)
	stepSize := float32(lr / bc1)
	bc2sqrt := float32(math.Sqrt(bc2))
	eps := opt.Eps
	fb1, fb2 := opt.Beta1, opt.Beta2
	for _, v := range e.lay.Views {
		decay := float32(1)
		if v.Decay {
			decay = float32(1 - lr*float64(opt.WeightDecay))
		}
		p, gr, m, vv := v.Of(e.params), v.Of(e.grads), v.Of(e.m), v.Of(e.v)
		parallelFor(len(p), 16384, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				gi := gr[i] * gscale
				mi := fb1*m[i] + (1-fb1)*gi
				vi := fb2*vv[i] + (1-fb2)*gi*gi
				m[i], vv[i] = mi, vi
				denom := float32(math.Sqrt(float64(vi)))/bc2sqrt + eps
				p[i] = p[i]*decay - stepSize*mi/denom
			}
		})
	}
}

func (e *cpuEngine) zeroGrad() error {
	clear(e.grads)
	return nil
}

func (e *cpuEngine) withState(st *model.State, fn func(*model.State)) error {
	st.Params, st.M, st.V = e.params, e.m, e.v
	fn(st)
	return nil
}

func (e *cpuEngine) readState(off int, dst []float32) error {
	e.stateSpan(off, len(dst), func(p []float32, at int) { copy(dst[at:], p) })
	return nil
}

func (e *cpuEngine) addState(off int, delta []float32) error {
	e.stateSpan(off, len(delta), func(p []float32, at int) {
		d := delta[at : at+len(p)]
		for i := range p {
			p[i] += d[i]
		}
	})
	return nil
}

// stateSpan calls fn for each part of [off, off+n) that falls in one of Params,
// M, V and the gradients laid end to end: the part's slice of it and where it
// starts in the range.
func (e *cpuEngine) stateSpan(off, n int, fn func(p []float32, at int)) {
	base := 0
	for _, p := range [4][]float32{e.params, e.m, e.v, e.grads} {
		lo, hi := max(off, base), min(off+n, base+len(p))
		if lo < hi {
			fn(p[lo-base:hi-base], lo-off)
		}
		base += len(p)
	}
}

func (e *cpuEngine) vector(grads bool) ([]float32, error) {
	if grads {
		return e.grads, nil
	}
	return e.params, nil
}

func (e *cpuEngine) close() error   { return nil }
func (e *cpuEngine) device() string { return "cpu" }
