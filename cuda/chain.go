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
		if s.subspace() {
			return 0, fmt.Errorf("cuda: RunChain of a subspace model (its boundaries project; run the stages one by one)")
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
				if err := c.Copy(p.a.in.Slice(0, N*C), passes[k-1].a.out.Slice(0, N*C)); err != nil {
					return err
				}
			}
			if err := p.s.ForwardOn(c, p); err != nil {
				return fmt.Errorf("stage %d forward: %w", k, err)
			}
		}
		if train {
			var dout Buf
			for k := len(passes) - 1; k >= 0; k-- {
				p := passes[k]
				if err := p.s.BackwardOn(c, p, dout); err != nil {
					return fmt.Errorf("stage %d backward: %w", k, err)
				}
				dout = p.s.GradInput(B, T)
			}
		}
		// Reading the loss is the microbatch's only synchronisation.
		var err error
		loss, err = last.lossOn(c, passes[len(passes)-1])
		return err
	})
	return loss, err
}
