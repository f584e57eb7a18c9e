package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReadmeRecipeSpreadsVolunteers repeats the README's "Running a swarm"
// recipe with examples/gpt/tiny.yaml: a bootstrap on stage 0, five volunteers
// with no --stage (tiny.yaml says stage: auto) started 0.3 s apart, then a
// trainer. Every stage must have a holder within 10 s of the first volunteer's
// start (issue 12), and the trainer's val loss must fall. The deviations from
// the recipe are what one host needs (loopback addresses, a free status port
// each) and a short run (--steps, evaluations every 20 steps).
func TestReadmeRecipeSpreadsVolunteers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 7 processes")
	}
	bin := swarmnodeBinary(t)
	cfg := shortTinyConfig(t)
	local := []string{"--listen", "/ip4/127.0.0.1/tcp/0", "--status", "127.0.0.1:0"}
	boot := startRun(t, bin, cfg, append(local, "--stage", "0")...)
	bootAddr := boot.addrs[0]
	start := time.Now()
	volunteers := make([]*runProc, 5)
	for i := range volunteers {
		if i > 0 {
			time.Sleep(300 * time.Millisecond) // the recipe's pace, not a wait for an event
		}
		volunteers[i] = launchRun(t, bin, cfg, append(local, "--bootstrap", bootAddr)...)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, v := range append(volunteers, boot) {
				t.Logf("peer %d log:\n%s", i, v.stderr)
			}
		}
	})
	held := waitAllStagesHeld(t, boot, 3, start.Add(10*time.Second))
	t.Logf("every stage held %s after the first volunteer started: %v", held.Sub(start).Round(10*time.Millisecond), stageCounts(t, boot))
	for _, v := range volunteers {
		v.waitStarted(t)
	}

	summary := filepath.Join(t.TempDir(), "summary.json")
	trainer := startRun(t, bin, cfg, append(local, "--bootstrap", bootAddr, "--role", "trainer", "--summary", summary)...)
	f := &faults{}
	f.watch(t, trainer)
	if trainer.err != nil {
		t.Fatalf("trainer exited with %v\n%s", trainer.err, trainer.stderr)
	}
	checkSummarySteps(t, summary, 60, trainer)
	if len(f.history) < 2 || f.history[len(f.history)-1] >= f.history[0] {
		t.Errorf("val loss did not fall: %v\n%s", f.history, trainer.stderr)
	}
	t.Logf("val losses %v", f.history)
}

// shortTinyConfig writes examples/gpt/tiny.yaml with 60 steps, evaluated every
// 20 steps on 2 batches, and returns its path.
func shortTinyConfig(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "examples/gpt/tiny.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	for _, r := range [][2]string{{"steps: 1000", "steps: 60"}, {"eval_every: 100", "eval_every: 20"}, {"eval_batches: 8", "eval_batches: 2"}} {
		if !strings.Contains(s, r[0]) {
			t.Fatalf("tiny.yaml no longer says %q", r[0])
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	path := filepath.Join(t.TempDir(), "tiny.yaml")
	writeFile(t, path, s)
	return path
}

// stageCounts reads how many holders p's /api/status lists per stage.
func stageCounts(t *testing.T, p *runProc) map[string]int {
	t.Helper()
	var s apiStatus
	if err := readStatus(p, &s); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for k, hs := range s.Holders {
		out[k] = len(hs)
	}
	return out
}

// waitAllStagesHeld polls p's /api/status until each of the run's stages
// lists a holder, and returns when; it fails the test at deadline.
func waitAllStagesHeld(t *testing.T, p *runProc, stages int, deadline time.Time) time.Time {
	t.Helper()
	for {
		var s apiStatus
		err := readStatus(p, &s)
		for k := 0; err == nil && k < stages; k++ {
			if len(s.Holders[fmt.Sprint(k)]) == 0 {
				err = fmt.Errorf("stage %d has no holder: %+v", k, s.Holders)
			}
		}
		if err == nil {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every stage held in time: %v\n%s", err, p.stderr)
		}
		time.Sleep(100 * time.Millisecond) // the poll's period
	}
}

// TestRebalancerFillsEmptyStages starts three holders of stage 0 and none of
// the others: the rebalancer must move two of them to the empty stages within
// seconds (tiny.yaml gossips every 2 s; 10 s is the bound), before any
// throughput has been measured.
func TestRebalancerFillsEmptyStages(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 3 processes")
	}
	bin := swarmnodeBinary(t)
	cfg := shortTinyConfig(t)
	local := []string{"--listen", "/ip4/127.0.0.1/tcp/0", "--status", "127.0.0.1:0", "--stage", "0"}
	boot := startRun(t, bin, cfg, local...)
	start := time.Now()
	startRun(t, bin, cfg, append(local, "--bootstrap", boot.addrs[0])...)
	startRun(t, bin, cfg, append(local, "--bootstrap", boot.addrs[0])...)
	held := waitAllStagesHeld(t, boot, 3, start.Add(10*time.Second))
	t.Logf("every stage held %s after the second holder started: %v", held.Sub(start).Round(10*time.Millisecond), stageCounts(t, boot))
}
