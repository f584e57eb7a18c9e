package stages

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"swarmnode/cuda"
)

// defaultMaxTokens bounds B·T of one microbatch until SetMaxTokens says otherwise.
const defaultMaxTokens = 1 << 16

// Stage is one contiguous slice of the model: its parameters, gradients, AdamW
// state and the forward and backward passes over them. It is safe for concurrent
// use by several goroutines.
type Stage struct {
	cfg     ModelConfig
	index   int
	count   int
	first   int // global index of the first block
	lay     *layout
	params  []float32
	grads   []float32
	m, v    []float32
	version uint64

	// mu guards params, m, v and version: forwards and backwards read under RLock,
	// Step and WithState write under Lock. gradMu serializes writers of grads; it
	// is taken after mu, never before.
	mu     sync.RWMutex
	gradMu sync.Mutex

	acts      slabPool
	scratch   slabPool
	maxTokens atomic.Int64

	// gpu is set on a stage built by NewOnGPU: the math runs there and params,
	// grads, m and v are nil.
	gpu *gpuStage
}

// New builds stage k of len(layers) stages; layers[i] is the number of transformer
// blocks in stage i and they must add up to cfg.NLayer. Initial weights are a pure
// function of (seed, parameter name), so any split of the same model starts from
// identical weights (GPT-2 init: N(0, 0.02), residual output projections scaled by
// 1/sqrt(2·n_layer), LayerNorm weight 1 and bias 0, linear biases 0).
func New(cfg ModelConfig, layers []int, k int, seed uint64) (*Stage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(layers) == 0 {
		return nil, errors.New("stages: empty layer split")
	}
	if k < 0 || k >= len(layers) {
		return nil, fmt.Errorf("stages: stage index %d outside [0, %d)", k, len(layers))
	}
	total, first := 0, 0
	for i, n := range layers {
		if n < 0 {
			return nil, fmt.Errorf("stages: stage %d has %d layers", i, n)
		}
		// A middle stage without blocks would be an identity hop: a split error.
		if n == 0 && i != 0 && i != len(layers)-1 {
			return nil, fmt.Errorf("stages: middle stage %d of %v has no layers", i, layers)
		}
		if i < k {
			first += n
		}
		total += n
	}
	if total != cfg.NLayer {
		return nil, fmt.Errorf("stages: layers per stage %v add up to %d, model has n_layer %d", layers, total, cfg.NLayer)
	}
	s := &Stage{cfg: cfg, index: k, count: len(layers), first: first}
	s.maxTokens.Store(defaultMaxTokens)
	s.lay = newLayout(cfg, first, layers[k], s.IsFirst(), s.IsLast())
	n := s.lay.size
	s.params = make([]float32, n)
	s.grads = make([]float32, n)
	s.m = make([]float32, n)
	s.v = make([]float32, n)
	initParams(s.lay, cfg, seed, s.params)
	return s, nil
}

// Index returns the stage's position k in the pipeline.
func (s *Stage) Index() int { return s.index }

// Count returns the number of stages in the pipeline.
func (s *Stage) Count() int { return s.count }

// IsFirst reports whether the stage owns the embeddings and takes token ids.
func (s *Stage) IsFirst() bool { return s.index == 0 }

// IsLast reports whether the stage owns the head and computes the loss.
func (s *Stage) IsLast() bool { return s.index == s.count-1 }

// Model returns the model shape.
func (s *Stage) Model() ModelConfig { return s.cfg }

// Layers returns the global indices [first, first+n) of the blocks this stage holds.
func (s *Stage) Layers() (first, n int) { return s.first, len(s.lay.blocks) }

// Params returns the flat parameter vector. Callers must not resize it and should
// write it only inside WithState, while no pass is running. On a GPU stage it is
// a fresh host copy (nil on a device error, see DeviceErr).
func (s *Stage) Params() []float32 {
	if s.gpu != nil {
		return s.hostCopy(false)
	}
	return s.params
}

// Grads returns the flat accumulated gradients, in the layout of Params (a host
// copy on a GPU stage).
func (s *Stage) Grads() []float32 {
	if s.gpu != nil {
		return s.hostCopy(true)
	}
	return s.grads
}

