package swarm

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"swarmnode/config"
	"swarmnode/model"
)

// syncBuffer is a log sink shared by goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func rolesTestConfig(t *testing.T) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Run = "roles-test"
	cfg.Model = model.Config{Vocab: 256, DModel: 32, NHead: 2, NLayer: 2, SeqLen: 16}
	cfg.Stages = []int{1, 1}
	cfg.Data.Path = filepath.Join("..", "examples", "gpt", "data", "tinyshakespeare.txt")
	cfg.Train.Microbatch, cfg.Train.Batch, cfg.Train.Steps = 2, 4, 100000
	cfg.Train.EvalEvery = 1000
	cfg.Node.GossipEvery = 200 * time.Millisecond
	cfg.Node.RecordTTL = 10 * time.Second
	cfg.Pipeline.RebalanceEvery = time.Second
	cfg.Averaging.Enabled = false
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startRoleNode(t *testing.T, ctx context.Context, cfg config.Config, boot []string) *Node {
	t.Helper()
	opts := OptionsFromConfig(cfg)
	opts.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	opts.Bootstrap = boot
	opts.DataDir = t.TempDir()
	opts.StatusAddr = "off"
	n, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestRebalanceMovesAServerToTheWeakStage: three holders of stage 0 and one
// holder of stage 1 that is 8× slower. The pipeline runs at the speed of its
// slowest stage, so one holder of stage 0 must move to stage 1, and it must
// take stage 1's trained state with it rather than the initial weights.
func TestRebalanceMovesAServerToTheWeakStage(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a swarm for several seconds")
	}
	cfg := rolesTestConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	first := startRoleNode(t, ctx, cfg, nil)
	boot := []string{first.Addrs()[0].String()}
	servers := []*Node{first, startRoleNode(t, ctx, cfg, boot), startRoleNode(t, ctx, cfg, boot)}
	slow := startRoleNode(t, ctx, cfg, boot)
	trainer := startRoleNode(t, ctx, cfg, boot)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	serve := func(n *Node, k int, o RoleOptions) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.Serve(ctx, o, k); err != nil {
				t.Errorf("serve: %v", err)
			}
		}()
	}
	// Only the fast holders log, so that a "loaded stage state" line can only
	// come from a move.
	serve(slow, 1, RoleOptions{Config: cfg, Slowdown: 8})
	for _, n := range servers {
		serve(n, 0, RoleOptions{Config: cfg, Logger: log})
	}
	if err := trainer.SetStage(-1); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := trainer.Train(ctx, RoleOptions{Config: cfg}); err != nil && ctx.Err() == nil {
			t.Errorf("train: %v", err)
		}
	}()

	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		moved := 0
		for _, n := range servers {
			if n.DHT().Self().Stage == 1 {
				moved++
			}
		}
		if moved > 0 {
			if moved > 1 {
				t.Fatalf("%d holders moved; one suffices", moved)
			}
			// Give a wrongly designated second mover its chance to show up.
			time.Sleep(3 * time.Second)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	moved := 0
	for _, n := range servers {
		if n.DHT().Self().Stage == 1 {
			moved++
		}
	}
	out := logs.String()
	if moved != 1 {
		t.Fatalf("%d holders of stage 0 moved to the slow stage 1, want 1\n%s", moved, out)
	}
	if !strings.Contains(out, "msg=rebalancing from=0 to=1") || !strings.Contains(out, "msg=\"loaded stage state\" stage=1") {
		t.Fatalf("the move did not fetch stage 1's state:\n%s", out)
	}
	if strings.Contains(out, "state transfer failed") {
		t.Fatalf("state transfer failed:\n%s", out)
	}
}
