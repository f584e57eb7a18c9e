package stages

import (
	"math"
	"strings"
	"testing"

	"swarmnode/model"
)

var tinyCfg = model.Config{Vocab: 11, DModel: 8, NHead: 2, NLayer: 2, SeqLen: 6}

func tinyBatch(cfg model.Config, B, T int, salt int32) (tokens, targets []int32) {
	tokens = make([]int32, B*T)
	targets = make([]int32, B*T)
	for i := range tokens {
		tokens[i] = int32((i*7 + 3 + int(salt)) % cfg.Vocab)
		targets[i] = int32((i*5 + 1 + int(salt)*3) % cfg.Vocab)
	}
	return
}

// TestChainGradFiniteDifference checks every tensor's gradient against central
// differences of the loss on a tiny model split in two, and on the same model
// with a subspace boundary (its projection's backward included).
func TestChainGradFiniteDifference(t *testing.T) {
	sub := tinyCfg
	sub.Subspace = 3
	for _, cfg := range []model.Config{tinyCfg, sub} {
		c, err := NewChain(cfg, []int{1, 1}, 7)
		if err != nil {
			t.Fatal(err)
		}
		// Randomise the zero-initialised tensors so their gradients are exercised.
		for _, s := range c.Stages() {
			for i, d := range randVec("perturb", s.NumParams(), 0.1) {
				s.Params()[i] += d
			}
		}
		B, T := 2, 5
		tok, tgt := tinyBatch(cfg, B, T, 0)
		checkChainGradients(t, c, tok, tgt, B, T)
	}
}

