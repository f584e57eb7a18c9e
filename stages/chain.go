package stages

import (
	"errors"
	"fmt"
	"math"

	"swarmnode/model"
)

// Chain is an in-memory pipeline of all the stages of one model: the centralized
// baseline (`swarmnode local`) and the reference the tests split against.
type Chain struct {
	stages []*Stage
}

// NewChain builds every stage of the split layers on the CPU (see New).
func NewChain(cfg model.Config, layers []int, seed uint64) (*Chain, error) {
	return newChain(len(layers), func(k int) (*Stage, error) { return New(cfg, layers, k, seed) })
}

// newChain builds a chain of n stages with build; on an error it closes the
// stages built so far.
func newChain(n int, build func(k int) (*Stage, error)) (*Chain, error) {
	if n == 0 {
		return nil, errors.New("stages: empty layer split")
	}
	c := &Chain{}
	for k := 0; k < n; k++ {
		s, err := build(k)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.stages = append(c.stages, s)
	}
	return c, nil
}

// Stages returns the stages in pipeline order.
func (c *Chain) Stages() []*Stage { return c.stages }

// Close frees the device memory of every stage.
func (c *Chain) Close() error {
	var errs []error
	for _, s := range c.stages {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// ForwardBackward runs one microbatch through every stage and back, accumulating
// gradients, and returns its mean loss.
func (c *Chain) ForwardBackward(tokens, targets []int32, B, T int) (float32, error) {
	return c.run(tokens, targets, B, T, true)
}

// Loss runs the microbatch forward only (evaluation) and returns its mean loss.
func (c *Chain) Loss(tokens, targets []int32, B, T int) (float32, error) {
	return c.run(tokens, targets, B, T, false)
}

// run takes a microbatch forward through every stage and, with train set, back.
// Stages on one GPU pass activations to each other in device memory; otherwise
// they go through the stage API, as in a swarm.
func (c *Chain) run(tokens, targets []int32, B, T int, train bool) (float32, error) {
	if c.onOneGPU() {
		return c.gpuRun(tokens, targets, B, T, train)
	}
	passes, err := c.forward(tokens, targets, B, T)
	if err != nil {
		return 0, err
	}
	loss := passes[len(passes)-1].Loss
	if !train {
		for _, p := range passes {
			p.Release()
		}
		return loss, nil
	}
	var d []float32
	for k := len(c.stages) - 1; k >= 0; k-- {
		d, err = c.stages[k].Backward(passes[k], d)
		if err != nil {
			for _, q := range passes[:k] {
				q.Release()
			}
			return 0, fmt.Errorf("chain backward: %w", err)
		}
	}
	return loss, nil
}

func (c *Chain) forward(tokens, targets []int32, B, T int) ([]*Pass, error) {
	passes := make([]*Pass, 0, len(c.stages))
	var x []float32
	for k, s := range c.stages {
		in := model.Input{B: B, T: T}
		if k == 0 || s.cfg.Subspace > 0 {
			in.Tokens = tokens // a subspace stage rebuilds the fixed embedding
		}
		if k > 0 {
			in.X = x
		}
		if s.IsLast() {
			in.Targets = targets
		}
		p, err := s.Forward(in)
		if err != nil {
			for _, q := range passes {
				q.Release()
			}
			return nil, err
		}
		passes = append(passes, p)
		x = p.Out
	}
	return passes, nil
}

// Step applies one optimizer step to every stage (see Stage.Step) and returns the
// global gradient norm before clipping, combined over the stages.
func (c *Chain) Step(opt model.Optim, micro int) float32 {
	var sq float64
	for _, s := range c.stages {
		n := float64(s.Step(opt, micro))
		sq += n * n
	}
	return float32(math.Sqrt(sq))
}
