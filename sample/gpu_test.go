package sample

import (
	"math"
	"math/rand/v2"
	"testing"

	"swarmnode/checkpoint"
	"swarmnode/cuda"
	"swarmnode/model"
	"swarmnode/stages"
)

// openGPU opens device 0 or skips the test, saying why.
func openGPU(t *testing.T) *cuda.Device {
	t.Helper()
	if err := cuda.Available(); err != nil {
		t.Skipf("no GPU: %v", err)
	}
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

// TestGPUDecoderMatchesCPU: the GPU decoder's logits equal the CPU
// decoder's, token by token, for the small trained model and for a wider one
// whose cache outgrows a thread block's 128 positions; it refuses a token
// outside the vocabulary and a position past the model's.
func TestGPUDecoderMatchesCPU(t *testing.T) {
	dev := openGPU(t)
	_, small := exported(t)
	wide := model.Config{Vocab: 50, DModel: 64, NHead: 4, NLayer: 2, SeqLen: 300}
	ch, err := stages.NewChain(wide, []int{1, 1}, 7)
	if err != nil {
		t.Fatal(err)
	}
	var parts []checkpoint.Part
	for _, s := range ch.Stages() {
		parts = append(parts, checkpoint.Part{Views: s.Views(), Params: s.Params()})
	}
	wideDir := t.TempDir()
	if err := checkpoint.Export(wideDir, wide, parts, nil); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{small, wideDir} {
		m, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		g, err := NewGPUDecoder(dev, m)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		c := m.Decoder()
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range m.Positions {
			tok := int32(rng.IntN(m.Vocab))
			want, err := c.Next(tok)
			if err != nil {
				t.Fatal(err)
			}
			got, err := g.Next(tok)
			if err != nil {
				t.Fatal(err)
			}
			var num, den float64
			for j := range got {
				d := float64(got[j] - want[j])
				num, den = num+d*d, den+float64(want[j])*float64(want[j])
			}
			if rel := math.Sqrt(num / den); rel > 1e-4 {
				t.Fatalf("%s position %d: GPU logits differ from the CPU's by %.3g", dir, i, rel)
			}
		}
		if _, err := g.Next(1); err == nil {
			t.Fatal("ran past the model's positions")
		}
		g.Reset()
		if _, err := g.Next(int32(m.Vocab)); err == nil {
			t.Fatal("took a token outside the vocabulary")
		}
		// Generation through the GPU decoder slides its context as the CPU's does.
		a, err := Generate(g, m.Positions, []int32{1, 2}, Options{Tokens: m.Positions + 5, Temperature: 1, Seed: 3})
		if err != nil || len(a) != m.Positions+5 {
			t.Fatalf("generated %d tokens on the GPU: %v", len(a), err)
		}
	}
}
