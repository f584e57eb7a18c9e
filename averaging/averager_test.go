package averaging

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"swarmnode/codec"
)

type member struct {
	h   host.Host
	src *vecSource
	avg *Averager
	bwc *metrics.BandwidthCounter
}

// newGroup starts n connected members, each averaging its own vector.
func newGroup(t *testing.T, n int, vecs [][]float32, weights []float64, o Options) []*member {
	t.Helper()
	var hs []host.Host
	ms := make([]*member, n)
	for i := range ms {
		bwc := metrics.NewBandwidthCounter()
		h := newHost(t, bwc)
		hs = append(hs, h)
		ms[i] = &member{h: h, bwc: bwc, src: &vecSource{vec: append([]float32(nil), vecs[i]...), samples: weights[i]}}
	}
	connectAll(t, hs)
	for _, m := range ms {
		oo := o
		oo.Run, oo.Key = "test", "stage-1"
		a, err := New(m.h, ids(hs), m.src, oo)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		m.avg = a
	}
	return ms
}

// roundAll runs round r on every member at once.
func roundAll(ms []*member, r uint64) ([]Result, []error) {
	res := make([]Result, len(ms))
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() { res[i], errs[i] = m.avg.Round(context.Background(), r) })
	}
	wg.Wait()
	return res, errs
}

func TestWeightedMeanFourHolders(t *testing.T) {
	const n = 50_021 // odd: shards and chunks of uneven sizes
	for _, tc := range []struct {
		kind codec.Kind
		tol  func(maxAbs float64) float64
	}{
		{codec.FP32, func(m float64) float64 { return 4e-7 * math.Max(1, m) }},
		{codec.BF16, func(m float64) float64 { return 2 * m / 256 }},
		{codec.Int8, func(m float64) float64 { return 2 * m / 127 }},
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tc.kind)))
			vecs := make([][]float32, 4)
			for i := range vecs {
				vecs[i] = randVec(rng, n, float64(i+1))
			}
			weights := []float64{1, 2, 3, 10}
			reg := prometheus.NewRegistry()
			ms := newGroup(t, 4, vecs, weights, Options{
				Codec: tc.kind, ChunkFloats: 4096, Deadline: 20 * time.Second, Matchmaking: 3 * time.Second,
			})
			// Member 0 trains during the round: its steps must survive the average.
			ms[0].src.afterRead = func(v []float32) {
				for k := range v {
					v[k] += 1
				}
			}
			ms[1].avg.Close()
			a1, err := New(ms[1].h, ids([]host.Host{ms[0].h, ms[1].h, ms[2].h, ms[3].h}), ms[1].src,
				Options{Run: "test", Key: "stage-1", Codec: tc.kind, ChunkFloats: 4096, Deadline: 20 * time.Second, Matchmaking: 3 * time.Second, Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a1.Close() })
			ms[1].avg = a1

			res, errs := roundAll(ms, 7)
			for i := range ms {
				if errs[i] != nil {
					t.Fatalf("member %d: %v", i, errs[i])
				}
				if len(res[i].Members) != 4 || res[i].Averaged != 1 || res[i].Dropped != 0 {
					t.Fatalf("member %d: %+v", i, res[i])
				}
			}
			want := weightedMean(vecs, weights)
			maxAbs := 0.0
			for _, v := range vecs {
				for _, x := range v {
					maxAbs = math.Max(maxAbs, math.Abs(float64(x)))
				}
			}
			tol := tc.tol(maxAbs)
			for i, m := range ms {
				shift := 0.0
				if i == 0 {
					shift = 1
				}
				worst := 0.0
				for k, x := range m.src.vec {
					worst = math.Max(worst, math.Abs(float64(x)-want[k]-shift))
				}
				if worst > tol {
					t.Errorf("member %d: max error %g > %g", i, worst, tol)
				}
			}
			st := a1.Stats()
			if st.Rounds != 1 || st.LastGroupSize != 4 || st.Skipped != 0 || st.Failures != 0 {
				t.Errorf("stats %+v", st)
			}
			fams, err := reg.Gather()
			if err != nil || len(fams) != 6 {
				t.Fatalf("registry holds %d metric families (%v), want 6", len(fams), err)
			}
			for _, f := range fams {
				if f.GetName() == "swarmnode_averaging_rounds_total" && f.GetMetric()[0].GetCounter().GetValue() != 1 {
					t.Errorf("rounds_total %v", f.GetMetric()[0].GetCounter().GetValue())
				}
			}
		})
	}
	waitNoGoroutines(t)
}

