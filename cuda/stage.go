package cuda

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"swarmnode/model"
)

// Precision is how a stage computes.
type Precision int

// Stage precisions. Parameters, gradients and optimizer state are float32 in all.
const (
	FP32      Precision = iota // float32 everywhere
	TF32                       // float32 storage, TF32 tensor-core GEMMs
	BF16Mixed                  // bfloat16 GEMM operands (weights and activations), float32 accumulation and master weights
)

// StageConfig describes one stage: its part of the model (blocks [First,
// First+Blocks), with the embedding on the first stage and the final LayerNorm,
// LM head and loss on the last) and how it computes.
type StageConfig struct {
	// Model is the whole model's shape.
	Model model.Config
	// Part is the share of the model the stage holds.
	model.Part
	// Precision is how the stage computes.
	Precision Precision
	// BasisIn and BasisOut are a subspace model's bases U (model.Subspace),
	// d_model×k row-major, of the boundary the stage receives through (not on
	// the first stage) and of the one it sends through (not on the last);
	// required when Model.Subspace > 0, ignored otherwise.
	BasisIn, BasisOut []float32
	// Gain is the gain of the boundary the stage receives through
	// (model.Subspace.Gain).
	Gain float32
}

// Stage is a GPT pipeline stage on the GPU: forward, backward (accumulating
// gradients) and the AdamW step, over flat device buffers in the layout of
// package model, the same as the CPU stage's.
type Stage struct {
	d     *Device
	cfg   StageConfig
	lay   *model.Layout
	op    DType        // GEMM operand type
	mode  Compute      // float32 GEMM mode
	step  atomic.Int64 // optimizer steps applied; changed on the device thread only
	tc    bool         // attention on the tensor cores (bf16, head size 64)
	freed bool

	params, grads, m, v Buf
	pbf                 Buf // bfloat16 copy of params (BF16Mixed only)
	decay               Buf // one byte per parameter: 1 where AdamW decays
	sumsq, partial      Buf
	sc                  *scratch
	wire                Buf // int8 wire messages in and out (see wireBuf)
	tmp                 Buf // float32 staging for AddState
	basisIn, basisOut   Buf // a subspace model's bases U, d_model×k float32
	coords              Buf // subspace coordinates in and out (see coordBuf)
	pool                map[[2]int][]*acts
	prof                map[string]float64 // per-step milliseconds when profiling
}

