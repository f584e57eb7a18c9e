package swarm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"swarmnode/internal/wait"
)

// TestRunAnnouncesAndStops: Run prints the lines scripts wait for, serves the
// stage it was told to, and returns nil soon after its context ends.
func TestRunAnnouncesAndStops(t *testing.T) {
	cfg := rolesTestConfig(t)
	cfg.Node.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Node.DataDir = t.TempDir()
	cfg.Node.Status = "off"
	cfg.Node.Stage = "1"
	var out syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- Run(ctx, cfg, RunOptions{Out: &out}) }()
	wait.For(t, 10*time.Second, func() error {
		if !strings.Contains(out.String(), "status: off\n") {
			return errors.New("no status line yet")
		}
		return nil
	})
	for _, want := range []string{"peer id: ", "address: /ip4/127.0.0.1/tcp/", "run: roles-test\n", "role: server\n", "stage: 1\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run after its context ended: %v", err)
		}
	case <-time.After(shutdownGrace):
		t.Fatalf("Run still running %s after its context ended", shutdownGrace)
	}
}