// Views returns the named tensors in layout order.
func (s *Stage) Views() []View {
	out := make([]View, len(s.lay.views))
	for i, v := range s.lay.views {
		v.Shape = append([]int(nil), v.Shape...)
		out[i] = v
	}
	return out
}

// View returns the parameters of the named tensor, or nil if the stage has none of
// that name.
func (s *Stage) View(name string) []float32 {
	i, ok := s.lay.byName[name]
	if !ok {
		return nil
	}
	p := s.Params()
	if p == nil {
		return nil
	}
	return s.lay.views[i].slice(p)
}

// GradView returns the accumulated gradient of the named tensor, or nil.
func (s *Stage) GradView(name string) []float32 {
	i, ok := s.lay.byName[name]
	if !ok {
		return nil
	}
	p := s.Grads()
	if p == nil {
		return nil
	}
	return s.lay.views[i].slice(p)
}

// SetMaxTokens sets the largest microbatch (B·T tokens) Forward accepts, so that a
// malformed or hostile request cannot make the stage allocate without limit; a
// server sets it from its configured microbatch × seq_len. The default is 65536.
// n <= 0 restores the default.
func (s *Stage) SetMaxTokens(n int) {
	if n <= 0 {
		n = defaultMaxTokens
	}
	s.maxTokens.Store(int64(n))
}

// Version returns the number of optimizer steps applied (the parameter version).
func (s *Stage) Version() uint64 { return atomic.LoadUint64(&s.version) }

// Input is one microbatch of B sequences of T tokens (T <= SeqLen).
type Input struct {
	B, T int
	// Tokens are the B·T token ids in [0, Vocab); first stage only.
	Tokens []int32
	// X are the B·T·DModel input activations; every stage but the first.
	X []float32
	// Targets are the B·T next-token ids; last stage only.
	Targets []int32
	// XWire, on a GPU stage, may replace X: the activations as they arrived in
	// the pipeline's int8 wire layout with blocks of Block values, dequantized on
	// the device (so they cross the PCIe bus compressed).
	XWire []byte
	Block int
	// OutBlock > 0, on a GPU stage that is not the last, asks for the output
	// quantized on the device into Pass.OutWire (int8 wire layout, blocks of
	// OutBlock values) instead of Out.
	OutBlock int
}

