// Command codectable prints the wire codecs' size and speed on activation-like data:
// bytes per value, encode+decode throughput (GB/s of fp32 input) and the relative
// RMS error, one row per codec setting. With -source model it measures the
// activations and input gradients that actually cross a stage boundary of a GPT
// (d 256, two stages of two blocks, B 8, T 128, on the example corpus).
// Run: go run ./codec/codectable [-source model]
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"swarmnode/codec"
	"swarmnode/data"
	"swarmnode/model"
	"swarmnode/stages"
)

func main() {
	d := flag.Int("d", 256, "model width (channels)")
	n := flag.Int("n", 8*128, "rows (B*T)")
	dur := flag.Duration("time", 300*time.Millisecond, "measuring time per codec")
	source := flag.String("source", "synthetic", "synthetic (Gaussian channels of log-normal scale) or model")
	corpus := flag.String("data", "examples/gpt/data/tinyshakespeare.txt", "corpus for -source model")
	flag.Parse()
	switch *source {
	case "synthetic":
		x := activations(*n**d, *d)
		fmt.Printf("activation-like data: %d x %d float32 (%.1f MiB)\n", *n, *d, float64(4*len(x))/(1<<20))
		table(x, *dur)
	case "model":
		act, grad, err := fromModel(*corpus)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("activations leaving stage 0 of a d 256 GPT (%d values):\n", len(act))
		table(act, *dur)
		fmt.Printf("\ngradients of those activations sent back by stage 1:\n")
		table(grad, *dur)
	default:
		fmt.Fprintf(os.Stderr, "unknown -source %q\n", *source)
		os.Exit(2)
	}
}

// fromModel runs one microbatch through a two-stage GPT and returns the
// activations stage 0 sends and the gradient stage 1 sends back.
func fromModel(path string) (act, grad []float32, err error) {
	c, err := data.Load(path, 0.1, data.Vocab)
	if err != nil {
		return nil, nil, err
	}
	cfg := model.Config{Vocab: 256, DModel: 256, NHead: 4, NLayer: 4, SeqLen: 128}
	chain, err := stages.NewChain(cfg, []int{2, 2}, 1)
	if err != nil {
		return nil, nil, err
	}
	B, T := 8, 128
	tok, tgt := c.Batch(data.Train, B, T, data.NewRNG(1, 0))
	s0, s1 := chain.Stages()[0], chain.Stages()[1]
	p0, err := s0.Forward(model.Input{B: B, T: T, Tokens: tok})
	if err != nil {
		return nil, nil, err
	}
	defer p0.Release()
	p1, err := s1.Forward(model.Input{B: B, T: T, X: p0.Out, Targets: tgt})
	if err != nil {
		return nil, nil, err
	}
	dx, err := s1.Backward(p1, nil)
	return p0.Out, dx, err
}

func table(x []float32, dur time.Duration) {
	y := make([]float32, len(x))
	var norm float64
	for _, v := range x {
		norm += float64(v) * float64(v)
	}
	fmt.Printf("%-16s %12s %12s %14s %12s\n", "codec", "bytes/value", "ratio", "enc+dec GB/s", "rel. RMSE")
	for _, s := range codec.Table() {
		var sc codec.Scratch
		var wire, iters int
		start := time.Now()
		for time.Since(start) < dur || iters == 0 {
			var err error
			if wire, err = s.RoundTrip(&sc, x, y); err != nil {
				fmt.Fprintln(os.Stderr, s.Name(), err)
				os.Exit(1)
			}
			iters++
		}
		el := time.Since(start).Seconds()
		bpv := float64(wire) / float64(len(x))
		var se float64
		for i := range x {
			d := float64(x[i] - y[i])
			se += d * d
		}
		fmt.Printf("%-16s %12.3f %11.2fx %14.2f %12.2e\n", s.Name(), bpv, 4/bpv, float64(iters*4*len(x))/el/1e9, math.Sqrt(se/norm))
	}
}

// activations: per-channel Gaussian with log-normal channel scales and a few
// outlier channels, like a transformer's residual stream.
func activations(n, d int) []float32 {
	rng := rand.New(rand.NewPCG(1, 2))
	scale := make([]float64, d)
	for j := range scale {
		scale[j] = math.Exp(rng.NormFloat64())
		if rng.IntN(32) == 0 {
			scale[j] *= 20
		}
	}
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * scale[i%d])
	}
	return x
}
