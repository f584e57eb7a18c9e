package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"swarmnode/cuda"
)

const checkpointTestConfig = `run: e2e-checkpoint
model: {vocab: 256, d_model: 32, n_head: 2, n_layer: 2, seq_len: 32}
stages: [1, 1]
data: {path: examples/gpt/data/tinyshakespeare.txt}
train: {microbatch: 4, batch: 8, steps: 80, warmup: 10, eval_every: 10, eval_batches: 4}
node:
  listen: [/ip4/127.0.0.1/tcp/0]
  status: 127.0.0.1:0
  record_ttl: 10s
  gossip_every: 200ms
pipeline: {hop_timeout: 3s, retries: 3}
checkpoint: {every: 10, keep: 2}
`

var valLossRE = regexp.MustCompile(`msg=eval step=(\d+) .*?val_loss=([0-9.]+)`)

// valLosses returns the val losses of a trainer's eval lines, in order.
func valLosses(log string) []float64 {
	var out []float64
	for _, m := range valLossRE.FindAllStringSubmatch(log, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		out = append(out, v)
	}
	return out
}

// TestSwarmResumesFromHoldersCheckpoints: a whole swarm (two stage servers
// and a trainer) is stopped after 40 steps and started again with the same
// checkpoint directories and identities to train to step 60. The servers
// restore their stages' newest checkpoints (and say so), the trainer goes on
// from step 40 with the data it had not drawn, and its first evaluation is
// where the first run ended, not back at the start; `--fresh` starts over.
func TestSwarmResumesFromHoldersCheckpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 6 processes")
	}
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, checkpointTestConfig)
	ckDir := func(name string) []string { return []string{"--checkpoint-dir", filepath.Join(dir, name)} }
	round := func(steps int, extra ...string) (first []float64, s0, s1 string) {
		a := startRun(t, bin, cfg, append(append(ckDir("a"), extra...), "--stage", "0", "--role", "server")...)
		b := startRun(t, bin, cfg, append(append(ckDir("b"), extra...), "--bootstrap", a.addrs[0], "--stage", "1", "--role", "server")...)
		summary := filepath.Join(dir, "summary.json")
		trainerArgs := append(ckDir("t"), "--identity", filepath.Join(dir, "trainer.key"), "--summary", summary)
		tr := startRun(t, bin, cfg, append(append(trainerArgs, extra...), "--bootstrap", a.addrs[0], "--role", "trainer", "--steps", strconv.Itoa(steps))...)
		select {
		case <-tr.exited:
		case <-time.After(90 * time.Second):
			t.Fatalf("trainer did not finish:\n%s", tr.stderr)
		}
		if tr.err != nil {
			t.Fatalf("trainer: %v\n%s", tr.err, tr.stderr)
		}
		for _, p := range []*runProc{a, b} {
			p.cmd.Process.Signal(syscall.SIGTERM)
			<-p.exited
		}
		checkSummarySteps(t, summary, steps, tr)
		return valLosses(tr.stderr.String()), a.stderr.String(), b.stderr.String()
	}
	first, _, _ := round(40)
	if len(first) == 0 {
		t.Fatal("the first run evaluated nothing")
	}
	// The run goes on to step 60: the trainer resumes at 40.
	again, s0, s1 := round(60)
	for i, log := range []string{s0, s1} {
		if !strings.Contains(log, "restored checkpoint") || !strings.Contains(log, "step=40") {
			t.Fatalf("stage %d server did not restore its step-40 checkpoint:\n%s", i, log)
		}
	}
	if len(again) != 2 {
		t.Fatalf("the resumed trainer evaluated %d times for steps 41–60, want 2 (at 50 and 60)", len(again))
	}
	fresh, s0, _ := round(20, "--fresh")
	if strings.Contains(s0, "restored checkpoint") {
		t.Fatalf("a --fresh server restored a checkpoint:\n%s", s0)
	}
	end := first[len(first)-1]
	t.Logf("val loss: first run %v; resumed %v; fresh %v", first, again, fresh)
	if len(again) == 0 || len(fresh) == 0 {
		t.Fatal("a later run evaluated nothing")
	}
	// 10 more steps from where the first run ended, against 10 from the start.
	if again[0] > end+0.1 || fresh[0] < end+0.3 {
		t.Fatalf("first eval after a restart %.3f (resumed) and %.3f (fresh), first run ended at %.3f", again[0], fresh[0], end)
	}
}

