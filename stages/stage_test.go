package stages

import (
	"math"
	"strings"
	"testing"
)

var tinyCfg = ModelConfig{Vocab: 11, DModel: 8, NHead: 2, NLayer: 2, SeqLen: 6}

func tinyBatch(cfg ModelConfig, B, T int, salt int32) (tokens, targets []int32) {
	tokens = make([]int32, B*T)
	targets = make([]int32, B*T)
	for i := range tokens {
		tokens[i] = int32((i*7 + 3 + int(salt)) % cfg.Vocab)
		targets[i] = int32((i*5 + 1 + int(salt)*3) % cfg.Vocab)
	}
	return
}

// TestChainGradFiniteDifference checks every tensor's gradient against central
// differences of the loss on a tiny model.
func TestChainGradFiniteDifference(t *testing.T) {
	cfg := tinyCfg
	c, err := NewChain(cfg, []int{1, 1}, 7)
	if err != nil {
		t.Fatal(err)
	}
	// Randomise the zero-initialised tensors so their gradients are exercised.
	for _, s := range c.Stages() {
		r := newRNG(99, "perturb")
		for i := range s.Params() {
			s.Params()[i] += float32(0.1 * r.normal())
		}
	}
	B, T := 2, 5
	tok, tgt := tinyBatch(cfg, B, T, 0)
	if _, err := c.ForwardBackward(tok, tgt, B, T); err != nil {
		t.Fatal(err)
	}
	const h = 1e-2
	for _, s := range c.Stages() {
		for _, v := range s.Views() {
			p := v.slice(s.Params())
			g := v.slice(s.Grads())
			for _, i := range []int{0, v.Len / 2, v.Len - 1} {
				old := p[i]
				p[i] = old + h
				lp, _ := c.Loss(tok, tgt, B, T)
				p[i] = old - h
				lm, _ := c.Loss(tok, tgt, B, T)
				p[i] = old
				fd := (float64(lp) - float64(lm)) / (2 * h)
				if d := math.Abs(fd - float64(g[i])); d > 2e-3+2e-2*math.Abs(fd) {
					t.Errorf("%s[%d]: grad %g, finite difference %g", v.Name, i, g[i], fd)
				}
			}
		}
	}
}

func TestForwardRejectsBadInput(t *testing.T) {
	cfg := tinyCfg
	s0, _ := New(cfg, []int{1, 1}, 0, 1)
	s1, _ := New(cfg, []int{1, 1}, 1, 1)
	tok, tgt := tinyBatch(cfg, 1, 4, 0)
	x := make([]float32, 4*cfg.DModel)
	nan := append([]float32(nil), x...)
	nan[3] = float32(math.NaN())
	bad := append([]int32(nil), tok...)
	bad[2] = int32(cfg.Vocab)
	cases := []struct {
		s    *Stage
		in   Input
		want string
	}{
		{s0, Input{B: 1, T: 4, Tokens: tok[:3]}, "tokens"},
		{s0, Input{B: 1, T: 4, Tokens: bad}, "outside"},
		{s0, Input{B: 1, T: 7, Tokens: make([]int32, 7)}, "seq_len"},
		{s0, Input{B: 0, T: 4}, "positive"},
		{s1, Input{B: 1, T: 4, X: nan, Targets: tgt}, "NaN"},
		{s1, Input{B: 1, T: 4, X: x[:5], Targets: tgt}, "activations"},
		{s1, Input{B: 1, T: 4, X: x, Targets: tgt[:2]}, "targets"},
		{s1, Input{B: 1, T: 4, X: x, Targets: []int32{0, 1, -1, 2}}, "outside"},
	}
	for _, c := range cases {
		_, err := c.s.Forward(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Forward(%+v) error %v, want one mentioning %q", c.in, err, c.want)
		}
	}
	p, err := s0.Forward(Input{B: 1, T: 4, Tokens: tok})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s0.Backward(p, make([]float32, 3)); err == nil {
		t.Error("Backward accepted a short output gradient")
	}
	if _, err := s0.Backward(p, make([]float32, 4*cfg.DModel)); err != nil {
		t.Fatal(err)
	}
	if _, err := s0.Backward(p, make([]float32, 4*cfg.DModel)); err == nil {
		t.Error("Backward accepted a consumed pass")
	}
}
