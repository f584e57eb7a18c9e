package stages

import (
	"errors"
	"fmt"
	"sync"

	"swarmnode/cuda"
	"swarmnode/model"
)

// GPU is a GPU that stages compute on, with the precision they compute in.
type GPU struct {
	dev  *cuda.Device
	prec cuda.Precision
}

// shared is the process's GPU (see SharedGPU).
var shared struct {
	mu  sync.Mutex
	gpu *GPU
}

// SharedGPU returns the process's GPU, opening GPU 0 on the first call. Its
// primary context and the thread that drives it serve every stage the process
// builds, also after a stage is closed and another built (a node moving to
// another stage), and stay open for the process's life. Stages on it compute in
// bf16 mixed precision: bfloat16 GEMM operands with float32 accumulation, master
// weights and optimizer state (the fast path of package cuda).
func SharedGPU() (*GPU, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.gpu != nil {
		return shared.gpu, nil
	}
	d, err := cuda.Open(0)
	if err != nil {
		return nil, err
	}
	shared.gpu = &GPU{dev: d, prec: cuda.BF16Mixed}
	return shared.gpu, nil
}

// GPUAvailable reports nil when a GPU can be used, else what is missing: the
// driver, a CUDA library or a device. It opens no context.
func GPUAvailable() error { return cuda.Available() }

// NewOnGPU builds stage k like New, on g: the weights are initialised on the CPU
// exactly as New does (so any split, on any mix of devices, starts from identical
// weights) and uploaded; Forward, Backward and Step then run on the GPU in g's
// precision. Params, Grads, View and GradView return host copies, and WithState
// downloads the state, runs fn and uploads it back. Close frees the device memory.
func NewOnGPU(cfg model.Config, layers []int, k int, seed uint64, g *GPU) (*Stage, error) {
	if g == nil {
		return nil, errors.New("stages: NewOnGPU needs a GPU")
	}
	s, params, err := newStage(cfg, layers, k, seed)
	if err != nil {
		return nil, err
	}
	scfg := cuda.StageConfig{Model: cfg, Part: s.part, Precision: g.prec}
	if sub := newSubspace(cfg, s.part, seed); sub != nil {
		if sub.in != nil {
			scfg.BasisIn, scfg.Gain = sub.in.U, sub.in.Gain
		}
		if sub.out != nil {
			scfg.BasisOut = sub.out.U
		}
	}
	cs, err := cuda.NewStage(g.dev, scfg)
	if err != nil {
		return nil, fmt.Errorf("stages: stage %d on the GPU: %w", k, err)
	}
	if err := cs.SetParams(params); err != nil {
		cs.Close()
		return nil, fmt.Errorf("stages: stage %d: uploading the initial weights: %w", k, err)
	}
	s.eng = &gpuEngine{gpu: g, cs: cs}
	return s, nil
}

// NewChainOnGPU builds every stage of the split layers on g (see NewOnGPU).
func NewChainOnGPU(cfg model.Config, layers []int, seed uint64, g *GPU) (*Chain, error) {
	return newChain(len(layers), func(k int) (*Stage, error) { return NewOnGPU(cfg, layers, k, seed, g) })
}

// gpuEngine computes a stage on a GPU: a cuda.Stage holds parameters, gradients
// and moments in device memory in the same layout as the CPU's.
type gpuEngine struct {
	gpu *GPU
	cs  *cuda.Stage
}

func (e *gpuEngine) forward(in model.Input, p *Pass) error {
	gp, err := e.cs.Forward(in)
	if err != nil {
		return err
	}
	p.gpu, p.Out, p.OutWire, p.Loss = gp, gp.Out, gp.OutWire, gp.Loss
	gp.Out, gp.OutWire = nil, nil // the caller owns them
	return nil
}

// take hands p's device pass to a backward, which consumes it.
func (e *gpuEngine) take(p *Pass) *cuda.Pass {
	gp := p.gpu
	p.gpu = nil
	return gp
}

func (e *gpuEngine) backward(p *Pass, dout []float32) ([]float32, error) {
	return e.cs.Backward(e.take(p), dout)
}

func (e *gpuEngine) backwardWire(p *Pass, dout []byte, doutBlock, dxBlock int) ([]byte, error) {
	return e.cs.BackwardWire(e.take(p), dout, doutBlock, dxBlock)
}

func (e *gpuEngine) release(p *Pass) {
	if p.gpu != nil {
		p.gpu.Release()
		p.gpu = nil
	}
}

// step runs at the device stage's own step count, which withState keeps equal
// to the stage's version; cuda.Stage.Step skips a non-finite gradient too.
func (e *gpuEngine) step(opt model.Optim, micro, _ int) (float32, error) {
	return e.cs.Step(opt, micro)
}

func (e *gpuEngine) zeroGrad() error { return e.cs.ZeroGrad() }

func (e *gpuEngine) withState(st *model.State, fn func(*model.State)) error {
	cst, err := e.cs.GetState()
	if err != nil {
		fn(st)
		return err
	}
	st.Params, st.M, st.V = cst.Params, cst.M, cst.V
	fn(st)
	cst.Step = max(st.Step, 0)
	return e.cs.SetState(cst)
}

func (e *gpuEngine) readState(off int, dst []float32) error  { return e.cs.ReadState(off, dst) }
func (e *gpuEngine) addState(off int, delta []float32) error { return e.cs.AddState(off, delta) }

func (e *gpuEngine) vector(grads bool) ([]float32, error) {
	if grads {
		return e.cs.Grads()
	}
	return e.cs.Params()
}

func (e *gpuEngine) close() error { return e.cs.Close() }

func (e *gpuEngine) device() string {
	p := map[cuda.Precision]string{cuda.FP32: "fp32", cuda.TF32: "tf32", cuda.BF16Mixed: "bf16"}[e.gpu.prec]
	info := e.gpu.dev.Info()
	return fmt.Sprintf("cuda:%d %s (%s)", info.Ordinal, info.Name, p)
}

// onOneGPU reports whether every stage of the chain computes on the same GPU, so
// activations can stay in device memory between stages.
func (c *Chain) onOneGPU() bool {
	for _, s := range c.stages {
		if g := s.gpu(); g == nil || g.gpu.dev != c.stages[0].gpu().gpu.dev {
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
		css[k] = s.gpu().cs
	}
	loss, err := cuda.RunChain(css, tokens, targets, B, T, train)
	if err != nil {
		return 0, fmt.Errorf("chain on the GPU: %w", c.stages[0].fail(err))
	}
	return loss, nil
}
