package cuda

import (
	"fmt"

	"swarmnode/model"
)

// Pass is one microbatch's forward pass on the device: its activations stay on
// the GPU until Backward (or Release) returns them to the stage's pool.
type Pass struct {
	s   *Stage
	a   *acts
	Out []float32 // host copy of the output (Forward only; nil for the last stage)
	// OutWire is the output in the int8 wire layout when Input.OutBlock asked for it.
	OutWire []byte
	Loss    float32 // last stage: mean cross-entropy
}

// Tokens is the device buffer of input token ids (first stage).
func (p *Pass) Tokens() Buf { return p.a.tok }

// Input is the device buffer of input activations [B·T, DModel] (other stages).
func (p *Pass) Input() Buf { return p.a.in }

// Targets is the device buffer of target ids (last stage).
func (p *Pass) Targets() Buf { return p.a.targets }

// Output is the device buffer of output activations (not for the last stage).
func (p *Pass) Output() Buf { return p.a.out }

// Release returns the pass's activations to the stage (for passes never backwarded).
func (p *Pass) Release() error {
	if p.a == nil {
		return nil
	}
	a := p.a
	p.a = nil
	return p.s.d.Do(func(c *Ctx) error {
		p.s.pool[[2]int{a.B, a.T}] = append(p.s.pool[[2]int{a.B, a.T}], a)
		return nil
	})
}

func (s *Stage) checkShape(B, T int) error {
	if B < 1 || T < 1 || T > s.cfg.Model.SeqLen {
		return fmt.Errorf("cuda: microbatch %dx%d (T must be in [1, %d])", B, T, s.cfg.Model.SeqLen)
	}
	return nil
}

// wireBuf returns n bytes of device memory for int8 wire messages (one buffer
// per stage, grown on demand: passes run one at a time on the device thread).
func (s *Stage) wireBuf(c *Ctx, n int) (Buf, error) { return grow(c, &s.wire, U8, n) }

// grow returns n elements of *b, first replacing it with a buffer of n
// elements of type t when it holds fewer.
func grow(c *Ctx, b *Buf, t DType, n int) (Buf, error) {
	if b.N < n {
		if b.Ptr != 0 {
			if err := c.Free(*b); err != nil {
				return Buf{}, err
			}
			*b = Buf{}
		}
		nb, err := c.Alloc(t, n)
		if err != nil {
			return Buf{}, err
		}
		*b = nb
	}
	return b.Slice(0, n), nil
}

// uploadWire copies a message in the int8 wire layout to the device and
// dequantizes it into dst.
func (s *Stage) uploadWire(c *Ctx, dst Buf, msg []byte, bs int) error {
	w, err := s.wireBuf(c, len(msg))
	if err != nil {
		return err
	}
	if err := c.UploadBytes(w, msg); err != nil {
		return err
	}
	return c.DequantizeInt8Wire(dst, w, bs)
}

// downloadWire quantizes src on the device and copies the message to the host.
func (s *Stage) downloadWire(c *Ctx, src Buf, bs int) ([]byte, error) {
	w, err := s.wireBuf(c, WireLen(src.N, bs))
	if err != nil {
		return nil, err
	}
	if err := c.QuantizeInt8Wire(w, src, bs); err != nil {
		return nil, err
	}
	msg := make([]byte, w.N)
	return msg, c.DownloadBytes(msg, w)
}

// NewPass takes device activations for a B×T microbatch without running anything;
// fill its Tokens/Input/Targets buffers on the device and call ForwardOn.
func (s *Stage) NewPass(B, T int) (*Pass, error) {
	if err := s.checkShape(B, T); err != nil {
		return nil, err
	}
	p := &Pass{s: s}
	err := s.d.Do(func(c *Ctx) error {
		var err error
		p.a, err = s.newActs(c, B, T)
		return err
	})
	return p, err
}

