package stages

import (
	"encoding/binary"
	"math"
	"testing"

	"swarmnode/model"
)

// FuzzStageInput feeds arbitrary shapes, token ids, activations and output
// gradients (as a stage server would receive them from the network) to Forward
// and Backward: they must return an error or a result, never panic, and an
// accepted input must give outputs of the promised sizes.
func FuzzStageInput(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0}, uint8(1), uint8(4), uint8(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f}, uint8(1), uint8(1), uint8(1))
	f.Add(make([]byte, 4*2*3*tinyCfg.DModel+64), uint8(2), uint8(3), uint8(1))
	f.Add(make([]byte, 4*6*tinyCfg.DModel), uint8(1), uint8(6), uint8(2))
	f.Add([]byte{0, 0, 0xc0, 0x7f, 1, 2, 3}, uint8(3), uint8(7), uint8(1))
	split := []int{1, 1}
	s0, err := New(tinyCfg, split, 0, 1)
	if err != nil {
		f.Fatal(err)
	}
	s1, _ := New(tinyCfg, split, 1, 1)
	whole, _ := New(tinyCfg, []int{2}, 0, 1)
	f.Fuzz(func(t *testing.T, data []byte, b, tt, which uint8) {
		s := []*Stage{s0, s1, whole}[int(which)%3]
		B, T := int(b%4), int(tt%8)
		words := len(data) / 4
		ints := make([]int32, words)
		floats := make([]float32, words)
		for i := range ints {
			u := binary.LittleEndian.Uint32(data[4*i:])
			ints[i] = int32(u)
			floats[i] = math.Float32frombits(u)
		}
		n := B * T
		in := model.Input{B: B, T: T}
		if s.IsFirst() {
			in.Tokens = ints[:min(n, words)]
		} else {
			in.X = floats
		}
		if s.IsLast() {
			in.Targets = ints[:min(n, words)]
		}
		p, err := s.Forward(in)
		if err != nil {
			return
		}
		if !s.IsLast() && len(p.Out) != n*tinyCfg.DModel {
			t.Fatalf("Out has %d values for B=%d T=%d", len(p.Out), B, T)
		}
		var dout []float32
		if !s.IsLast() {
			dout = floats[:min(len(floats), n*tinyCfg.DModel)]
		}
		dx, err := s.Backward(p, dout)
		if err != nil {
			p.Release()
			return
		}
		if !s.IsFirst() && len(dx) != n*tinyCfg.DModel {
			t.Fatalf("dX has %d values for B=%d T=%d", len(dx), B, T)
		}
		s.ZeroGrad()
	})
}