// TestBytesSentPerMember checks the traffic of a round against the butterfly's
// 2·(G−1)/G × vector size.
func TestBytesSentPerMember(t *testing.T) {
	const n, g = 1 << 20, 4
	rng := rand.New(rand.NewPCG(2, 2))
	vecs := make([][]float32, g)
	for i := range vecs {
		vecs[i] = randVec(rng, n, 1)
	}
	ms := newGroup(t, g, vecs, []float64{1, 1, 1, 1}, Options{Deadline: 30 * time.Second, Matchmaking: 3 * time.Second})
	before := make([]int64, g)
	for i, m := range ms {
		before[i] = m.bwc.GetBandwidthTotals().TotalOut
	}
	_, errs := roundAll(ms, 1)
	time.Sleep(1500 * time.Millisecond) // the counters' meters are swept once a second
	ideal := 2 * float64(g-1) / g * 4 * n
	for i, m := range ms {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		sent := float64(m.bwc.GetBandwidthTotals().TotalOut - before[i])
		ratio := sent / ideal
		t.Logf("member %d sent %.0f bytes, %.4f × 2(G-1)/G × vector", i, sent, ratio)
		if ratio < 1 || ratio > 1.02 {
			t.Errorf("member %d sent %.4f × the ideal traffic", i, ratio)
		}
	}
}

// TestMemberKilledBeforeSending kills a member right after its group is confirmed:
// the survivors must finish by the deadline with the survivors' mean everywhere
// but in the dead member's shard, which keeps their local values.
func TestMemberKilledBeforeSending(t *testing.T) {
	const n = 40_000
	rng := rand.New(rand.NewPCG(3, 3))
	vecs := make([][]float32, 4)
	for i := range vecs {
		vecs[i] = randVec(rng, n, 1)
	}
	weights := []float64{4, 3, 2, 1}
	o := Options{ChunkFloats: 1000, Deadline: 8 * time.Second, Matchmaking: 2 * time.Second, StallTimeout: 6 * time.Second}
	ms := newGroup(t, 4, vecs, weights, o)
	view := assign(roundKey("test", "stage-1", 3), ids([]host.Host{ms[0].h, ms[1].h, ms[2].h, ms[3].h}), ms[0].h.ID(), 4)
	victim := -1
	for i, m := range ms {
		if m.h.ID() != view[0] { // not the leader, whose confirmations must go out
			victim = i
			break
		}
	}
	vid := ms[victim].h.ID()
	ms[victim].avg.o.OnGroup = func(uint64, []peer.ID) { ms[victim].h.Close() }

	start := time.Now()
	res, errs := roundAll(ms, 3)
	took := time.Since(start)
	if took > o.Deadline+time.Second {
		t.Errorf("round took %s, deadline %s", took, o.Deadline)
	}
	var sv [][]float32
	var sw []float64
	for i := range ms {
		if i != victim {
			sv, sw = append(sv, vecs[i]), append(sw, weights[i])
		}
	}
	want := weightedMean(sv, sw)
	for i, m := range ms {
		if i == victim {
			continue
		}
		if errs[i] != nil {
			t.Fatalf("survivor %d: %v", i, errs[i])
		}
		r := res[i]
		vi := -1
		for j, p := range r.Members {
			if p == vid {
				vi = j
			}
		}
		if len(r.Members) != 4 || vi < 0 || r.Dropped == 0 {
			t.Fatalf("survivor %d: %+v", i, r)
		}
		lo, hi := shardRange(n, 4, vi)
		for k, x := range m.src.vec {
			ref := want[k]
			if k >= lo && k < hi {
				ref = float64(vecs[i][k])
			}
			if math.Abs(float64(x)-ref) > 1e-6 {
				t.Fatalf("survivor %d value %d (victim's shard [%d,%d)): %v, want %v", i, k, lo, hi, x, ref)
			}
		}
		if st := m.avg.Stats(); st.Failures != 1 || st.Rounds != 1 {
			t.Errorf("survivor %d stats %+v", i, st)
		}
	}
	waitNoGoroutines(t)
}

