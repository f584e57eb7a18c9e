package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSoak is the churn soak's CI version: the soak of `make soak` (13
// processes, a holder killed, frozen or stopped every 10–20 s and replaced)
// for SOAK (default 2m) of churn, then the unchurned reference run. It fails
// on what the soak fails on (a microbatch given up on, a process that exits on
// its own, a trainer that does not finish, RSS past twice its warm value) and
// logs the figures (go test -v). It keeps the trainer to one microbatch in
// flight so that the soak takes about one of CI's two cores.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 13 swarmnode processes for several minutes")
	}
	d := 2 * time.Minute
	if s := os.Getenv("SOAK"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil || d <= 0 {
			t.Fatalf("SOAK=%q: want a duration such as 2m", s)
		}
	}
	// Calibration, churned run and reference, each with its start and stop.
	need := calibrateSkip + calibrateFor + 2*d + 2*time.Minute
	if dl, ok := t.Deadline(); ok && time.Until(dl) < need {
		t.Fatalf("SOAK=%s takes about %s: run go test with -timeout %s or more", d, need.Round(time.Minute), (need + 5*time.Minute).Round(time.Minute))
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "swarmnode")
	build := exec.Command("go", "build", "-o", bin, "./cmd/swarmnode")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("the soak needs the swarmnode binary, which does not build here: %v\n%s", err, out)
	}

	o := DefaultOptions()
	o.Bin, o.Root, o.Config = bin, root, filepath.Join(root, "examples/gpt/soak.yaml")
	o.Out, o.Duration, o.InFlight = t.TempDir(), d, 1
	o.Seed = time.Now().UnixNano() % 1_000_000
	lw := &testWriter{t: t}
	o.Log = lw
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	res, err := Run(ctx, o)
	lw.flush()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range res.Failures {
		t.Error(f)
	}
	if res.Faults == 0 {
		t.Errorf("the churned run ended before any fault")
	}
	if res.Goroutines == 0 {
		t.Errorf("no status page reported goroutines (/api/status goroutines)")
	}
	t.Logf("seed %d: %d steps, %d faults, longest stall %s", o.Seed, res.Steps, res.Faults, fmtDur(res.LongestStall))
}

// testWriter logs each line written to it with t.Log.
type testWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf string
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf += string(b)
	for {
		i := strings.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		w.t.Log(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

func (w *testWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf != "" {
		w.t.Log(w.buf)
		w.buf = ""
	}
}

func at(base time.Time, secs float64) time.Time {
	return base.Add(time.Duration(secs * float64(time.Second)))
}

func TestFigures(t *testing.T) {
	t0 := time.Unix(1000, 0)
	steps := []stepAt{{at(t0, 0), 1}, {at(t0, 1), 5}, {at(t0, 7), 6}, {at(t0, 8), 10}, {at(t0, 12), 15},
		{at(t0, 35), 40}, {at(t0, 45), 55}, {at(t0, 62), 70}}
	if d, i := longestStall(steps); d != 23*time.Second || i != 5 {
		t.Errorf("longest stall %s before index %d, want 23s before 5", d, i)
	}
	// Windows ending at 30 s (step 15) and 60 s (step 55); the partial
	// window to 62 s is left out.
	got := rates(steps, 30*time.Second)
	want := []float64{14.0 / 30, 40.0 / 30}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rates %v, want %v", got, want)
	}
	if r := meanRate(steps); r != 69.0/62 {
		t.Errorf("mean rate %v", r)
	}
	// From 10 s to 40 s after the first step: steps 15 (12 s) to 40 (35 s).
	if r := calibrated(steps, t0); r != 25.0/23 {
		t.Errorf("calibrated rate %v, want %v", r, 25.0/23)
	}
	if d, i := longestStall(steps[:1]); d != 0 || i != -1 {
		t.Errorf("one step: stall %s at %d", d, i)
	}
}

func TestRSSCheck(t *testing.T) {
	start := time.Unix(1000, 0)
	p := &proc{name: "s1-0", started: start, samples: []sample{
		{at: at(start, 10), rssKB: 10_000, goroutines: 50},  // before warm-up: not the base
		{at: at(start, 30), rssKB: 40_000, goroutines: 100}, // the base
		{at: at(start, 40), rssKB: 70_000, goroutines: -1},  // frozen: no goroutines
		{at: at(start, 50), rssKB: 60_000, goroutines: 105},
	}}
	rss, gor, _ := grew(p, 20*time.Second)
	if rss != (growth{base: 40_000, end: 60_000, max: 70_000, ok: true}) || gor != (growth{base: 100, end: 105, max: 105, ok: true}) {
		t.Errorf("rss %+v goroutines %+v", rss, gor)
	}
	if f := checkRSS([]*proc{p}, 20*time.Second); len(f) != 0 {
		t.Errorf("1.75× flagged: %v", f)
	}
	p.samples = append(p.samples, sample{at: at(start, 60), rssKB: 90_000})
	if f := checkRSS([]*proc{p}, 20*time.Second); len(f) != 0 {
		t.Errorf("2.25× but only +50 MB flagged: %v", f)
	}
	p.samples = append(p.samples, sample{at: at(start, 70), rssKB: 120_000})
	if f := checkRSS([]*proc{p}, 20*time.Second); len(f) != 1 || !strings.Contains(f[0], "s1-0") {
		t.Errorf("3× and +80 MB not flagged: %v", f)
	}
	if f := checkRSS([]*proc{p}, time.Hour); len(f) != 0 {
		t.Errorf("no sample after warm-up, yet flagged: %v", f)
	}
}

func TestWarnLine(t *testing.T) {
	log := `time=2026-12-03T17:35:36.747Z level=INFO msg="commit failed" stage=3
time=2026-12-03T17:35:39.856Z level=WARN msg="a holder served a state its peers do not vouch for: banned" peer=x
time=2026-12-03T17:35:40.000Z level=ERROR msg=boom err=y
`
	var got []string
	for _, m := range warnLine.FindAllStringSubmatch(log, -1) {
		got = append(got, m[1]+" "+m[2])
	}
	want := []string{`WARN "a holder served a state its peers do not vouch for: banned"`, "ERROR boom"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseRSS(t *testing.T) {
	kb, err := parseRSS(strings.NewReader("Name:\tswarmnode\nVmPeak:\t 2000 kB\nVmRSS:\t   81234 kB\nThreads: 9\n"))
	if err != nil || kb != 81234 {
		t.Errorf("got %d, %v", kb, err)
	}
	if _, err := parseRSS(strings.NewReader("Name:\tzombie\nState:\tZ\n")); err == nil {
		t.Error("no VmRSS line: want an error")
	}
}
