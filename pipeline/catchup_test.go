package pipeline

import (
	"context"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/model"
)

// TestWorkerCatchesUpAfterReload: a holder behind records the steps its stage
// takes while it reloads the state; loaded with a state from before them, it
// replays them and stands on the other holder's parameters, its pending
// gradients kept. A state older than the records is refused (and the holder
// starts over at its next commit).
func TestWorkerCatchesUpAfterReload(t *testing.T) {
	ctx := context.Background()
	p := newCatchUpPair(t)
	a, b, ida := p.a, p.b, p.ida
	snapshot, load, together := p.snapshot, p.load, p.together
	// a steps alone to version 3 (b is somewhere else, at version 0).
	var old model.State
	for v := uint64(1); v <= 3; v++ {
		microbatch(t, a, v<<8, 4, int32(10*v))
		if _, err := a.Commit(ctx, Round{ID: v, Members: []peer.ID{ida}, Next: v}, nil); err != nil {
			t.Fatal(err)
		}
		if v == 2 {
			old = snapshot()
		}
	}
	if _, ok := b.CatchUpFrom(); ok {
		t.Fatal("a worker in step is catching up")
	}
	// b joins the commits at version 0: behind, it records 4, 5 and 6.
	for v := uint64(4); v <= 6; v++ {
		together(v)
	}
	if !b.CatchingUp() || a.CatchingUp() {
		t.Fatalf("catching up: b %v, a %v", b.CatchingUp(), a.CatchingUp())
	}
	if from, ok := b.CatchUpFrom(); !ok || from != 3 {
		t.Fatalf("catching up from %d (%v), want 3", from, ok)
	}
	if _, err := b.CatchUp(load(old)); err == nil {
		t.Fatal("a state at version 2 was brought up to date from records that start at 4")
	}
	if b.CatchingUp() {
		t.Fatal("still refusing passes after a failed catch-up")
	}
	// Back at version 2, b is behind at the next commit and records it.
	fresh := snapshot()
	together(7)
	if from, ok := b.CatchUpFrom(); !ok || from != 6 {
		t.Fatalf("catching up from %d (%v), want 6", from, ok)
	}
	microbatch(t, b, 99, 4, 7) // pending for the next commit
	pending := make([]float32, b.Stage().NumParams())
	if err := b.Stage().ReadGrads(0, pending); err != nil {
		t.Fatal(err)
	}
	n, err := b.CatchUp(load(fresh))
	if err != nil || n != 1 {
		t.Fatalf("replayed %d steps: %v", n, err)
	}
	if _, ok := b.CatchUpFrom(); ok || b.CatchingUp() {
		t.Fatal("still catching up after catching up")
	}
	if d := maxAbsDiff(a.Stage().Params(), b.Stage().Params()); d > 1e-6 || b.Stage().Version() != 7 {
		t.Fatalf("after catching up: version %d, parameters %g from the stage's", b.Stage().Version(), d)
	}
	kept := make([]float32, len(pending))
	if err := b.Stage().ReadGrads(0, kept); err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(pending, kept); d != 0 {
		t.Fatalf("the pending gradients changed by %g", d)
	}
	together(8)
	if d := maxAbsDiff(a.Stage().Params(), b.Stage().Params()); d > 1e-6 {
		t.Fatalf("a step after catching up: parameters %g apart", d)
	}

}

// TestWorkerWithoutCatchUpServes: a worker without WorkerOptions.CatchUp
// reports a commit it is behind at, and neither records nor refuses passes.
func TestWorkerWithoutCatchUpServes(t *testing.T) {
	ctx := context.Background()
	plain := testWorker(t, WorkerOptions{})
	microbatch(t, plain, 1, 4, 3)
	info, err := plain.Commit(ctx, Round{ID: 1, Members: []peer.ID{"plain"}, Next: 5}, nil)
	if err != nil || !info.Behind || !info.OutOfStep {
		t.Fatalf("a worker at version 0 committed to version 5: %+v, %v", info, err)
	}
	if plain.CatchingUp() {
		t.Fatal("a worker without WorkerOptions.CatchUp refuses passes")
	}
}

// catchUpPair is two holders of one stage that all-reduce in memory.
type catchUpPair struct {
	t        *testing.T
	a, b     *Worker
	ida, idb peer.ID
}

func newCatchUpPair(t *testing.T) *catchUpPair {
	mem := &memReduce{rounds: map[uint64]*memRound{}}
	p := &catchUpPair{t: t, ida: "holder-a", idb: "holder-b"}
	p.a, p.b = testWorker(t, WorkerOptions{CatchUp: true}), testWorker(t, WorkerOptions{CatchUp: true})
	p.a.opts.Reduce, p.b.opts.Reduce = mem.reducer(p.a, p.ida), mem.reducer(p.b, p.idb)
	return p
}

// snapshot copies a's state.
func (p *catchUpPair) snapshot() model.State {
	var s model.State
	p.a.Stage().WithState(func(st *model.State) {
		s = model.State{Step: st.Step, Params: slices.Clone(st.Params), M: slices.Clone(st.M), V: slices.Clone(st.V)}
	})
	return s
}

// load returns a loader of s into b, for Worker.CatchUp.
func (p *catchUpPair) load(s model.State) func() (uint64, error) {
	return func() (uint64, error) {
		p.b.Stage().WithState(func(st *model.State) {
			copy(st.Params, s.Params)
			copy(st.M, s.M)
			copy(st.V, s.V)
			st.Step = s.Step
		})
		return uint64(s.Step), nil
	}
}

// together has both holders accumulate a microbatch and commit round v.
func (p *catchUpPair) together(v uint64) {
	var wg sync.WaitGroup
	for i, w := range []*Worker{p.a, p.b} {
		microbatch(p.t, w, v<<8|uint64(i), 4, int32(10*v)+int32(i))
		wg.Go(func() {
			members := []peer.ID{p.ida, p.idb}
			if _, err := w.Commit(context.Background(), Round{ID: v, Members: members, Next: v}, nil); err != nil {
				p.t.Error(err)
			}
		})
	}
	wg.Wait()
}

func maxAbsDiff(a, b []float32) (d float64) {
	for i := range a {
		d = max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}
