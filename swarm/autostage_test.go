package swarm

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"swarmnode/dht"
)

func TestChooseStage(t *testing.T) {
	h := func(id string, tp float64) dht.Holder { return dht.Holder{Peer: peerID(id), Throughput: tp} }
	cases := []struct {
		holders map[int][]dht.Holder
		want    int
	}{
		{map[int][]dht.Holder{}, 0},
		{map[int][]dht.Holder{0: {h("a", 1)}}, 1},
		{map[int][]dht.Holder{0: {h("a", 1), h("d", 1)}, 1: {h("b", 5)}, 2: {}}, 2},
		{map[int][]dht.Holder{0: {h("a", 1), h("d", 1)}, 1: {h("b", 5)}, 2: {h("c", 3), h("e", 3)}}, 1},
		// Our own entry does not count: we are choosing where to be.
		{map[int][]dht.Holder{0: {h("self", 1)}, 1: {h("b", 5)}, 2: {h("c", 3)}}, 0},
	}
	for i, c := range cases {
		if got := ChooseStage(3, c.holders, peerID("self"), nil); got != c.want {
			t.Errorf("case %d: ChooseStage = %d, want %d", i, got, c.want)
		}
	}
}

// TestChooseStageSpreadsTies: joiners with the same picture pick among all
// the neediest stages, never another.
func TestChooseStageSpreadsTies(t *testing.T) {
	hs := map[int][]dht.Holder{0: {{Peer: peerID("a")}}}
	rnd := rand.New(rand.NewPCG(1, 2))
	picked := map[int]int{}
	for range 300 {
		picked[ChooseStage(4, hs, peerID("self"), rnd)]++
	}
	if picked[0] != 0 || picked[1] == 0 || picked[2] == 0 || picked[3] == 0 {
		t.Fatalf("picks per stage %v: want stages 1, 2 and 3 only, each some times", picked)
	}
}

// TestAutoStageFillsEmptyStage: a joiner looks up the holders itself and
// announces the empty stage at once.
func TestAutoStageFillsEmptyStage(t *testing.T) {
	a := startTestNode(t, testOptions(t, 0))
	ob := testOptions(t, 1)
	ob.Bootstrap = []string{a.Addrs()[0].String()}
	startTestNode(t, ob)
	oc := testOptions(t, -1)
	oc.Bootstrap = ob.Bootstrap
	c := startTestNode(t, oc)
	ctx, cancel := context.WithTimeout(t.Context(), autoStageTimeout)
	defer cancel()
	if k := c.AutoStage(ctx); k != 2 {
		t.Fatalf("AutoStage = %d, want 2 (the empty stage)", k)
	}
	if s := c.DHT().Self().Stage; s != 2 {
		t.Fatalf("announced stage %d, want 2", s)
	}
	if err := c.SetStage(3); err == nil {
		t.Fatal("SetStage accepted a stage beyond the run")
	}
}

// TestAutoStageSimultaneousJoiners: joiners that start together, each seeing
// an empty run, end up on different stages.
func TestAutoStageSimultaneousJoiners(t *testing.T) {
	oa := testOptions(t, -1)
	a := startTestNode(t, oa)
	boot := []string{a.Addrs()[0].String()}
	picks := make(chan int, 3)
	for range 3 {
		o := testOptions(t, -1)
		o.Bootstrap = boot
		n := startTestNode(t, o)
		go func() {
			ctx, cancel := context.WithTimeout(t.Context(), autoStageTimeout)
			defer cancel()
			picks <- n.AutoStage(ctx)
		}()
	}
	seen := map[int]bool{}
	deadline := time.After(2 * autoStageTimeout)
	for range 3 {
		select {
		case k := <-picks:
			seen[k] = true
		case <-deadline:
			t.Fatal("AutoStage did not return")
		}
	}
	if len(seen) != 3 {
		t.Fatalf("3 joiners picked stages %v, want all 3 stages", seen)
	}
}
