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
