package pipeline

import (
	"math"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

type staticRouter []Holder

func (r staticRouter) Holders(int) []Holder { return r }
func (staticRouter) MarkDown(peer.ID)       {}

func TestPickerWeights(t *testing.T) {
	r := staticRouter{
		{ID: "fast", Throughput: 1000},
		{ID: "slow", Throughput: 100},
		{ID: "busy", Throughput: 1000, Queue: 9},
		{ID: "new"}, // unknown throughput counts as the mean of the known: 700
	}
	p := newPicker(r, newBackoff(time.Second, time.Minute), "", 1, nil)
	want := map[peer.ID]float64{"fast": 1000, "slow": 100, "busy": 100, "new": 700}
	total := 1900.0
	const n = 40000
	got := map[peer.ID]int{}
	for range n {
		h, ok := p.choose(0, nil)
		if !ok {
			t.Fatal("no holder")
		}
		got[h.ID]++
	}
	for id, w := range want {
		share := float64(got[id]) / n
		if math.Abs(share-w/total) > 0.02 {
			t.Errorf("%s: share %.3f, want %.3f", id, share, w/total)
		}
	}
	// Calls in flight from this peer count as queue.
	for range 9 {
		p.begin("fast")
	}
	got = map[peer.ID]int{}
	for range n {
		h, _ := p.choose(0, nil)
		got[h.ID]++
	}
	if share := float64(got["fast"]) / n; math.Abs(share-100/1000.0) > 0.02 {
		t.Errorf("fast with 9 calls in flight: share %.3f, want 0.1", share)
	}
}

func TestPickerSkipsDownAndAvoided(t *testing.T) {
	r := staticRouter{{ID: "a", Throughput: 1}, {ID: "b", Throughput: 1}, {ID: "self", Throughput: 1e9}}
	bo := newBackoff(time.Hour, 4*time.Hour)
	p := newPicker(r, bo, "self", 2, nil)
	bo.down("a", time.Now())
	for range 100 {
		if h, _ := p.choose(0, nil); h.ID != "b" {
			t.Fatalf("picked %s in backoff", h.ID)
		}
	}
	// An avoided holder is used only when nothing else is up.
	for range 100 {
		if h, ok := p.choose(0, map[peer.ID]bool{"b": true}); !ok || h.ID != "b" {
			t.Fatalf("picked %s, %v", h.ID, ok)
		}
	}
	bo.down("b", time.Now())
	if _, ok := p.choose(0, nil); ok {
		t.Fatal("picked a holder while all are down")
	}
	bo.up("a")
	if h, ok := p.choose(0, nil); !ok || h.ID != "a" {
		t.Fatalf("recovered holder not picked: %s %v", h.ID, ok)
	}
}

func TestBackoffDoubles(t *testing.T) {
	bo := newBackoff(100*time.Millisecond, time.Second)
	now := time.Now()
	var got []time.Duration
	for range 6 {
		got = append(got, bo.down("x", now))
	}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("backoffs %v", got)
		}
	}
	if !bo.isDown("x", now.Add(900*time.Millisecond)) || bo.isDown("x", now.Add(1100*time.Millisecond)) {
		t.Fatal("backoff window wrong")
	}
	bo.up("x")
	if d := bo.down("x", now); d != 100*time.Millisecond {
		t.Fatalf("after success the backoff restarts at %s", d)
	}
}

// TestBusyDoesNotEscalate: "busy" answers keep a holder out for one base
// period each time, never longer, and do not count towards a dead peer's backoff.
func TestBusyDoesNotEscalate(t *testing.T) {
	bo := newBackoff(100*time.Millisecond, time.Second)
	now := time.Now()
	for range 10 {
		bo.busy("x", now)
	}
	if !bo.isDown("x", now.Add(50*time.Millisecond)) || bo.isDown("x", now.Add(150*time.Millisecond)) {
		t.Fatal("busy window is not one base period")
	}
	if d := bo.down("x", now); d != 100*time.Millisecond {
		t.Fatalf("a failure after busy answers backs off %s, want the base", d)
	}
	bo.busy("x", now) // does not shorten a longer failure backoff
	if !bo.isDown("x", now.Add(90*time.Millisecond)) {
		t.Fatal("busy shortened a failure backoff")
	}
}

