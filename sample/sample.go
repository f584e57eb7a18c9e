// Package sample generates text from a GPT in Hugging Face's GPT-2 format
// (what `swarmnode export` writes) on the CPU, one token at a time with a KV
// cache: each new token attends to the keys and values its predecessors left
// in the cache, so a step costs one token's forward pass, not the whole
// sequence's.
package sample

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"swarmnode/checkpoint"
	"swarmnode/tokenizer"
)

// Model is a GPT-2 loaded for generation, or a part of one (NewPart): the
// blocks a pipeline stage holds, with the embeddings when it is the first
// stage and the final LayerNorm and head when it is the last.
type Model struct {
	Vocab, D, Heads, Layers, Positions int
	eps                                float32
	wte, wpe, lnfW, lnfB, head         []float32
	blocks                             []block
	// first is the model-wide index of blocks[0]; embed and final tell
	// whether the part holds the embeddings and the head.
	first        int
	embed, final bool
	// named holds every tensor above by Hugging Face GPT-2 name (without
	// "transformer."), for a GPU decoder to upload.
	named map[string][]float32
}

type block struct {
	ln1W, ln1B, qkvW, qkvB, projW, projB []float32
	ln2W, ln2B, fcW, fcB, fc2W, fc2B     []float32
}

// Load reads a model directory in Hugging Face's GPT-2 format.
func Load(dir string) (*Model, error) {
	hc, t, err := checkpoint.ReadHF(dir)
	if err != nil {
		return nil, err
	}
	return New(hc, t, dir)
}

// New builds a model from a Hugging Face GPT-2's config and tensors by name
// (checkpoint.ReadHF's, or checkpoint.HFTensors'); where names them in errors.
func New(hc checkpoint.HFConfig, t map[string]checkpoint.Tensor, where string) (*Model, error) {
	return NewPart(hc, t, where, Span{Blocks: hc.NLayer, Embed: true, Final: true})
}

// Span is the part of a GPT-2 a pipeline stage holds.
type Span struct {
	// First is the model-wide index of the stage's first block, Blocks how
	// many it holds.
	First, Blocks int
	// Embed: the stage holds the token and position embeddings (the first
	// stage); Final: the final LayerNorm and the head (the last).
	Embed, Final bool
}

// NewPart builds the part sp of a GPT-2 from its config and the part's
// tensors by name, for generation through a swarm (each holder runs its
// blocks over its own cache: Embed, Forward, Logits).
func NewPart(hc checkpoint.HFConfig, t map[string]checkpoint.Tensor, where string, sp Span) (*Model, error) {
	dir := where
	if hc.NHead < 1 || hc.NEmbd%hc.NHead != 0 || hc.NLayer < 1 || hc.VocabSize < 1 || hc.NPositions < 1 {
		return nil, fmt.Errorf("sample: %s: config.json describes no GPT-2: %+v", dir, hc)
	}
	if sp.First < 0 || sp.Blocks < 0 || sp.First+sp.Blocks > hc.NLayer {
		return nil, fmt.Errorf("sample: %s: blocks [%d,%d) of a model of %d", dir, sp.First, sp.First+sp.Blocks, hc.NLayer)
	}
	m := &Model{Vocab: hc.VocabSize, D: hc.NEmbd, Heads: hc.NHead, Layers: sp.Blocks, Positions: hc.NPositions, eps: float32(hc.LayerNormEpsilon),
		first: sp.First, embed: sp.Embed, final: sp.Final}
	if m.eps == 0 {
		m.eps = 1e-5
	}
	var missing error
	m.named = map[string][]float32{}
	get := func(name string, n int) []float32 {
		x, ok := t[name]
		if !ok {
			x, ok = t["transformer."+name]
		}
		if !ok || len(x.Data) != n {
			if missing == nil {
				missing = fmt.Errorf("sample: %s: tensor %s missing or not of %d values", dir, name, n)
			}
			return nil
		}
		m.named[name] = x.Data
		return x.Data
	}
	D, V := m.D, m.Vocab
	if sp.Embed {
		m.wte, m.wpe = get("wte.weight", V*D), get("wpe.weight", m.Positions*D)
	}
	if sp.Final {
		m.lnfW, m.lnfB = get("ln_f.weight", D), get("ln_f.bias", D)
		if _, ok := t["lm_head.weight"]; ok || !sp.Embed {
			m.head = get("lm_head.weight", V*D)
		} else {
			m.head = m.wte // a tied model
		}
	}
	for i := sp.First; i < sp.First+sp.Blocks; i++ {
		p := func(s string) string { return fmt.Sprintf("h.%d.%s", i, s) }
		m.blocks = append(m.blocks, block{
			ln1W: get(p("ln_1.weight"), D), ln1B: get(p("ln_1.bias"), D),
			qkvW: get(p("attn.c_attn.weight"), D*3*D), qkvB: get(p("attn.c_attn.bias"), 3*D),
			projW: get(p("attn.c_proj.weight"), D*D), projB: get(p("attn.c_proj.bias"), D),
			ln2W: get(p("ln_2.weight"), D), ln2B: get(p("ln_2.bias"), D),
			fcW: get(p("mlp.c_fc.weight"), D*4*D), fcB: get(p("mlp.c_fc.bias"), 4*D),
			fc2W: get(p("mlp.c_proj.weight"), 4*D*D), fc2B: get(p("mlp.c_proj.bias"), D),
		})
	}
	return m, missing
}

