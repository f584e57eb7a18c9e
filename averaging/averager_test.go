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
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"swarmnode/codec"
)

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
			maxAbs := 0.0
			for i := range vecs {
				vecs[i] = randVec(rng, n, float64(i+1))
				for _, x := range vecs[i] {
					maxAbs = math.Max(maxAbs, math.Abs(float64(x)))
				}
			}
			// The vectors' scales differ 4×, as no honest group's do: this
			// test is of the all-reduce's arithmetic, with the plain mean.
			// The weights are within BoundWeights' cap (the lower median).
			weights := []float64{1, 3, 3, 3}
			o := Options{Codec: tc.kind, ChunkFloats: 4096, Deadline: 20 * time.Second, Matchmaking: 3 * time.Second, Reducer: Mean}
			ms := newGroup(t, vecs, weights, o)
			// Member 0 trains during the round: its steps must survive the average.
			ms[0].src.afterRead = func(v []float32) {
				for k := range v {
					v[k] += 1
				}
			}
			reg := prometheus.NewRegistry()
			ms[1].registerIn(t, ms, o, reg)

			res, errs := roundAll(ms, 7)
			want := weightedMean(vecs, weights)
			for i, m := range ms {
				if errs[i] != nil {
					t.Fatalf("member %d: %v", i, errs[i])
				}
				if len(res[i].Members) != 4 || res[i].Averaged != 1 || res[i].Dropped != 0 {
					t.Fatalf("member %d: %+v", i, res[i])
				}
				shift := 0.0
				if i == 0 {
					shift = 1
				}
				worst := 0.0
				for k, x := range m.src.vec {
					worst = math.Max(worst, math.Abs(float64(x)-want[k]-shift))
				}
				if worst > tc.tol(maxAbs) {
					t.Errorf("member %d: max error %g > %g", i, worst, tc.tol(maxAbs))
				}
			}
			checkOneRound(t, ms[1].avg.Stats(), reg)
		})
	}
	waitNoGoroutines(t)
}

// registerIn replaces m's averager with one that registers its collectors in reg.
func (m *member) registerIn(t *testing.T, ms []*member, o Options, reg prometheus.Registerer) {
	m.avg.Close()
	o.Run, o.Key, o.Registerer = "test", "stage-1", reg
	a, err := New(m.h, ids(hosts(ms)), m.src, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	m.avg = a
}

// checkOneRound checks the stats and the collectors of an averager that ran one
// complete round of four.
func checkOneRound(t *testing.T, st Stats, reg prometheus.Gatherer) {
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
}

// TestBytesSentPerMember checks the traffic of a round against the butterfly's
// 2·(G−1)/G × vector size.
func TestBytesSentPerMember(t *testing.T) {
	const n, g = 1 << 20, 4
	ms, _ := newRandGroup(t, 2, n, equal(g), Options{Deadline: 30 * time.Second, Matchmaking: 3 * time.Second})
	before := make([]int64, g)
	for i, m := range ms {
		before[i] = m.sent.n.Load()
	}
	// Once every member's round has returned, so has every write of the round,
	// and each was counted as it returned.
	_, errs := roundAll(ms, 1)
	ideal := 2 * float64(g-1) / g * 4 * n
	for i, m := range ms {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		sent := float64(m.sent.n.Load() - before[i])
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
	weights := []float64{2, 1, 2, 2}
	o := Options{ChunkFloats: 1000, Deadline: 8 * time.Second, Matchmaking: 2 * time.Second, StallTimeout: 6 * time.Second}
	ms, vecs := newRandGroup(t, 3, n, weights, o)
	victim := follower(ms, 3) // not the leader, whose confirmations must go out
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
		vi := ms[victim].indexOf(res[i])
		if len(res[i].Members) != 4 || vi < 0 || res[i].Dropped == 0 {
			t.Fatalf("survivor %d: %+v", i, res[i])
		}
		lo, hi := shardRange(n, 4, vi)
		checkMeanBut(t, i, m.src.vec, vecs[i], want, lo, hi)
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
	weights := equal(4)
	o := Options{ChunkFloats: cf, Deadline: 20 * time.Second, Matchmaking: 3 * time.Second}
	ms, vecs := newRandGroup(t, 4, n, weights, o)
	const victim = 2
	ms[victim].dieWhileReducing(n, 4)
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
	ms := make([]*member, n)
	for i := range ms {
		ms[i] = &member{h: newHost(t, nil), src: &vecSource{vec: []float32{float32(i)}, samples: 1}}
	}
	hs := hosts(ms)
	connectAll(t, hs)
	all := ids(hs)
	for i, m := range ms {
		view := all
		if i == 0 {
			view = all[:n-1] // holder 0 has not heard of the last one yet
		}
		a, err := New(m.h, view, m.src, Options{Run: "test", Key: "k", GroupSize: 3, Matchmaking: time.Second, Deadline: 4 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		m.avg = a
	}
	pairs := map[[2]int]bool{}
	for r := uint64(1); r <= 6; r++ {
		res, errs := roundAll(ms, r)
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
	for i, m := range ms {
		a := m.avg
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
	weights := []float64{1, 2, 2, 2}
	o := Options{ChunkFloats: 2000, Deadline: 10 * time.Second, Matchmaking: 2 * time.Second, StallTimeout: 300 * time.Millisecond}
	ms, vecs := newRandGroup(t, 6, n, weights, o)
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
		lo, hi := shardRange(n, 4, ms[hung].indexOf(res[i]))
		checkMeanBut(t, i, ms[i].src.vec, vecs[i], want, lo, hi)
	}
	waitNoGoroutines(t)
}
