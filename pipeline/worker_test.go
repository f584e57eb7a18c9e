package pipeline

import (
	"context"
	"errors"
	"testing"
	"time"

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

// microbatch runs one training microbatch of b sequences through the worker.
func microbatch(t *testing.T, w *Worker, b int) {
	t.Helper()
	if err := w.admit(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	T := 8
	p, _, err := w.forward(model.Input{B: b, T: T, Tokens: tokens(b*T, 3), Targets: tokens(b*T, 4)}, stages.Tensor{}, stages.Wire{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.backward(p, stages.Tensor{}, stages.Wire{}); err != nil {
		t.Fatal(err)
	}
}

func TestWorkerStepsPerBatch(t *testing.T) {
	w := testWorker(t, WorkerOptions{StepSamples: 8, Microbatch: 4})
	var infos []StepInfo
	w.OnStep(func(s StepInfo) { infos = append(infos, s) })
	for range 5 {
		microbatch(t, w, 4)
	}
	if v := w.Stage().Version(); v != 2 || len(infos) != 2 || infos[1].Samples != 8 || infos[1].Version != 2 || w.Pending() != 4 {
		t.Fatalf("after 5 microbatches of 4 with batch 8: version %d, steps %+v, pending %d", v, infos, w.Pending())
	}
}

func TestWorkerReplicasShareTheBatch(t *testing.T) {
	replicas := 2
	w := testWorker(t, WorkerOptions{StepSamples: 8, Microbatch: 4, Replicas: func() int { return replicas }})
	for range 3 {
		microbatch(t, w, 4)
	}
	if v := w.Stage().Version(); v != 3 {
		t.Fatalf("one of 2 replicas with batch 8 stepped %d times in 3 microbatches of 4, want 3", v)
	}
	replicas = 8 // never below one microbatch
	microbatch(t, w, 4)
	if v := w.Stage().Version(); v != 4 {
		t.Fatalf("version %d, want 4", v)
	}
}

func TestWorkerAdmissionQuota(t *testing.T) {
	w := testWorker(t, WorkerOptions{StepSamples: 8, Microbatch: 4})
	ctx := context.Background()
	for range 2 {
		if err := w.admit(ctx, 4); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := w.admit(short, 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third microbatch of step 0 was admitted (err %v)", err)
	}
	admitted := make(chan error, 1)
	go func() { admitted <- w.admit(ctx, 4) }()
	w.unadmit(4) // one pass dropped without its backward frees its place
	if err := <-admitted; err != nil {
		t.Fatal(err)
	}
}