// Decoder runs a model one token at a time over a cache of the tokens it has
// seen: the CPU's (Model.Decoder) or a GPU's (NewGPUDecoder).
type Decoder interface {
	// Next runs tok at the cache's next position and returns the logits of
	// the token after it.
	Next(tok int32) ([]float32, error)
	// Len is the number of tokens in the cache.
	Len() int
	// Reset empties the cache.
	Reset()
}

// Decoder returns a CPU decoder of m with an empty cache.
func (m *Model) Decoder() Decoder { return &cpuDecoder{m: m, c: m.NewCache()} }

type cpuDecoder struct {
	m *Model
	c *Cache
}

func (d *cpuDecoder) Next(tok int32) ([]float32, error) { return d.m.Next(d.c, tok) }
func (d *cpuDecoder) Len() int                          { return d.c.Len() }
func (d *cpuDecoder) Reset()                            { d.c = d.m.NewCache() }

// Cache holds the keys and values of the tokens seen so far, per layer.
type Cache struct {
	k, v [][]float32 // [layer][position·D]
	n    int
}

// NewCache returns an empty cache for m.
func (m *Model) NewCache() *Cache {
	return &Cache{k: make([][]float32, m.Layers), v: make([][]float32, m.Layers)}
}

// Len is the number of tokens in the cache.
func (c *Cache) Len() int { return c.n }

// Next runs one token at the cache's next position through a whole model
// and returns the logits of the token after it.
func (m *Model) Next(c *Cache, tok int32) ([]float32, error) {
	if !m.embed || !m.final {
		return nil, errors.New("sample: Next needs the whole model, not a part")
	}
	x, err := m.Embed(tok, c.n)
	if err != nil {
		return nil, err
	}
	if err := m.Forward(c, x); err != nil {
		return nil, err
	}
	return m.Logits(x), nil
}

// Embed returns the residual stream of token tok at position pos: its token
// and position embeddings (the first stage's part).
func (m *Model) Embed(tok int32, pos int) ([]float32, error) {
	if !m.embed {
		return nil, errors.New("sample: this part holds no embeddings")
	}
	if tok < 0 || int(tok) >= m.Vocab {
		return nil, fmt.Errorf("sample: token %d outside the vocabulary of %d", tok, m.Vocab)
	}
	if pos < 0 || pos >= m.Positions {
		return nil, fmt.Errorf("sample: position %d of a model of %d", pos, m.Positions)
	}
	D := m.D
	x := make([]float32, D)
	for i := range x {
		x[i] = m.wte[int(tok)*D+i] + m.wpe[pos*D+i]
	}
	return x, nil
}

