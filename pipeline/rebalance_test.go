package pipeline

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

type mapRouter map[int][]Holder

func (r mapRouter) Holders(k int) []Holder { return append([]Holder(nil), r[k]...) }
func (mapRouter) MarkDown(peer.ID)         {}

func TestRebalancerDecide(t *testing.T) {
	h := func(id string, tp float64) Holder { return Holder{ID: peer.ID(id), Throughput: tp} }
	for _, tc := range []struct {
		name    string
		r       mapRouter
		self    string
		current int
		want    int
	}{
		{"balanced", mapRouter{0: {h("a", 100), h("b", 100)}, 1: {h("c", 180)}, 2: {h("d", 150)}}, "a", 0, -1},
		{"weak stage pulls the fastest of the strongest", mapRouter{0: {h("a", 100), h("b", 120), h("e", 90)}, 1: {h("c", 100)}, 2: {h("d", 20)}}, "b", 0, 2},
		{"not the designated mover", mapRouter{0: {h("a", 100), h("b", 120), h("e", 90)}, 1: {h("c", 100)}, 2: {h("d", 20)}}, "a", 0, -1},
		{"not the strongest stage", mapRouter{0: {h("a", 100), h("b", 120), h("e", 90)}, 1: {h("c", 100), h("f", 10)}, 2: {h("d", 20)}}, "c", 1, -1},
		{"empty stage", mapRouter{0: {h("a", 50), h("b", 60)}, 1: {h("c", 50)}, 2: {}}, "b", 0, 2},
		{"last holder never leaves", mapRouter{0: {h("a", 500)}, 1: {h("c", 50)}, 2: {}}, "a", 0, -1},
		// Moving b would leave stage 0 at 40, below stage 1's 50: it would only
		// swap which stage is weak, and invite the move back.
		{"no flapping", mapRouter{0: {h("a", 40), h("b", 60)}, 1: {h("c", 50)}}, "b", 0, -1},
		{"unknown throughput counts as mean", mapRouter{0: {h("a", 100), h("b", 0)}, 1: {h("c", 10)}}, "a", 0, 1},
	} {
		rb := &Rebalancer{Router: tc.r, Stages: max(2, len(tc.r)), Self: peer.ID(tc.self), Ratio: 0.5}
		if got := rb.Decide(time.Now(), tc.current); got != tc.want {
			t.Errorf("%s: Decide = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestRebalancerCooldown(t *testing.T) {
	r := mapRouter{0: {{ID: "a", Throughput: 100}, {ID: "b", Throughput: 100}}, 1: {{ID: "c", Throughput: 10}}}
	rb := &Rebalancer{Router: r, Stages: 2, Self: "a", Ratio: 0.5, Cooldown: time.Minute}
	now := time.Now()
	if k := rb.Decide(now, 0); k != -1 {
		t.Fatalf("moved before measuring: %d", k)
	}
	if k := rb.Decide(now.Add(61*time.Second), 0); k != 1 {
		t.Fatalf("after the cooldown: %d, want 1", k)
	}
	if k := rb.Decide(now.Add(90*time.Second), 0); k != -1 {
		t.Fatalf("moved again within the cooldown: %d", k)
	}
}

// TestRebalancerFillsEmptyStages: stages without a holder pull peers over
// before any throughput is known and without waiting for the cooldown, one
// peer per empty stage, and never a stage's last holder.
func TestRebalancerFillsEmptyStages(t *testing.T) {
	r := mapRouter{0: {{ID: "a"}, {ID: "b"}, {ID: "c"}, {ID: "d"}}, 1: {}, 2: {}}
	want := map[string]int{"a": 1, "b": 2, "c": -1, "d": -1}
	now := time.Now()
	for self, k := range want {
		rb := &Rebalancer{Router: r, Stages: 3, Self: peer.ID(self), Ratio: 0.5, Cooldown: time.Hour, Settle: time.Hour, Rescue: 2 * time.Second}
		if got := rb.Decide(now, 0); got != -1 {
			t.Fatalf("%s moved before the picture settled: %d", self, got)
		}
		if got := rb.Decide(now.Add(2*time.Second), 0); got != k {
			t.Errorf("%s: Decide = %d, want %d", self, got, k)
		}
	}
	lone := mapRouter{0: {{ID: "a"}}, 1: {{ID: "b"}}, 2: {}}
	rb := &Rebalancer{Router: lone, Stages: 3, Self: "a", Ratio: 0.5, Rescue: time.Second}
	rb.Decide(now, 0)
	if got := rb.Decide(now.Add(time.Minute), 0); got != -1 {
		t.Errorf("a stage's last holder left it: %d", got)
	}
}

// TestRebalancerWaitsOutAPartition: once the run has trained, a stage that
// lost every holder is rescued only after LostGrace (its holders may be
// behind a partition, with the stage's state); a stage whose holders come
// back in time is left alone, and an untrained run rescues at once.
func TestRebalancerWaitsOutAPartition(t *testing.T) {
	r := mapRouter{0: {{ID: "a"}, {ID: "b"}}, 1: {}}
	now := time.Now()
	trained := true
	rb := &Rebalancer{Router: r, Stages: 2, Self: "a", Ratio: 0.5, Rescue: time.Second,
		Trained: func() bool { return trained }, LostGrace: 2 * time.Minute}
	rb.Decide(now, 0)
	if got := rb.Decide(now.Add(time.Minute), 0); got != -1 {
		t.Fatalf("moved to the empty stage of a trained run after 1 min of 2: %d", got)
	}
	r[1] = []Holder{{ID: "c"}} // the partition heals
	if got := rb.Decide(now.Add(90*time.Second), 0); got != -1 {
		t.Fatalf("moved with every stage held: %d", got)
	}
	r[1] = nil // cut again: the grace starts over
	rb.Decide(now.Add(100*time.Second), 0)
	if got := rb.Decide(now.Add(200*time.Second), 0); got != -1 {
		t.Fatalf("moved 100 s after the stage emptied again: %d", got)
	}
	if got := rb.Decide(now.Add(221*time.Second), 0); got != 1 {
		t.Fatalf("did not rescue a stage empty for 2 min: %d", got)
	}
	trained = false
	fresh := &Rebalancer{Router: mapRouter{0: {{ID: "a"}, {ID: "b"}}, 1: {}}, Stages: 2, Self: "a", Ratio: 0.5, Rescue: time.Second,
		Trained: func() bool { return trained }, LostGrace: 2 * time.Minute}
	fresh.Decide(now, 0)
	if got := fresh.Decide(now.Add(time.Second), 0); got != 1 {
		t.Fatalf("an untrained run's empty stage waited: %d", got)
	}
}
