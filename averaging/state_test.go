package averaging

import (
	"context"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

func testState(n int) State {
	rng := rand.New(rand.NewPCG(9, 9))
	return State{Step: 42, Params: randVec(rng, n, 1), M: randVec(rng, n, 0.1), V: randVec(rng, n, 0.01)}
}

func cloneState(s State) State {
	return State{Step: s.Step, Params: slices.Clone(s.Params), M: slices.Clone(s.M), V: slices.Clone(s.V)}
}

func serve(t *testing.T, h host.Host, st State, o ServeOptions) *StateServer {
	t.Helper()
	s, err := ServeState(h, "test", "stage-0", func() (State, error) { return cloneState(st), nil }, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func sameState(t *testing.T, got, want State) {
	t.Helper()
	if got.Step != want.Step || !slices.Equal(got.Params, want.Params) || !slices.Equal(got.M, want.M) || !slices.Equal(got.V, want.V) {
		t.Fatalf("fetched state differs from the served one")
	}
}

func TestFetchStateFromOneAndTwo(t *testing.T) {
	st := testState(300_001)
	hs := []host.Host{newHost(t, nil), newHost(t, nil), newHost(t, nil)}
	connectAll(t, hs)
	// A rate cap makes each shard take a while, so both holders get work.
	o := ServeOptions{ShardFloats: 1 << 16, Rate: 40 << 20}
	s1 := serve(t, hs[1], st, o)
	serve(t, hs[2], st, o)
	ctx := context.Background()

	one, err := FetchState(ctx, hs[0], "test", "stage-0", []peer.ID{hs[1].ID()}, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, one, st)
	snap, err := s1.snapshot(0) // within Reuse: the snapshot the fetch used
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(one.Sum[:]) != snap.m.Root || len(one.From) != 1 {
		t.Errorf("sum %x, root %s, from %v", one.Sum, snap.m.Root, one.From)
	}

	two, err := FetchState(ctx, hs[0], "test", "stage-0", []peer.ID{hs[1].ID(), hs[2].ID()}, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, two, st)
	if two.Sum != one.Sum || len(two.From) != 2 {
		t.Errorf("two holders: sum %x vs %x, shards per holder %v", two.Sum, one.Sum, two.From)
	}
	t.Logf("shards per holder: %v", two.From)
	waitNoGoroutines(t)
}

func TestFetchStateChecksum(t *testing.T) {
	st := testState(100_000)
	hs := []host.Host{newHost(t, nil), newHost(t, nil), newHost(t, nil)}
	connectAll(t, hs)
	bad := ServeOptions{ShardFloats: 1 << 14, corrupt: func(shard int, b []byte) {
		if shard == 3 {
			b[len(b)/2] ^= 0x40
		}
	}}
	serve(t, hs[1], st, bad)
	serve(t, hs[2], st, ServeOptions{ShardFloats: 1 << 14})
	ctx := context.Background()

	_, err := FetchState(ctx, hs[0], "test", "stage-0", []peer.ID{hs[1].ID()}, FetchOptions{})
	if err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("corrupt holder alone: %v, want a checksum error", err)
	}
	// With an honest holder too, the corrupt shard is fetched again from it.
	got, err := FetchState(ctx, hs[0], "test", "stage-0", []peer.ID{hs[1].ID(), hs[2].ID()}, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, st)

	// Holders of different layouts: the first manifest sets the layout.
	other := testState(99_999)
	hs2 := newHost(t, nil)
	connectAll(t, []host.Host{hs[0], hs2})
	serve(t, hs2, other, ServeOptions{ShardFloats: 1 << 14})
	got, err = FetchState(ctx, hs[0], "test", "stage-0", []peer.ID{hs[2].ID(), hs2.ID()}, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, st)
	if got.From[hs2.ID()] != 0 {
		t.Errorf("a holder of another layout served shards")
	}
	// No holder serves the key.
	ctx2, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := FetchState(ctx2, hs[0], "test", "stage-9", []peer.ID{hs[1].ID()}, FetchOptions{}); err == nil {
		t.Fatal("fetch of an unserved key succeeded")
	}
	waitNoGoroutines(t)
}

// TestSnapshotReuse: manifests within Reuse share one snapshot; later ones see
// the state as it is then.
func TestSnapshotReuse(t *testing.T) {
	h := newHost(t, nil)
	var calls int
	st := testState(1000)
	provide := func() (State, error) { calls++; c := cloneState(st); c.Step = int64(calls); return c, nil }
	s, err := ServeState(h, "test", "k", provide, ServeOptions{Reuse: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, _ := s.snapshot(0)
	b, _ := s.snapshot(0)
	if a != b || calls != 1 {
		t.Fatalf("two manifests within Reuse took %d snapshots", calls)
	}
	if e, _ := s.snapshot(a.m.Step + 1); e == a || e.m.Step <= a.m.Step {
		t.Fatalf("a manifest asking for step %d got the snapshot of step %d", a.m.Step+1, e.m.Step)
	}
	s2, err := ServeState(newHost(t, nil), "test", "k", provide, ServeOptions{Reuse: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	c, _ := s2.snapshot(0)
	d, _ := s2.snapshot(0)
	if c == d || d.m.Step != c.m.Step+1 {
		t.Fatalf("Reuse < 0 served a stale snapshot: steps %d, %d", c.m.Step, d.m.Step)
	}
}

// TestFetchStateOfOneStep: shards come only from holders serving the state of
// one step (the most common, the newest among ties), and MinStep refuses older
// holders.
func TestFetchStateOfOneStep(t *testing.T) {
	old, st := testState(50_000), testState(50_000)
	st.Step++
	for i := range st.Params {
		st.Params[i] += 1
	}
	hs := []host.Host{newHost(t, nil), newHost(t, nil), newHost(t, nil), newHost(t, nil)}
	connectAll(t, hs)
	o := ServeOptions{ShardFloats: 1 << 12}
	serve(t, hs[1], old, o)
	serve(t, hs[2], st, o)
	serve(t, hs[3], st, o)
	ctx := context.Background()
	all := []peer.ID{hs[1].ID(), hs[2].ID(), hs[3].ID()}
	got, err := FetchState(ctx, hs[0], "test", "stage-0", all, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, st)
	if got.From[hs[1].ID()] != 0 {
		t.Errorf("a holder of another step served shards: %v", got.From)
	}
	if _, err := FetchState(ctx, hs[0], "test", "stage-0", all[:1], FetchOptions{MinStep: st.Step}); err == nil {
		t.Fatal("a holder older than MinStep served its state")
	}
	got, err = FetchState(ctx, hs[0], "test", "stage-0", all[:2], FetchOptions{MinStep: st.Step})
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, st)
	waitNoGoroutines(t)
}

// nudged is st with every value moved by a relative amount rel (rounding-level
// differences between honest replicas when rel is tiny).
func nudged(st State, seed uint64, rel float64) State {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := cloneState(st)
	for _, seg := range [][]float32{out.Params, out.M, out.V} {
		for k := range seg {
			seg[k] *= float32(1 + rel*rng.NormFloat64())
		}
	}
	return out
}

// TestFetchStatePoisonedHolder: a joiner asks three holders; two honest
// replicas (rounding apart) and one that serves a poisoned state, consistent
// with its own manifest. The joiner assembles the honest state, replacing the
// poisoned holder's shards, and names it. Asked only the poisoned holder and
// one honest one, it has no majority and refuses both.
func TestFetchStatePoisonedHolder(t *testing.T) {
	st := testState(200_000)
	hs := []host.Host{newHost(t, nil), newHost(t, nil), newHost(t, nil), newHost(t, nil)}
	connectAll(t, hs)
	o := ServeOptions{ShardFloats: 1 << 15}
	serve(t, hs[1], st, o)
	serve(t, hs[2], nudged(st, 2, 1e-6), o)
	poison := nudged(st, 3, 0.5)
	serve(t, hs[3], poison, o)
	ctx := context.Background()

	got, err := FetchState(ctx, hs[0], "test", "stage-0", []peer.ID{hs[1].ID(), hs[2].ID(), hs[3].ID()}, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, seg := range [][2][]float32{{got.Params, st.Params}, {got.M, st.M}, {got.V, st.V}} {
		if d := relDistance(seg[0], seg[1]); d > 1e-5 {
			t.Fatalf("the assembled state is %.3g from the honest one", d)
		}
	}
	if !slices.Equal(got.Disagreed, []peer.ID{hs[3].ID()}) {
		t.Errorf("disagreeing holders %v, want the poisoner %s", got.Disagreed, hs[3].ID())
	}
	if got.From[hs[3].ID()] == 0 {
		t.Log("the poisoner served no shard this time: the replacement path was not exercised")
	}

	_, err = FetchState(ctx, hs[0], "test", "stage-0", []peer.ID{hs[1].ID(), hs[3].ID()}, FetchOptions{})
	if !errors.Is(err, ErrHoldersDisagree) {
		t.Fatalf("one honest holder and one poisoner: %v, want ErrHoldersDisagree", err)
	}
	waitNoGoroutines(t)
}

// TestFetchStateDriftedReplicas: two honest holders whose replicas drifted
// 1% apart (all-reduces that failed in part under churn) have no majority
// between them, yet a newcomer takes the assembled state: they lie within
// DriftTolerance. A poisoned copy beyond it is still refused.
func TestFetchStateDriftedReplicas(t *testing.T) {
	st := testState(100_000)
	hs := []host.Host{newHost(t, nil), newHost(t, nil), newHost(t, nil)}
	connectAll(t, hs)
	o := ServeOptions{ShardFloats: 1 << 15}
	serve(t, hs[1], st, o)
	serve(t, hs[2], nudged(st, 5, 1e-2), o)
	got, err := FetchState(context.Background(), hs[0], "test", "stage-0", []peer.ID{hs[1].ID(), hs[2].ID()}, FetchOptions{})
	if err != nil {
		t.Fatalf("drifted replicas: %v", err)
	}
	if d := relDistance(got.Params, st.Params); d > 2e-2 {
		t.Fatalf("the assembled state is %.3g from either replica", d)
	}
	waitNoGoroutines(t)
}
