package stages

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"swarmnode/cuda"
)

// gpuStage is the compute backend of a stage that runs on a GPU: the stage keeps
// its layout, validation, locks and version, and hands the math to a cuda.Stage,
// which holds parameters, gradients and moments in device memory. The CPU path
// never touches it, so CPU results stay bit-identical.
type gpuStage struct {
	dev  *cuda.Device
	cs   *cuda.Stage
	prec cuda.Precision
	err  atomic.Pointer[error] // first device error, for callers without an error return
}

func (g *gpuStage) fail(err error) error {
	if err != nil {
		g.err.CompareAndSwap(nil, &err)
	}
	return err
}

// NewOnGPU builds stage k like New, on dev: the weights are initialised on the CPU
// exactly as New does (so any split, on any mix of devices, starts from identical
// weights) and uploaded; Forward, Backward and Step then run on the GPU in the
// given precision. Params, Grads, View and GradView return host copies, and
// WithState downloads the state, runs fn and uploads it back. Close frees the
// device memory.
func NewOnGPU(cfg ModelConfig, layers []int, k int, seed uint64, dev *cuda.Device, prec cuda.Precision) (*Stage, error) {
	if dev == nil {
		return nil, errors.New("stages: NewOnGPU needs an open cuda.Device")
	}
	s, err := New(cfg, layers, k, seed)
	if err != nil {
		return nil, err
	}
	cs, err := cuda.NewStage(dev, cuda.StageConfig{
		Model: cuda.ModelConfig{Vocab: cfg.Vocab, DModel: cfg.DModel, NHead: cfg.NHead, NLayer: cfg.NLayer, SeqLen: cfg.SeqLen},
		First: s.first, Blocks: layers[k], IsFirst: s.IsFirst(), IsLast: s.IsLast(), Precision: prec,
	})
	if err != nil {
		return nil, fmt.Errorf("stages: stage %d on the GPU: %w", k, err)
	}
	if cs.NumParams() != len(s.params) {
		cs.Close()
		return nil, fmt.Errorf("stages: stage %d has %d parameters on the GPU, %d on the CPU", k, cs.NumParams(), len(s.params))
	}
	if err := cs.SetParams(s.params); err != nil {
		cs.Close()
		return nil, fmt.Errorf("stages: stage %d: uploading the initial weights: %w", k, err)
	}
	s.gpu = &gpuStage{dev: dev, cs: cs, prec: prec}
	// The device holds the state now; host copies are made on demand.
	s.params, s.grads, s.m, s.v = nil, nil, nil, nil
	return s, nil
}

// NewChainOnGPU builds every stage of the split layers on dev (see NewOnGPU).
func NewChainOnGPU(cfg ModelConfig, layers []int, seed uint64, dev *cuda.Device, prec cuda.Precision) (*Chain, error) {
	if len(layers) == 0 {
		return nil, errors.New("stages: empty layer split")
	}
	c := &Chain{}
	for k := range layers {
		s, err := NewOnGPU(cfg, layers, k, seed, dev, prec)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.stages = append(c.stages, s)
	}
	return c, nil
}

// onOneGPU reports whether every stage of the chain computes on the same GPU, so
// activations can stay in device memory between stages.
func (c *Chain) onOneGPU() bool {
	for _, s := range c.stages {
		if s.gpu == nil || s.gpu.dev != c.stages[0].gpu.dev {
			return false
		}
	}
	return len(c.stages) > 0
}

// gpuRun runs one microbatch through the whole chain on its GPU (see
// cuda.RunChain), holding each stage's locks as Forward and Backward would.
func (c *Chain) gpuRun(tokens, targets []int32, B, T int, train bool) (float32, error) {
	css := make([]*cuda.Stage, len(c.stages))
	for k, s := range c.stages {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if train {
			s.gradMu.Lock()
			defer s.gradMu.Unlock()
		}
		css[k] = s.gpu.cs
	}
	loss, err := cuda.RunChain(css, tokens, targets, B, T, train)
	if err != nil {
		return 0, fmt.Errorf("chain on the GPU: %w", c.stages[0].gpu.fail(err))
	}
	return loss, nil
}

