package stages

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"swarmnode/cuda"
	"swarmnode/model"
)

// defaultMaxTokens bounds B·T of one microbatch until SetMaxTokens says otherwise.
const defaultMaxTokens = 1 << 16

// Stage is one contiguous part of the model: its parameters, gradients, AdamW
// state and the forward and backward passes over them, on the CPU or a GPU. It is
// safe for concurrent use by several goroutines.
type Stage struct {
	cfg     model.Config
	part    model.Part
	lay     *model.Layout
	eng     engine
	version uint64

	// mu guards the engine's parameters and moments, and version: forwards and
	// backwards read under RLock, Step and WithState write under Lock. gradMu
	// serializes writers of the gradients; it is taken after mu, never before.
	mu     sync.RWMutex
	gradMu sync.Mutex

	maxTokens atomic.Int64
	devErr    atomic.Pointer[error] // first device error, for calls without an error return
}

// engine is where a stage's tensors live and its math runs: cpuEngine (cpu.go)
// or gpuEngine (gpu.go), side by side as llm.c keeps train_gpt2.c beside
// train_gpt2.cu. Stage validates every input and takes the locks, so an engine
// sees only well-formed calls: forward and readState under the read lock,
// backward under the read lock and gradMu, step under the write lock and gradMu,
// withState and addState under the write lock, zeroGrad under gradMu.
type engine interface {
	// forward runs the stage on in, filling p's results and activations.
	forward(in model.Input, p *Pass) error
	// backward adds p's parameter gradients and returns the input gradient.
	backward(p *Pass, dout []float32) ([]float32, error)
	// release returns p's activations to the engine.
	release(p *Pass)
	// step averages the gradients over micro microbatches, clips them, applies
	// AdamW as step `step` of the schedule and zeroes them; it returns the norm
	// before clipping and leaves the parameters alone when it is not finite.
	step(opt model.Optim, micro, step int) (float32, error)
	zeroGrad() error
	// withState fills st's vectors, calls fn and keeps what fn wrote.
	withState(st *model.State, fn func(*model.State)) error
	// readState and addState address Params, M, V and the gradients laid end
	// to end.
	readState(off int, dst []float32) error
	addState(off int, delta []float32) error
	// vector returns the parameters, or the gradients: live on the CPU, a copy
	// from a GPU.
	vector(grads bool) ([]float32, error)
	close() error
	// device describes where the engine computes.
	device() string
}

// New builds stage k of len(layers) stages on the CPU; layers[i] is the number of
// transformer blocks in stage i and they must add up to cfg.NLayer. Initial
// weights are a pure function of (seed, parameter name), so any split of the same
// model starts from identical weights (see model.Layout.Init).
func New(cfg model.Config, layers []int, k int, seed uint64) (*Stage, error) {
	s, params, err := newStage(cfg, layers, k, seed)
	if err != nil {
		return nil, err
	}
	s.eng = newCPUEngine(cfg, s.part, s.lay, params, newSubspace(cfg, s.part, seed))
	return s, nil
}

// newStage builds stage k of the split, without an engine, and its initial
// parameters.
func newStage(cfg model.Config, layers []int, k int, seed uint64) (*Stage, []float32, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	part, err := model.Split(cfg, layers, k)
	if err != nil {
		return nil, nil, err
	}
	s := &Stage{cfg: cfg, part: part, lay: model.NewLayout(cfg, part)}
	s.maxTokens.Store(defaultMaxTokens)
	params := make([]float32, s.lay.Size)
	s.lay.Init(params, seed)
	return s, params, nil
}

// Index returns the stage's position k in the pipeline.
func (s *Stage) Index() int { return s.part.Index }

// Count returns the number of stages in the pipeline.
func (s *Stage) Count() int { return s.part.Count }

// IsFirst reports whether the stage owns the embeddings and takes token ids.
func (s *Stage) IsFirst() bool { return s.part.IsFirst() }

// IsLast reports whether the stage owns the head and computes the loss.
func (s *Stage) IsLast() bool { return s.part.IsLast() }

// Model returns the model shape.
func (s *Stage) Model() model.Config { return s.cfg }

