package model

import (
	"errors"
	"fmt"
)

// Part is the share of the model one pipeline stage holds: stage Index of Count,
// with blocks [First, First+Blocks), plus the embeddings on the first stage and
// the final LayerNorm, LM head and loss on the last.
type Part struct {
	Index, Count  int
	First, Blocks int
}

// IsFirst reports whether the part owns the embeddings and takes token ids.
func (p Part) IsFirst() bool { return p.Index == 0 }

// IsLast reports whether the part owns the head and computes the loss.
func (p Part) IsLast() bool { return p.Index == p.Count-1 }

// Split returns stage k's part of the model when layers[i] transformer blocks go
// to stage i. The counts must add up to cfg.NLayer, and only the first and last
// stage may hold no blocks (a middle stage without any would be an identity hop).
func Split(cfg Config, layers []int, k int) (Part, error) {
	if len(layers) == 0 {
		return Part{}, errors.New("model: empty layer split")
	}
	if k < 0 || k >= len(layers) {
		return Part{}, fmt.Errorf("model: stage index %d outside [0, %d)", k, len(layers))
	}
	p := Part{Index: k, Count: len(layers), Blocks: layers[k]}
	total := 0
	for i, n := range layers {
		if n < 0 {
			return Part{}, fmt.Errorf("model: stage %d has %d layers", i, n)
		}
		if n == 0 && i != 0 && i != len(layers)-1 {
			return Part{}, fmt.Errorf("model: middle stage %d of %v has no layers", i, layers)
		}
		if i < k {
			p.First += n
		}
		total += n
	}
	if total != cfg.NLayer {
		return Part{}, fmt.Errorf("model: layers per stage %v add up to %d, model has n_layer %d", layers, total, cfg.NLayer)
	}
	return p, nil
}

// View names one parameter tensor inside a stage's flat parameter vector (and
// the gradients and moments laid out like it).
type View struct {
	// Name is the HF GPT-2 name, e.g. "h.3.attn.c_attn.weight".
	Name string
	// Offset and Len locate the tensor in the flat vector.
	Offset, Len int
	// Shape is the tensor's shape, row-major.
	Shape []int
	// Decay is true for matrices, the tensors AdamW applies weight decay to.
	Decay bool
}

// Of returns the part of buf, a vector in the stage's layout, that v covers.
func (v View) Of(buf []float32) []float32 { return buf[v.Offset : v.Offset+v.Len : v.Offset+v.Len] }

// Block locates one transformer block's tensors, in forward order.
type Block struct {
	LN1W, LN1B           View // ln_1
	QKVW, QKVB           View // attn.c_attn: the fused q | k | v projection
	AttnProjW, AttnProjB View // attn.c_proj
	LN2W, LN2B           View // ln_2
	FCW, FCB             View // mlp.c_fc
	FCProjW, FCProjB     View // mlp.c_proj
}

// Layout is the list of one stage's tensors in the order of its flat vector.
// The views of tensors the stage does not hold (the embeddings of a middle
// stage, say) are zero.
type Layout struct {
	// Views lists every tensor in layout order.
	Views []View
	// Size is the length of the flat vector.
	Size int
	// WTE and WPE are the token and position embeddings (first stage).
	WTE, WPE View
	// InWTE and InWPE are the input embeddings of a subspace model's stage past
	// the first: added to the residual stream it rebuilds from the coordinates
	// it receives (see Subspace). Zero on the first stage and in a plain model.
	InWTE, InWPE View
	// Blocks are the stage's transformer blocks, in order.
	Blocks []Block
	// LNFW and LNFB are the final LayerNorm; Head is the LM head (last stage).
	LNFW, LNFB, Head View

	cfg    Config
	byName map[string]int
}

// NewLayout lays out the tensors of part p of the model cfg: wte and wpe on the
// first stage (a subspace model's later stages have input embeddings of their
// own in their place), the blocks in HF GPT-2 order, then ln_f and lm_head on the last.
func NewLayout(cfg Config, p Part) *Layout {
	l := &Layout{cfg: cfg, byName: map[string]int{}}
	d, v := cfg.DModel, cfg.Vocab
	if p.IsFirst() {
		l.WTE = l.add("wte", v, d)
		l.WPE = l.add("wpe", cfg.SeqLen, d)
	} else if cfg.Subspace > 0 {
		// Named after the block they feed, so that the names of every stage
		// of a split stay distinct.
		l.InWTE = l.add(fmt.Sprintf("subspace.%d.wte", p.First), v, d)
		l.InWPE = l.add(fmt.Sprintf("subspace.%d.wpe", p.First), cfg.SeqLen, d)
	}
	for i := p.First; i < p.First+p.Blocks; i++ {
		name := func(s string) string { return fmt.Sprintf("h.%d.%s", i, s) }
		var b Block
		b.LN1W = l.add(name("ln_1.weight"), d)
		b.LN1B = l.add(name("ln_1.bias"), d)
		b.QKVW = l.add(name("attn.c_attn.weight"), d, 3*d)
		b.QKVB = l.add(name("attn.c_attn.bias"), 3*d)
		b.AttnProjW = l.add(name("attn.c_proj.weight"), d, d)
		b.AttnProjB = l.add(name("attn.c_proj.bias"), d)
		b.LN2W = l.add(name("ln_2.weight"), d)
		b.LN2B = l.add(name("ln_2.bias"), d)
		b.FCW = l.add(name("mlp.c_fc.weight"), d, 4*d)
		b.FCB = l.add(name("mlp.c_fc.bias"), 4*d)
		b.FCProjW = l.add(name("mlp.c_proj.weight"), 4*d, d)
		b.FCProjB = l.add(name("mlp.c_proj.bias"), d)
		l.Blocks = append(l.Blocks, b)
	}
	if p.IsLast() {
		l.LNFW = l.add("ln_f.weight", d)
		l.LNFB = l.add("ln_f.bias", d)
		l.Head = l.add("lm_head.weight", v, d)
	}
	return l
}

func (l *Layout) add(name string, shape ...int) View {
	n := 1
	for _, d := range shape {
		n *= d
	}
	v := View{Name: name, Offset: l.Size, Len: n, Shape: shape, Decay: len(shape) == 2}
	l.byName[name] = len(l.Views)
	l.Views = append(l.Views, v)
	l.Size += n
	return v
}

// Find returns the view of the named tensor, and whether the stage holds it.
func (l *Layout) Find(name string) (View, bool) {
	i, ok := l.byName[name]
	if !ok {
		return View{}, false
	}
	return l.Views[i], true
}
