package stages

import (
	"fmt"

	"swarmnode/cuda"
	"swarmnode/model"
)

// Wire is a format in which the pipeline asks a stage for its output
// activations and its input gradient: Int8Block > 0 asks for the int8 wire
// layout with blocks of Int8Block values (per block a little-endian float32
// scale absmax/127, then the values as int8: cuda.WireLen bytes); the zero Wire
// asks for float32 values.
//
// A stage on a GPU grants the request, quantizing on the device so that the
// tensor crosses the bus compressed (for the input gradient only when the output
// gradient came in the same layout: see BackwardTensor). Otherwise the stage
// answers in float32 and leaves the encoding to its caller, whose codec writes
// the bytes the GPU would (the golden messages of package cuda's tests tie the
// two together).
type Wire struct{ Int8Block int }

// Tensor is an activation tensor, or its gradient, on its way between stages:
// float32 values, or a message in the int8 wire layout.
type Tensor struct {
	// F holds the values; nil when Int8 does.
	F []float32
	// Int8 holds the values in the int8 wire layout with blocks of Block values.
	Int8  []byte
	Block int
}

// Arrived is a float tensor as it arrived from another stage, not yet decoded;
// the pipeline's frames provide it. Receive picks one of its forms.
type Arrived interface {
	// Int8Block is the block size of the int8 wire layout the tensor travelled
	// in, or 0 if it travelled in another codec.
	Int8Block() int
	// Int8 returns a copy of the message in the int8 wire layout (only when
	// Int8Block > 0). Only its length is checked.
	Int8() ([]byte, error)
	// Floats decodes the values.
	Floats() ([]float32, error)
}

// Receive takes a tensor that arrived for this stage (its input activations, or
// the gradient of its output) in the form ForwardTensor and BackwardTensor
// read, when the stage's own tensors are asked for in w. A stage on a GPU asked
// for the int8 wire layout keeps an int8 message as it arrived, to dequantize it
// on the device (which checks its scales first); everything else is decoded on
// the host, so that a malformed tensor is refused here.
func (s *Stage) Receive(a Arrived, w Wire) (Tensor, error) {
	if s.OnGPU() && !s.subspace() && w.Int8Block > 0 && a.Int8Block() > 0 {
		msg, err := a.Int8()
		return Tensor{Int8: msg, Block: a.Int8Block()}, err
	}
	x, err := a.Floats()
	return Tensor{F: x}, err
}

// ForwardTensor is Forward with the input activations x as Receive took them
// (the zero Tensor on the first stage) and the output asked for in out (see
// Wire; Pass.Output returns it).
func (s *Stage) ForwardTensor(in model.Input, x Tensor, out Wire) (*Pass, error) {
	in.X, in.XWire, in.Block, in.OutBlock = x.F, x.Int8, x.Block, out.Int8Block
	if s.subspace() {
		in.OutBlock = 0
	}
	return s.Forward(in)
}

// Output returns the pass's output activations as Forward made them: float32
// values, or the int8 wire message that Input.OutBlock asked a GPU stage for.
// It is empty on the last stage.
func (p *Pass) Output() Tensor {
	if p.OutWire != nil {
		return Tensor{Int8: p.OutWire, Block: p.outBlock}
	}
	return Tensor{F: p.Out}
}

// BackwardTensor is Backward for tensors on their way between stages: dout is
// the gradient of the pass's output as Receive took it (the zero Tensor on the
// last stage), and dx asks for the input gradient in a format (see Wire). A
// stage on a GPU asked for the int8 wire layout, with dout in it (or none, on
// the last stage), dequantizes dout and quantizes the input gradient on the
// device. Otherwise dout must hold float32 values, and so does the input
// gradient returned. It consumes the pass.
func (s *Stage) BackwardTensor(p *Pass, dout Tensor, dx Wire) (Tensor, error) {
	g := s.gpu()
	if g == nil || s.subspace() || dx.Int8Block <= 0 || (!s.IsLast() && dout.Int8 == nil) {
		if dout.Int8 != nil {
			return Tensor{}, fmt.Errorf("stage %d backward: an int8 wire output gradient needs a stage on a GPU asked for an int8 wire input gradient", s.part.Index)
		}
		d, err := s.Backward(p, dout.F)
		return Tensor{F: d}, err
	}
	if err := s.checkPass(p); err != nil {
		return Tensor{}, err
	}
	if s.IsLast() {
		if len(dout.F) != 0 || len(dout.Int8) != 0 {
			return Tensor{}, fmt.Errorf("stage %d backward: last stage takes no output gradient", s.part.Index)
		}
	} else if err := cuda.CheckInt8Wire(dout.Int8, p.B*p.T*s.cfg.DModel, dout.Block); err != nil {
		return Tensor{}, fmt.Errorf("stage %d backward: output gradient: %w", s.part.Index, err)
	}
	d, err := backwardLocked(s, p, func() ([]byte, error) { return g.backwardWire(p, dout.Int8, dout.Block, dx.Int8Block) })
	if d == nil {
		return Tensor{}, err
	}
	return Tensor{Int8: d, Block: dx.Int8Block}, nil
}