// TestMemberKilledMidTransfer closes a member's host while parts stream: every
// chunk a survivor applied must be a whole average (of all four or of the three
// survivors), never a blend, and the round must end by its deadline.
func TestMemberKilledMidTransfer(t *testing.T) {
	const n, cf = 1 << 21, 1 << 14
	rng := rand.New(rand.NewPCG(4, 4))
	vecs := make([][]float32, 4)
	for i := range vecs {
		vecs[i] = randVec(rng, n, 1)
	}
	weights := []float64{1, 1, 1, 1}
	o := Options{ChunkFloats: cf, Deadline: 20 * time.Second, Matchmaking: 3 * time.Second}
	ms := newGroup(t, 4, vecs, weights, o)
	const victim = 2
	// The victim dies a third of the way through reducing its shard, while its own
	// parts are still streaming to the others.
	var reduced int
	ms[victim].avg.o.Reducer = func(parts [][]float32, w []float64, out []float32) error {
		if reduced++; reduced == (n/4/cf)/3 {
			ms[victim].h.Close()
		}
		return Mean(parts, w, out)
	}
	start := time.Now()
	res, errs := roundAll(ms, 5)
	took := time.Since(start)
	if took > o.Deadline+time.Second {
		t.Errorf("round took %s, deadline %s", took, o.Deadline)
	}
	all := weightedMean(vecs, weights)
	surv := weightedMean([][]float32{vecs[0], vecs[1], vecs[3]}, []float64{1, 1, 1})
	for i, m := range ms {
		if i == victim {
			continue
		}
		if errs[i] != nil && !errors.Is(errs[i], ErrSkipped) {
			t.Logf("survivor %d: %v", i, errs[i])
		}
		kinds := map[string]int{}
		for lo := 0; lo < n; lo += cf {
			hi := min(lo+cf, n)
			kind := ""
			for _, c := range []struct {
				name string
				ref  func(k int) float64
			}{
				{"all", func(k int) float64 { return all[k] }},
				{"survivors", func(k int) float64 { return surv[k] }},
				{"local", func(k int) float64 { return float64(vecs[i][k]) }},
			} {
				ok := true
				for k := lo; k < hi && ok; k++ {
					ok = math.Abs(float64(m.src.vec[k])-c.ref(k)) < 1e-6
				}
				if ok {
					kind = c.name
					break
				}
			}
			if kind == "" {
				t.Fatalf("survivor %d chunk at %d is neither an average nor local", i, lo)
			}
			kinds[kind]++
		}
		t.Logf("survivor %d: %v chunks, result %+v", i, kinds, res[i])
		if kinds["local"] == 0 || kinds["local"] == n/cf {
			t.Errorf("survivor %d: the victim's shard should stay local and the rest averaged: %v", i, kinds)
		}
	}
	waitNoGoroutines(t)
}