// TestPickerWeighsLinkRate: of two holders of equal compute speed, the one
// whose answers arrive over a slow link draws traffic in proportion to the rate
// it serves at across that link; answers too small to time say nothing.
func TestPickerWeighsLinkRate(t *testing.T) {
	r := staticRouter{{ID: "near", Throughput: 10000}, {ID: "far", Throughput: 10000}}
	p := newPicker(r, newBackoff(time.Second, time.Minute), "", 3, nil)
	// 1 MB answers for 1000 tokens in 1 s: 1 MB/s, 1000 B/token, so a token's
	// activations and gradient take 2 ms there: 500 tokens/s across the link.
	p.observeLink("far", 1_000_000, 1000, time.Second)
	p.observeLink("near", 1<<10, 1000, time.Second) // too small to time
	far := overLink(10000, p.links["far"])
	if math.Abs(far-1/(1/10000.0+1/500.0)) > 1 {
		t.Fatalf("far serves at %.1f tokens/s", far)
	}
	if p.links["near"] != nil {
		t.Fatal("a 1 kB answer was taken as a measure of the link")
	}
	const n = 40000
	got := 0
	for range n {
		if h, _ := p.choose(1, nil); h.ID == "far" {
			got++
		}
	}
	if share, want := float64(got)/n, far/(far+10000); math.Abs(share-want) > 0.01 {
		t.Errorf("far's share %.3f, want %.3f", share, want)
	}
}

// TestPickerDistrustsClaims: claims within claimCap of the stage's median
// stand, measured or not. A holder claiming 100× the speed its answers show
// draws no more than a typical holder; one not measured yet draws at most
// claimCap times the median claim; one measured as fast as it claims (a GPU
// among CPUs) keeps its claim.
func TestPickerDistrustsClaims(t *testing.T) {
	r := staticRouter{
		{ID: "a", Throughput: 1000}, {ID: "b", Throughput: 2000}, {ID: "c", Throughput: 1500},
		{ID: "liar", Throughput: 100_000}, {ID: "new", Throughput: 1e9}, {ID: "gpu", Throughput: 30_000},
	}
	p := newPicker(r, newBackoff(time.Second, time.Minute), "", 5, nil)
	// Every call carries 5 ms per token of shared overhead downstream.
	serve := func(id peer.ID, own float64, concurrent int) {
		perToken := 1/own + 0.005
		p.observeService(id, 1000, concurrent, time.Duration(1000*perToken/float64(concurrent)*float64(time.Second)))
	}
	serve("a", 1000, 1)
	serve("b", 2000, 2)
	serve("c", 1500, 1)
	serve("liar", 1000, 1) // as fast as a
	serve("gpu", 30_000, 3)
	const n = 100_000
	count := map[peer.ID]float64{}
	for range n {
		h, _ := p.choose(0, nil)
		count[h.ID]++
	}
	t.Logf("picks of %d: %v", n, count)
	if b, a := count["b"], count["a"]; math.Abs(b/a-2) > 0.15 {
		t.Errorf("b (claims twice a's) drew %.2f× a's picks", b/a)
	}
	if l, a := count["liar"], count["a"]; l > 1.15*a {
		t.Errorf("the liar drew %.2f× a's picks", l/a)
	}
	// The median claim of the six is 2000: the newcomer counts as 8000.
	if nw, b := count["new"], count["b"]; math.Abs(nw/b-claimCap) > 0.6 {
		t.Errorf("the unmeasured newcomer drew %.2f× b's picks, want about %d", nw/b, claimCap)
	}
	if g, a := count["gpu"], count["a"]; math.Abs(g/a-30) > 3 {
		t.Errorf("the measured GPU holder drew %.2f× a's picks, want 30", g/a)
	}
}