// NumParams is the length of the flat parameter vector (no copy, on any device).
func (s *Stage) NumParams() int { return s.lay.Size }

// Params returns the flat parameter vector. Callers must not resize it and should
// write it only inside WithState, while no pass is running. On a GPU stage it is
// a fresh host copy (nil on a device error, see DeviceErr).
func (s *Stage) Params() []float32 { return s.vector(false) }

// Grads returns the flat accumulated gradients, in the layout of Params (a host
// copy on a GPU stage).
func (s *Stage) Grads() []float32 { return s.vector(true) }

func (s *Stage) vector(grads bool) []float32 {
	v, err := s.eng.vector(grads)
	if s.fail(err) != nil {
		return nil
	}
	return v
}

// Views returns the named tensors in layout order.
func (s *Stage) Views() []model.View {
	out := make([]model.View, len(s.lay.Views))
	for i, v := range s.lay.Views {
		v.Shape = append([]int(nil), v.Shape...)
		out[i] = v
	}
	return out
}

// View returns the parameters of the named tensor, or nil if the stage has none of
// that name.
func (s *Stage) View(name string) []float32 { return s.viewOf(name, false) }

// GradView returns the accumulated gradient of the named tensor, or nil.
func (s *Stage) GradView(name string) []float32 { return s.viewOf(name, true) }

func (s *Stage) viewOf(name string, grads bool) []float32 {
	v, ok := s.lay.Find(name)
	if !ok {
		return nil
	}
	buf := s.vector(grads)
	if buf == nil {
		return nil
	}
	return v.Of(buf)
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

// OnGPU reports whether the stage computes on a GPU.
func (s *Stage) OnGPU() bool { return s.gpu() != nil }

// gpu returns the stage's GPU engine, nil on a CPU stage.
func (s *Stage) gpu() *gpuEngine {
	g, _ := s.eng.(*gpuEngine)
	return g
}

// Device describes where the stage computes: "cpu", or the GPU's name and the
// precision.
func (s *Stage) Device() string { return s.eng.device() }

// DeviceErr returns the first GPU error of a call that has no error return (Params,
// Grads, WithState, ZeroGrad, Step), or nil. A CPU stage always returns nil.
func (s *Stage) DeviceErr() error {
	if e := s.devErr.Load(); e != nil {
		return *e
	}
	return nil
}

// fail records err as the stage's device error if it is the first, and returns it.
func (s *Stage) fail(err error) error {
	if err != nil {
		s.devErr.CompareAndSwap(nil, &err)
	}
	return err
}

// Close frees the stage's device memory; the stage must not be used afterwards.
// It does nothing on a CPU stage.
func (s *Stage) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.close()
}

// Pass is the result of one Forward and what its Backward needs.
type Pass struct {
	// Out holds the B·T·DModel output activations; nil for the last stage. The
	// caller owns it: it stays valid after Backward and Release.
	Out []float32
	// OutWire is the output in the int8 wire layout when Input.OutBlock asked
	// for it of a GPU stage; Out is nil then. (A CPU stage answers in Out.)
	OutWire []byte
	// Loss is the mean cross-entropy over the B·T targets (last stage only).
	Loss float32
	// Version is the parameter version the forward ran on.
	Version uint64
	// B and T are the microbatch shape.
	B, T int

	stage    *Stage
	outBlock int // Input.OutBlock: the block size of OutWire
	used     atomic.Bool
	cpu      *cpuActs   // a CPU stage's activations
	gpu      *cuda.Pass // a GPU stage's device activations
}

// Bytes reports the memory held by the pass's outputs and cached activations.
func (p *Pass) Bytes() int64 {
	n := int64(len(p.Out))*4 + int64(len(p.OutWire))
	if p.cpu != nil {
		n += p.cpu.bytes()
	}
	return n
}

// Release returns the pass's buffers to the stage without a backward pass (for a
// forward-only evaluation, or a microbatch whose downstream failed for good). A
// released or already differentiated pass cannot be differentiated.
func (p *Pass) Release() {
	if p.used.Swap(true) {
		return
	}
	p.stage.eng.release(p)
}

