package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const runTestConfig = `run: e2e-run
model: {vocab: 256, d_model: 32, n_head: 2, n_layer: 3, seq_len: 32}
stages: [1, 1, 1]
data: {path: examples/gpt/data/tinyshakespeare.txt}
node:
  listen: [/ip4/127.0.0.1/tcp/0, /ip4/127.0.0.1/udp/0/quic-v1]
  status: 127.0.0.1:0
  record_ttl: 10s
  gossip_every: 200ms
`

func TestRunBadFlagsExitTwo(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, runTestConfig)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--config", cfg, "--stage", "7"}, "node.stage"},
		{[]string{"--config", cfg, "--stage", "first"}, "node.stage"},
		{[]string{"--config", cfg, "--role", "king"}, "node.role"},
		{[]string{"--config", cfg, "--bootstrap", "/ip4/127.0.0.1/tcp/1"}, "node.bootstrap[0]"},
		{[]string{"--config", cfg, "--bootstrap", "nonsense"}, "node.bootstrap[0]"},
		{[]string{"--config", cfg, "--listen", "/ip4/1.2.3/tcp/1"}, "node.listen[0]"},
		{[]string{"--config", cfg, "--status", "7070"}, "node.status"},
		{[]string{"--config", cfg, "--bogus"}, "bogus"},
		{[]string{}, "--config"},
		{[]string{"--config", cfg, "extra"}, "extra"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		if code := runCommand(c.args, &out, &errb); code != exitUsage {
			t.Errorf("%v: exit %d, want %d\n%s", c.args, code, exitUsage, errb.String())
			continue
		}
		if !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: message should name %q:\n%s", c.args, c.want, errb.String())
		}
	}
}

func TestRunUnreadableIdentityIsRuntimeError(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, runTestConfig)
	key := filepath.Join(dir, "id.key")
	writeFile(t, key, "whatever") // mode 0644: readable by others
	var out, errb bytes.Buffer
	code := runCommand([]string{"--config", cfg, "--identity", key, "--status", "off"}, &out, &errb)
	if code != exitRuntime || !strings.Contains(errb.String(), "chmod 600") {
		t.Fatalf("exit %d, want %d with a chmod hint:\n%s", code, exitRuntime, errb.String())
	}
}

// runProc is one `swarmnode run` process and what it printed on start.
type runProc struct {
	cmd    *exec.Cmd
	peerID string
	addrs  []string
	status string
	stderr *bytes.Buffer
	// lines carries its stdout, line by line, until it exits.
	lines chan string
	// exited is closed once the process has exited; err is its Wait error.
	exited chan struct{}
	err    error
}

// startRun starts `swarmnode run` with args and waits for its start-up lines.
func startRun(t *testing.T, bin, cfg string, args ...string) *runProc {
	t.Helper()
	p := launchRun(t, bin, cfg, args...)
	p.waitStarted(t)
	return p
}

// launchRun starts `swarmnode run` with args without waiting for it; see
// waitStarted.
func launchRun(t *testing.T, bin, cfg string, args ...string) *runProc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"run", "--config", cfg, "--data-dir", t.TempDir()}, args...)...)
	cmd.Dir = repoRoot(t)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &runProc{cmd: cmd, stderr: &bytes.Buffer{}, exited: make(chan struct{}), lines: make(chan string, 64)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-p.exited:
			return
		default:
		}
		// SIGTERM first, so that the peer removes its files in /dev/shm.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-p.exited
		}
	})
	// Buffered and never blocking: the reader must reach Wait even when the
	// test has stopped reading (a failed start), or cleanup would hang.
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.lines)
		io.Copy(io.Discard, stdout)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p
}

// waitStarted reads p's start-up lines up to its status URL (20 s at most).
func (p *runProc) waitStarted(t *testing.T) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for p.status == "" {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("swarmnode run exited before printing its status URL:\n%s", p.stderr)
			}
			switch k, v, _ := strings.Cut(l, ": "); k {
			case "peer id":
				p.peerID = v
			case "address":
				p.addrs = append(p.addrs, v)
			case "status":
				p.status = v
			}
		case <-timeout:
			t.Fatalf("no status line after 20s:\n%s", p.stderr)
		}
	}
	for _, a := range p.addrs {
		if !strings.HasSuffix(a, "/p2p/"+p.peerID) {
			t.Fatalf("printed address %q lacks /p2p/%s", a, p.peerID)
		}
	}
}

