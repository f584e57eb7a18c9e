package averaging

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"swarmnode/codec"
	"swarmnode/config"
	"swarmnode/internal/wait"
)

// TestRunAveragesOnTheClock: two holders running Run meet on the clock's round
// boundaries, with no one calling Round.
func TestRunAveragesOnTheClock(t *testing.T) {
	hs := []host.Host{newHost(t, nil), newHost(t, nil)}
	connectAll(t, hs)
	srcs := []*vecSource{{vec: []float32{0, 0, 0}}, {vec: []float32{2, 4, 6}}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var avs []*Averager
	for i, h := range hs {
		a, err := New(h, ids(hs), srcs[i], Options{Run: "test", Key: "s", Period: 300 * time.Millisecond,
			Matchmaking: 150 * time.Millisecond, Deadline: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		avs = append(avs, a)
		wg.Go(func() { _ = a.Run(ctx) })
	}
	wait.For(t, 10*time.Second, func() error {
		if avs[0].Stats().Rounds == 0 || avs[1].Stats().Rounds == 0 {
			return fmt.Errorf("no round on the clock: %+v %+v", avs[0].Stats(), avs[1].Stats())
		}
		return nil
	})
	cancel()
	wg.Wait()
	for i, s := range srcs {
		s.mu.Lock()
		if !slices.Equal(s.vec, []float32{1, 2, 3}) {
			t.Errorf("holder %d: %v", i, s.vec)
		}
		s.mu.Unlock()
	}
	waitNoGoroutines(t)
}

func TestOptionsFromConfig(t *testing.T) {
	cfg, err := config.Parse([]byte("averaging:\n  deadline: 4s\n  stall_timeout: 1s\n  codec: bf16\n"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := OptionsFromConfig("run-1", "stage-0", cfg.Averaging)
	if err != nil {
		t.Fatal(err)
	}
	if o.Codec != codec.BF16 || o.StallTimeout != time.Second || o.Deadline != 4*time.Second || o.GroupSize != 4 {
		t.Errorf("options %+v", o)
	}
	for _, bad := range []string{
		"averaging:\n  deadline: 4s\n  stall_timeout: 4s\n",
		"averaging:\n  deadline: 2s\n  matchmaking: 2s\n",
	} {
		if _, err := config.Parse([]byte(bad)); err == nil {
			t.Errorf("config accepted %q", bad)
		}
	}
	if _, err := New(newHost(t, nil), PeerList{}, &vecSource{vec: []float32{1}}, Options{Run: "a/b", Key: "k"}); err == nil {
		t.Error("a run id with a slash was accepted")
	}
}