// checkChainGradients runs one microbatch through c and checks three entries
// of every tensor's gradient against central differences of the loss.
func checkChainGradients(t *testing.T, c *Chain, tok, tgt []int32, B, T int) {
	t.Helper()
	if _, err := c.ForwardBackward(tok, tgt, B, T); err != nil {
		t.Fatal(err)
	}
	const h = 1e-2
	for _, s := range c.Stages() {
		for _, v := range s.Views() {
			p := v.Of(s.Params())
			g := v.Of(s.Grads())
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
		in   model.Input
		want string
	}{
		{s0, model.Input{B: 1, T: 4, Tokens: tok[:3]}, "tokens"},
		{s0, model.Input{B: 1, T: 4, Tokens: bad}, "outside"},
		{s0, model.Input{B: 1, T: 7, Tokens: make([]int32, 7)}, "seq_len"},
		{s0, model.Input{B: 0, T: 4}, "positive"},
		{s1, model.Input{B: 1, T: 4, X: nan, Targets: tgt}, "NaN"},
		{s1, model.Input{B: 1, T: 4, X: x[:5], Targets: tgt}, "activations"},
		{s1, model.Input{B: 1, T: 4, X: x, Targets: tgt[:2]}, "targets"},
		{s1, model.Input{B: 1, T: 4, X: x, Targets: []int32{0, 1, -1, 2}}, "outside"},
	}
	for _, c := range cases {
		_, err := c.s.Forward(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Forward(%+v) error %v, want one mentioning %q", c.in, err, c.want)
		}
	}
	p, err := s0.Forward(model.Input{B: 1, T: 4, Tokens: tok})
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

// TestSplitsAgree checks that 1, 2 and 4 stages of one model start from the same
// weights and give the same loss and gradients.
func TestSplitsAgree(t *testing.T) {
	cfg := model.Config{Vocab: 13, DModel: 16, NHead: 4, NLayer: 4, SeqLen: 8}
	B, T := 3, 8
	tok, tgt := tinyBatch(cfg, B, T, 2)
	type result struct {
		loss   float32
		params map[string][]float32
		grads  map[string][]float32
	}
	run := func(split []int) result {
		c, err := NewChain(cfg, split, 42)
		if err != nil {
			t.Fatal(err)
		}
		r := result{params: map[string][]float32{}, grads: map[string][]float32{}}
		for _, s := range c.Stages() {
			for _, v := range s.Views() {
				r.params[v.Name] = append([]float32(nil), s.View(v.Name)...)
			}
		}
		if r.loss, err = c.ForwardBackward(tok, tgt, B, T); err != nil {
			t.Fatal(err)
		}
		for _, s := range c.Stages() {
			for _, v := range s.Views() {
				r.grads[v.Name] = s.GradView(v.Name)
			}
		}
		return r
	}
	ref := run([]int{4})
	if len(ref.params) != 3+4*12+2 {
		t.Fatalf("whole model has %d tensors", len(ref.params))
	}
	for _, split := range [][]int{{2, 2}, {1, 1, 1, 1}, {0, 3, 1}, {1, 3, 0}} {
		r := run(split)
		if r.loss != ref.loss {
			t.Errorf("split %v: loss %v, unsplit %v", split, r.loss, ref.loss)
		}
		if len(r.grads) != len(ref.grads) {
			t.Fatalf("split %v has %d tensors, want %d", split, len(r.grads), len(ref.grads))
		}
		for name, g := range ref.grads {
			if e := relErr(r.params[name], ref.params[name]); e != 0 {
				t.Errorf("split %v: initial %s differs (%.3g)", split, name, e)
			}
			if e := relErr(r.grads[name], g); e > 1e-6 {
				t.Errorf("split %v: grad %s differs by %.3g", split, name, e)
			}
		}
	}
}

func TestNewRejectsBadSplits(t *testing.T) {
	for _, split := range [][]int{{}, {1}, {1, 1, 1}, {2, -1, 1}, {1, 0, 1}} {
		if _, err := NewChain(tinyCfg, split, 1); err == nil {
			t.Errorf("split %v accepted for n_layer %d", split, tinyCfg.NLayer)
		}
	}
	if _, err := New(model.Config{Vocab: 5, DModel: 6, NHead: 4, NLayer: 1, SeqLen: 2}, []int{1}, 0, 1); err == nil {
		t.Error("d_model not divisible by n_head accepted")
	}
	if _, err := New(tinyCfg, []int{1, 0, 1}, 0, 1); err == nil {
		t.Error("stage 0 of a split with an empty middle stage accepted")
	}
	if _, err := New(tinyCfg, []int{1, 1}, 2, 1); err == nil {
		t.Error("stage index out of range accepted")
	}
}

// TestStepAndState checks gradient averaging, clipping, zeroing, versions and
// WithState.
func TestStepAndState(t *testing.T) {
	s, _ := New(tinyCfg, []int{2}, 0, 1)
	for i := range s.Grads() {
		s.Grads()[i] = 2
	}
	n := float64(len(s.Grads()))
	before := append([]float32(nil), s.Params()...)
	opt := model.Optim{LR: 0.1, Beta1: 0.9, Beta2: 0.99, Eps: 1e-8, Clip: 1}
	// Grads average to 1 over 2 microbatches, norm sqrt(n).
	if got := float64(s.Step(opt, 2)); math.Abs(got-math.Sqrt(n)) > 1e-3 {
		t.Errorf("grad norm %v, want %v", got, math.Sqrt(n))
	}
	if s.Version() != 1 {
		t.Errorf("version %d after one step", s.Version())
	}
	for i, g := range s.Grads() {
		if g != 0 {
			t.Fatalf("grad %d = %v after Step", i, g)
		}
	}
	// First Adam step moves every parameter by -lr (sign of the gradient).
	for i, p := range s.Params() {
		if d := float64(p - before[i]); math.Abs(d+0.1) > 1e-5 {
			t.Fatalf("param %d moved by %v, want -0.1", i, d)
		}
	}
	s.WithState(func(st *model.State) {
		if st.Step != 1 || len(st.M) != len(st.Params) || len(st.V) != len(st.Params) {
			t.Errorf("state step %d, lengths %d %d %d", st.Step, len(st.Params), len(st.M), len(st.V))
		}
		st.Params[0] = 5
		st.Step = 10
	})
	if s.Version() != 10 || s.Params()[0] != 5 || s.View(s.Views()[0].Name)[0] != 5 {
		t.Errorf("WithState changes lost: version %d, param %v", s.Version(), s.Params()[0])
	}
	if s.View("nope") != nil || s.GradView("nope") != nil {
		t.Error("View of an unknown name is not nil")
	}
}

func TestMaxTokensAndNonFiniteStep(t *testing.T) {
	s, _ := New(tinyCfg, []int{2}, 0, 1)
	s.SetMaxTokens(8)
	tok, tgt := tinyBatch(tinyCfg, 2, 5, 0)
	if _, err := s.Forward(model.Input{B: 2, T: 5, Tokens: tok, Targets: tgt}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("10 tokens over a limit of 8: error %v", err)
	}
	s.SetMaxTokens(0)
	p, err := s.Forward(model.Input{B: 2, T: 5, Tokens: tok, Targets: tgt})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backward(p, nil); err != nil {
		t.Fatal(err)
	}
	before := append([]float32(nil), s.Params()...)
	s.Grads()[3] = float32(math.Inf(1))
	opt := model.Optim{LR: 0.1, Beta1: 0.9, Beta2: 0.99, Eps: 1e-8}
	if n := s.Step(opt, 1); !math.IsInf(float64(n), 0) && !math.IsNaN(float64(n)) {
		t.Errorf("norm %v with an infinite gradient", n)
	}
	if s.Version() != 0 || relErr(s.Params(), before) != 0 {
		t.Error("a step with an infinite gradient changed the parameters")
	}
	for _, g := range s.Grads() {
		if g != 0 {
			t.Fatal("gradients not cleared after a skipped step")
		}
	}
}

func TestSlabPoolBounded(t *testing.T) {
	var p slabPool
	for n := 1; n <= 50; n++ {
		p.put(make([]float32, n))
		p.put(make([]float32, n))
	}
	total := 0
	for _, l := range p.free {
		total += len(l)
	}
	if total > maxFree || total != p.count {
		t.Errorf("pool holds %d buffers (count %d), limit %d", total, p.count, maxFree)
	}
	if b := p.get(50); len(b) != 50 {
		t.Errorf("get(50) returned %d floats", len(b))
	}
}
