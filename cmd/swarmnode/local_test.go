package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// swarmnodeBinary builds the real binary once per test process, so end-to-end
// tests exercise exactly what users run.
func swarmnodeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "swarmnode-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "swarmnode")
		out, err := exec.Command("go", "build", "-o", builtPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("build swarmnode: %v", buildErr)
	}
	return builtPath
}

// repoRoot is where example paths in configs are relative to.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLocalTrainsAndWritesSummary(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, `run: e2e
model: {vocab: 256, d_model: 32, n_head: 2, n_layer: 2, seq_len: 32}
stages: [1, 1]
data: {path: examples/gpt/data/tinyshakespeare.txt}
train: {microbatch: 4, batch: 8, steps: 1000, warmup: 5, eval_every: 20, eval_batches: 2}
checkpoint: {dir: `+filepath.Join(dir, "ck")+`}
`)
	summary := filepath.Join(dir, "summary.json")
	cmd := exec.Command(bin, "local", "--config", cfg, "--steps", "40", "--summary", summary)
	cmd.Dir = repoRoot(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("swarmnode local: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "msg=eval"); n != 2 {
		t.Errorf("want 2 eval log lines for 40 steps every 20, got %d:\n%s", n, out)
	}
	if n := strings.Count(string(out), "msg=sample step="); n != 2 {
		t.Errorf("want a sample at each of the 2 evaluations, got %d:\n%s", n, out)
	}
	raw, err := os.ReadFile(summary)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]float64
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, raw)
	}
	for _, k := range []string{"step", "loss", "val_loss", "tokens_per_sec"} {
		if _, ok := s[k]; !ok {
			t.Errorf("summary lacks %q: %s", k, raw)
		}
	}
	if s["step"] != 40 {
		t.Errorf("step %v, want 40 (--steps overrides train.steps)", s["step"])
	}
	// A uniform guess over 256 bytes costs ln 256 = 5.55 nats; 40 steps must beat it.
	if s["val_loss"] <= 0 || s["val_loss"] >= 5.0 || s["tokens_per_sec"] <= 0 {
		t.Errorf("implausible summary: %s", raw)
	}
}

func TestLocalBadInputExitsTwo(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.yaml")
	writeFile(t, typo, "run: x\ntrain:\n  lr: 0.001\n  warmpu: 3\n")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"local", "--config", typo}, "warmpu"},
		{[]string{"local", "--config", filepath.Join(dir, "missing.yaml")}, "missing.yaml"},
		{[]string{"local"}, "--config"},
		{[]string{"local", "--bogus"}, "bogus"},
		{[]string{"fly"}, "unknown command"},
	}
	for _, c := range cases {
		cmd := exec.Command(bin, c.args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: want exit 2, got %v\n%s", c.args, err, out)
			continue
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("%v: message should mention %q:\n%s", c.args, c.want, out)
		}
	}
}

func TestLocalMissingDataIsRuntimeError(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, "data: {path: "+filepath.Join(dir, "nothing.txt")+"}\n")
	out, err := exec.Command(bin, "local", "--config", cfg).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "nothing.txt") {
		t.Fatalf("want exit 1 naming the data file, got %v\n%s", err, out)
	}
}

// TestLocalResumes: `swarmnode local` stopped by SIGTERM part-way writes a
// checkpoint, and `--resume` continues from it to the same end as a run
// never stopped: the same step count, and the same final loss (the state,
// the step and the data position all come back exactly).
func TestLocalResumes(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	body := `run: resume
model: {vocab: 256, d_model: 32, n_head: 2, n_layer: 2, seq_len: 32}
stages: [1, 1]
data: {path: examples/gpt/data/tinyshakespeare.txt}
train: {microbatch: 4, batch: 8, steps: 400, warmup: 5, eval_every: 100, eval_batches: 2}
checkpoint: {dir: DIR, every: 7, keep: 2}
`
	run := func(name string, args ...string) map[string]float64 {
		cfg := filepath.Join(dir, name+".yaml")
		writeFile(t, cfg, strings.Replace(body, "DIR", filepath.Join(dir, name), 1))
		summary := filepath.Join(dir, name+".json")
		cmd := exec.Command(bin, append([]string{"local", "--config", cfg, "--summary", summary}, args...)...)
		cmd.Dir = repoRoot(t)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		raw, err := os.ReadFile(summary)
		if err != nil {
			t.Fatal(err)
		}
		var s map[string]float64
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	whole := run("whole")
	// The stopped run: SIGTERM once its first checkpoint is on disk.
	cfg := filepath.Join(dir, "parts.yaml")
	writeFile(t, cfg, strings.Replace(body, "DIR", filepath.Join(dir, "parts"), 1))
	cmd := exec.Command(bin, "local", "--config", cfg)
	cmd.Dir = repoRoot(t)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(dir, "parts", "stage1", "step-00000007", "meta.json")); err == nil {
			break
		}
		if i > 6000 {
			t.Fatalf("no checkpoint after 60 s:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stopped run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "msg=checkpoint") || !strings.Contains(out.String(), "stopping early") {
		t.Fatalf("the stopped run did not stop early with a checkpoint:\n%s", out.String())
	}
	resumed := run("parts", "--resume")
	if resumed["step"] != 400 || resumed["loss"] != whole["loss"] {
		t.Fatalf("resumed run ended at step %v with loss %v; the whole run at %v with %v", resumed["step"], resumed["loss"], whole["step"], whole["loss"])
	}
}
