package sample

import (
	"errors"

	"swarmnode/cuda"
)

// GPUDecoder is a decoder of m on the GPU dev (package cuda's Decoder, float32
// with a KV cache on the device). Close frees its device memory.
type GPUDecoder struct {
	*cuda.Decoder
}

// NewGPUDecoder uploads m's weights to dev.
func NewGPUDecoder(dev *cuda.Device, m *Model) (*GPUDecoder, error) {
	if !m.embed || !m.final {
		return nil, errors.New("sample: a GPU decoder needs the whole model, not a part")
	}
	shape := cuda.DecoderShape{Vocab: m.Vocab, D: m.D, Heads: m.Heads, Layers: m.Layers, Positions: m.Positions, Eps: m.eps}
	// A tied model has no lm_head.weight: nil, and the decoder uses wte.
	d, err := cuda.NewDecoder(dev, shape, func(name string) []float32 { return m.named[name] })
	if err != nil {
		return nil, err
	}
	return &GPUDecoder{d}, nil
}
