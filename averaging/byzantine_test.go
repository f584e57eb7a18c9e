package averaging

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// Byzantine members for tests: each attack turns an honest member's vector
// (and its claimed weight) into a liar's. They run the release code otherwise.
type attack struct {
	name  string
	claim float64 // the weight the liar claims (honest members claim 1)
	// caught: the liars are evicted. Stale parameters are not: a replica
	// that lags looks the same, and the attack's pull stays within the bound.
	caught bool
	// lie returns the liar's vector, given its honest vector, the honest
	// members' mean and the mean of some rounds ago.
	lie func(rng *rand.Rand, own []float32, mean, old []float64) []float32
}

var attacks = []attack{
	{"inflated weight (×10⁶) and a shift of 1 per value", 1e6, true, func(_ *rand.Rand, own []float32, _, _ []float64) []float32 {
		return mapVec(own, func(k int, x float32) float32 { return x + 1 })
	}},
	{"random garbage (σ 10)", 1, true, func(rng *rand.Rand, own []float32, _, _ []float64) []float32 {
		return randVec(rng, len(own), 10)
	}},
	{"sign flipped", 1, true, func(_ *rand.Rand, own []float32, _, _ []float64) []float32 {
		return mapVec(own, func(_ int, x float32) float32 { return -x })
	}},
	{"scaled ×100", 1, true, func(_ *rand.Rand, own []float32, _, _ []float64) []float32 {
		return mapVec(own, func(_ int, x float32) float32 { return 100 * x })
	}},
	{"stale parameters replayed", 1, false, func(_ *rand.Rand, own []float32, mean, old []float64) []float32 {
		return mapVec(own, func(k int, x float32) float32 { return x - float32(mean[k]-old[k]) })
	}},
	{"NaN and Inf", 1, true, func(_ *rand.Rand, own []float32, _, _ []float64) []float32 {
		return mapVec(own, func(k int, x float32) float32 {
			if k%97 == 0 {
				return float32(math.Inf(1))
			}
			return float32(math.NaN())
		})
	}},
}

func mapVec(v []float32, f func(k int, x float32) float32) []float32 {
	out := make([]float32, len(v))
	for k, x := range v {
		out[k] = f(k, x)
	}
	return out
}

// TestByzantineMembers is the figure for averaging alone: 16 members,
// 7 of them Byzantine with each attack in turn. Honest members hold the
// replicas' mean plus noise of σ 0.1 per value; a liar's claim of weight is
// its own word. Each honest member's result must lie within CenteredClip's
// bound of the honest mean, shard by shard (see CenteredClip), where the plain
// weighted mean (the old reducer) is moved arbitrarily far; and every honest
// member must have evicted every liar after evictStrikes rounds.
func TestByzantineMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("16 hosts per attack")
	}
	const g, liars, n = 16, 7, 16 * 2048
	var report strings.Builder
	fmt.Fprintf(&report, "\n| attack | plain mean: error | CenteredClip: error (worst honest member) | bound | liars evicted by each honest member |\n|---|---:|---:|---:|---:|\n")
	for ai, at := range attacks {
		rng := rand.New(rand.NewPCG(7, uint64(ai)))
		mean := make([]float64, n)
		old := make([]float64, n)
		for k := range mean {
			mean[k] = rng.NormFloat64()
			old[k] = mean[k] + 0.5*rng.NormFloat64() // the replicas some steps ago
		}
		vecs, weights := make([][]float32, g), make([]float64, g)
		for i := range vecs {
			vecs[i] = mapVec(make([]float32, n), func(k int, _ float32) float32 { return float32(mean[k] + 0.1*rng.NormFloat64()) })
			weights[i] = 1
		}
		honestMean := weightedMean(vecs[liars:], weights[liars:])
		for i := range liars {
			vecs[i], weights[i] = at.lie(rng, vecs[i], honestMean, old), at.claim
		}
		ms := newGroup(t, vecs, weights, Options{GroupSize: g, ChunkFloats: n / g, Deadline: 20 * time.Second, Matchmaking: 5 * time.Second})
		for i := range liars {
			ms[i].src.stubborn = true
		}
		res, errs := roundAll(ms, 1)
		plain := weightedMean(vecs, weights)
		bounds := shardBounds(vecs, weights, liars, honestMean, g)
		worst, minEvicted := 0.0, g
		for i := liars; i < g; i++ {
			if errs[i] != nil {
				t.Fatalf("%s: honest member %d: %v", at.name, i, errs[i])
			}
			got := ms[i].src.vec
			if len(res[i].Members) != g {
				t.Fatalf("%s: honest member %d averaged in a group of %d", at.name, i, len(res[i].Members))
			}
			for j := range g {
				lo, hi := shardRange(n, g, j)
				d := distance64(got[lo:hi], honestMean[lo:hi])
				if d > bounds[j] {
					t.Errorf("%s: honest member %d, shard %d: ‖result − honest mean‖ %.3g > bound %.3g", at.name, i, j, d, bounds[j])
				}
			}
			worst = math.Max(worst, distance64(got, honestMean))
		}
		// The liars go on lying (they claim their weight again): a liar is
		// evicted once it has been an outlier in evictStrikes rounds in a row.
		for r := uint64(2); r <= evictStrikes; r++ {
			for i := range ms {
				ms[i].src.samples = weights[i]
			}
			if _, errs := roundAll(ms, r); slices.ContainsFunc(errs[liars:], func(err error) bool { return err != nil }) {
				t.Fatalf("%s: round %d: %v", at.name, r, errs)
			}
		}
		for i := liars; i < g; i++ {
			ev := ms[i].avg.Evicted()
			n := 0
			for j := range liars {
				if _, ok := ev[ms[j].h.ID()]; ok {
					n++
				}
			}
			for j := liars; j < g; j++ {
				if _, ok := ev[ms[j].h.ID()]; ok {
					t.Errorf("%s: honest member %d evicted honest member %d: %s", at.name, i, j, ev[ms[j].h.ID()])
				}
			}
			minEvicted = min(minEvicted, n)
		}
		fmt.Fprintf(&report, "| %s | %.3g | %.3g | %.3g | %d of %d |\n", at.name, distance32(plain, honestMean), worst, norm(bounds), minEvicted, liars)
		if at.caught && minEvicted < liars {
			t.Errorf("%s: an honest member evicted only %d of %d liars", at.name, minEvicted, liars)
		}
	}
	t.Logf("16 members, 7 liars, %d values; honest spread: σ 0.1 per value, ‖honest − honest mean‖ ≈ %.3g%s", n, 0.1*math.Sqrt(n), report.String())
}