// Pass is the result of one Forward and what its Backward needs.
type Pass struct {
	// Out holds the B·T·DModel output activations; nil for the last stage. The
	// caller owns it: it stays valid after Backward and Release.
	Out []float32
	// OutWire is the output in the int8 wire layout when Input.OutBlock asked
	// for it (GPU stages); Out is nil then.
	OutWire []byte
	// Loss is the mean cross-entropy over the B·T targets (last stage only).
	Loss float32
	// Version is the parameter version the forward ran on.
	Version uint64
	// B and T are the microbatch shape.
	B, T int

	stage   *Stage
	used    atomic.Bool
	gp      *cuda.Pass // GPU stage: the device activations
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

// Bytes reports the memory held by the pass's cached activations.
func (p *Pass) Bytes() int64 {
	return int64(len(p.slab)+len(p.Out))*4 + int64(len(p.OutWire)) + int64(len(p.tokens)+len(p.targets))*4
}

// Release returns the pass's buffers to the stage without a backward pass (for a
// forward-only evaluation, or a microbatch whose downstream failed for good). A
// released or already differentiated pass cannot be differentiated.
func (p *Pass) Release() {
	if p.used.Swap(true) {
		return
	}
	p.free()
}

func (p *Pass) free() {
	if p.gp != nil {
		p.gp.Release()
		p.gp = nil
	}
	p.stage.acts.put(p.slab)
	p.slab, p.x0, p.blocks, p.lnf, p.lnfm, p.lnfr, p.logits = nil, nil, nil, nil, nil, nil, nil
}

func (s *Stage) validate(in Input) error {
	c := s.cfg
	if in.B <= 0 || in.T <= 0 {
		return fmt.Errorf("batch shape B=%d T=%d must be positive", in.B, in.T)
	}
	if in.T > c.SeqLen {
		return fmt.Errorf("sequence length T=%d exceeds seq_len %d", in.T, c.SeqLen)
	}
	if limit := s.maxTokens.Load(); int64(in.B) > limit || int64(in.B)*int64(in.T) > limit {
		return fmt.Errorf("microbatch of %d×%d tokens exceeds the limit of %d", in.B, in.T, limit)
	}
	n := in.B * in.T
	if s.IsFirst() {
		if len(in.Tokens) != n {
			return fmt.Errorf("got %d tokens, want B·T = %d", len(in.Tokens), n)
		}
		if len(in.X) != 0 {
			return errors.New("first stage takes tokens, got activations")
		}
		if err := checkIDs(in.Tokens, c.Vocab, "token"); err != nil {
			return err
		}
	} else if in.XWire != nil {
		if s.gpu == nil {
			return errors.New("int8 wire input needs a stage on a GPU")
		}
		if len(in.X) != 0 {
			return errors.New("input has both X and XWire")
		}
		if err := cuda.CheckInt8Wire(in.XWire, n*c.DModel, in.Block); err != nil {
			return fmt.Errorf("input activation: %w", err)
		}
	} else {
		if len(in.X) != n*c.DModel {
			return fmt.Errorf("got %d activations, want B·T·d_model = %d", len(in.X), n*c.DModel)
		}
		if err := checkFinite(in.X, "input activation"); err != nil {
			return err
		}
	}
	if in.OutBlock != 0 && (s.gpu == nil || in.OutBlock < 0) {
		return fmt.Errorf("output block size %d needs a stage on a GPU", in.OutBlock)
	}
	if s.IsLast() {
		if len(in.Targets) != n {
			return fmt.Errorf("got %d targets, want B·T = %d", len(in.Targets), n)
		}
		if err := checkIDs(in.Targets, c.Vocab, "target"); err != nil {
			return err
		}
	}
	return nil
}

func checkIDs(ids []int32, vocab int, what string) error {
	for i, t := range ids {
		if t < 0 || int(t) >= vocab {
			return fmt.Errorf("%s %d at position %d outside [0, %d)", what, t, i, vocab)
		}
	}
	return nil
}

func checkFinite(x []float32, what string) error {
	for i, v := range x {
		// v-v is 0 for finite v and NaN for NaN and ±Inf.
		if v-v != 0 {
			return fmt.Errorf("%s %d is %v", what, i, v)
		}
	}
	return nil
}

// actLen is the size of the activation slab of one pass.
func (s *Stage) actLen(B, T int) int {
	N, C := B*T, s.cfg.DModel
	n := N*C + len(s.lay.blocks)*blockActLen(B, T, C, s.cfg.NHead)
	if s.IsLast() {
		n += N*C + 2*N + N*s.cfg.Vocab
	}
	return n
}

// Forward validates the input (shapes, token ranges, NaN/Inf in X) and runs the
// stage. It holds the parameter read lock, so several Forwards may run at once.
func (s *Stage) Forward(in Input) (*Pass, error) {
	if err := s.validate(in); err != nil {
		return nil, fmt.Errorf("stage %d forward: %w", s.index, err)
	}
	if s.gpu != nil {
		return s.gpuForward(in)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()

	B, T, C, NH := in.B, in.T, s.cfg.DModel, s.cfg.NHead
	N := B * T
	p := &Pass{stage: s, B: B, T: T, Version: s.Version()}
	p.slab = s.acts.get(s.actLen(B, T))
	cv := &carver{buf: p.slab}
	p.x0 = cv.take(N * C)
	if s.IsFirst() {
		p.tokens = append([]int32(nil), in.Tokens...)
		encoderForward(p.x0, p.tokens, s.lay.wte.slice(s.params), s.lay.wpe.slice(s.params), B, T, C)
	} else {
		copy(p.x0, in.X)
	}
	x := p.x0
	p.blocks = make([]blockActs, len(s.lay.blocks))
	if len(p.blocks) > 0 {
		tmp := s.scratch.get(N * 4 * C)
		for i := range p.blocks {
			a := &p.blocks[i]
			a.carve(cv, B, T, C, NH)
			a.in = x
			blockForward(a, s.params, &s.lay.blocks[i], tmp, B, T, C, NH)
			x = a.out
		}
		s.scratch.put(tmp)
	}
	if !s.IsLast() {
		p.Out = append([]float32(nil), x...)
		return p, nil
	}
	V := s.cfg.Vocab
	p.targets = append([]int32(nil), in.Targets...)
	p.lnf, p.lnfm, p.lnfr = cv.take(N*C), cv.take(N), cv.take(N)
	p.logits = cv.take(N * V)
	layernormForward(p.lnf, p.lnfm, p.lnfr, x, s.lay.lnfw.slice(s.params), s.lay.lnfb.slice(s.params), N, C)
	linearForwardT(p.logits, p.lnf, s.lay.head.slice(s.params), N, C, V)
	p.Loss = crossEntropyForward(p.logits, p.targets, N, V)
	return p, nil
}

// scratchLen is the size of the backward scratch slab.
func (s *Stage) scratchLen(B, T int) int {
	N, C := B*T, s.cfg.DModel
	n := N*C + 2*N*4*C + N*C + attnScratchLen(B, T, s.cfg.NHead)
	if s.IsLast() {
		n += N * s.cfg.Vocab
	}
	return n
}

// Backward takes a pass of this stage and the gradient of its Out (nil for the
// last stage, which differentiates its own mean loss), adds the parameter
// gradients into Grads and returns the gradient of the input activations (nil for
// the first stage). It consumes the pass: its buffers go back to the stage.
func (s *Stage) Backward(p *Pass, dout []float32) ([]float32, error) {
	if p == nil || p.stage != s {
		return nil, fmt.Errorf("stage %d backward: pass is nil or from another stage", s.index)
	}
	B, T, C, NH := p.B, p.T, s.cfg.DModel, s.cfg.NHead
	N := B * T
	if s.IsLast() {
		if len(dout) != 0 {
			return nil, fmt.Errorf("stage %d backward: last stage takes no output gradient, got %d values", s.index, len(dout))
		}
	} else {
		if len(dout) != N*C {
			return nil, fmt.Errorf("stage %d backward: got %d output gradients, want B·T·d_model = %d", s.index, len(dout), N*C)
		}
		if err := checkFinite(dout, "output gradient"); err != nil {
			return nil, fmt.Errorf("stage %d backward: %w", s.index, err)
		}
	}
	if p.used.Swap(true) {
		return nil, fmt.Errorf("stage %d backward: pass already consumed", s.index)
	}
	defer p.free()
	if s.gpu != nil {
		return s.gpuBackward(p, dout)
	}

	s.mu.RLock()
	defer s.mu.RUnlock()
	s.gradMu.Lock()
	defer s.gradMu.Unlock()

	slab := s.scratch.get(s.scratchLen(B, T))
	defer s.scratch.put(slab)
	cv := &carver{buf: slab}
	dres := cv.take(N * C)
	sc := blockScratch{big: cv.take(N * 4 * C), hid: cv.take(N * 4 * C), small: cv.take(N * C), attn: cv.take(attnScratchLen(B, T, NH))}
	params, grads := s.params, s.grads

	if s.IsLast() {
		V := s.cfg.Vocab
		dlogits := cv.take(N * V)
		crossEntropyBackward(dlogits, p.logits, p.targets, N, V)
		dlnf := sc.small[:N*C]
		linearBackwardT(dlnf, s.lay.head.slice(grads), dlogits, p.lnf, s.lay.head.slice(params), N, C, V)
		clear(dres)
		x := p.x0
		if n := len(p.blocks); n > 0 {
			x = p.blocks[n-1].out
		}
		layernormBackward(dres, s.lay.lnfw.slice(grads), s.lay.lnfb.slice(grads), dlnf, x,
			s.lay.lnfw.slice(params), p.lnfm, p.lnfr, N, C)
	} else {
		copy(dres, dout)
	}
	for i := len(p.blocks) - 1; i >= 0; i-- {
		blockBackward(dres, &p.blocks[i], params, grads, &s.lay.blocks[i], &sc, B, T, C, NH)
	}
	if s.IsFirst() {
		encoderBackward(s.lay.wte.slice(grads), s.lay.wpe.slice(grads), dres, p.tokens, B, T, C)
		return nil, nil
	}
	return append([]float32(nil), dres...), nil
}
