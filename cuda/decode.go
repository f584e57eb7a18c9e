package cuda

import (
	"fmt"
	"math"
)

// DecoderShape describes the GPT-2 a Decoder runs.
type DecoderShape struct {
	Vocab, D, Heads, Layers, Positions int
	// Eps is the LayerNorm epsilon; the kernels use GPT-2's 1e-5.
	Eps float32
}

// Decoder runs a GPT-2 on the GPU one token at a time with a KV cache, for
// sampling: each new token's query attends to the keys and values its
// predecessors left on the device, so a step costs one token's forward pass.
// Weights are float32 in Hugging Face's GPT-2 layout (Conv1D weights [in,out],
// the LinearForward orientation). A Decoder is not safe for concurrent use.
type Decoder struct {
	dev   *Device
	shape DecoderShape
	n     int // tokens in the cache
	bufs  []Buf
	// weights
	wte, wpe, lnfW, lnfB, head Buf
	blocks                     []decoderBlock
	// the KV cache, per layer [Positions, D]
	k, v []Buf
	// one token's activations
	tok, x, h, qkv, y, f, g, mean, rstd, logits Buf
	host                                        []float32
}

type decoderBlock struct {
	ln1W, ln1B, qkvW, qkvB, projW, projB Buf
	ln2W, ln2B, fcW, fcB, fc2W, fc2B     Buf
}

// NewDecoder uploads the weights that tensor returns by Hugging Face GPT-2
// name (without the "transformer." prefix; "lm_head.weight" may be nil for a
// model whose head is tied to wte) and allocates the cache.
func NewDecoder(dev *Device, s DecoderShape, tensor func(name string) []float32) (*Decoder, error) {
	if s.D < 1 || s.Heads < 1 || s.D%s.Heads != 0 || s.Layers < 1 || s.Vocab < 1 || s.Positions < 1 {
		return nil, fmt.Errorf("cuda: decoder of shape %+v", s)
	}
	if s.Positions > maxDecodePositions {
		return nil, fmt.Errorf("cuda: decoder of %d positions, at most %d", s.Positions, maxDecodePositions)
	}
	if s.Eps != 0 && math.Abs(float64(s.Eps)-1e-5) > 1e-9 {
		return nil, fmt.Errorf("cuda: LayerNorm epsilon %g; the GPU kernels use 1e-5", s.Eps)
	}
	d := &Decoder{dev: dev, shape: s}
	err := dev.Do(func(c *Ctx) error { return d.load(c, tensor) })
	if err != nil {
		d.Close()
		return nil, err
	}
	d.host = make([]float32, s.Vocab)
	return d, nil
}

func (d *Decoder) load(c *Ctx, tensor func(string) []float32) error {
	s := d.shape
	D, V := s.D, s.Vocab
	upload := func(name string, n int) (Buf, error) {
		x := tensor(name)
		if len(x) != n {
			return Buf{}, fmt.Errorf("cuda: decoder tensor %s has %d values, want %d", name, len(x), n)
		}
		b, err := c.Alloc(F32, n)
		if err != nil {
			return Buf{}, err
		}
		d.bufs = append(d.bufs, b)
		return b, c.Upload(b, x)
	}
	alloc := func(t DType, n int) (Buf, error) {
		b, err := c.Alloc(t, n)
		if err == nil {
			d.bufs = append(d.bufs, b)
		}
		return b, err
	}
	var err error
	get := func(dst *Buf, name string, n int) {
		if err == nil {
			*dst, err = upload(name, n)
		}
	}
	get(&d.wte, "wte.weight", V*D)
	get(&d.wpe, "wpe.weight", s.Positions*D)
	get(&d.lnfW, "ln_f.weight", D)
	get(&d.lnfB, "ln_f.bias", D)
	d.head = d.wte
	if tensor("lm_head.weight") != nil {
		get(&d.head, "lm_head.weight", V*D)
	}
	d.blocks = make([]decoderBlock, s.Layers)
	for l := range d.blocks {
		b := &d.blocks[l]
		p := func(n string) string { return fmt.Sprintf("h.%d.%s", l, n) }
		get(&b.ln1W, p("ln_1.weight"), D)
		get(&b.ln1B, p("ln_1.bias"), D)
		get(&b.qkvW, p("attn.c_attn.weight"), D*3*D)
		get(&b.qkvB, p("attn.c_attn.bias"), 3*D)
		get(&b.projW, p("attn.c_proj.weight"), D*D)
		get(&b.projB, p("attn.c_proj.bias"), D)
		get(&b.ln2W, p("ln_2.weight"), D)
		get(&b.ln2B, p("ln_2.bias"), D)
		get(&b.fcW, p("mlp.c_fc.weight"), D*4*D)
		get(&b.fcB, p("mlp.c_fc.bias"), 4*D)
		get(&b.fc2W, p("mlp.c_proj.weight"), 4*D*D)
		get(&b.fc2B, p("mlp.c_proj.bias"), D)
	}
	if err != nil {
		return err
	}
	for range s.Layers {
		k, err := alloc(F32, s.Positions*D)
		if err != nil {
			return err
		}
		v, err := alloc(F32, s.Positions*D)
		if err != nil {
			return err
		}
		d.k, d.v = append(d.k, k), append(d.v, v)
	}
	for _, a := range []struct {
		b *Buf
		t DType
		n int
	}{{&d.tok, I32, 1}, {&d.x, F32, D}, {&d.h, F32, D}, {&d.qkv, F32, 3 * D}, {&d.y, F32, D},
		{&d.f, F32, 4 * D}, {&d.g, F32, 4 * D}, {&d.mean, F32, 1}, {&d.rstd, F32, 1}, {&d.logits, F32, V}} {
		if *a.b, err = alloc(a.t, a.n); err != nil {
			return err
		}
	}
	return nil
}