// readStatus reads p's /api/status into v.
func readStatus(p *runProc, v any) error {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(p.status + "api/status")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// apiStatus is the part of /api/status the tests read.
type apiStatus struct {
	PeerID  string `json:"peer_id"`
	Stage   int    `json:"stage"`
	Holders map[string][]struct {
		PeerID string `json:"peer_id"`
	} `json:"holders"`
	Step         int `json:"step"`
	Microbatches struct {
		Completed int `json:"completed"`
		Failed    int `json:"failed"`
	} `json:"microbatches"`
	History []struct {
		ValLoss float64 `json:"val_loss"`
	} `json:"history"`
	Sample *struct {
		Step int    `json:"step"`
		Text string `json:"text"`
	} `json:"sample"`
}

// TestRunThreeProcessesSeeEachOther is the end-to-end check: three
// `swarmnode run` processes, two joining through the first, each list all
// three in /api/status within 10 s; SIGTERM makes each exit 0 within 5 s.
func TestRunThreeProcessesSeeEachOther(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, runTestConfig)

	boot := startRun(t, bin, cfg, "--stage", "0")
	var tcp string
	for _, a := range boot.addrs {
		if strings.Contains(a, "/tcp/") {
			tcp = a
		}
	}
	if tcp == "" {
		t.Fatalf("bootstrap printed no TCP address: %v", boot.addrs)
	}
	procs := []*runProc{boot,
		startRun(t, bin, cfg, "--bootstrap", tcp, "--stage", "auto"),
		startRun(t, bin, cfg, "--bootstrap", tcp, "--stage", "2"),
	}
	start := time.Now()
	seesAll := func(p *runProc) error {
		var s apiStatus
		if err := readStatus(p, &s); err != nil {
			return err
		}
		listed := map[string]bool{}
		for _, hs := range s.Holders {
			for _, h := range hs {
				listed[h.PeerID] = true
			}
		}
		for _, q := range procs {
			if !listed[q.peerID] {
				return fmt.Errorf("%s does not list %s: %+v", p.peerID, q.peerID, s.Holders)
			}
		}
		return nil
	}
	for {
		var err error
		for _, p := range procs {
			if err = seesAll(p); err != nil {
				break
			}
		}
		if err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("after 10s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, p := range procs {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.After(5 * time.Second)
	for i, p := range procs {
		select {
		case <-p.exited:
			if p.err != nil {
				t.Errorf("process %d: exit %v after SIGTERM, want 0\n%s", i, p.err, p.stderr)
			}
		case <-deadline:
			t.Fatalf("process %d still running 5s after SIGTERM\n%s", i, p.stderr)
		}
	}
}

const swarmTestConfig = `run: e2e-swarm
model: {vocab: 256, d_model: 32, n_head: 2, n_layer: 3, seq_len: 32}
stages: [1, 1, 1]
data: {path: examples/gpt/data/tinyshakespeare.txt}
train: {microbatch: 4, batch: 8, steps: 240, warmup: 10, eval_every: 40, eval_batches: 2}
node:
  listen: [/ip4/127.0.0.1/tcp/0]
  status: 127.0.0.1:0
  record_ttl: 10s
  gossip_every: 200ms
pipeline: {hop_timeout: 3s, retries: 3}
averaging: {period: 2s, matchmaking: 500ms, deadline: 2s}
`

// TestSwarmSurvivesKilledAndStoppedHolders runs the whole system as users do:
// real `swarmnode run` processes, 3 stages × 2 holders and a trainer on
// loopback. Mid-run one holder is killed with SIGKILL and another frozen with
// SIGSTOP; training must go on without a long pause, lose no microbatch, and
// keep lowering the loss.
func TestSwarmSurvivesKilledAndStoppedHolders(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 7 processes")
	}
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, swarmTestConfig)

	boot := startRun(t, bin, cfg, "--stage", "0", "--role", "server")
	bootAddr := boot.addrs[0]
	holders := map[string]*runProc{"0a": boot}
	for _, name := range []string{"0b", "1a", "1b", "2a", "2b"} {
		holders[name] = startRun(t, bin, cfg, "--bootstrap", bootAddr, "--stage", name[:1], "--role", "server")
	}
	summary := filepath.Join(dir, "summary.json")
	trainer := startRun(t, bin, cfg, "--bootstrap", bootAddr, "--role", "trainer", "--summary", summary)

	f := &faults{kill: holders["1b"], stop: holders["2b"]}
	f.watch(t, trainer)
	if trainer.err != nil {
		t.Fatalf("trainer exited with %v\n%s", trainer.err, trainer.stderr)
	}
	if !f.killed || !f.stopped {
		t.Fatalf("the run ended before the faults were injected (killed %v, stopped %v)", f.killed, f.stopped)
	}
	checkSummarySteps(t, summary, 240, trainer)
	checkStepped(t, summary, 240*8, 8)
	t.Logf("longest pause in completed microbatches after the kill: %s; val losses %v", f.maxPause.Round(time.Millisecond), f.history)
	// The frozen holder's calls time out after pipeline.hop_timeout (3 s); the
	// issue allows 5 s without progress.
	if f.maxPause > 5*time.Second {
		t.Errorf("completed microbatches paused for %s\n%s", f.maxPause, trainer.stderr)
	}
	if len(f.history) < 4 || f.history[len(f.history)-1] >= f.history[0] {
		t.Errorf("val loss did not keep falling: %v", f.history)
	}
	if !strings.Contains(trainer.stderr.String(), "training finished") {
		t.Errorf("trainer log lacks its final line:\n%s", trainer.stderr)
	}
	checkSamples(t, f.samples, trainer)
}

