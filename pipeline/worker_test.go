package pipeline

import (
	"context"
	"math"
	"testing"

	"swarmnode/model"
	"swarmnode/stages"
)

func testWorker(t *testing.T, o WorkerOptions) *Worker {
	t.Helper()
	cfg := testConfig()
	st, err := stages.New(cfg.Model, []int{3}, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.Optim = cfg.Train.Optim
	return NewWorker(st, o)
}

// microbatch runs training microbatch id of b sequences (its tokens drawn
// from seed) through the worker.
func microbatch(t *testing.T, w *Worker, id uint64, b int, seed int32) {
	t.Helper()
	T := 8
	in := model.Input{B: b, T: T, Tokens: tokens(b*T, seed), Targets: tokens(b*T, seed+1)}
	p, _, err := w.forward(in, stages.Tensor{}, stages.Wire{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.backward(p, stages.Tensor{}, stages.Wire{}, entry{id: id, in: in}); err != nil {
		t.Fatal(err)
	}
}

// TestWorkerCommitCountsEachMicrobatchOnce: a worker that accumulated one
// microbatch twice and takes the extra copy back at the commit steps to the
// parameters of a worker that saw each microbatch once.
func TestWorkerCommitCountsEachMicrobatchOnce(t *testing.T) {
	once := testWorker(t, WorkerOptions{})
	twice := testWorker(t, WorkerOptions{})
	microbatch(t, once, 1, 4, 3)
	microbatch(t, once, 2, 4, 5)
	microbatch(t, twice, 1, 4, 3)
	microbatch(t, twice, 2, 4, 5)
	microbatch(t, twice, 2, 4, 5)
	if a := twice.account(0, []uint64{1, 2}); len(a.Pending) != 3 || len(a.Done) != 0 {
		t.Fatalf("account before the step: %+v", a)
	}
	want, err := once.Commit(context.Background(), Round{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := twice.Commit(context.Background(), Round{}, []uint64{2})
	if err != nil {
		t.Fatal(err)
	}
	if got.Micro != 2 || got.Samples != 8 || got.Version != 1 || want.Version != 1 {
		t.Fatalf("steps: %+v with the copy taken back, %+v without", got, want)
	}
	a, b := once.Stage().Params(), twice.Stage().Params()
	for i := range a {
		if d := math.Abs(float64(a[i] - b[i])); d > 1e-6 {
			t.Fatalf("parameter %d differs by %g", i, d)
		}
	}
	if a := twice.account(0, []uint64{1, 2, 3}); len(a.Pending) != 0 || len(a.Done) != 2 {
		t.Fatalf("account after the step: %+v", a)
	}
	if info, err := twice.Commit(context.Background(), Round{}, []uint64{7}); err == nil || info.Version != 2 {
		t.Fatalf("a commit asked to take back a microbatch the worker never saw: %+v, %v", info, err)
	}
	if info, _ := twice.Commit(context.Background(), Round{Next: 3}, nil); info.OutOfStep != false || info.Version != 3 {
		t.Fatalf("a worker at version 2 stepping to 3 with the others: %+v", info)
	}
	if info, _ := twice.Commit(context.Background(), Round{Next: 9}, nil); !info.OutOfStep {
		t.Fatalf("a worker at version 3 stepping with others at 8 is not out of step: %+v", info)
	}
}

// TestWorkerFollowsTheTrainersSchedule: a holder started with another
// train.steps than the trainer (the trainer's `--steps`) steps at the learning
// rate of the trainer's horizon, which the commit carries.
func TestWorkerFollowsTheTrainersSchedule(t *testing.T) {
	run := func(ownSteps, roundSteps int) []float32 {
		w := testWorker(t, WorkerOptions{})
		w.opts.Optim.Warmup, w.opts.Optim.Steps = 0, ownSteps
		for step := range 3 {
			microbatch(t, w, uint64(step), 4, int32(step))
			if _, err := w.Commit(context.Background(), Round{Steps: roundSteps}, nil); err != nil {
				t.Fatal(err)
			}
		}
		return w.Stage().Params()
	}
	want, short, got := run(200, 0), run(2, 0), run(2, 200)
	if d := maxAbsDiff(want, got); d > 1e-6 {
		t.Fatalf("a holder told the trainer's horizon differs from one configured with it by %g", d)
	}
	if d := maxAbsDiff(want, short); d < 1e-5 {
		t.Fatalf("the horizon changes nothing (differs by %g): the test cannot tell", d)
	}
}

// TestWorkerRefreshesAPassAStepOutdated: a microbatch whose forward pass ran
// before a step and whose backward pass runs after it (pipeline.staleness
// above 0) is differentiated at the new parameters, as if its forward pass had
// run after the step: the two workers end with the same parameters.
func TestWorkerRefreshesAPassAStepOutdated(t *testing.T) {
	inOrder := testWorker(t, WorkerOptions{})
	straddled := testWorker(t, WorkerOptions{})
	in := model.Input{B: 2, T: 8, Tokens: tokens(16, 7), Targets: tokens(16, 8)}
	ctx := context.Background()

	microbatch(t, inOrder, 1, 4, 3)
	if _, err := inOrder.Commit(ctx, Round{}, nil); err != nil {
		t.Fatal(err)
	}
	microbatch(t, inOrder, 2, 2, 7)

	microbatch(t, straddled, 1, 4, 3)
	p, _, err := straddled.forward(in, stages.Tensor{}, stages.Wire{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := straddled.Commit(ctx, Round{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := straddled.backward(p, stages.Tensor{}, stages.Wire{}, entry{id: 2, in: in}); err != nil {
		t.Fatal(err)
	}
	if n := straddled.refreshed.Load(); n != 1 {
		t.Fatalf("refreshed %d passes, want 1", n)
	}
	for _, w := range []*Worker{inOrder, straddled} {
		if _, err := w.Commit(ctx, Round{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	a, b := inOrder.Stage().Params(), straddled.Stage().Params()
	for i := range a {
		if d := math.Abs(float64(a[i] - b[i])); d > 1e-6 {
			t.Fatalf("parameter %d differs by %g", i, d)
		}
	}
	if inOrder.refreshed.Load() != 0 {
		t.Fatal("a pass within one step was refreshed")
	}
}

// TestWorkerDropsUncommittedWork: a worker that no trainer commits any more
// (left out of the trainer's view while others still route to it) does not
// hold its uncommitted work without end: past maxLedgerEntries it drops the
// ledger and the gradients, and its next step is that of the work since.
func TestWorkerDropsUncommittedWork(t *testing.T) {
	old := maxLedgerEntries
	maxLedgerEntries = 5
	t.Cleanup(func() { maxLedgerEntries = old })
	stale := testWorker(t, WorkerOptions{})
	fresh := testWorker(t, WorkerOptions{})
	for id := uint64(1); id <= 5; id++ {
		microbatch(t, stale, id, 2, int32(id))
	}
	microbatch(t, stale, 6, 2, 6)
	microbatch(t, fresh, 6, 2, 6)
	if stale.discarded.Load() != 5 {
		t.Fatalf("dropped %d microbatches, want 5", stale.discarded.Load())
	}
	got, err := stale.Commit(context.Background(), Round{}, nil)
	if err != nil || got.Micro != 1 {
		t.Fatalf("step after the drop: %+v, %v", got, err)
	}
	if _, err := fresh.Commit(context.Background(), Round{}, nil); err != nil {
		t.Fatal(err)
	}
	a, b := fresh.Stage().Params(), stale.Stage().Params()
	for i := range a {
		if d := math.Abs(float64(a[i] - b[i])); d > 1e-6 {
			t.Fatalf("parameter %d differs by %g from a worker that saw microbatch 6 alone", i, d)
		}
	}
}