// Len is the number of tokens in the cache.
func (d *Decoder) Len() int { return d.n }

// Reset empties the cache.
func (d *Decoder) Reset() { d.n = 0 }

// Next runs tok at the cache's next position and returns the logits of the
// token after it. The slice is reused by the next call.
func (d *Decoder) Next(tok int32) ([]float32, error) {
	s := d.shape
	if tok < 0 || int(tok) >= s.Vocab {
		return nil, fmt.Errorf("cuda: token %d outside the vocabulary of %d", tok, s.Vocab)
	}
	if d.n >= s.Positions {
		return nil, fmt.Errorf("cuda: the model has %d positions", s.Positions)
	}
	err := d.dev.Do(func(c *Ctx) error { return d.step(c, tok) })
	if err != nil {
		return nil, err
	}
	d.n++
	return d.host, nil
}

// step is llm.c's forward pass for one row, with the new key and value
// appended to the cache before attention reads it.
func (d *Decoder) step(c *Ctx, tok int32) error {
	s := d.shape
	D, t := s.D, d.n
	if err := c.UploadI32(d.tok, []int32{tok}); err != nil {
		return err
	}
	if err := c.EncoderForward(d.x, d.tok, d.wte, d.wpe.Slice(t*D, D), 1, 1, D); err != nil {
		return err
	}
	for l := range d.blocks {
		b := &d.blocks[l]
		kc, vc := d.k[l], d.v[l]
		for _, op := range []func() error{
			func() error { return c.LayerNormForward(d.h, d.mean, d.rstd, d.x, b.ln1W, b.ln1B, 1, D) },
			func() error { return c.LinearForward(d.qkv, d.h, b.qkvW, b.qkvB, Buf{}, 1, D, 3*D, ComputeFP32) },
			func() error { return c.Copy(kc.Slice(t*D, D), d.qkv.Slice(D, D)) },
			func() error { return c.Copy(vc.Slice(t*D, D), d.qkv.Slice(2*D, D)) },
			func() error { return c.DecodeAttention(d.y, d.qkv.Slice(0, D), kc, vc, t+1, D, s.Heads) },
			func() error { return c.LinearForward(d.x, d.y, b.projW, b.projB, d.x, 1, D, D, ComputeFP32) },
			func() error { return c.LayerNormForward(d.h, d.mean, d.rstd, d.x, b.ln2W, b.ln2B, 1, D) },
			func() error { return c.LinearForward(d.f, d.h, b.fcW, b.fcB, Buf{}, 1, D, 4*D, ComputeFP32) },
			func() error { return c.GeluForward(d.g, d.f) },
			func() error { return c.LinearForward(d.x, d.g, b.fc2W, b.fc2B, d.x, 1, 4*D, D, ComputeFP32) },
		} {
			if err := op(); err != nil {
				return fmt.Errorf("layer %d: %w", l, err)
			}
		}
	}
	if err := c.LayerNormForward(d.h, d.mean, d.rstd, d.x, d.lnfW, d.lnfB, 1, D); err != nil {
		return err
	}
	// logits = h · headᵀ, head stored [V, D].
	if err := c.Gemm(false, true, 1, s.Vocab, D, 1, d.h, D, d.head, D, 0, d.logits, s.Vocab, ComputeFP32); err != nil {
		return err
	}
	return c.Download(d.host, d.logits)
}

// Close frees the decoder's device memory.
func (d *Decoder) Close() error {
	if len(d.bufs) == 0 {
		return nil
	}
	bufs := d.bufs
	d.bufs = nil
	return d.dev.Do(func(c *Ctx) error {
		var first error
		for _, b := range bufs {
			if err := c.Free(b); err != nil && first == nil {
				first = err
			}
		}
		return first
	})
}