// checkSamples checks that the trainer's status page showed samples of the
// model at evaluations (downloaded from the holders while a holder was dead
// and another frozen) and that they are text of the corpus's alphabet.
func checkSamples(t *testing.T, samples map[int]string, trainer *runProc) {
	t.Helper()
	for step, text := range samples {
		t.Logf("sample on the status page at step %d: %q", step, text)
	}
	if len(samples) < 2 {
		t.Fatalf("the status page showed samples at %d evaluations, want ≥ 2\n%s", len(samples), trainer.stderr)
	}
	for step, text := range samples {
		if step%40 != 0 || len([]rune(text)) < 40 {
			t.Errorf("sample at step %d: %q", step, text)
		}
	}
}

// faults injects the test's faults as training goes and records how the
// trainer's progress went: kill is killed at step 60, stop frozen at step 120
// (a nil one is left alone: faults{} only records).
type faults struct {
	kill, stop      *runProc
	killed, stopped bool
	// lastCompleted and lastProgress are the trainer's completed microbatches
	// and when they last grew; maxPause is the longest wait for growth since
	// the kill.
	lastCompleted int
	lastProgress  time.Time
	maxPause      time.Duration
	// history is the trainer's latest val-loss curve.
	history []float64
	// samples are the texts of the samples on the trainer's status page, by
	// the step of their evaluation.
	samples map[int]string
}

// watch polls the trainer's status until it exits (3 minutes at most).
func (f *faults) watch(t *testing.T, trainer *runProc) {
	t.Helper()
	f.lastProgress = time.Now()
	deadline := time.After(3 * time.Minute)
	for {
		select {
		case <-trainer.exited:
			return
		case <-deadline:
			t.Fatalf("trainer still running after 3 minutes\n%s", trainer.stderr)
		case <-time.After(100 * time.Millisecond):
		}
		var s apiStatus
		if readStatus(trainer, &s) == nil {
			f.observe(t, s, time.Now())
		}
	}
}

// observe takes one status sample of the trainer and injects a fault when its
// step has come.
func (f *faults) observe(t *testing.T, s apiStatus, now time.Time) {
	t.Helper()
	if s.Microbatches.Completed > f.lastCompleted {
		f.lastCompleted, f.lastProgress = s.Microbatches.Completed, now
	} else if f.killed && now.Sub(f.lastProgress) > f.maxPause {
		f.maxPause = now.Sub(f.lastProgress)
	}
	if s.Sample != nil {
		if f.samples == nil {
			f.samples = map[int]string{}
		}
		f.samples[s.Sample.Step] = s.Sample.Text
	}
	f.history = f.history[:0]
	for _, h := range s.History {
		f.history = append(f.history, h.ValLoss)
	}
	if f.kill != nil && !f.killed && s.Step >= 60 {
		if err := f.kill.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		f.killed, f.lastProgress = true, now
		t.Logf("step %d: killed a holder of stage 1", s.Step)
	}
	if f.stop != nil && f.killed && !f.stopped && s.Step >= 120 {
		if err := f.stop.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		f.stopped = true
		t.Logf("step %d: froze a holder of stage 2 (SIGSTOP)", s.Step)
		t.Cleanup(func() { f.stop.cmd.Process.Signal(syscall.SIGCONT) })
	}
}

