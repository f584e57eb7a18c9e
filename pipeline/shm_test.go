package pipeline

import (
	"testing"
	"time"

	"swarmnode/config"
)

// shmConfig is exactConfig with microbatches whose fp32 activations and
// gradients (64 × 32 × 32 values) are large enough to go through shared memory.
func shmConfig() config.Config {
	cfg := exactConfig()
	cfg.Train.Microbatch, cfg.Train.Batch = 64, 128
	cfg.Train.Steps, cfg.Train.EvalEvery, cfg.Train.EvalBatches = 3, 3, 1
	return cfg
}

// TestSharedMemoryHops: stage servers of one host exchange activations and
// gradients through /dev/shm, and train to the parameters a swarm that sends
// everything on the streams reaches.
func TestSharedMemoryHops(t *testing.T) {
	cfg := shmConfig()
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	if sw.servers[0][0].shm == nil {
		t.Skip("no /dev/shm here")
	}
	tr := sw.newTrainer(t, loadCorpus(t, cfg), TrainerOptions{})
	runTrainer(t, tr, 60*time.Second)
	checkStepped(t, cfg, tr.Stats())
	// Stages 0 and 1 send activations, stages 1 and 2 gradients.
	for k, s := range sw.servers {
		if n := s[0].Stats().SharedFrames; n == 0 && k < 2 {
			t.Errorf("stage %d sent no frame through shared memory", k)
		}
	}
	off := cfg
	off.Pipeline.SharedMemory = false
	ref := faultFree(t, off, []int{1, 1, 1})
	for k, s := range ref.servers {
		if n := s[0].Stats().SharedFrames; n != 0 {
			t.Errorf("stage %d sent %d frames through shared memory with shared_memory off", k, n)
		}
	}
	sameParams(t, sw, ref, nil)
}

// TestSharedMemoryRefused: a stage-1 holder that takes no shared payloads
// (shared_memory off, or another /dev/shm) answers the first one so; stage 0
// then sends to it on the stream, and no microbatch fails.
func TestSharedMemoryRefused(t *testing.T) {
	cfg := shmConfig()
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	if sw.servers[0][0].shm == nil {
		t.Skip("no /dev/shm here")
	}
	s1 := sw.servers[1][0]
	_ = s1.shm.Close()
	s1.shm, s1.down.shm = nil, nil // before any request: it now refuses shared payloads
	tr := sw.newTrainer(t, loadCorpus(t, cfg), TrainerOptions{})
	runTrainer(t, tr, 60*time.Second)
	checkStepped(t, cfg, tr.Stats())
	// The first refusal stops shared frames; those already sent beside it
	// (one per microbatch in flight) are refused too.
	if n, most := sw.servers[0][0].Stats().SharedFrames, int64(cfg.Pipeline.InFlight); n < 1 || n > most {
		t.Errorf("stage 0 sent %d frames through shared memory to a holder that refused the first (at most %d in flight)", n, most)
	}
	if st := tr.Stats(); st.Failed != 0 || st.Lost != 0 {
		t.Errorf("failed %d, lost %d microbatches", st.Failed, st.Lost)
	}
	if n := sw.servers[0][0].Stats().DownstreamFailures; n != 0 {
		t.Errorf("stage 0 counted %d failures downstream", n)
	}
}
