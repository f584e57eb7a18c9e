package swarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"swarmnode/config"
	"swarmnode/internal/wait"
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
	// The last stage (LM head and loss in one pass) computes at a third to a
	// half of stage 0's speed here: below a ratio of 0.25 one mover is enough
	// to lift stage 1 (8× slower holder + the mover against two holders of
	// stage 0), and the check below that no second holder follows holds.
	cfg.Pipeline.RebalanceRatio = 0.25
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
	// Only the fast holders log, so that a "loaded stage state" line can only
	// come from a move.
	serveRole(ctx, t, &wg, newRoles(slow, cfg, RunOptions{Slowdown: 8}), 1)
	for _, n := range servers {
		serveRole(ctx, t, &wg, newRoles(n, cfg, RunOptions{Logger: log}), 0)
	}
	trainRole(ctx, t, &wg, trainer, cfg)

	var mover *Node
	wait.For(t, 45*time.Second, func() error {
		moved := movedTo(servers, 1)
		if len(moved) == 0 {
			return errors.New("no holder of stage 0 moved to stage 1")
		}
		mover = moved[0]
		return nil
	})
	assertNoSecondMover(t, cfg, append(servers, slow), mover, servers)
	out := logs.String()
	if !strings.Contains(out, "msg=rebalancing from=0 to=1") || !strings.Contains(out, "msg=\"loaded stage state\" stage=1") {
		t.Fatalf("the move did not fetch stage 1's state:\n%s", out)
	}
	if strings.Contains(out, "state transfer failed") {
		t.Fatalf("state transfer failed:\n%s", out)
	}
}

// serveRole runs r.serve(ctx, k) on a goroutine counted by wg.
func serveRole(ctx context.Context, t *testing.T, wg *sync.WaitGroup, r *roles, k int) {
	wg.Go(func() {
		if err := r.serve(ctx, k); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
}

// trainRole makes n a trainer and trains cfg from it until ctx ends.
func trainRole(ctx context.Context, t *testing.T, wg *sync.WaitGroup, n *Node, cfg config.Config) {
	t.Helper()
	if err := n.SetStage(-1); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if _, err := newRoles(n, cfg, RunOptions{}).train(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("train: %v", err)
		}
	})
}

// movedTo lists the nodes of ns that serve stage k.
func movedTo(ns []*Node, k int) []*Node {
	var out []*Node
	for _, n := range ns {
		if n.DHT().Self().Stage == k {
			out = append(out, n)
		}
	}
	return out
}

// assertNoSecondMover checks that every server sees mover in stage 1 (a mover
// that failed the calls of stage 0's holders would be marked down and hidden),
// and that no other holder of stage 0 follows it. A second move would be
// decided on the picture of holders every rebalancer sees: so once every
// server sees the move, the check watches for as long as a rebalancer takes
// to decide on the settled picture (rebalanceSettle, a check period, and one
// more for the decision to show).
func assertNoSecondMover(t *testing.T, cfg config.Config, all []*Node, mover *Node, servers []*Node) {
	t.Helper()
	wait.For(t, 10*time.Second, func() error {
		for _, n := range all {
			if !holds(n, 1, mover) || holds(n, 0, mover) {
				return fmt.Errorf("%s does not see the move of %s yet: %s", n.ID().ShortString(), mover.ID().ShortString(), holderSummary(n, 2))
			}
		}
		return nil
	})
	decided := time.Now().Add(rebalanceSettle(cfg) + 2*cfg.Pipeline.RebalanceEvery)
	for time.Now().Before(decided) {
		if moved := movedTo(servers, 1); len(moved) > 1 {
			t.Fatalf("%d holders of stage 0 moved to the slow stage 1, want 1", len(moved))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// holds reports whether n's DHT lists h as a holder of stage k.
func holds(n *Node, k int, h *Node) bool {
	for _, x := range n.DHT().Holders(k) {
		if x.Peer == h.ID() {
			return true
		}
	}
	return false
}