// checkSummarySteps checks that the trainer's summary file reports every step:
// no microbatch was lost to the faults.
// checkStepped reads the summary at path and checks that every stage stepped
// on want sequences: each microbatch counted once, although a holder was killed
// with its gradients and another frozen (the trainer sends their shares again,
// also when one goes down during a commit). The one case left open is a holder
// frozen in the middle of a commit's all-reduce, with its gradients in some
// shards and not others: up to slack sequences (a batch) either way at its stage.
func checkStepped(t *testing.T, path string, want, slack int64) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sum struct {
		Stepped []int64 `json:"stepped"`
	}
	if err := json.Unmarshal(raw, &sum); err != nil {
		t.Fatal(err)
	}
	if len(sum.Stepped) == 0 {
		t.Fatalf("summary without stepped counts: %s", raw)
	}
	for k, n := range sum.Stepped {
		if n > want || n < want-slack {
			t.Errorf("stage %d stepped on %d sequences, the trainer sent %d", k, n, want)
		}
	}
	t.Logf("sequences stepped per stage: %v (sent %d)", sum.Stepped, want)
}

func checkSummarySteps(t *testing.T, path string, steps int, trainer *runProc) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sum struct {
		Step int `json:"step"`
	}
	if err := json.Unmarshal(raw, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Step != steps {
		t.Fatalf("trainer stopped at step %d of %d: %s\n%s", sum.Step, steps, raw, trainer.stderr)
	}
}

