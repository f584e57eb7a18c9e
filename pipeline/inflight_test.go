package pipeline

import (
	"math"
	"testing"
	"time"
)

// TestAutoInFlight: the pipeline holds round trip × bottleneck speed, in
// microbatches, plus one; a stage per microbatch and one more before either is
// measured.
func TestAutoInFlight(t *testing.T) {
	for _, c := range []struct {
		rt        time.Duration
		tps       float64
		micro, st int
		want      int
	}{
		{0, 1000, 256, 3, 4},
		{time.Second, 0, 256, 3, 4},
		{100 * time.Millisecond, 10240, 1024, 3, 2},  // one microbatch per round trip
		{320 * time.Millisecond, 16000, 128, 4, 41},  // a WAN: 40 microbatches cover it
		{5 * time.Millisecond, 50000, 512, 2, 1 + 1}, // loopback: the round trip is one microbatch's compute
		{time.Millisecond, 1e9, 1, 2, 1_000_000 + 1}, // bounded by the caller, not here
	} {
		if got := autoInFlight(c.rt, c.tps, c.micro, c.st); got != c.want {
			t.Errorf("autoInFlight(%v, %g, %d, %d) = %d, want %d", c.rt, c.tps, c.micro, c.st, got, c.want)
		}
	}
}

// TestAutoInFlightTrains: a trainer with pipeline.in_flight 0 trains a swarm to
// the chain's val loss, choosing a limit within max_in_flight.
func TestAutoInFlightTrains(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 60, 30
	cfg.Train.Microbatch, cfg.Train.Batch = 2, 8
	cfg.Pipeline.InFlight, cfg.Pipeline.Staleness = 0, 1
	cfg.Compression.Activations, cfg.Compression.Gradients = "fp32", "fp32"
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 2, 1}, nil)
	tr := sw.newTrainer(t, corpus, TrainerOptions{Stream: 0})
	sum := runTrainer(t, tr, 90*time.Second)
	st := tr.Stats()
	t.Logf("val loss %.4f; in flight %d (max_in_flight %d)", sum.ValLoss, st.InFlight, cfg.Pipeline.MaxInFlight)
	if sum.Step != cfg.Train.Steps || st.Completed != int64(cfg.Train.Steps*cfg.Train.Accumulation()) || st.Lost != 0 {
		t.Fatalf("summary %+v, stats %+v", sum, st)
	}
	if st.InFlight < 1 || st.InFlight > cfg.Pipeline.MaxInFlight {
		t.Fatalf("chose %d microbatches in flight, outside [1, %d]", st.InFlight, cfg.Pipeline.MaxInFlight)
	}
	if math.IsNaN(sum.ValLoss) || sum.ValLoss >= 5.5 {
		t.Fatalf("val loss %v did not fall below the uniform guess", sum.ValLoss)
	}
}