// shardBounds is CenteredClip's bound on each shard j (reduced as one chunk):
// with honest parts within r of the honest mean, liars' weight share ρ = W_B/W_H
// of the bounded weights and radius τ, the result lies within
// max(r + ρτ, r(1+ρ)/(1−ρ)) of the honest mean. Liars whose parts are not finite
// never reach the reducer and count for nothing.
func shardBounds(vecs [][]float32, claims []float64, liars int, honestMean []float64, g int) []float64 {
	n := len(honestMean)
	out := make([]float64, g)
	for j := range g {
		lo, hi := j*n/g, (j+1)*n/g
		var parts [][]float32
		var ws []float64
		var honest []bool
		for i, v := range vecs {
			if !finite32(v[lo:hi]) {
				continue
			}
			parts, ws, honest = append(parts, v[lo:hi]), append(ws, claims[i]), append(honest, i >= liars)
		}
		BoundWeights(ws)
		var wb, wh, r float64
		for i, p := range parts {
			if honest[i] {
				wh += ws[i]
				r = math.Max(r, distance64(p, honestMean[lo:hi]))
			} else {
				wb += ws[i]
			}
		}
		c := newClipper(parts, ws, hi-lo)
		tau := c.radius()
		c.release()
		rho := wb / wh
		out[j] = math.Max(r+rho*tau, r*(1+rho)/(1-rho))
	}
	return out
}

func finite32(v []float32) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}

func distance32(a, b []float64) float64 {
	var s float64
	for k := range a {
		d := a[k] - b[k]
		s += d * d
	}
	return math.Sqrt(s)
}

func norm(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x * x
	}
	return math.Sqrt(s)
}

// TestCenteredClipHonestIsMean: on honest parts (similar distances) the robust
// reducer returns exactly what Mean does, and finds no outlier.
func TestCenteredClipHonestIsMean(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, g := range []int{2, 3, 4, 8} {
		parts := make([][]float32, g)
		ws := make([]float64, g)
		for i := range parts {
			parts[i], ws[i] = randVec(rng, 5000, 1), float64(1+i%3)
		}
		want, got := make([]float32, 5000), make([]float32, 5000)
		out := make([]bool, g)
		if err := Mean(parts, ws, want, nil); err != nil {
			t.Fatal(err)
		}
		if err := CenteredClip(parts, ws, got, out); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) || slices.Contains(out, true) {
			t.Errorf("%d parts: robust result differs from the mean, or outliers %v", g, out)
		}
	}
}

// TestCenteredClipOutlier: one far part moves the result by at most τ times
// its weight share and is reported; a majority of identical parts wins
// exactly.
func TestCenteredClipOutlier(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	parts := make([][]float32, 5)
	for i := range parts {
		parts[i] = randVec(rng, 4096, 1)
	}
	parts[4] = mapVec(parts[4], func(_ int, x float32) float32 { return 1000 * x })
	ws := []float64{1, 1, 1, 1, 1}
	c := newClipper(parts, ws, 4096)
	tau := c.radius()
	c.release()
	got := make([]float32, 4096)
	out := make([]bool, 5)
	if err := CenteredClip(parts, ws, got, out); err != nil {
		t.Fatal(err)
	}
	honest := weightedMean(parts[:4], ws[:4])
	if d := distance64(got, honest); d > tau/4 {
		t.Errorf("‖result − honest mean‖ %.3g > τ·W_B/W_H = %.3g", d, tau/4)
	}
	if !slices.Equal(out, []bool{false, false, false, false, true}) {
		t.Errorf("outliers %v", out)
	}
	same := [][]float32{{1, 2}, {1, 2}, {1, 2}, {9, -9}}
	two := make([]float32, 2)
	if err := CenteredClip(same, []float64{1, 1, 1, 1}, two, nil); err != nil || !slices.Equal(two, []float32{1, 2}) {
		t.Errorf("a majority of identical parts: %v %v", two, err)
	}
}

func TestBoundWeights(t *testing.T) {
	for _, tc := range []struct{ in, want []float64 }{
		{[]float64{1, 1, 1, 1e9}, []float64{1, 1, 1, 1}},
		{[]float64{3, 1, 2}, []float64{2, 1, 2}},
		{[]float64{0, 0, 5}, []float64{0, 0, 0}}, // most trained nothing: Mean weighs all equally
		{[]float64{7}, []float64{7}},
	} {
		if got := BoundWeights(slices.Clone(tc.in)); !slices.Equal(got, tc.want) {
			t.Errorf("BoundWeights(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
