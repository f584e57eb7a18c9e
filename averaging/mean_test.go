package averaging

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestMeanZeroWeights(t *testing.T) {
	out := make([]float32, 1)
	if err := Mean([][]float32{{1}, {3}}, []float64{0, 0}, out, nil); err != nil || out[0] != 2 {
		t.Fatalf("zero weights: %v %v", out, err)
	}
	if err := Mean([][]float32{{1}, {3}}, []float64{3, 1}, out, nil); err != nil || out[0] != 1.5 {
		t.Fatalf("weighted: %v %v", out, err)
	}
	if err := Mean(nil, nil, out, nil); err == nil {
		t.Fatal("no parts accepted")
	}
}

func TestSubFinite(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 17} {
		for bad := -1; bad < n; bad++ {
			avg, d := make([]float32, n), make([]float32, n)
			for i := range avg {
				avg[i], d[i] = float32(i)+0.5, float32(2*i)
			}
			if bad >= 0 {
				avg[bad] = float32(math.Inf(-1))
			}
			if ok := subFinite(d, avg); ok != (bad < 0) {
				t.Fatalf("n=%d bad=%d: finite %v", n, bad, ok)
			}
			for i := range d {
				if i != bad && d[i] != 0.5-float32(i) {
					t.Fatalf("n=%d: delta %d is %v", n, i, d[i])
				}
			}
		}
	}
}

func TestMeanAnyGroupSize(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for g := 1; g <= 7; g++ {
		parts := make([][]float32, g)
		w := make([]float64, g)
		for i := range parts {
			parts[i] = randVec(rng, 33, 2)
			w[i] = float64(i + 1)
		}
		out := make([]float32, 33)
		if err := Mean(parts, w, out, nil); err != nil {
			t.Fatal(err)
		}
		want := weightedMean(parts, w)
		for k := range out {
			if math.Abs(float64(out[k])-want[k]) > 1e-6 {
				t.Fatalf("g=%d value %d: %v, want %v", g, k, out[k], want[k])
			}
		}
	}
}

// BenchmarkReducers times one chunk (DefaultChunkFloats values) of G parts
// of honest replicas under Mean and under CenteredClip, and reports
// CenteredClip's time as a multiple of Mean's (clip_vs_mean): the cost the
// robust reducer adds to every chunk of an honest all-reduce.
func BenchmarkReducers(b *testing.B) {
	for _, g := range []int{3, 4, 8} {
		rng := rand.New(rand.NewPCG(1, uint64(g)))
		parts := make([][]float32, g)
		ws := make([]float64, g)
		for i := range parts {
			parts[i], ws[i] = randVec(rng, DefaultChunkFloats, 1), 1
		}
		out := make([]float32, DefaultChunkFloats)
		outlier := make([]bool, g)
		timeOf := func(red Reducer) time.Duration {
			start := time.Now()
			for range 20 {
				if err := red(parts, ws, out, outlier); err != nil {
					b.Fatal(err)
				}
			}
			return time.Since(start) / 20
		}
		b.Run(fmt.Sprintf("G%d", g), func(b *testing.B) {
			var mean, clip time.Duration
			for range b.N {
				mean += timeOf(Mean)
				clip += timeOf(CenteredClip)
			}
			b.ReportMetric(float64(mean.Microseconds())/float64(b.N), "mean_us/chunk")
			b.ReportMetric(float64(clip.Microseconds())/float64(b.N), "clip_us/chunk")
			b.ReportMetric(float64(clip)/float64(mean), "clip_vs_mean")
		})
	}
}
