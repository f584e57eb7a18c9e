package averaging

import (
	"math"
	"math/rand/v2"
	"testing"
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
