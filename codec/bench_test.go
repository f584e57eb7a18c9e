package codec

import "testing"

// BenchmarkCodecs measures encode+decode of one activation-sized tensor (B 8, T 128,
// d 256) per iteration. MB/s counts fp32 input bytes; bytes/value is the wire size.
func BenchmarkCodecs(b *testing.B) {
	const d = 256
	x := activations(8*128*d, d, 5)
	for _, c := range Table() {
		b.Run(c.Name(), func(b *testing.B) {
			y := make([]float32, len(x))
			var sc Scratch
			b.SetBytes(int64(4 * len(x)))
			var wire int
			for b.Loop() {
				var err error
				wire, err = c.RoundTrip(&sc, x, y)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(wire)/float64(len(x)), "bytes/value")
		})
	}
}

func TestTableRoundTrips(t *testing.T) {
	x := activations(4096+5, 64, 6)
	y := make([]float32, len(x))
	for _, c := range Table() {
		var sc Scratch
		wire, err := c.RoundTrip(&sc, x, y)
		if err != nil {
			t.Fatalf("%s: %v", c.Name(), err)
		}
		if bpv := float64(wire) / float64(len(x)); c.Kind == Int8 && !c.Zstd && bpv > 1.1 {
			t.Errorf("%s: %.3f bytes/value, want <= 1.1", c.Name(), bpv)
		}
	}
}
