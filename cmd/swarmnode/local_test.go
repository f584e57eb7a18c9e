package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
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
