package pipeline

import (
	"testing"
	"time"
)

// TestRebalancerWaitsForASettledPicture replays what a peer sees while another
// holder moves: the mover vanishes from the strong stage before it shows up in
// the weak one. A decision on that half-updated picture would send a second
// peer after the first.
func TestRebalancerWaitsForASettledPicture(t *testing.T) {
	r := mapRouter{0: {{ID: "a", Throughput: 300}, {ID: "b", Throughput: 250}, {ID: "e", Throughput: 240}}, 1: {{ID: "c", Throughput: 20}}}
	rb := &Rebalancer{Router: r, Stages: 2, Self: "b", Ratio: 0.5, Settle: 2 * time.Second}
	now := time.Now()
	if k := rb.Decide(now, 0); k != -1 {
		t.Fatalf("b is not the designated mover while a is there: %d", k)
	}
	// a leaves stage 0 and is not yet seen in stage 1.
	r[0] = r[0][1:]
	if k := rb.Decide(now.Add(time.Second), 0); k != -1 {
		t.Fatalf("moved on a picture that just changed: %d", k)
	}
	// a shows up in stage 1 before the picture has settled: nobody else moves.
	r[1] = append(r[1], Holder{ID: "a", Throughput: 300})
	for s := 2; s < 6; s++ {
		if k := rb.Decide(now.Add(time.Duration(s)*time.Second), 0); k != -1 {
			t.Fatalf("second mover at +%ds: %d", s, k)
		}
	}
	// Had a really gone, the picture settles without it and b moves.
	r[1] = r[1][:1]
	rb.Decide(now.Add(6*time.Second), 0)
	if k := rb.Decide(now.Add(9*time.Second), 0); k != 1 {
		t.Fatalf("after the picture settled without a: %d, want 1", k)
	}
}