// TestShutdownUnderLoad: SIGTERM mid-step, as a volunteer stopping a peer
// does. A holder stopped while the trainer streams through it exits 0 (a
// shutdown past its 5 s grace exits 1), and the checkpoint it wrote on the
// way out is restored when it starts again; the trainer stopped mid-step
// exits 0 too and, started again, resumes at the step it committed and
// finishes the run with no microbatch failed.
func TestShutdownUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 9 processes")
	}
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	writeFile(t, cfg, swarmTestConfig)
	boot := startRun(t, bin, cfg, "--stage", "0", "--role", "server")
	bootAddr := boot.addrs[0]
	for _, stage := range []string{"0", "1", "2"} {
		if stage != "0" {
			startRun(t, bin, cfg, "--bootstrap", bootAddr, "--stage", stage, "--role", "server")
		}
	}
	keep := func(name string) []string {
		return []string{"--identity", filepath.Join(dir, name+".key"), "--checkpoint-dir", filepath.Join(dir, name)}
	}
	holderArgs := append(keep("1b"), "--bootstrap", bootAddr, "--stage", "1", "--role", "server")
	holder := startRun(t, bin, cfg, holderArgs...)
	for _, stage := range []string{"0", "2"} {
		startRun(t, bin, cfg, "--bootstrap", bootAddr, "--stage", stage, "--role", "server")
	}
	summary := filepath.Join(dir, "summary.json")
	trainerArgs := append(keep("trainer"), "--bootstrap", bootAddr, "--role", "trainer", "--summary", summary)
	trainer := startRun(t, bin, cfg, trainerArgs...)

	stepOf := func(p *runProc) int {
		var s apiStatus
		if readStatus(p, &s) != nil {
			return -1
		}
		return s.Step
	}
	waitStep := func(step int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for stepOf(trainer) < step {
			if time.Now().After(deadline) {
				t.Fatalf("trainer did not reach step %d\n%s", step, trainer.stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	terminate := func(p *runProc, what string) {
		t.Helper()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s still running 20 s after SIGTERM\n%s", what, p.stderr)
		}
		if p.err != nil {
			t.Fatalf("%s stopped mid-step exited with %v\n%s", what, p.err, p.stderr)
		}
	}

	waitStep(60)
	terminate(holder, "the holder")
	again := startRun(t, bin, cfg, holderArgs...)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(again.stderr.String(), "restored checkpoint") {
		if strings.Contains(again.stderr.String(), "checkpoint refused") || time.Now().After(deadline) {
			t.Fatalf("the restarted holder did not restore the checkpoint written on its way out:\n%s\n--- first run:\n%s", again.stderr, holder.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}

	waitStep(120)
	terminate(trainer, "the trainer")
	var saved struct {
		Step int `json:"step"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "trainer", "trainer.json"))
	if err == nil {
		err = json.Unmarshal(raw, &saved)
	}
	if err != nil || saved.Step < 120 {
		t.Fatalf("the trainer kept step %d (%v), stopped at ≥ 120", saved.Step, err)
	}
	resumed := startRun(t, bin, cfg, trainerArgs...)
	failed := 0
	for end := time.After(3 * time.Minute); ; {
		select {
		case <-resumed.exited:
		case <-end:
			t.Fatalf("the resumed trainer did not finish\n%s", resumed.stderr)
		case <-time.After(100 * time.Millisecond):
			var s apiStatus
			if readStatus(resumed, &s) == nil {
				failed = max(failed, s.Microbatches.Failed)
			}
			continue
		}
		break
	}
	if resumed.err != nil {
		t.Fatalf("the resumed trainer: %v\n%s", resumed.err, resumed.stderr)
	}
	checkSummarySteps(t, summary, 240, resumed)
	if !strings.Contains(resumed.stderr.String(), fmt.Sprintf("step=%d", saved.Step)) {
		t.Errorf("the resumed trainer does not say it resumed at step %d:\n%s", saved.Step, resumed.stderr)
	}
	if failed > 0 {
		t.Errorf("the resumed trainer failed %d microbatches\n%s", failed, resumed.stderr)
	}
	dropped := droppedMicrobatches(trainer.stderr.String()) + droppedMicrobatches(resumed.stderr.String())
	checkLedger(t, bin, cfg, bootAddr, 240, 3, 240*2-dropped)
	if t.Failed() {
		for _, p := range []*runProc{trainer, resumed} {
			t.Logf("trainer's commits:\n%s", grepLines(p.stderr.String(), "commit", "lost", "stopping", "resumed", "sending"))
		}
	}
}

// droppedMicrobatches sums the microbatches a trainer logged committing a
// step without (after replays a stage still lacked them): the ledger rightly
// credits no holder of that stage with them.
func droppedMicrobatches(log string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "committing a step without microbatches") {
			continue
		}
		if _, rest, ok := strings.Cut(l, "microbatches="); ok {
			v, _ := strconv.Atoi(strings.Fields(rest)[0])
			n += v
		}
	}
	return n
}

// grepLines returns the lines of text that contain any of words.
func grepLines(text string, words ...string) string {
	var b strings.Builder
	for _, l := range strings.Split(text, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				b.WriteString(l + "\n")
				break
			}
		}
	}
	return b.String()
}

// checkLedger runs `swarmnode ledger` against the live swarm and checks
// that the receipts its holders kept credit every step of every stage once:
// steps×stages receipts, and at least micro microbatches per stage (a
// holder that went down in a commit is credited with what it held).
func checkLedger(t *testing.T, bin, cfg, bootAddr string, steps, stages, micro int) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ledger.json")
	cmd := exec.Command(bin, "ledger", "--config", cfg, "--bootstrap", bootAddr, "--out", out)
	cmd.Dir = repoRoot(t)
	text, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("swarmnode ledger: %v\n%s", err, text)
	}
	t.Logf("swarmnode ledger:\n%s", text)
	var audit struct {
		Receipts int `json:"receipts"`
		Invalid  int `json:"invalid"`
		Peers    map[string]struct {
			Microbatches int     `json:"microbatches"`
			FLOPs        float64 `json:"flops"`
		} `json:"peers"`
	}
	raw, err := os.ReadFile(out)
	if err == nil {
		err = json.Unmarshal(raw, &audit)
	}
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, w := range audit.Peers {
		total += w.Microbatches
		if w.Microbatches > 0 && w.FLOPs <= 0 {
			t.Errorf("work without FLOPs: %+v", w)
		}
	}
	if audit.Receipts != steps*stages || audit.Invalid != 0 || total < micro*stages {
		t.Errorf("ledger: %d receipts (want %d), %d invalid, %d microbatches (want ≥ %d)", audit.Receipts, steps*stages, audit.Invalid, total, micro*stages)
	}
}