// TestExportAfterLocal: `swarmnode export` writes the model a local run
// checkpointed as a Hugging Face GPT-2, and says which step (with no
// checkpoint it exits 1 naming the directory); `local --init-from` that
// export starts from the trained weights.
func TestExportAfterLocal(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, `run: export
model: {vocab: 256, d_model: 32, n_head: 2, n_layer: 2, seq_len: 32}
stages: [1, 1]
data: {path: examples/gpt/data/tinyshakespeare.txt}
train: {microbatch: 4, batch: 8, steps: 20, warmup: 5, eval_every: 20, eval_batches: 2}
checkpoint: {dir: `+filepath.Join(dir, "ck")+`}
`)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Dir = repoRoot(t)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out := filepath.Join(dir, "hf")
	if msg, err := run("export", "--config", cfg, "--out", out); err == nil || !strings.Contains(msg, filepath.Join(dir, "ck")) {
		t.Fatalf("export with no checkpoint: %v\n%s", err, msg)
	}
	if msg, err := run("local", "--config", cfg); err != nil {
		t.Fatalf("local: %v\n%s", err, msg)
	}
	msg, err := run("export", "--config", cfg, "--out", out)
	if err != nil || !strings.Contains(msg, "exported step 20") {
		t.Fatalf("export: %v\n%s", err, msg)
	}
	for _, f := range []string{"model.safetensors", "config.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Fatal(err)
		}
	}
	// Sampling the export: greedy on the GPU writes what it writes on the
	// CPU; without a GPU, --device cuda says why and exits 1.
	sampleArgs := []string{"sample", "--model", out, "--prompt", "ROMEO:", "--tokens", "40", "--temperature", "0"}
	cpuText, err := run(sampleArgs...)
	if err != nil || !strings.HasPrefix(cpuText, "ROMEO:") || len(cpuText) < 40 {
		t.Fatalf("sample: %v\n%s", err, cpuText)
	}
	gpuText, err := run(append(sampleArgs, "--device", "cuda")...)
	if cuda.Available() == nil {
		if err != nil || gpuText != cpuText {
			t.Fatalf("sample --device cuda: %v\n%q\nthe CPU's:\n%q", err, gpuText, cpuText)
		}
	} else if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(gpuText, "--device cuda") {
		t.Fatalf("sample --device cuda without a GPU: %v\n%s", err, gpuText)
	}
	// Fine-tuning from the export starts where the run ended, not at ln 256.
	firstLoss := func(args ...string) float64 {
		summary := filepath.Join(dir, "s.json")
		msg, err := run(append([]string{"local", "--config", cfg, "--steps", "1", "--summary", summary, "--checkpoint-dir", t.TempDir()}, args...)...)
		if err != nil {
			t.Fatalf("local %v: %v\n%s", args, err, msg)
		}
		raw, err := os.ReadFile(summary)
		if err != nil {
			t.Fatal(err)
		}
		var s struct{ Loss float64 }
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		return s.Loss
	}
	fresh, tuned := firstLoss(), firstLoss("--init-from", out)
	if fresh < 5 || tuned > 4.5 {
		t.Fatalf("first step's loss: %.3f from the seed, %.3f from the export (want above 5 and below 4.5)", fresh, tuned)
	}
}

// TestVersion: `swarmnode version` and `--version` print the release and the
// wire protocol version.
func TestVersion(t *testing.T) {
	bin := swarmnodeBinary(t)
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bin, arg).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "swarmnode 0.") || !strings.Contains(string(out), "(wire protocol 1)") {
			t.Errorf("swarmnode %s: %v: %q", arg, err, out)
		}
	}
}