// validate checks in as model.Input.Check does, and the token limit and the
// int8 wire input only a GPU stage takes. Input.OutBlock is a request that only
// a GPU stage grants: a CPU stage answers in float32 (see Wire).
func (s *Stage) validate(in model.Input) error {
	if err := in.Check(s.cfg, s.part); err != nil {
		return err
	}
	if limit := s.maxTokens.Load(); int64(in.B) > limit || int64(in.B)*int64(in.T) > limit {
		return fmt.Errorf("microbatch of %d×%d tokens exceeds the limit of %d", in.B, in.T, limit)
	}
	if in.XWire == nil {
		return nil
	}
	if s.gpu() == nil {
		return errors.New("int8 wire input needs a stage on a GPU")
	}
	if err := cuda.CheckInt8Wire(in.XWire, in.B*in.T*s.cfg.DModel, in.Block); err != nil {
		return fmt.Errorf("input activation: %w", err)
	}
	return nil
}

// Forward validates the input (shapes, token ranges, NaN/Inf in X) and runs the
// stage. It holds the parameter read lock, so several Forwards may run at once.
func (s *Stage) Forward(in model.Input) (*Pass, error) {
	if err := s.validate(in); err != nil {
		return nil, fmt.Errorf("stage %d forward: %w", s.part.Index, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	p := &Pass{stage: s, B: in.B, T: in.T, Version: s.Version(), outBlock: in.OutBlock}
	if err := s.eng.forward(in, p); err != nil {
		return nil, fmt.Errorf("stage %d forward: %w", s.part.Index, s.fail(err))
	}
	return p, nil
}

// Backward takes a pass of this stage and the gradient of its Out (nil for the
// last stage, which differentiates its own mean loss), adds the parameter
// gradients into Grads and returns the gradient of the input activations (nil for
// the first stage). It consumes the pass: its buffers go back to the stage.
func (s *Stage) Backward(p *Pass, dout []float32) ([]float32, error) {
	if err := s.checkPass(p); err != nil {
		return nil, err
	}
	if s.IsLast() {
		if len(dout) != 0 {
			return nil, fmt.Errorf("stage %d backward: last stage takes no output gradient, got %d values", s.part.Index, len(dout))
		}
	} else {
		if n := p.B * p.T * s.cfg.Width(); len(dout) != n {
			return nil, fmt.Errorf("stage %d backward: got %d output gradients, want B·T·%d = %d", s.part.Index, len(dout), s.cfg.Width(), n)
		}
		if err := model.CheckFinite(dout, "output gradient"); err != nil {
			return nil, fmt.Errorf("stage %d backward: %w", s.part.Index, err)
		}
	}
	return backwardLocked(s, p, func() ([]float32, error) { return s.eng.backward(p, dout) })
}

// subspace reports whether the stage's boundaries carry subspace coordinates
// (model.Subspace), which travel as float32 values only.
func (s *Stage) subspace() bool { return s.cfg.Subspace > 0 }

func (s *Stage) checkPass(p *Pass) error {
	if p == nil || p.stage != s {
		return fmt.Errorf("stage %d backward: pass is nil or from another stage", s.part.Index)
	}
	return nil
}

// backwardLocked consumes p and runs its backward under the parameters' read
// lock and the gradients' lock; it returns the input gradient, nil on the first
// stage.
func backwardLocked[T []float32 | []byte](s *Stage, p *Pass, run func() (T, error)) (T, error) {
	if p.used.Swap(true) {
		return nil, fmt.Errorf("stage %d backward: pass already consumed", s.part.Index)
	}
	defer s.eng.release(p)
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.gradMu.Lock()
	defer s.gradMu.Unlock()
	dx, err := run()
	if err != nil {
		return nil, fmt.Errorf("stage %d backward: %w", s.part.Index, s.fail(err))
	}
	if s.IsFirst() {
		return nil, nil
	}
	return dx, nil
}

// Logits returns a copy of the logits of a last-stage pass on the CPU, B·T
// rows of Vocab; nil for other stages and on a GPU.
func (p *Pass) Logits() []float32 {
	if p.cpu == nil || p.cpu.logits == nil {
		return nil
	}
	return append([]float32(nil), p.cpu.logits...)
}
