package cuda

import (
	"fmt"

	"swarmnode/model"
)

// RunChain runs one B×T microbatch through stages that share one device and
// together make a whole model (the first stage first, the last stage last):
// activations and their gradients move from stage to stage in device memory, so
// nothing but the token ids, the targets and the loss crosses the PCIe bus. With
// train set it also runs the backward pass of every stage, accumulating parameter
// gradients; without it, it only returns the mean loss (evaluation).
func RunChain(ss []*Stage, tokens, targets []int32, B, T int, train bool) (float32, error) {
	if len(ss) == 0 {
		return 0, fmt.Errorf("cuda: RunChain of no stages")
	}
	first, last := ss[0], ss[len(ss)-1]
	if !first.cfg.IsFirst() || !last.cfg.IsLast() {
		return 0, fmt.Errorf("cuda: RunChain needs the first stage first and the last stage last")
	}
	d := first.d
	for k, s := range ss {
		if s.d != d {
			return 0, fmt.Errorf("cuda: RunChain: stage %d is on another device", k)
		}
		if err := s.checkShape(B, T); err != nil {
			return 0, err
		}
	}
	// The chain is one whole model: its input is the first stage's tokens and the
	// last stage's targets.
	in := model.Input{B: B, T: T, Tokens: tokens, Targets: targets}
	if err := in.Check(first.cfg.Model, model.Part{Count: 1}); err != nil {
		return 0, fmt.Errorf("cuda: %w", err)
	}
	N, C := B*T, first.cfg.Model.DModel
	var loss float32
	err := d.Do(func(c *Ctx) error {
		passes := make([]*Pass, 0, len(ss))
		defer func() {
			for _, p := range passes {
				p.s.pool[[2]int{B, T}] = append(p.s.pool[[2]int{B, T}], p.a)
			}
		}()
		for _, s := range ss {
			a, err := s.newActs(c, B, T)
			if err != nil {
				return err
			}
			passes = append(passes, &Pass{s: s, a: a})
		}
		if err := c.UploadI32(passes[0].a.tok, tokens); err != nil {
			return err
		}
		if err := c.UploadI32(passes[len(passes)-1].a.targets, targets); err != nil {
			return err
		}
		for k, p := range passes {
			if k > 0 {
				if err := p.s.chainInput(c, p.a, passes[k-1].a.out.Slice(0, N*C), passes[0].a.tok); err != nil {
					return err
				}
			}
			if err := p.s.ForwardOn(c, p); err != nil {
				return fmt.Errorf("stage %d forward: %w", k, err)
			}
		}
		if train {
			var dout Buf
			var err error
			for k := len(passes) - 1; k >= 0; k-- {
				p := passes[k]
				if err := p.s.BackwardOn(c, p, dout); err != nil {
					return fmt.Errorf("stage %d backward: %w", k, err)
				}
				if dout, err = p.s.chainGradInput(c, B, T); err != nil {
					return err
				}
			}
		}
		// Reading the loss is the microbatch's only synchronisation.
		var err error
		loss, err = last.lossOn(c, passes[len(passes)-1])
		return err
	})
	return loss, err
}

// chainInput puts the previous stage's output, out, into a's input: a copy, or
// in a subspace model its projection g·U·Uᵀout plus the stage's input embeddings
// of the chain's tokens.
func (s *Stage) chainInput(c *Ctx, a *acts, out, tok Buf) error {
	N, D, K := a.B*a.T, s.cfg.Model.DModel, s.cfg.Model.Subspace
	x := a.in.Slice(0, N*D)
	if !s.subspace() {
		return c.Copy(x, out)
	}
	if err := c.Copy(a.tok, tok); err != nil {
		return err
	}
	if err := c.EncoderForward(x, a.tok, s.param(s.lay.InWTE), s.param(s.lay.InWPE).Slice(0, a.T*D), a.B, a.T, D); err != nil {
		return err
	}
	cb, err := s.coordBuf(c, N*K)
	if err != nil {
		return err
	}
	if err := c.Gemm(false, false, N, K, D, 1, out, D, s.basisIn, K, 0, cb, K, ComputeFP32); err != nil {
		return err
	}
	return c.Gemm(false, true, N, D, K, s.cfg.Gain, cb, K, s.basisIn, K, 1, x, D, ComputeFP32)
}

// chainGradInput returns the gradient that the stage before this one gets
// after a BackwardOn: the input gradient, or in a subspace model its
// projection g·U·Uᵀg (in the stage's scratch, free once its backward is done).
func (s *Stage) chainGradInput(c *Ctx, B, T int) (Buf, error) {
	g := s.GradInput(B, T)
	if !s.subspace() || s.cfg.IsFirst() {
		return g, nil
	}
	N, D, K := B*T, s.cfg.Model.DModel, s.cfg.Model.Subspace
	cb, err := s.coordBuf(c, N*K)
	if err != nil {
		return Buf{}, err
	}
	if err := c.Gemm(false, false, N, K, D, s.cfg.Gain, g, D, s.basisIn, K, 0, cb, K, ComputeFP32); err != nil {
		return Buf{}, err
	}
	d := s.sc.dln.Slice(0, N*D)
	return d, c.Gemm(false, true, N, D, K, 1, cb, K, s.basisIn, K, 0, d, D, ComputeFP32)
}