// Forward runs the part's blocks on x, the residual stream at the cache's
// next position, in place, leaving that position's keys and values in c.
func (m *Model) Forward(c *Cache, x []float32) error {
	D, t := m.D, c.n
	if len(x) != D {
		return fmt.Errorf("sample: a residual stream of %d values, want %d", len(x), D)
	}
	if t >= m.Positions {
		return fmt.Errorf("sample: the model has %d positions", m.Positions)
	}
	h := make([]float32, D)
	for l := range m.blocks {
		b := &m.blocks[l]
		layerNorm(h, x, b.ln1W, b.ln1B, m.eps)
		qkv := linear(h, b.qkvW, b.qkvB, 3*D)
		c.k[l] = append(c.k[l], qkv[D:2*D]...)
		c.v[l] = append(c.v[l], qkv[2*D:]...)
		y := m.attend(qkv[:D], c.k[l], c.v[l], t+1)
		addTo(x, linear(y, b.projW, b.projB, D))
		layerNorm(h, x, b.ln2W, b.ln2B, m.eps)
		f := linear(h, b.fcW, b.fcB, 4*D)
		for i, v := range f {
			f[i] = gelu(v)
		}
		addTo(x, linear(f, b.fc2W, b.fc2B, D))
	}
	c.n++
	return nil
}

// Logits applies the final LayerNorm and the head to x (the last stage's
// part); nil for a part without them.
func (m *Model) Logits(x []float32) []float32 {
	if !m.final {
		return nil
	}
	D := m.D
	h := make([]float32, D)
	layerNorm(h, x, m.lnfW, m.lnfB, m.eps)
	logits := make([]float32, m.Vocab)
	for j := range logits {
		var s float32
		row := m.head[j*D : (j+1)*D]
		for i, v := range h {
			s += v * row[i]
		}
		logits[j] = s
	}
	return logits
}

// attend is causal self-attention of one query over n cached positions.
func (m *Model) attend(q, keys, vals []float32, n int) []float32 {
	D, hd := m.D, m.D/m.Heads
	y := make([]float32, D)
	p := make([]float64, n)
	scale := 1 / math.Sqrt(float64(hd))
	for h := range m.Heads {
		off := h * hd
		maxS := math.Inf(-1)
		for j := range n {
			var s float64
			for i := range hd {
				s += float64(q[off+i]) * float64(keys[j*D+off+i])
			}
			p[j] = s * scale
			maxS = max(maxS, p[j])
		}
		var sum float64
		for j := range n {
			p[j] = math.Exp(p[j] - maxS)
			sum += p[j]
		}
		for j := range n {
			w := float32(p[j] / sum)
			for i := range hd {
				y[off+i] += w * vals[j*D+off+i]
			}
		}
	}
	return y
}

// linear is x·W + b for W stored (in, out), HF's Conv1D orientation.
func linear(x, w, b []float32, out int) []float32 {
	y := slices.Clone(b)
	for i, xi := range x {
		row := w[i*out : (i+1)*out]
		for j, wij := range row {
			y[j] += xi * wij
		}
	}
	return y
}

func layerNorm(out, x, w, b []float32, eps float32) {
	var mean, vr float64
	for _, v := range x {
		mean += float64(v)
	}
	mean /= float64(len(x))
	for _, v := range x {
		d := float64(v) - mean
		vr += d * d
	}
	rstd := 1 / math.Sqrt(vr/float64(len(x))+float64(eps))
	for i, v := range x {
		out[i] = float32((float64(v)-mean)*rstd)*w[i] + b[i]
	}
}

func gelu(x float32) float32 {
	v := float64(x)
	return float32(0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v))))
}

func addTo(x, y []float32) {
	for i := range x {
		x[i] += y[i]
	}
}