// NewStage allocates a stage on d with zero parameters; set them with SetParams.
func NewStage(d *Device, cfg StageConfig) (*Stage, error) {
	m := cfg.Model
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if cfg.Blocks < 0 || cfg.First < 0 {
		return nil, fmt.Errorf("cuda: bad stage part %+v", cfg.Part)
	}
	if err := cfg.checkBases(); err != nil {
		return nil, err
	}
	if !attnHeadDims[m.DModel/m.NHead] {
		return nil, fmt.Errorf("cuda: head size %d/%d is not supported (16, 32 or 64)", m.DModel, m.NHead)
	}
	s := &Stage{d: d, cfg: cfg, lay: model.NewLayout(m, cfg.Part), pool: map[[2]int][]*acts{}}
	switch cfg.Precision {
	case FP32:
		s.op, s.mode = F32, ComputeFP32
	case TF32:
		s.op, s.mode = F32, ComputeTF32
	case BF16Mixed:
		s.op, s.mode = BF16, ComputeFP32
	default:
		return nil, fmt.Errorf("cuda: unknown precision %d", cfg.Precision)
	}
	s.tc = s.op == BF16 && m.DModel/m.NHead == 64
	if s.lay.Size == 0 {
		return nil, errors.New("cuda: stage has no parameters")
	}
	decay := decayMask(s.lay)
	err := d.Do(func(c *Ctx) error {
		n := s.lay.Size
		al := allocator{c: c}
		s.params, s.grads, s.m, s.v = al.alloc(F32, n), al.alloc(F32, n), al.alloc(F32, n), al.alloc(F32, n)
		s.decay, s.sumsq, s.partial = al.alloc(U8, n), al.alloc(F32, 1), al.alloc(F32, sumBlocks)
		if s.op == BF16 {
			s.pbf = al.alloc(BF16, n)
		}
		if len(cfg.BasisIn) > 0 {
			s.basisIn = al.alloc(F32, len(cfg.BasisIn))
		}
		if len(cfg.BasisOut) > 0 {
			s.basisOut = al.alloc(F32, len(cfg.BasisOut))
		}
		if al.err != nil {
			return al.err // Close frees what was allocated
		}
		for _, b := range []Buf{s.params, s.grads, s.m, s.v} {
			if err := c.Zero(b); err != nil {
				return err
			}
		}
		if s.op == BF16 {
			if err := c.Cast(s.pbf, s.params); err != nil {
				return err
			}
		}
		for _, b := range []struct {
			dst Buf
			src []float32
		}{{s.basisIn, cfg.BasisIn}, {s.basisOut, cfg.BasisOut}} {
			if len(b.src) > 0 {
				if err := c.Upload(b.dst, b.src); err != nil {
					return err
				}
			}
		}
		return c.UploadBytes(s.decay, decay)
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// decayMask is one byte per parameter of lay: 1 where AdamW decays.
func decayMask(lay *model.Layout) []byte {
	decay := make([]byte, lay.Size)
	for _, v := range lay.Views {
		if v.Decay {
			for i := v.Offset; i < v.Offset+v.Len; i++ {
				decay[i] = 1
			}
		}
	}
	return decay
}

// checkBases checks that a subspace model's stage has the bases of its
// boundaries and a plain model's none.
func (cfg StageConfig) checkBases() error {
	m := cfg.Model
	want := func(has bool) int {
		if m.Subspace > 0 && has {
			return m.DModel * m.Subspace
		}
		return 0
	}
	if n := want(!cfg.IsFirst()); len(cfg.BasisIn) != n {
		return fmt.Errorf("cuda: stage %d of a model of subspace rank %d takes %d values of input basis, got %d", cfg.Index, m.Subspace, n, len(cfg.BasisIn))
	}
	if n := want(!cfg.IsLast()); len(cfg.BasisOut) != n {
		return fmt.Errorf("cuda: stage %d of a model of subspace rank %d takes %d values of output basis, got %d", cfg.Index, m.Subspace, n, len(cfg.BasisOut))
	}
	return nil
}

// allocator allocates device buffers until the first error, which it keeps;
// later calls return empty buffers, so a set of buffers is allocated in a row
// and checked once.
type allocator struct {
	c   *Ctx
	err error
	got []Buf
}

func (a *allocator) alloc(t DType, n int) Buf {
	if a.err != nil {
		return Buf{}
	}
	b, err := a.c.Alloc(t, n)
	if err != nil {
		a.err = err
		return Buf{}
	}
	a.got = append(a.got, b)
	return b
}

// undo frees every buffer allocated so far and returns the first error.
func (a *allocator) undo() error {
	for _, b := range a.got {
		_ = a.c.Free(b)
	}
	a.got = nil
	return a.err
}

// Close frees the stage's device memory.
func (s *Stage) Close() error {
	if s.freed {
		return nil
	}
	s.freed = true
	return s.d.Do(func(c *Ctx) error {
		var first error
		free := func(b Buf) {
			if b.Ptr != 0 {
				if err := c.Free(b); err != nil && first == nil {
					first = err
				}
			}
		}
		for _, b := range []Buf{s.params, s.grads, s.m, s.v, s.pbf, s.decay, s.sumsq, s.partial, s.wire, s.tmp, s.basisIn, s.basisOut, s.coords} {
			free(b)
		}
		if s.sc != nil {
			s.sc.free(free)
		}
		for _, list := range s.pool {
			for _, a := range list {
				a.free(free)
			}
		}
		return first
	})
}

// Layout is the stage's parameter layout; it must not be changed.
func (s *Stage) Layout() *model.Layout { return s.lay }

// NumParams is the length of the flat parameter vector.
func (s *Stage) NumParams() int { return s.lay.Size }

// Config is the stage's configuration.
func (s *Stage) Config() StageConfig { return s.cfg }

// Version is the number of optimizer steps applied.
func (s *Stage) Version() int { return int(s.step.Load()) }

// SetParams uploads the flat parameter vector (the CPU stage's layout).
func (s *Stage) SetParams(p []float32) error {
	if len(p) != s.lay.Size {
		return fmt.Errorf("cuda: %d parameters, stage has %d", len(p), s.lay.Size)
	}
	return s.d.Do(func(c *Ctx) error {
		if err := c.Upload(s.params, p); err != nil {
			return err
		}
		if s.op == BF16 {
			return c.Cast(s.pbf, s.params)
		}
		return nil
	})
}

func (s *Stage) download(b Buf) ([]float32, error) {
	out := make([]float32, b.N)
	return out, s.d.Do(func(c *Ctx) error { return c.Download(out, b) })
}

// Params downloads the flat parameter vector.
func (s *Stage) Params() ([]float32, error) { return s.download(s.params) }

// Grads downloads the accumulated gradients (same layout).
func (s *Stage) Grads() ([]float32, error) { return s.download(s.grads) }

// GetState downloads parameters and AdamW moments.
func (s *Stage) GetState() (model.State, error) {
	st := model.State{Params: make([]float32, s.lay.Size), M: make([]float32, s.lay.Size), V: make([]float32, s.lay.Size)}
	err := s.d.Do(func(c *Ctx) error {
		st.Step = int(s.step.Load())
		if err := c.Download(st.Params, s.params); err != nil {
			return err
		}
		if err := c.Download(st.M, s.m); err != nil {
			return err
		}
		return c.Download(st.V, s.v)
	})
	return st, err
}

// SetState uploads parameters and AdamW moments.
func (s *Stage) SetState(st model.State) error {
	n := s.lay.Size
	if len(st.Params) != n || len(st.M) != n || len(st.V) != n || st.Step < 0 {
		return fmt.Errorf("cuda: state of %d/%d/%d values (step %d), stage has %d", len(st.Params), len(st.M), len(st.V), st.Step, n)
	}
	err := s.d.Do(func(c *Ctx) error {
		for _, x := range []struct {
			dst Buf
			src []float32
		}{{s.params, st.Params}, {s.m, st.M}, {s.v, st.V}} {
			if err := c.Upload(x.dst, x.src); err != nil {
				return err
			}
		}
		if s.op == BF16 {
			if err := c.Cast(s.pbf, s.params); err != nil {
				return err
			}
		}
		s.step.Store(int64(st.Step))
		return nil
	})
	return err
}

// ReadState downloads the values at [off, off+len(dst)) of Params|M|V|Grads
// laid end to end: an averaging round reads the state chunk by chunk, so a chunk costs
// its own size on the bus, not the whole state's.
func (s *Stage) ReadState(off int, dst []float32) error {
	return s.d.Do(func(c *Ctx) error {
		return s.stateSpans(off, len(dst), func(b Buf, at int, _ bool) error {
			return c.Download(dst[at:at+b.N], b)
		})
	})
}

// AddState adds delta to the values at [off, off+len(delta)) of
// Params|M|V|Grads laid end to end (an averaging round's correction, or an
// all-reduced gradient), on the device; the bfloat16 copy
// of the parameters follows.
func (s *Stage) AddState(off int, delta []float32) error {
	return s.d.Do(func(c *Ctx) error {
		return s.stateSpans(off, len(delta), func(b Buf, at int, params bool) error {
			t, err := grow(c, &s.tmp, F32, b.N)
			if err != nil {
				return err
			}
			if err := c.Upload(t, delta[at:at+b.N]); err != nil {
				return err
			}
			if err := c.AddInPlace(b, t); err != nil {
				return err
			}
			if params && s.op == BF16 {
				first := b.Ptr - s.params.Ptr // bytes into the parameters
				return c.Cast(s.pbf.Slice(int(first/4), b.N), b)
			}
			return nil
		})
	})
}

// stateSpans calls fn with the device slices that make up [off, off+n) of
// Params|M|V|Grads laid end to end, each with its offset into the range and whether it
// is part of the parameters.
func (s *Stage) stateSpans(off, n int, fn func(b Buf, at int, params bool) error) error {
	size := s.lay.Size
	if off < 0 || n < 0 || off+n > 4*size {
		return fmt.Errorf("cuda: state range [%d, %d) outside the %d values of Params|M|V|Grads", off, off+n, 4*size)
	}
	at := 0
	for i, b := range []Buf{s.params, s.m, s.v, s.grads} {
		lo, hi := max(off, i*size), min(off+n, (i+1)*size)
		if lo >= hi {
			continue
		}
		if err := fn(b.Slice(lo-i*size, hi-lo), at, i == 0); err != nil {
			return err
		}
		at += hi - lo
	}
	return nil
}

// ZeroGrad clears the accumulated gradients.
func (s *Stage) ZeroGrad() error {
	return s.d.Do(func(c *Ctx) error { return c.Zero(s.grads) })
}

// Step averages the gradients over micro microbatches, clips them by global norm
// to opt.Clip, applies AdamW at opt.LRAt(Version()) with weight decay on matrices,
// zeroes the gradients and returns the pre-clip norm (of the averaged gradients).
// A non-finite norm (a NaN or Inf gradient) skips the update: the gradients are
// zeroed, the weights, moments and Version stay as they were, and the norm is
// returned so the caller can tell.
func (s *Stage) Step(opt model.Optim, micro int) (float32, error) {
	if micro < 1 {
		micro = 1
	}
	ss := make([]float32, 1)
	err := s.d.Do(func(c *Ctx) error {
		if err := c.SumSquares(s.sumsq, s.partial, s.grads); err != nil {
			return err
		}
		// One 4-byte read-back decides whether the update may run at all.
		if err := c.Download(ss, s.sumsq); err != nil {
			return err
		}
		if f := float64(ss[0]); math.IsNaN(f) || math.IsInf(f, 0) {
			return c.Zero(s.grads)
		}
		step := int(s.step.Load())
		a := AdamWArgs{LR: opt.LRAt(step), Beta1: opt.Beta1, Beta2: opt.Beta2, Eps: opt.Eps, WeightDecay: opt.WeightDecay,
			Step: step + 1, GradScale: 1 / float32(micro), Clip: opt.Clip, SumSq: s.sumsq, ZeroGrad: true}
		if err := c.AdamW(s.params, s.grads, s.m, s.v, s.decay, s.pbf, a); err != nil {
			return err
		}
		s.step.Add(1)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return float32(math.Sqrt(float64(ss[0]))) / float32(micro), nil
}

// acts are the device activations of one microbatch.
type acts struct {
	B, T    int
	tok     Buf // first stage: [N] int32
	in      Buf // other stages: [N,C] input
	targets Buf // last stage: [N] int32
	blocks  []blockActs
	out     Buf // [N,C] output (non-last stages; the last block's out)
	// last stage
	lnf, lnfm, lnfr, logits, dlogits, losses, lossSum Buf
}

type blockActs struct {
	in                         Buf // borrowed: the stage input or the previous block's out
	ln1, ln1m, ln1r, qkv, atty Buf
	qkvb                       Buf // bf16 copy of qkv for tensor-core attention
	lse, res2, ln2, ln2m, ln2r Buf
	fch, fchg, out             Buf
}

func (a *acts) free(free func(Buf)) {
	for _, b := range []Buf{a.tok, a.in, a.targets, a.lnf, a.lnfm, a.lnfr, a.logits, a.dlogits, a.losses, a.lossSum} {
		free(b)
	}
	for _, k := range a.blocks {
		for _, b := range []Buf{k.qkvb, k.ln1, k.ln1m, k.ln1r, k.qkv, k.atty, k.lse, k.res2, k.ln2, k.ln2m, k.ln2r, k.fch, k.fchg, k.out} {
			free(b)
		}
	}
}

func (s *Stage) newActs(c *Ctx, B, T int) (*acts, error) {
	if list := s.pool[[2]int{B, T}]; len(list) > 0 {
		a := list[len(list)-1]
		s.pool[[2]int{B, T}] = list[:len(list)-1]
		return a, nil
	}
	m := s.cfg.Model
	N, C, NH := B*T, m.DModel, m.NHead
	a := &acts{B: B, T: T}
	al := allocator{c: c}
	alloc := al.alloc
	if s.cfg.IsFirst() || s.subspace() {
		a.tok = alloc(I32, N)
	}
	a.in = alloc(F32, N*C) // the input, or the embedding's output on the first stage
	if s.cfg.IsLast() {
		a.targets = alloc(I32, N)
	}
	for range s.lay.Blocks {
		var k blockActs
		k.ln1, k.ln1m, k.ln1r = alloc(s.op, N*C), alloc(F32, N), alloc(F32, N)
		k.atty, k.lse = alloc(s.op, N*C), alloc(F32, B*NH*T)
		k.res2 = alloc(F32, N*C)
		k.ln2, k.ln2m, k.ln2r = alloc(s.op, N*C), alloc(F32, N), alloc(F32, N)
		k.fchg, k.out = alloc(s.op, 4*N*C), alloc(F32, N*C)
		if s.tc {
			// The fused bf16 path keeps q, k, v and the MLP pre-activation in bf16.
			k.qkvb, k.fch = alloc(BF16, 3*N*C), alloc(BF16, 4*N*C)
		} else {
			k.qkv, k.fch = alloc(F32, 3*N*C), alloc(F32, 4*N*C)
		}
		a.blocks = append(a.blocks, k)
	}
	if s.cfg.IsLast() {
		a.lnf, a.lnfm, a.lnfr = alloc(s.op, N*C), alloc(F32, N), alloc(F32, N)
		a.logits, a.losses, a.lossSum = alloc(F32, N*m.Vocab), alloc(F32, N), alloc(F32, 1)
		if s.op == BF16 {
			a.dlogits = alloc(BF16, N*m.Vocab)
		} else {
			a.dlogits = a.logits // the float32 gradient overwrites the logits
		}
	}
	if al.err != nil {
		return nil, al.undo()
	}
	return a, nil
}

// scratch is the backward's working memory, shared by all passes of a stage (the
// device thread runs one backward at a time).
type scratch struct {
	N                                  int
	dres, dresOp, dh, dhOp, dln, datty Buf
	dqkv, attnD                        Buf
	dattyOp                            Buf // bf16 attention output gradient (tensor-core path)
}

func (sc *scratch) free(free func(Buf)) {
	for _, b := range []Buf{sc.dres, sc.dh, sc.dln, sc.datty, sc.attnD, sc.dqkv, sc.dattyOp} {
		free(b)
	}
	if sc.dresOp.Ptr != sc.dres.Ptr {
		free(sc.dresOp)
	}
	if sc.dhOp.Ptr != sc.dh.Ptr {
		free(sc.dhOp)
	}
}

func (s *Stage) scratchFor(c *Ctx, B, T int) (*scratch, error) {
	N := B * T
	if s.sc != nil && s.sc.N >= N && s.sc.attnD.N >= B*s.cfg.Model.NHead*T {
		return s.sc, nil
	}
	if s.sc != nil {
		s.sc.free(func(b Buf) { _ = c.Free(b) })
		s.sc = nil
	}
	C, NH := s.cfg.Model.DModel, s.cfg.Model.NHead
	sc := &scratch{N: N}
	al := allocator{c: c}
	alloc := al.alloc
	sc.dres, sc.dln = alloc(F32, N*C), alloc(F32, N*C)
	sc.attnD, sc.dqkv = alloc(F32, B*NH*T), alloc(s.op, 3*N*C)
	switch {
	case s.tc: // the fused path's GEMMs write bf16 gradients directly
		sc.dattyOp, sc.dresOp, sc.dhOp = alloc(BF16, N*C), alloc(BF16, N*C), alloc(BF16, 4*N*C)
	case s.op == BF16:
		sc.dh, sc.datty = alloc(F32, 4*N*C), alloc(F32, N*C)
		sc.dresOp, sc.dhOp = alloc(BF16, N*C), alloc(BF16, 4*N*C)
	default:
		sc.dh, sc.datty = alloc(F32, 4*N*C), alloc(F32, N*C)
		sc.dresOp, sc.dhOp = sc.dres, sc.dh
	}
	if al.err != nil {
		return nil, al.undo()
	}
	s.sc = sc
	return sc, nil
}
