package stages

import (
	"math"
	"sync/atomic"
)

// State is a stage's optimizer state, in the layout of Params.
type State struct {
	// Params are the parameters.
	Params []float32
	// M and V are AdamW's first and second moments.
	M, V []float32
	// Step is the number of optimizer steps applied (the stage's Version).
	Step int
}

// WithState calls fn with the stage's parameters and AdamW state under the write
// lock, for averaging and state transfer. fn may change the slices' contents (not
// their lengths) and Step; Version follows Step. The slices must not be kept
// after fn returns.
func (s *Stage) WithState(fn func(st *State)) {
	if s.gpu != nil {
		s.gpuWithState(fn)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &State{Params: s.params, M: s.m, V: s.v, Step: int(s.version)}
	fn(st)
	if st.Step < 0 {
		st.Step = 0
	}
	atomic.StoreUint64(&s.version, uint64(st.Step))
}

// ZeroGrad clears the accumulated gradients.
func (s *Stage) ZeroGrad() {
	if s.gpu != nil {
		s.gradMu.Lock()
		defer s.gradMu.Unlock()
		s.gpu.fail(s.gpu.cs.ZeroGrad())
		return
	}
	s.gradMu.Lock()
	defer s.gradMu.Unlock()
	clear(s.grads)
}

// Step averages the accumulated gradients over micro microbatches (grads *= 1/micro),
// clips them to a global norm of opt.Clip (per stage; PyTorch's clip_grad_norm_
// rule), applies AdamW at opt.LRAt(Version()) with decoupled weight decay on the
// views with Decay set, zeroes the gradients and bumps Version. It returns the
// gradient norm before clipping. When that norm is NaN or infinite (a diverged
// microbatch) the step is skipped: gradients are zeroed, parameters, moments and
// Version stay as they were, and the non-finite norm is returned for the caller
// to report.
func (s *Stage) Step(opt OptimConfig, micro int) float32 {
	if s.gpu != nil {
		return s.gpuStep(opt, micro)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gradMu.Lock()
	defer s.gradMu.Unlock()

	if micro < 1 {
		micro = 1
	}
	g := s.grads
	inv := 1 / float32(micro)
	var sq float64
	for i := range g {
		g[i] *= inv
		sq += float64(g[i]) * float64(g[i])
	}
	norm := math.Sqrt(sq)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		clear(g)
		return float32(norm)
	}
	gscale := float32(1)
	if opt.Clip > 0 {
		if c := float64(opt.Clip) / (norm + 1e-6); c < 1 {
			gscale = float32(c)
		}
	}

	step := int(s.version)
	lr := float64(opt.LRAt(step))
	t := float64(step + 1)
	b1, b2 := float64(opt.Beta1), float64(opt.Beta2)
	bc1 := 1 - math.Pow(b1, t)
	bc2 := 1 - math.Pow(b2, t)
	stepSize := float32(lr / bc1)
	bc2sqrt := float32(math.Sqrt(bc2))
	eps := opt.Eps
	fb1, fb2 := opt.Beta1, opt.Beta2
	for _, v := range s.lay.views {
		decay := float32(1)
		if v.Decay {
			decay = float32(1 - lr*float64(opt.WeightDecay))
		}
		p, gr, m, vv := v.slice(s.params), v.slice(g), v.slice(s.m), v.slice(s.v)
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
	clear(g)
	atomic.AddUint64(&s.version, 1)
	return float32(norm)
}