// Close frees the device memory of every stage.
func (c *Chain) Close() error {
	var errs []error
	for _, s := range c.stages {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// OnGPU reports whether the stage computes on a GPU.
func (s *Stage) OnGPU() bool { return s.gpu != nil }

// Device describes where the stage computes: "cpu", or the GPU's name and the
// precision.
func (s *Stage) Device() string {
	if s.gpu == nil {
		return "cpu"
	}
	p := map[cuda.Precision]string{cuda.FP32: "fp32", cuda.TF32: "tf32", cuda.BF16Mixed: "bf16"}[s.gpu.prec]
	return fmt.Sprintf("cuda:%d %s (%s)", s.gpu.dev.Info().Ordinal, s.gpu.dev.Info().Name, p)
}

// DeviceErr returns the first GPU error of a call that has no error return (Params,
// Grads, WithState, ZeroGrad, Step), or nil. A CPU stage always returns nil.
func (s *Stage) DeviceErr() error {
	if s.gpu == nil {
		return nil
	}
	if e := s.gpu.err.Load(); e != nil {
		return *e
	}
	return nil
}

// Close frees the stage's device memory; the stage must not be used afterwards.
// It does nothing on a CPU stage.
func (s *Stage) Close() error {
	if s.gpu == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gpu.cs.Close()
}

// NumParams is the length of the flat parameter vector (no copy, on any device).
func (s *Stage) NumParams() int { return s.lay.size }

func (s *Stage) gpuForward(in Input) (*Pass, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p := &Pass{stage: s, B: in.B, T: in.T, Version: s.Version()}
	gp, err := s.gpu.cs.Forward(cuda.Input{B: in.B, T: in.T, Tokens: in.Tokens, X: in.X, Targets: in.Targets,
		XWire: in.XWire, Block: in.Block, OutBlock: in.OutBlock})
	if err != nil {
		return nil, fmt.Errorf("stage %d forward: %w", s.index, s.gpu.fail(err))
	}
	p.gp, p.Out, p.OutWire, p.Loss = gp, gp.Out, gp.OutWire, gp.Loss
	gp.Out, gp.OutWire = nil, nil // the caller owns them
	return p, nil
}

func (s *Stage) gpuBackward(p *Pass, dout []float32) ([]float32, error) {
	if s.IsLast() {
		dout = nil
	}
	return gpuBackwardLocked(s, p, func(gp *cuda.Pass) ([]float32, error) { return s.gpu.cs.Backward(gp, dout) })
}

// gpuBackwardLocked runs the device backward pass of p under the stage's locks
// (read lock on the parameters, the gradients' lock) and returns the input
// gradient, nil on the first stage.
func gpuBackwardLocked[T []float32 | []byte](s *Stage, p *Pass, run func(gp *cuda.Pass) (T, error)) (T, error) {
	gp := p.gp
	p.gp = nil
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.gradMu.Lock()
	defer s.gradMu.Unlock()
	dx, err := run(gp)
	if err != nil {
		return nil, fmt.Errorf("stage %d backward: %w", s.index, s.gpu.fail(err))
	}
	if s.IsFirst() {
		return nil, nil
	}
	return dx, nil
}

// BackwardWire is Backward with both gradients in the pipeline's int8 wire
// layout, for a stage on a GPU: dout (nil on the last stage) has blocks of
// doutBlock values and is dequantized on the device; the input gradient (nil
// on the first stage) is quantized there into blocks of dxBlock values. It
// consumes the pass.
func (s *Stage) BackwardWire(p *Pass, dout []byte, doutBlock, dxBlock int) ([]byte, error) {
	if p == nil || p.stage != s {
		return nil, fmt.Errorf("stage %d backward: pass is nil or from another stage", s.index)
	}
	if s.gpu == nil {
		return nil, fmt.Errorf("stage %d backward: int8 wire gradients need a stage on a GPU", s.index)
	}
	if s.IsLast() && len(dout) != 0 {
		return nil, fmt.Errorf("stage %d backward: last stage takes no output gradient, got %d bytes", s.index, len(dout))
	}
	if !s.IsLast() {
		if err := cuda.CheckInt8Wire(dout, p.B*p.T*s.cfg.DModel, doutBlock); err != nil {
			return nil, fmt.Errorf("stage %d backward: output gradient: %w", s.index, err)
		}
	}
	if p.used.Swap(true) {
		return nil, fmt.Errorf("stage %d backward: pass already consumed", s.index)
	}
	defer p.free()
	return gpuBackwardLocked(s, p, func(gp *cuda.Pass) ([]byte, error) {
		return s.gpu.cs.BackwardWire(gp, dout, doutBlock, dxBlock)
	})
}

// gpuStep follows Step's contract: the norm is computed on the device and a
// NaN/Inf gradient leaves the weights untouched (cuda.Stage.Step skips it).
func (s *Stage) gpuStep(opt OptimConfig, micro int) float32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gradMu.Lock()
	defer s.gradMu.Unlock()
	if micro < 1 {
		micro = 1
	}
	co := cuda.OptimConfig{LR: opt.LR, MinLR: opt.MinLR, Warmup: opt.Warmup, Steps: opt.Steps,
		WeightDecay: opt.WeightDecay, Beta1: opt.Beta1, Beta2: opt.Beta2, Eps: opt.Eps, Clip: opt.Clip}
	norm, err := s.gpu.cs.Step(co, micro)
	if err != nil {
		s.gpu.fail(err)
		return float32(math.NaN())
	}
	if n := float64(norm); math.IsNaN(n) || math.IsInf(n, 0) {
		return norm
	}
	atomic.AddUint64(&s.version, 1)
	return norm
}

// gpuWithState runs fn on a host copy of the device state and uploads it back.
// On a device error fn sees empty slices (so length checks fail) and DeviceErr
// reports the cause.
func (s *Stage) gpuWithState(fn func(st *State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cst, err := s.gpu.cs.GetState()
	if err != nil {
		s.gpu.fail(err)
		st := &State{Step: int(s.version)}
		fn(st)
		return
	}
	st := &State{Params: cst.Params, M: cst.M, V: cst.V, Step: int(s.version)}
	fn(st)
	if st.Step < 0 {
		st.Step = 0
	}
	if err := s.gpu.cs.SetState(cuda.State{Params: cst.Params, M: cst.M, V: cst.V, Step: st.Step}); err != nil {
		s.gpu.fail(err)
		return
	}
	atomic.StoreUint64(&s.version, uint64(st.Step))
}

// hostCopy downloads the parameters (grads=false) or gradients; nil on a device
// error (see DeviceErr).
func (s *Stage) hostCopy(grads bool) []float32 {
	var (
		out []float32
		err error
	)
	if grads {
		out, err = s.gpu.cs.Grads()
	} else {
		out, err = s.gpu.cs.Params()
	}
	if s.gpu.fail(err) != nil {
		return nil
	}
	return out
}