// TestPrepareShardsAndTrain: `swarmnode prepare` writes the corpus as train
// and val token shards, and a run whose data.path is their glob trains on
// them; an unknown tokenizer is a usage error; GPT-2's BPE starts the file
// with <|endoftext|>.
func TestPrepareShardsAndTrain(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	shards := filepath.Join(dir, "shards")
	cmd := exec.Command(bin, "prepare", "--out", shards, "--shard-tokens", "500000", "examples/gpt/data/tinyshakespeare.txt")
	cmd.Dir = repoRoot(t)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Count(string(out), ".bin") != 4 {
		t.Fatalf("prepare: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, `run: shards
model: {vocab: 256, d_model: 32, n_head: 2, n_layer: 2, seq_len: 32}
stages: [1, 1]
data: {path: `+filepath.Join(shards, "*.bin")+`}
train: {microbatch: 4, batch: 8, steps: 30, warmup: 5, eval_every: 30, eval_batches: 2}
checkpoint: {dir: `+filepath.Join(dir, "ck")+`}
`)
	summary := filepath.Join(dir, "s.json")
	if out, err := exec.Command(bin, "local", "--config", cfg, "--summary", summary).CombinedOutput(); err != nil {
		t.Fatalf("local on shards: %v\n%s", err, out)
	}
	raw, _ := os.ReadFile(summary)
	var s struct {
		Step    int
		ValLoss float64 `json:"val_loss"`
	}
	if err := json.Unmarshal(raw, &s); err != nil || s.Step != 30 || s.ValLoss <= 0 || s.ValLoss > 5 {
		t.Fatalf("summary %s: %v", raw, err)
	}
	var ee *exec.ExitError
	if out, err := exec.Command(bin, "prepare", "--tokenizer", "gpt3", "--out", dir, "x.txt").CombinedOutput(); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("prepare --tokenizer gpt3: %v\n%s", err, out)
	}
	// GPT-2's BPE: 338k tokens of the corpus, the first <|endoftext|> (50256).
	bpe := filepath.Join(dir, "bpe")
	cmd = exec.Command(bin, "prepare", "--tokenizer", "gpt2", "--out", bpe, "examples/gpt/data/tinyshakespeare.txt")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("prepare --tokenizer gpt2: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(bpe, "gpt2_train_000000.bin"))
	if err != nil || len(b) < 1026 {
		t.Fatal(err)
	}
	if first := int(b[1024]) | int(b[1025])<<8; first != 50256 {
		t.Fatalf("the first token is %d, want <|endoftext|>", first)
	}
}

// TestExportLiveSwarm: `swarmnode export --bootstrap` downloads every
// stage's state from a running swarm's holders and writes the model;
// `swarmnode sample --bootstrap` generates through those holders what the
// export generates.
func TestExportLiveSwarm(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 3 processes")
	}
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, checkpointTestConfig)
	a := startRun(t, bin, cfg, "--stage", "0", "--role", "server")
	startRun(t, bin, cfg, "--bootstrap", a.addrs[0], "--stage", "1", "--role", "server")
	tr := startRun(t, bin, cfg, "--bootstrap", a.addrs[0], "--role", "trainer", "--steps", "20")
	<-tr.exited
	// The holders reuse a state snapshot for 5 s: the export then sees the
	// final step, as generation through the holders does.
	time.Sleep(6 * time.Second)
	out := filepath.Join(dir, "hf")
	cmd := exec.Command(bin, "export", "--config", cfg, "--bootstrap", a.addrs[0], "--out", out)
	cmd.Dir = repoRoot(t)
	msg, err := cmd.CombinedOutput()
	var s0, s1 int
	_, after, _ := strings.Cut(string(msg), "exported the live swarm's stages ")
	if _, serr := fmt.Sscanf(after, "at steps [%d %d]", &s0, &s1); err != nil || serr != nil || s0 < 10 || s1 < 10 {
		// A holder may serve a snapshot of up to 5 s before: at least the
		// first eval's state.
		t.Fatalf("export --bootstrap: %v, steps %d %d\n%s", err, s0, s1, msg)
	}
	if _, err := os.Stat(filepath.Join(out, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	// Greedy generation through the holders, each running its blocks over
	// its own cache, writes what the exported model writes locally.
	sample := func(args ...string) string {
		cmd := exec.Command(bin, append([]string{"sample", "--prompt", "ROMEO:", "--tokens", "24", "--temperature", "0"}, args...)...)
		cmd.Dir = repoRoot(t)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("sample %v: %v\n%s", args, err, stderr.String())
		}
		return stdout.String()
	}
	local := sample("--model", out)
	live := sample("--config", cfg, "--bootstrap", a.addrs[0])
	if live != local || len(local) < 24 {
		t.Fatalf("through the swarm:\n%q\nfrom the export:\n%q", live, local)
	}
}

// TestSampleLiveRoutesAroundDeadHolder: with one of stage 1's two holders
// killed (its records still in the DHT), every `swarmnode sample
// --bootstrap` still finishes, and writes what it wrote with both alive
// (the holders share the seed's weights: no trainer runs).
func TestSampleLiveRoutesAroundDeadHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 3 processes")
	}
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, checkpointTestConfig)
	a := startRun(t, bin, cfg, "--stage", "0", "--role", "server")
	startRun(t, bin, cfg, "--bootstrap", a.addrs[0], "--stage", "1", "--role", "server")
	doomed := startRun(t, bin, cfg, "--bootstrap", a.addrs[0], "--stage", "1", "--role", "server")
	sample := func() (string, string) {
		cmd := exec.Command(bin, "sample", "--config", cfg, "--bootstrap", a.addrs[0], "--prompt", "ROMEO:", "--tokens", "16", "--temperature", "0")
		cmd.Dir = repoRoot(t)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("sample: %v\n%s", err, stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	want, _ := sample()
	_ = doomed.cmd.Process.Kill()
	<-doomed.exited
	rerouted := 0
	for range 4 {
		got, log := sample()
		if got != want {
			t.Fatalf("with a holder dead:\n%q\nwith both:\n%q\n%s", got, want, log)
		}
		rerouted += strings.Count(log, "going on through another holder")
	}
	t.Logf("4 generations with a holder dead; %d hops rerouted", rerouted)
}
