package swarm

import (
	"log/slog"
	"testing"

	"swarmnode/model"
	"swarmnode/stages"
)

// TestGradSourceFinishScalesUncovered: after a round, ranges that received the
// group's mean (overlapping ones included) stay as they are and every other
// value becomes this holder's own mean: its sum over micro microbatches / micro.
func TestGradSourceFinishScalesUncovered(t *testing.T) {
	st, err := stages.New(model.Config{Vocab: 32, DModel: 16, NHead: 2, NLayer: 1, SeqLen: 8}, []int{1}, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	n := st.NumParams()
	g := st.Grads() // live on the CPU
	for i := range g {
		g[i] = float32(i%7 + 1)
	}
	src := &gradSource{st: st, n: n, log: slog.New(slog.DiscardHandler)}
	src.start(4)
	src.covered = []span{{50, 10}, {10, 10}, {15, 15}}
	if err := src.finish(); err != nil {
		t.Fatal(err)
	}
	for i, v := range st.Grads() {
		want := float32(i%7 + 1)
		if !(i >= 10 && i < 30 || i >= 50 && i < 60) {
			want /= 4
		}
		if v != want {
			t.Fatalf("gradient %d = %v, want %v", i, v, want)
		}
	}
}