// TestSkippedRound: a holder whose leader never answers skips the round within the
// matchmaking window and counts it.
func TestSkippedRound(t *testing.T) {
	h := newHost(t, nil)
	ghost := newHost(t, nil) // a holder in the view that runs no averager
	connectAll(t, []host.Host{h, ghost})
	src := &vecSource{vec: []float32{1, 2, 3}, samples: 1}
	o := Options{Run: "test", Key: "s", Matchmaking: 500 * time.Millisecond, Deadline: 5 * time.Second}
	a, err := New(h, PeerList{h.ID(), ghost.ID()}, src, o)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for r := uint64(1); r <= 3; r++ {
		start := time.Now()
		_, err := a.Round(context.Background(), r)
		if !errors.Is(err, ErrSkipped) {
			t.Fatalf("round %d: %v, want skipped", r, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("skipped round took %s", d)
		}
	}
	st := a.Stats()
	if st.Skipped != 3 || st.Rounds != 0 || st.LastSkip == "" {
		t.Errorf("stats %+v", st)
	}
	if src.vec[0] != 1 || src.samples != 1 {
		t.Errorf("a skipped round touched the source: %v %v", src.vec, src.samples)
	}
	// Alone in the stage: skipped at once.
	b, err := New(ghost, PeerList{}, &vecSource{vec: []float32{1}}, o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Round(context.Background(), 1); !errors.Is(err, ErrSkipped) {
		t.Fatalf("alone: %v", err)
	}
	waitNoGoroutines(t)
}

// TestDifferentViews: holders that disagree on membership still agree on one
// group through the leader's confirmation, and over rounds groups reshuffle.
func TestDifferentViews(t *testing.T) {
	const n = 6
	var hs []host.Host
	srcs := make([]*vecSource, n)
	for i := 0; i < n; i++ {
		hs = append(hs, newHost(t, nil))
		srcs[i] = &vecSource{vec: []float32{float32(i)}, samples: 1}
	}
	connectAll(t, hs)
	all := ids(hs)
	avs := make([]*Averager, n)
	for i := range hs {
		view := all
		if i == 0 {
			view = all[:n-1] // holder 0 has not heard of the last one yet
		}
		a, err := New(hs[i], view, srcs[i], Options{Run: "test", Key: "k", GroupSize: 3, Matchmaking: time.Second, Deadline: 4 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		avs[i] = a
	}
	pairs := map[[2]int]bool{}
	for r := uint64(1); r <= 6; r++ {
		res := make([]Result, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, a := range avs {
			wg.Go(func() { res[i], errs[i] = a.Round(context.Background(), r) })
		}
		wg.Wait()
		// Every two members that formed a group report the same group.
		for i := range res {
			if errs[i] != nil {
				if !errors.Is(errs[i], ErrSkipped) {
					t.Fatalf("round %d member %d: %v", r, i, errs[i])
				}
				continue
			}
			for j := range res {
				if errs[j] == nil && slices.Contains(res[i].Members, hs[j].ID()) {
					if !slices.Equal(res[i].Members, res[j].Members) {
						t.Fatalf("round %d: members %d and %d disagree", r, i, j)
					}
					pairs[[2]int{i, j}] = true
				}
			}
		}
	}
	if len(pairs) < 2*n { // more than any fixed partition into pairs and triples gives
		t.Errorf("groups did not reshuffle over rounds: %d ordered pairs met", len(pairs))
	}
	for i, a := range avs {
		a.mu.Lock()
		if len(a.lobbies) != 0 || len(a.rounds) != 0 {
			t.Errorf("member %d keeps %d lobbies and %d rounds after its rounds", i, len(a.lobbies), len(a.rounds))
		}
		a.mu.Unlock()
	}
	waitNoGoroutines(t)
}

// blockingSource stands for a member whose trainer holds its lock: every Read
// blocks until release is closed.
type blockingSource struct {
	*vecSource
	release chan struct{}
}

func (s blockingSource) Read(off int, dst []float32) {
	<-s.release
	s.vecSource.Read(off, dst)
}

// TestHangingMember: a member that joins and then sends nothing (its source
// blocks) is left out by the others after StallTimeout, as sender and as
// reducer, and they finish well before the deadline.
func TestHangingMember(t *testing.T) {
	const n = 30_000
	rng := rand.New(rand.NewPCG(6, 6))
	vecs := make([][]float32, 4)
	for i := range vecs {
		vecs[i] = randVec(rng, n, 1)
	}
	weights := []float64{1, 2, 3, 4}
	o := Options{ChunkFloats: 2000, Deadline: 10 * time.Second, Matchmaking: 2 * time.Second, StallTimeout: 300 * time.Millisecond}
	ms := newGroup(t, 4, vecs, weights, o)
	const hung = 3
	release := make(chan struct{})
	ms[hung].avg.src = blockingSource{ms[hung].src, release}

	res := make([]Result, 4)
	errs := make([]error, 4)
	var wg, hw sync.WaitGroup
	for i, m := range ms {
		g := &wg
		if i == hung {
			g = &hw
		}
		g.Go(func() { res[i], errs[i] = m.avg.Round(context.Background(), 11) })
	}
	wg.Wait()
	close(release)
	hw.Wait()
	want := weightedMean(vecs[:3], weights[:3])
	for i := range 3 {
		if errs[i] != nil {
			t.Fatalf("member %d: %v", i, errs[i])
		}
		if res[i].Took >= o.Deadline/2 {
			t.Errorf("member %d took %s with a %s stall timeout", i, res[i].Took, o.StallTimeout)
		}
		hi := -1
		for j, p := range res[i].Members {
			if p == ms[hung].h.ID() {
				hi = j
			}
		}
		lo, up := shardRange(n, 4, hi)
		for k, x := range ms[i].src.vec {
			ref := want[k]
			if k >= lo && k < up {
				ref = float64(vecs[i][k])
			}
			if math.Abs(float64(x)-ref) > 1e-6 {
				t.Fatalf("member %d value %d: %v, want %v", i, k, x, ref)
			}
		}
	}
	waitNoGoroutines(t)
}
