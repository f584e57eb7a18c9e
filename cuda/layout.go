package cuda

import (
	"fmt"
	"math"
)

// ModelConfig is the GPT shape; it mirrors stages.ModelConfig field for field.
type ModelConfig struct{ Vocab, DModel, NHead, NLayer, SeqLen int }

// OptimConfig holds AdamW and schedule settings; it mirrors stages.OptimConfig.
type OptimConfig struct {
	LR, MinLR                      float32
	Warmup, Steps                  int
	WeightDecay, Beta1, Beta2, Eps float32
	Clip                           float32
}

// LRAt is the learning rate of 0-based step `step`: linear warmup, then a cosine
// to MinLR at Steps (the same schedule as stages.OptimConfig.LRAt).
func (o OptimConfig) LRAt(step int) float32 {
	if step < 0 {
		step = 0
	}
	if step < o.Warmup {
		return o.LR * float32(step+1) / float32(o.Warmup)
	}
	if o.Steps <= 0 {
		return o.LR
	}
	span := o.Steps - o.Warmup
	if span <= 0 {
		return o.MinLR
	}
	p := math.Min(float64(step-o.Warmup)/float64(span), 1)
	return o.MinLR + float32(0.5*(1+math.Cos(math.Pi*p)))*(o.LR-o.MinLR)
}

// View names one tensor in the flat parameter vector (mirrors stages.View).
type View struct {
	Name        string
	Offset, Len int
	Shape       []int
	Decay       bool // matrices: AdamW applies weight decay
}

type blockViews struct {
	ln1w, ln1b, qkvw, qkvb, attpw, attpb, ln2w, ln2b, fcw, fcb, fcpw, fcpb View
}

type layout struct {
	views      []View
	size       int
	wte, wpe   View
	blocks     []blockViews
	lnfw, lnfb View
	head       View
}

func (l *layout) add(name string, shape ...int) View {
	n := 1
	for _, d := range shape {
		n *= d
	}
	v := View{Name: name, Offset: l.size, Len: n, Shape: shape, Decay: len(shape) == 2}
	l.views = append(l.views, v)
	l.size += n
	return v
}

// newLayout lays out the stage holding blocks [first, first+n) exactly as the CPU
// stages package does: wte, wpe (first stage), the blocks in HF GPT-2 order, then
// ln_f and lm_head (last stage). Matrices are [in, out] (HF Conv1D), lm_head [V, C].
func newLayout(cfg ModelConfig, first, n int, isFirst, isLast bool) *layout {
	l := &layout{}
	d, v := cfg.DModel, cfg.Vocab
	if isFirst {
		l.wte = l.add("wte", v, d)
		l.wpe = l.add("wpe", cfg.SeqLen, d)
	}
	for i := first; i < first+n; i++ {
		p := func(s string) string { return fmt.Sprintf("h.%d.%s", i, s) }
		var b blockViews
		b.ln1w = l.add(p("ln_1.weight"), d)
		b.ln1b = l.add(p("ln_1.bias"), d)
		b.qkvw = l.add(p("attn.c_attn.weight"), d, 3*d)
		b.qkvb = l.add(p("attn.c_attn.bias"), 3*d)
		b.attpw = l.add(p("attn.c_proj.weight"), d, d)
		b.attpb = l.add(p("attn.c_proj.bias"), d)
		b.ln2w = l.add(p("ln_2.weight"), d)
		b.ln2b = l.add(p("ln_2.bias"), d)
		b.fcw = l.add(p("mlp.c_fc.weight"), d, 4*d)
		b.fcb = l.add(p("mlp.c_fc.bias"), 4*d)
		b.fcpw = l.add(p("mlp.c_proj.weight"), 4*d, d)
		b.fcpb = l.add(p("mlp.c_proj.bias"), d)
		l.blocks = append(l.blocks, b)
	}
	if isLast {
		l.lnfw = l.add("ln_f.weight", d)
		l.lnfb = l.add("ln_f.bias", d)
		l.head = l.add("lm_head.weight", v, d)
	}
	return l
}
