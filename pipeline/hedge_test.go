package pipeline

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestHedgeSlowHolder: with a stage-1 holder ten times slower than its twin, the
// stage-0 server hedges some of the calls that landed there; the slow holder
// gives them up, and every microbatch still trains exactly once at every stage
// (each stage steps on exactly Train.Batch sequences every time, and as many
// times as the trainer took steps).
func TestHedgeSlowHolder(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 150, 150
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 2, 1}, map[[2]int]float64{{1, 1}: 10})
	// Its speed unknown to routing (a peer that just joined), the slow holder
	// keeps getting its share of the calls: hedging, not routing, must save the
	// steps from it.
	sw.router.mu.Lock()
	sw.router.unmeasured = map[peer.ID]bool{sw.servers[1][1].host.ID(): true}
	sw.router.mu.Unlock()
	tr := sw.newTrainer(t, corpus, TrainerOptions{})
	sum := runTrainer(t, tr, 90*time.Second)
	st := tr.Stats()
	s0, fast, slow := sw.servers[0][0].Stats(), sw.servers[1][0].Stats(), sw.servers[1][1].Stats()
	t.Logf("stage 0: %d downstream calls, %d hedged, %d failed; fast holder served %d, slow served %d and gave up %d",
		s0.DownstreamCalls, s0.Hedged, s0.DownstreamFailures, fast.Served, slow.Served, slow.Cancelled)
	total := int64(cfg.Train.Steps * cfg.Train.Accumulation())
	if sum.Step != cfg.Train.Steps || st.Completed != total || st.Lost != 0 {
		t.Fatalf("summary %+v, stats %+v", sum, st)
	}
	if s0.Hedged == 0 || slow.Cancelled == 0 {
		t.Fatalf("no hedge against the slow holder: stage 0 %+v, slow holder %+v", s0, slow)
	}
	if s0.Hedged != slow.Cancelled {
		t.Errorf("stage 0 hedged %d calls, the slow holder gave up %d", s0.Hedged, slow.Cancelled)
	}
	// Exactly once: a microbatch trained twice at some stage would show up as an
	// extra answer there or as a step on more (or fewer) sequences than a batch.
	if s0.Served != total || fast.Served+slow.Served != total || sw.servers[2][0].Stats().Served != total {
		t.Errorf("served: stage 0 %d, stage 1 %d+%d, stage 2 %d; want %d each", s0.Served, fast.Served, slow.Served, sw.servers[2][0].Stats().Served, total)
	}
	// Every stage stepped on exactly a batch per step: each microbatch counted
	// once, whichever holder computed it.
	for k, n := range st.Stepped {
		if n != int64(cfg.Train.Steps*cfg.Train.Batch) {
			t.Errorf("stage %d stepped on %d sequences, want %d", k, n, cfg.Train.Steps*cfg.Train.Batch)
		}
	}
	for k, ws := range sw.replicas {
		for i, w := range ws {
			if v := w.Stage().Version(); v != uint64(cfg.Train.Steps) || w.Pending() != 0 {
				t.Errorf("stage %d holder %d at version %d with %d sequences pending, want %d and 0", k, i, v, w.Pending(), cfg.Train.Steps)
			}
		}
	}
	// What the slow holder gave up it gave back: no cached pass, no admission.
	for k, row := range sw.servers {
		for i, srv := range row {
			if st := srv.Stats(); st.CacheBytes != 0 || st.InFlight != 0 || st.Queue != 0 {
				t.Errorf("stage %d holder %d still holds %+v", k, i, st)
			}
		}
	}
	if fast.Failed+slow.Failed != 0 || s0.DownstreamFailures != 0 {
		t.Errorf("failures: fast %+v, slow %+v, stage 0 %+v", fast, slow, s0)
	}
}
