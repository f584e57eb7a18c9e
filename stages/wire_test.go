package stages

import (
	"math"
	"strings"
	"testing"

	"swarmnode/codec"
	"swarmnode/cuda"
	"swarmnode/model"
)

// encodeWire and decodeWire make and read messages in the int8 wire layout with
// the pipeline's codec, as a GPU stage gets and sends them in a swarm.
func encodeWire(t *testing.T, x []float32, bs int) []byte {
	t.Helper()
	msg, err := codec.Format{Kind: codec.Int8, Block: bs}.Append(nil, x)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func decodeWire(t *testing.T, msg []byte, n, bs int) []float32 {
	t.Helper()
	x := make([]float32, n)
	if err := (codec.Format{Kind: codec.Int8, Block: bs}).Decode(x, msg); err != nil {
		t.Fatal(err)
	}
	return x
}

// arrivedInt8 is a tensor that travelled in the int8 wire layout, as the
// pipeline's frames present it to Receive.
type arrivedInt8 struct {
	msg   []byte
	n, bs int
}

func (a arrivedInt8) Int8Block() int        { return a.bs }
func (a arrivedInt8) Int8() ([]byte, error) { return append([]byte(nil), a.msg...), nil }
func (a arrivedInt8) Floats() ([]float32, error) {
	x := make([]float32, a.n)
	return x, codec.Format{Kind: codec.Int8, Block: a.bs}.Decode(x, a.msg)
}

// TestGPUWireMatchesFloat runs a middle stage's forward and backward once with
// float32 tensors and once with int8 wire messages quantized and dequantized on
// the device: given the same (dequantized) inputs, the outputs agree to one
// quantization step and the parameter gradients agree.
func TestGPUWireMatchesFloat(t *testing.T) {
	dev := testGPU(t, cuda.FP32)
	const bs = 32
	var stages [2]*Stage
	for i := range stages {
		s, err := NewOnGPU(gpuCfg, []int{1, 1, 1}, 1, 9, dev)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stages[i] = s
	}
	B, T, C := 2, gpuCfg.SeqLen, gpuCfg.DModel
	N := B * T * C
	x, dout := make([]float32, N), make([]float32, N)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.37)) * 2
		dout[i] = float32(math.Cos(float64(i)*0.11)) * 1e-3
	}
	xw, dw := encodeWire(t, x, bs), encodeWire(t, dout, bs)
	xq, dq := decodeWire(t, xw, N, bs), decodeWire(t, dw, N, bs)

	pf, err := stages[0].Forward(model.Input{B: B, T: T, X: xq})
	if err != nil {
		t.Fatal(err)
	}
	dxf, err := stages[0].Backward(pf, dq)
	if err != nil {
		t.Fatal(err)
	}
	w := Wire{Int8Block: bs}
	pw := gpuWireForward(t, stages[1], model.Input{B: B, T: T}, arrivedInt8{xw, N, bs}, w)
	closeQ(t, "out", decodeWire(t, pw.Output().Int8, N, bs), pf.Out, bs)
	dt, err := stages[1].Receive(arrivedInt8{dw, N, bs}, w)
	if err != nil {
		t.Fatal(err)
	}
	dxw, err := stages[1].BackwardTensor(pw, dt, w)
	if err != nil {
		t.Fatal(err)
	}
	if dxw.F != nil || len(dxw.Int8) != cuda.WireLen(N, bs) || dxw.Block != bs {
		t.Fatalf("wire backward: %d values, %d bytes of input gradient in blocks of %d", len(dxw.F), len(dxw.Int8), dxw.Block)
	}
	closeQ(t, "dx", decodeWire(t, dxw.Int8, N, bs), dxf, bs)
	if e := relErr(stages[1].Grads(), stages[0].Grads()); e > 1e-6 {
		t.Fatalf("gradients: rel err %g", e)
	}
	// A forged message (NaN scale) is refused before it reaches the device.
	bad := append([]byte(nil), xw...)
	bad[0], bad[1], bad[2], bad[3] = 0, 0, 0xc0, 0x7f
	if _, err := stages[1].Forward(model.Input{B: B, T: T, XWire: bad, Block: bs}); err == nil {
		t.Fatal("NaN scale accepted")
	}
	if err := stages[1].DeviceErr(); err != nil {
		t.Fatalf("a bad message counted as a device error: %v", err)
	}
}

