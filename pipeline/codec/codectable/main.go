// Command codectable prints the wire codecs' size and speed on activation-like data:
// bytes per value and encode+decode throughput (GB/s of fp32 input), one row per
// codec setting. Run: go run ./pipeline/codec/codectable
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"swarmnode/pipeline/codec"
)

func main() {
	d := flag.Int("d", 256, "model width (channels)")
	n := flag.Int("n", 8*128, "rows (B*T)")
	dur := flag.Duration("time", 300*time.Millisecond, "measuring time per codec")
	flag.Parse()
	x := activations(*n**d, *d)
	y := make([]float32, len(x))
	fmt.Printf("activation-like data: %d x %d float32 (%.1f MiB)\n", *n, *d, float64(4*len(x))/(1<<20))
	fmt.Printf("%-16s %12s %12s %14s\n", "codec", "bytes/value", "ratio", "enc+dec GB/s")
	for _, s := range codec.Table() {
		var sc codec.Scratch
		var wire, iters int
		start := time.Now()
		for time.Since(start) < *dur || iters == 0 {
			var err error
			if wire, err = s.RoundTrip(&sc, x, y); err != nil {
				fmt.Fprintln(os.Stderr, s.Name(), err)
				os.Exit(1)
			}
			iters++
		}
		el := time.Since(start).Seconds()
		bpv := float64(wire) / float64(len(x))
		fmt.Printf("%-16s %12.3f %11.2fx %14.2f\n", s.Name(), bpv, 4/bpv, float64(iters*4*len(x))/el/1e9)
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