// Options choose how tokens are drawn from the logits.
type Options struct {
	// Tokens is how many to generate.
	Tokens int
	// Temperature divides the logits; 0 picks the most likely token.
	Temperature float64
	// TopK, if positive, draws only among the K most likely tokens.
	TopK int
	// Seed seeds the draws.
	Seed uint64
}

// Generate continues prompt by o.Tokens tokens on the CPU and returns the
// new ones (see the function Generate).
func (m *Model) Generate(prompt []int32, o Options) ([]int32, error) {
	return Generate(m.Decoder(), m.Positions, prompt, o)
}

// Generate continues prompt by o.Tokens tokens with d, a decoder of a model of
// positions positions, and returns the new ones. When the context fills the
// positions, it goes on from the last half of it: the cache emptied and fed
// those tokens again (a prompt longer than that is cut to it the same way).
func Generate(d Decoder, positions int, prompt []int32, o Options) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, errors.New("sample: empty prompt")
	}
	if o.Temperature < 0 || o.TopK < 0 || o.Tokens < 0 {
		return nil, fmt.Errorf("sample: temperature %g, top-k %d, tokens %d", o.Temperature, o.TopK, o.Tokens)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x5a3))
	hist := slices.Clone(prompt)
	var logits []float32
	refill := func() error { // the cache of the context's last half
		keep := min(len(hist), max(1, positions/2))
		d.Reset()
		for _, tok := range hist[len(hist)-keep:] {
			var err error
			if logits, err = d.Next(tok); err != nil {
				return err
			}
		}
		return nil
	}
	if err := refill(); err != nil {
		return nil, err
	}
	for len(hist)-len(prompt) < o.Tokens {
		tok := pick(logits, o, rng)
		hist = append(hist, tok)
		if d.Len() == positions {
			if err := refill(); err != nil {
				return hist[len(prompt):], err
			}
			continue
		}
		var err error
		if logits, err = d.Next(tok); err != nil {
			return hist[len(prompt):], err
		}
	}
	return hist[len(prompt):], nil
}

// pick draws a token from logits as o says.
func pick(logits []float32, o Options, rng *rand.Rand) int32 {
	if o.Temperature == 0 { // greedy: the first most likely token, no sort per token
		return int32(slices.Index(logits, slices.Max(logits)))
	}
	order := make([]int, len(logits))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case logits[a] > logits[b]:
			return -1
		case logits[a] < logits[b]:
			return 1
		}
		return 0
	})
	if o.TopK > 0 && o.TopK < len(order) {
		order = order[:o.TopK]
	}
	p := make([]float64, len(order))
	var sum float64
	for i, j := range order {
		p[i] = math.Exp((float64(logits[j]) - float64(logits[order[0]])) / o.Temperature)
		sum += p[i]
	}
	r := rng.Float64() * sum
	for i, j := range order {
		if r -= p[i]; r <= 0 {
			return int32(j)
		}
	}
	return int32(order[len(order)-1])
}

// TokenizerFor picks the tokenizer of a model's vocabulary: bytes for 256,
// GPT-2's BPE for 50257.
func TokenizerFor(vocab int) (func(string) []int32, func([]int32) []byte, error) {
	switch vocab {
	case 256:
		enc := func(s string) []int32 {
			ids := make([]int32, len(s))
			for i := range len(s) {
				ids[i] = int32(s[i])
			}
			return ids
		}
		dec := func(ids []int32) []byte {
			b := make([]byte, len(ids))
			for i, id := range ids {
				b[i] = byte(id)
			}
			return b
		}
		return enc, dec, nil
	case tokenizer.GPT2Vocab:
		tok, err := tokenizer.GPT2()
		if err != nil {
			return nil, nil, err
		}
		dec := func(ids []int32) []byte {
			b, _ := tok.Decode(ids) // the model's ids are all in the vocabulary
			return b
		}
		return tok.Encode, dec, nil
	}
	return nil, nil, fmt.Errorf("a vocabulary of %d: no tokenizer here (bytes: 256, GPT-2's BPE: %d)", vocab, tokenizer.GPT2Vocab)
}