// gpuWireForward receives an int8 message for GPU stage s and runs it forward
// asking for the output in w, which the stage must grant.
func gpuWireForward(t *testing.T, s *Stage, in model.Input, a arrivedInt8, w Wire) *Pass {
	t.Helper()
	x, err := s.Receive(a, w)
	if err != nil {
		t.Fatal(err)
	}
	if x.F != nil || len(x.Int8) != len(a.msg) || x.Block != a.bs {
		t.Fatalf("received %d values, %d bytes in blocks of %d: want the message as it arrived", len(x.F), len(x.Int8), x.Block)
	}
	p, err := s.ForwardTensor(in, x, w)
	if err != nil {
		t.Fatal(err)
	}
	out := p.Output()
	if out.F != nil || len(out.Int8) != cuda.WireLen(a.n, w.Int8Block) || out.Block != w.Int8Block {
		t.Fatalf("wire forward: %d values, %d bytes in blocks of %d", len(out.F), len(out.Int8), out.Block)
	}
	return p
}

// closeQ checks that got is want to within half a quantization step of its
// block (plus rounding).
func closeQ(t *testing.T, what string, got, want []float32, bs int) {
	t.Helper()
	N := len(want)
	for b := 0; b < N; b += bs {
		am := 0.0
		for _, v := range want[b:min(N, b+bs)] {
			am = math.Max(am, math.Abs(float64(v)))
		}
		for i := b; i < min(N, b+bs); i++ {
			if d := math.Abs(float64(got[i] - want[i])); d > am/127*0.51+1e-6 {
				t.Fatalf("%s[%d] = %v, float path %v (step %v)", what, i, got[i], want[i], am/127)
			}
		}
	}
}

// TestWireOnCPU: a CPU stage asked for int8 wire tensors decodes what arrives
// and answers in float32, leaving the encoding to the pipeline's codec; raw
// int8 wire tensors it refuses with a clear error.
func TestWireOnCPU(t *testing.T) {
	s, err := New(gpuCfg, []int{1, 1, 1}, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	B, T := 1, 4
	N := B * T * gpuCfg.DModel
	x := make([]float32, N)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)))
	}
	msg := encodeWire(t, x, 16)
	w := Wire{Int8Block: 16}
	got, err := s.Receive(arrivedInt8{msg, N, 16}, w)
	if err != nil || got.Int8 != nil || maxAbsDiff(got.F, decodeWire(t, msg, N, 16)) != 0 {
		t.Fatalf("received %v bytes, err %v: want the decoded values", len(got.Int8), err)
	}
	if _, err := s.Forward(model.Input{B: B, T: T, XWire: msg, Block: 16}); err == nil || !strings.Contains(err.Error(), "GPU") {
		t.Fatalf("wire input on a CPU stage: %v", err)
	}
	p, err := s.ForwardTensor(model.Input{B: B, T: T}, got, w)
	if err != nil {
		t.Fatal(err)
	}
	if out := p.Output(); out.Int8 != nil || len(out.F) != N {
		t.Fatalf("output on a CPU stage: %d values, %d bytes", len(out.F), len(out.Int8))
	}
	if _, err := s.BackwardTensor(p, Tensor{Int8: msg, Block: 16}, w); err == nil {
		t.Fatal("wire output gradient on a CPU stage accepted")
	}
	dx, err := s.BackwardTensor(p, Tensor{F: x}, w)
	if err != nil || dx.Int8 != nil || len(dx.F) != N {
		t.Fatalf("backward on a CPU stage: %d values, %d bytes, err %v", len(dx.F), len(dx.Int8), err)
	}
}