// Forward validates the input (see model.Input.Check, and CheckInt8Wire for
// XWire), runs the stage and copies the output (or, on the last stage, the mean
// loss) back to the host.
func (s *Stage) Forward(in model.Input) (*Pass, error) {
	if err := in.Check(s.cfg.Model, s.cfg.Part); err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	N, C := in.B*in.T, s.cfg.Model.DModel
	if in.XWire != nil {
		if err := CheckInt8Wire(in.XWire, N*C, in.Block); err != nil {
			return nil, err
		}
	}
	p := &Pass{s: s}
	err := s.d.Do(func(c *Ctx) error {
		a, err := s.newActs(c, in.B, in.T)
		if err != nil {
			return err
		}
		p.a = a
		switch {
		case s.cfg.IsFirst():
			err = c.UploadI32(a.tok, in.Tokens)
		case s.subspace():
			err = s.subspaceInput(c, a, in.X, in.Tokens)
		case in.XWire != nil:
			err = s.uploadWire(c, a.in.Slice(0, N*C), in.XWire, in.Block)
		default:
			err = c.Upload(a.in, in.X)
		}
		if err == nil && s.cfg.IsLast() {
			err = c.UploadI32(a.targets, in.Targets)
		}
		if err == nil {
			err = s.ForwardOn(c, p)
		}
		if err == nil && !s.cfg.IsLast() {
			switch {
			case s.subspace():
				p.Out, err = s.downloadCoords(c, a.out, N, 1, s.basisOut)
			case in.OutBlock > 0:
				p.OutWire, err = s.downloadWire(c, a.out.Slice(0, N*C), in.OutBlock)
			default:
				p.Out = make([]float32, N*C)
				err = c.Download(p.Out, a.out)
			}
		}
		if err == nil && s.cfg.IsLast() {
			p.Loss, err = s.lossOn(c, p)
		}
		if err != nil {
			s.pool[[2]int{a.B, a.T}] = append(s.pool[[2]int{a.B, a.T}], a)
			p.a = nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Backward takes the gradient of the pass's output (nil on the last stage, which
// differentiates its own mean loss), accumulates parameter gradients and returns
// the gradient of the input (nil on the first stage). The pass is consumed.
func (s *Stage) Backward(p *Pass, dout []float32) ([]float32, error) {
	if err := s.checkPass(p); err != nil {
		return nil, err
	}
	N, W := p.a.B*p.a.T, s.cfg.Model.Width()
	if !s.cfg.IsLast() {
		if len(dout) != N*W {
			return nil, fmt.Errorf("cuda: %d output gradients, want %d", len(dout), N*W)
		}
		if err := model.CheckFinite(dout, "output gradient"); err != nil {
			return nil, fmt.Errorf("cuda: %w", err)
		}
	}
	var dx []float32
	upload := func(c *Ctx, d Buf) error { return c.Upload(d, dout) }
	download := func(c *Ctx, dres Buf) error {
		dx = make([]float32, N*W)
		return c.Download(dx, dres)
	}
	if s.subspace() {
		upload = func(c *Ctx, d Buf) error { return s.uploadCoords(c, d, dout, N, false, 1, s.basisOut) }
		download = func(c *Ctx, dres Buf) (err error) {
			dx, err = s.downloadCoords(c, dres, N, s.cfg.Gain, s.basisIn)
			return err
		}
	}
	err := s.backward(p, upload, download)
	return dx, err
}

// BackwardWire is Backward with both gradients in the int8 wire layout: dout
// (nil on the last stage) with blocks of doutBlock values is dequantized on the
// device, and the input gradient comes back quantized there with blocks of
// dxBlock values (nil on the first stage).
func (s *Stage) BackwardWire(p *Pass, dout []byte, doutBlock, dxBlock int) ([]byte, error) {
	if err := s.checkPass(p); err != nil {
		return nil, err
	}
	N, C := p.a.B*p.a.T, s.cfg.Model.DModel
	if !s.cfg.IsLast() {
		if err := CheckInt8Wire(dout, N*C, doutBlock); err != nil {
			return nil, err
		}
	}
	if s.subspace() {
		return nil, fmt.Errorf("cuda: a subspace model's gradients travel as float32 coordinates, not in the int8 wire layout")
	}
	if !s.cfg.IsFirst() && dxBlock < 1 {
		return nil, fmt.Errorf("cuda: input gradient block size %d", dxBlock)
	}
	var dx []byte
	err := s.backward(p, func(c *Ctx, d Buf) error { return s.uploadWire(c, d, dout, doutBlock) }, func(c *Ctx, dres Buf) error {
		var err error
		dx, err = s.downloadWire(c, dres, dxBlock)
		return err
	})
	return dx, err
}

func (s *Stage) checkPass(p *Pass) error {
	if p == nil || p.a == nil || p.s != s {
		return fmt.Errorf("cuda: backward of a pass that is not live on this stage")
	}
	return nil
}

// backward runs the backward pass of p on the device thread: upload puts the
// output gradient into d (not called on the last stage) and download takes the
// input gradient from dres (not called on the first stage).
func (s *Stage) backward(p *Pass, upload func(c *Ctx, d Buf) error, download func(c *Ctx, dres Buf) error) error {
	N, C := p.a.B*p.a.T, s.cfg.Model.DModel
	return s.d.Do(func(c *Ctx) error {
		a := p.a
		p.a = nil
		defer func() { s.pool[[2]int{a.B, a.T}] = append(s.pool[[2]int{a.B, a.T}], a) }()
		sc, err := s.scratchFor(c, a.B, a.T)
		if err != nil {
			return err
		}
		var d Buf
		if !s.cfg.IsLast() {
			d = sc.dln.Slice(0, N*C) // staging for the upload; BackwardOn copies it to dres first
			if err := upload(c, d); err != nil {
				return err
			}
		}
		pp := &Pass{s: s, a: a}
		if err := s.BackwardOn(c, pp, d); err != nil {
			return err
		}
		if !s.cfg.IsFirst() {
			return download(c, sc.dres.Slice(0, N*C))
		}
		return c.Sync()
	})
}

func (s *Stage) lossOn(c *Ctx, p *Pass) (float32, error) {
	l := make([]float32, 1)
	if err := c.Download(l, p.a.lossSum); err != nil {
		return 0, err
	}
	return l[0] / float32(p.a.B*p.a.T), nil
}

// weight returns the GEMM operand of view v: bfloat16 or float32 parameters.
func (s *Stage) weight(v model.View) Buf {
	if s.op == BF16 {
		return s.pbf.Slice(v.Offset, v.Len)
	}
	return s.params.Slice(v.Offset, v.Len)
}

func (s *Stage) param(v model.View) Buf { return s.params.Slice(v.Offset, v.Len) }
func (s *Stage) grad(v model.View) Buf  { return s.grads.Slice(v.Offset, v.Len) }

// ForwardOn queues the forward pass of p on the device (inside Device.Do); its
// inputs must already be in p's device buffers. On the last stage it also
// computes the loss and the gradient of the logits.
func (s *Stage) ForwardOn(c *Ctx, p *Pass) error {
	a := p.a
	m := s.cfg.Model
	B, T, C := a.B, a.T, m.DModel
	N := B * T
	x := a.in.Slice(0, N*C)
	if s.cfg.IsFirst() {
		if err := c.EncoderForward(x, a.tok, s.param(s.lay.WTE), s.param(s.lay.WPE).Slice(0, T*C), B, T, C); err != nil {
			return err
		}
	}
	for i := range a.blocks {
		a.blocks[i].in = x
		forward := s.blockForward
		if s.tc {
			forward = s.fusedBlockForward
		}
		if err := forward(c, a, i); err != nil {
			return fmt.Errorf("block %d forward: %w", s.cfg.First+i, err)
		}
		x = a.blocks[i].out
	}
	a.out = x
	if !s.cfg.IsLast() {
		return nil
	}
	V := m.Vocab
	if err := c.LayerNormForward(a.lnf, a.lnfm, a.lnfr, x, s.param(s.lay.LNFW), s.param(s.lay.LNFB), N, C); err != nil {
		return err
	}
	if err := c.Gemm(false, true, N, V, C, 1, a.lnf, C, s.weight(s.lay.Head), C, 0, a.logits, V, s.mode); err != nil {
		return err
	}
	if err := c.CrossEntropy(a.losses, a.dlogits, a.logits, a.targets, N, V, 1/float32(N)); err != nil {
		return err
	}
	return c.Sum(a.lossSum, s.partial, a.losses)
}

// blockForward is block idx's forward on the general path (float32 or bf16
// GEMM operands, float32 attention).
func (s *Stage) blockForward(c *Ctx, a *acts, idx int) error {
	m := s.cfg.Model
	B, T, C, NH := a.B, a.T, m.DModel, m.NHead
	N := B * T
	k, bv := &a.blocks[idx], &s.lay.Blocks[idx]
	return s.runSteps(c, []step{
		{"fwd ln1", func() error {
			return c.LayerNormForward(k.ln1, k.ln1m, k.ln1r, k.in, s.param(bv.LN1W), s.param(bv.LN1B), N, C)
		}},
		{"fwd qkv gemm", func() error {
			return c.LinearForward(k.qkv, k.ln1, s.weight(bv.QKVW), s.param(bv.QKVB), Buf{}, N, C, 3*C, s.mode)
		}},
		{"fwd attention", func() error { return c.AttentionForward(k.atty, k.lse, k.qkv, B, T, C, NH) }},
		{"fwd attn proj gemm", func() error {
			return c.LinearForward(k.res2, k.atty, s.weight(bv.AttnProjW), s.param(bv.AttnProjB), k.in, N, C, C, s.mode)
		}},
		{"fwd ln2", func() error {
			return c.LayerNormForward(k.ln2, k.ln2m, k.ln2r, k.res2, s.param(bv.LN2W), s.param(bv.LN2B), N, C)
		}},
		{"fwd fc gemm", func() error {
			return c.LinearForward(k.fch, k.ln2, s.weight(bv.FCW), s.param(bv.FCB), Buf{}, N, C, 4*C, s.mode)
		}},
		{"fwd gelu", func() error { return c.GeluForward(k.fchg, k.fch) }},
		{"fwd fc proj gemm", func() error {
			return c.LinearForward(k.out, k.fchg, s.weight(bv.FCProjW), s.param(bv.FCProjB), k.res2, N, 4*C, C, s.mode)
		}},
	})
}

// BackwardOn queues the backward pass of p (inside Device.Do): dout is the
// gradient of the output ([B·T, DModel] float32; ignored on the last stage).
// Parameter gradients accumulate; the input gradient is left in GradInput.
func (s *Stage) BackwardOn(c *Ctx, p *Pass, dout Buf) error {
	a := p.a
	sc, err := s.scratchFor(c, a.B, a.T)
	if err != nil {
		return err
	}
	if err := s.outputGrad(c, a, sc, dout); err != nil {
		return err
	}
	if s.tc {
		if err := s.fusedBackward(c, a, sc); err != nil {
			return err
		}
	} else {
		for i := len(a.blocks) - 1; i >= 0; i-- {
			if err := s.blockBackward(c, a, i, sc); err != nil {
				return fmt.Errorf("block %d backward: %w", s.cfg.First+i, err)
			}
		}
	}
	return s.encoderBackward(c, a, sc.dres.Slice(0, a.B*a.T*s.cfg.Model.DModel))
}

// outputGrad puts the gradient of the last block's output into sc.dres: on the
// last stage the backward of the loss, the LM head and the final LayerNorm,
// elsewhere a copy of dout.
func (s *Stage) outputGrad(c *Ctx, a *acts, sc *scratch, dout Buf) error {
	N, C := a.B*a.T, s.cfg.Model.DModel
	dres := sc.dres.Slice(0, N*C)
	if !s.cfg.IsLast() {
		if err := need("stage dout", dout, F32, N*C); err != nil {
			return err
		}
		return c.Copy(dres, dout.Slice(0, N*C))
	}
	V, dln := s.cfg.Model.Vocab, sc.dln.Slice(0, N*C)
	if err := c.Gemm(false, false, N, C, V, 1, a.dlogits, V, s.weight(s.lay.Head), C, 0, dln, C, s.mode); err != nil {
		return err
	}
	if err := c.Gemm(true, false, V, C, N, 1, a.dlogits, V, a.lnf, C, 1, s.grad(s.lay.Head), C, s.mode); err != nil {
		return err
	}
	if err := c.Zero(dres); err != nil {
		return err
	}
	return c.LayerNormBackward(dres, s.grad(s.lay.LNFW), s.grad(s.lay.LNFB), dln, a.out, s.param(s.lay.LNFW), a.lnfm, a.lnfr, N, C)
}

// fusedBackward runs the blocks' backward on the bf16 tensor-core path.
func (s *Stage) fusedBackward(c *Ctx, a *acts, sc *scratch) error {
	N, C := a.B*a.T, s.cfg.Model.DModel
	dres, dresOp := sc.dres.Slice(0, N*C), sc.dresOp.Slice(0, N*C)
	// Each LayerNorm backward leaves a bf16 copy of dres for the next GEMMs;
	// the first one needs a cast.
	if err := s.timed(c, "bwd cast", func() error { return c.Cast(dresOp, dres) }); err != nil {
		return err
	}
	// Likewise each LayerNorm backward adds the column sums of the new dres into
	// the bias gradient of the projection that dres meets next; the first needs
	// its own pass.
	if n := len(a.blocks); n > 0 {
		if err := s.timed(c, "bwd fc proj bias", func() error { return c.BiasGrad(s.grad(s.lay.Blocks[n-1].FCProjB), dres, N, C) }); err != nil {
			return err
		}
	}
	for i := len(a.blocks) - 1; i >= 0; i-- {
		if err := s.fusedBlockBackward(c, a, i, sc); err != nil {
			return fmt.Errorf("block %d backward: %w", s.cfg.First+i, err)
		}
	}
	return nil
}

// blockBackward is block idx's backward on the general path: sc.dres holds the
// gradient of the block's output and becomes the gradient of its input.
func (s *Stage) blockBackward(c *Ctx, a *acts, idx int, sc *scratch) error {
	m := s.cfg.Model
	B, T, C, NH := a.B, a.T, m.DModel, m.NHead
	N := B * T
	k, bv := &a.blocks[idx], &s.lay.Blocks[idx]
	dres, dresOp, dln := sc.dres.Slice(0, N*C), sc.dresOp.Slice(0, N*C), sc.dln.Slice(0, N*C)
	dh, dhOp := sc.dh.Slice(0, 4*N*C), sc.dhOp.Slice(0, 4*N*C)
	datty, dqkv := sc.datty.Slice(0, N*C), sc.dqkv.Slice(0, 3*N*C)
	toOp := func() error {
		if s.op == BF16 {
			return c.Cast(dresOp, dres)
		}
		return nil
	}
	return s.runSteps(c, []step{
		// MLP branch: out = res2 + gelu(ln2·Wfc + bfc)·Wp + bp.
		{"bwd cast", toOp},
		{"bwd fc proj gemms", func() error {
			return c.LinearBackward(dh, s.grad(bv.FCProjW), Buf{}, dresOp, k.fchg, s.weight(bv.FCProjW), N, 4*C, C, false, s.mode)
		}},
		{"bwd fc proj bias", func() error { return c.BiasGrad(s.grad(bv.FCProjB), dres, N, C) }},
		{"bwd gelu", func() error { return c.GeluBackward(dhOp, k.fch, dh) }},
		{"bwd fc gemms+bias", func() error {
			return c.LinearBackward(dln, s.grad(bv.FCW), s.grad(bv.FCB), dhOp, k.ln2, s.weight(bv.FCW), N, C, 4*C, false, s.mode)
		}},
		{"bwd ln2", func() error {
			return c.LayerNormBackward(dres, s.grad(bv.LN2W), s.grad(bv.LN2B), dln, k.res2, s.param(bv.LN2W), k.ln2m, k.ln2r, N, C)
		}},
		// Attention branch: res2 = in + attn(ln1·Wqkv + bqkv)·Wp + bp.
		{"bwd cast", toOp},
		{"bwd attn proj gemms", func() error {
			return c.LinearBackward(datty, s.grad(bv.AttnProjW), Buf{}, dresOp, k.atty, s.weight(bv.AttnProjW), N, C, C, false, s.mode)
		}},
		{"bwd attn proj bias", func() error { return c.BiasGrad(s.grad(bv.AttnProjB), dres, N, C) }},
		{"bwd attention", func() error { return c.AttentionBackward(dqkv, sc.attnD, datty, k.qkv, k.atty, k.lse, B, T, C, NH) }},
		{"bwd qkv gemms+bias", func() error {
			return c.LinearBackward(dln, s.grad(bv.QKVW), s.grad(bv.QKVB), dqkv, k.ln1, s.weight(bv.QKVW), N, C, 3*C, false, s.mode)
		}},
		{"bwd ln1", func() error {
			return c.LayerNormBackward(dres, s.grad(bv.LN1W), s.grad(bv.LN1B), dln, k.in, s.param(bv.LN1W), k.ln1m, k.ln1r, N, C)
		}},
	})
}

// encoderBackward adds the embedding gradients: the first stage's, or a later
// stage's input embeddings in a subspace model.
func (s *Stage) encoderBackward(c *Ctx, a *acts, dres Buf) error {
	C := s.cfg.Model.DModel
	switch {
	case s.cfg.IsFirst():
		return c.EncoderBackward(s.grad(s.lay.WTE), s.grad(s.lay.WPE).Slice(0, a.T*C), dres, a.tok, a.B, a.T, C)
	case s.subspace():
		return c.EncoderBackward(s.grad(s.lay.InWTE), s.grad(s.lay.InWPE).Slice(0, a.T*C), dres, a.tok, a.B, a.T, C)
	}
	return nil
}

// GradInput is the device buffer holding the input gradient after BackwardOn
// (valid until the next backward of this stage).
func (s *Stage) GradInput(B, T int) Buf {
	if s.sc == nil {
		return Buf{}
	}
	return s.sc.dres.Slice(0, B*T*s.cfg.Model.DModel)
}

// LossOn reads the mean loss of a last-stage pass after ForwardOn (it synchronises).
func (s *Stage) LossOn(c *Ctx, p *Pass) (float32, error) { return s.lossOn(c, p) }

// step is one labelled step of a pass; profiles add up time by label.
type step struct {
	label string
	fn    func() error
}

// runSteps runs steps in order, timing each when profiling is on.
func (s *Stage) runSteps(c *Ctx, steps []step) error {
	for _, st := range steps {
		if err := s.timed(c, st.label, st.fn); err != nil {
			return err
		}
	}
	return nil
}

// timed runs one step of a pass, timing it with events when profiling is on.
func (s *Stage) timed(c *Ctx, label string, fn func() error) error {
	if s.prof == nil {
		return fn()
	}
	ms, err := c.Time(fn)
	if err != nil {
		return err
	}
	s.prof[label] += float64(ms)
	return nil
}

// SetProfile turns per-step timing on (synchronising after every step: slow) or off.
func (s *Stage) SetProfile(on bool) {
	if on {
		s.prof = map[string]float64{}
	} else {
		s.prof = nil
	}
}

// Profile returns the milliseconds spent per step label since SetProfile(true).
func (s *Stage) Profile() map[string]float64 {
	out := map[string]float64{}
	for k, v := range s.prof {
		out[k] = v
	}
	return out
}

// fusedBlockForward is a block's forward in bf16 with tensor-core attention: the
// GEMMs write bare products (bf16 where the next op reads bf16) and fused kernels
// add the biases while doing the next step's work.
func (s *Stage) fusedBlockForward(c *Ctx, a *acts, idx int) error {
	B, T := a.B, a.T
	k, bv := &a.blocks[idx], &s.lay.Blocks[idx]
	lnDone := idx > 0 // computed by the previous block's last kernel
	var next *blockActs
	if idx+1 < len(a.blocks) {
		next = &a.blocks[idx+1]
	}
	m := s.cfg.Model
	C, NH, N := m.DModel, m.NHead, B*T
	return s.runSteps(c, []step{
		{"fwd ln1", func() error {
			if lnDone {
				return nil // the previous block's residual kernel computed it
			}
			return c.LayerNormForward(k.ln1, k.ln1m, k.ln1r, k.in, s.param(bv.LN1W), s.param(bv.LN1B), N, C)
		}},
		{"fwd qkv gemm", func() error {
			return c.Gemm(false, false, N, 3*C, C, 1, k.ln1, C, s.weight(bv.QKVW), 3*C, 0, k.qkvb, 3*C, s.mode)
		}},
		{"fwd qkv bias", func() error { return c.BiasAdd(k.qkvb, s.param(bv.QKVB), N, 3*C) }},
		{"fwd attention", func() error { return c.AttentionForward(k.atty, k.lse, k.qkvb, B, T, C, NH) }},
		{"fwd attn proj gemm", func() error {
			return c.Gemm(false, false, N, C, C, 1, k.atty, C, s.weight(bv.AttnProjW), C, 0, k.res2, C, s.mode)
		}},
		{"fwd residual+bias+ln2", func() error {
			return c.ResidualBiasLayerNorm(k.res2, k.in, s.param(bv.AttnProjB), k.ln2, k.ln2m, k.ln2r, s.param(bv.LN2W), s.param(bv.LN2B), N, C)
		}},
		// The bare product stays in fch (bf16); the bias is added where it is read.
		{"fwd fc gemm", func() error {
			return c.Gemm(false, false, N, 4*C, C, 1, k.ln2, C, s.weight(bv.FCW), 4*C, 0, k.fch, 4*C, s.mode)
		}},
		{"fwd bias+gelu", func() error { return c.GeluBias(k.fchg, k.fch, s.param(bv.FCB), N, 4*C) }},
		{"fwd fc proj gemm", func() error {
			return c.Gemm(false, false, N, C, 4*C, 1, k.fchg, 4*C, s.weight(bv.FCProjW), C, 0, k.out, C, s.mode)
		}},
		{"fwd residual+bias", func() error {
			if next == nil {
				return c.ResidualBias(k.out, k.res2, s.param(bv.FCProjB), N, C)
			}
			// Also the next block's first LayerNorm, while the row is at hand.
			nv := &s.lay.Blocks[idx+1]
			return c.ResidualBiasLayerNorm(k.out, k.res2, s.param(bv.FCProjB), next.ln1, next.ln1m, next.ln1r, s.param(nv.LN1W), s.param(nv.LN1B), N, C)
		}},
	})
}

// fusedBlockBackward is the backward of fusedBlockForward: sc.dres (and its bf16
// copy sc.dresOp) hold the gradient of the block's output and become the gradient
// of its input.
func (s *Stage) fusedBlockBackward(c *Ctx, a *acts, idx int, sc *scratch) error {
	B, T := a.B, a.T
	k, bv := &a.blocks[idx], &s.lay.Blocks[idx]
	m := s.cfg.Model
	C, NH, N := m.DModel, m.NHead, B*T
	dres, dresOp := sc.dres.Slice(0, N*C), sc.dresOp.Slice(0, N*C)
	dh, dln := sc.dhOp.Slice(0, 4*N*C), sc.dln.Slice(0, N*C)
	datty, dqkv := sc.dattyOp.Slice(0, N*C), sc.dqkv.Slice(0, 3*N*C)
	return s.runSteps(c, []step{
		// MLP branch: out = res2 + gelu(ln2·Wfc + bfc)·Wp + bp. dresOp already holds dres in bf16.
		{"bwd fc proj gemms", func() error {
			if err := c.Gemm(false, true, N, 4*C, C, 1, dresOp, C, s.weight(bv.FCProjW), C, 0, dh, 4*C, s.mode); err != nil {
				return err
			}
			return c.Gemm(true, false, 4*C, C, N, 1, k.fchg, 4*C, dresOp, C, 1, s.grad(bv.FCProjW), C, s.mode)
		}},
		{"bwd gelu+bias grad", func() error {
			return c.GeluBackwardBiasGrad(dh, k.fch, s.param(bv.FCB), s.grad(bv.FCB), N, 4*C)
		}},
		{"bwd fc gemms", func() error {
			return c.LinearBackward(dln, s.grad(bv.FCW), Buf{}, dh, k.ln2, s.weight(bv.FCW), N, C, 4*C, false, s.mode)
		}},
		{"bwd ln2", func() error {
			return c.LayerNormBackwardOp(dres, dresOp, s.grad(bv.AttnProjB), s.grad(bv.LN2W), s.grad(bv.LN2B), dln, k.res2, s.param(bv.LN2W), k.ln2m, k.ln2r, N, C)
		}},
		// Attention branch: res2 = in + attn(ln1·Wqkv + bqkv)·Wp + bp.
		{"bwd attn proj gemms", func() error {
			if err := c.Gemm(false, true, N, C, C, 1, dresOp, C, s.weight(bv.AttnProjW), C, 0, datty, C, s.mode); err != nil {
				return err
			}
			return c.Gemm(true, false, C, C, N, 1, k.atty, C, dresOp, C, 1, s.grad(bv.AttnProjW), C, s.mode)
		}},
		{"bwd attention", func() error {
			return c.AttentionBackward(dqkv, sc.attnD, datty, k.qkvb, k.atty, k.lse, B, T, C, NH)
		}},
		{"bwd qkv gemms+bias", func() error {
			return c.LinearBackward(dln, s.grad(bv.QKVW), s.grad(bv.QKVB), dqkv, k.ln1, s.weight(bv.QKVW), N, C, 3*C, false, s.mode)
		}},
		{"bwd ln1", func() error {
			var dcol Buf // the previous block's MLP output bias
			if idx > 0 {
				dcol = s.grad(s.lay.Blocks[idx-1].FCProjB)
			}
			return c.LayerNormBackwardOp(dres, dresOp, dcol, s.grad(bv.LN1W), s.grad(bv.LN1B), dln, k.in, s.param(bv.LN1W), k.ln1m, k.ln1r, N, C)
		}},
	})
}
