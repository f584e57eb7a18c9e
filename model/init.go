package model

import (
	"hash/fnv"
	"math"
	"strings"
)

// Init fills params, a vector in the layout, with GPT-2's initialisation: matrices
// N(0, 0.02), the residual output projections (attn.c_proj, mlp.c_proj) scaled by
// 1/sqrt(2·n_layer), LayerNorm weights 1, biases 0. Each tensor draws from its own
// generator seeded by (seed, name), which is what makes every split of a model,
// on any mix of devices, start from the same weights.
func (l *Layout) Init(params []float32, seed uint64) {
	for _, v := range l.Views {
		initTensor(l.cfg, v, v.Of(params), seed)
	}
}

// initTensor fills dst with tensor v's initial values (see Layout.Init).
func initTensor(cfg Config, v View, dst []float32, seed uint64) {
	switch {
	case strings.HasSuffix(v.Name, "ln_1.weight"), strings.HasSuffix(v.Name, "ln_2.weight"), v.Name == "ln_f.weight":
		for i := range dst {
			dst[i] = 1
		}
	case !v.Decay:
		clear(dst)
	default:
		std := 0.02
		if strings.HasSuffix(v.Name, "attn.c_proj.weight") || strings.HasSuffix(v.Name, "mlp.c_proj.weight") {
			std *= 1 / math.Sqrt(2*float64(cfg.NLayer))
		}
		r := newRNG(seed, v.Name)
		for i := range dst {
			dst[i] = float32(std * r.normal())
		}
	}
}

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
