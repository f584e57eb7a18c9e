package stages

import (
	"fmt"
	"hash/fnv"
	"math"
)

// View names one parameter tensor inside a stage's flat parameter (and gradient) vector.
type View struct {
	// Name is the HF GPT-2 name, e.g. "h.3.attn.c_attn.weight".
	Name string
	// Offset and Len locate the tensor in Params() and Grads().
	Offset, Len int
	// Shape is the tensor's shape, row-major.
	Shape []int
	// Decay is true for matrices, the tensors AdamW applies weight decay to.
	Decay bool
}

// blockParams locates one transformer block's tensors in the flat vector.
type blockParams struct {
	ln1w, ln1b, qkvw, qkvb, attpw, attpb, ln2w, ln2b, fcw, fcb, fcpw, fcpb View
}

// layout is the list of tensors of one stage.
type layout struct {
	views    []View
	byName   map[string]int
	size     int
	wte, wpe View
	blocks   []blockParams
	lnfw     View
	lnfb     View
	head     View
}

func (l *layout) add(name string, shape ...int) View {
	n := 1
	for _, d := range shape {
		n *= d
	}
	v := View{Name: name, Offset: l.size, Len: n, Shape: shape, Decay: len(shape) == 2}
	l.byName[name] = len(l.views)
	l.views = append(l.views, v)
	l.size += n
	return v
}

// newLayout lays out the tensors of the stage that holds blocks [first, first+n).
func newLayout(cfg ModelConfig, first, n int, isFirst, isLast bool) *layout {
	l := &layout{byName: map[string]int{}}
	d, v := cfg.DModel, cfg.Vocab
	if isFirst {
		l.wte = l.add("wte", v, d)
		l.wpe = l.add("wpe", cfg.SeqLen, d)
	}
	for i := first; i < first+n; i++ {
		p := func(s string) string { return fmt.Sprintf("h.%d.%s", i, s) }
		var b blockParams
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

// slice returns the part of buf that view v covers.
func (v View) slice(buf []float32) []float32 { return buf[v.Offset : v.Offset+v.Len : v.Offset+v.Len] }

// initParams fills params with GPT-2's initialisation. Each tensor draws from its
// own generator seeded by (seed, name), which is what makes every split of a model
// start from the same weights.
func initParams(l *layout, cfg ModelConfig, seed uint64, params []float32) {
	residScale := 1 / math.Sqrt(2*float64(cfg.NLayer))
	for _, v := range l.views {
		dst := v.slice(params)
		switch {
		case hasSuffix(v.Name, "ln_1.weight"), hasSuffix(v.Name, "ln_2.weight"), v.Name == "ln_f.weight":
			for i := range dst {
				dst[i] = 1
			}
		case !v.Decay:
			for i := range dst {
				dst[i] = 0
			}
		default:
			std := 0.02
			if hasSuffix(v.Name, "attn.c_proj.weight") || hasSuffix(v.Name, "mlp.c_proj.weight") {
				std *= residScale
			}
			r := newRNG(seed, v.Name)
			for i := range dst {
				dst[i] = float32(std * r.normal())
			}
		}
	}
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// rng is splitmix64: tiny, fast and fully determined by its seed.
type rng struct {
	state uint64
	spare float64
	has   bool
}

func newRNG(seed uint64, name string) *rng {
	h := fnv.New64a()
	h.Write([]byte(name))
	return &rng{state: seed ^ h.Sum64()*0x9E3779B97F4A7C15}
}

func (r *rng) next() uint64 {
	r.state += 0x9E3779B97F4A7C15
	z := r.state
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// uniform returns a float64 in (0, 1).
func (r *rng) uniform() float64 { return (float64(r.next()>>11) + 0.5) / (1 << 53) }

// normal returns a standard normal deviate (Box-Muller).
func (r *rng) normal() float64 {
	if r.has {
		r.has = false
		return r.spare
	}
	u1, u2 := r.uniform(), r.uniform()
	m := math.Sqrt(-2 * math.Log(u1))
	r.spare = m * math.Sin(2*math.Pi*u2)
	r.has = true
	return m * math.Cos(2*math.Pi*u2)
}
