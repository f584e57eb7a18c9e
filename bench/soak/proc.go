package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one `swarmnode run` process of a phase.
type proc struct {
	// name is unique in the phase: the slot (s<stage>-<i>, trainer) and, for
	// a replacement, its generation (s2-1.3).
	name string
	// slot is the holder slot it fills (-1 for the trainer).
	slot int
	// dir is its data dir (identity, checkpoints); logPath its stdout and stderr.
	dir, logPath string
	cmd          *exec.Cmd
	pid          int
	started      time.Time

	// ready is closed once it printed its status URL; peerID, addr and
	// statusURL are set before.
	ready        chan struct{}
	peerID, addr string
	statusURL    string
	exited       chan struct{} // closed once it has exited; then exitErr, exitAt
	exitErr      error
	exitAt       time.Time
	logFile      *os.File
	lineMu       sync.Mutex
	partial      []byte
	readyOnce    sync.Once

	mu sync.Mutex
	// stage is the stage it serves, as its status last said (its start
	// stage until then).
	stage int
	// frozen: SIGSTOPped now. signalled names the signal the soak sent that
	// ends it ("" when its exit would be unexpected).
	frozen    bool
	signalled string
	// fault is the churn's fault that ended it ("" for none); freezes
	// counts its SIGSTOPs; endTook is how long it took to exit after the
	// phase's final SIGTERM, endKilled whether it then needed SIGKILL.
	fault     string
	freezes   int
	endTook   time.Duration
	endKilled bool
	// samples are its RSS, goroutines and fds every sampling period.
	samples []sample
	// last is its latest status.
	last *apiStatus
}

// sample is one measurement of a process.
type sample struct {
	at time.Time
	// rssKB is VmRSS from /proc; fds the entries of /proc/PID/fd;
	// goroutines from /api/status (-1 when it did not answer).
	rssKB, fds, goroutines int
}

// apiStatus is the part of /api/status the soak reads.
type apiStatus struct {
	PeerID       string `json:"peer_id"`
	Stage        int    `json:"stage"`
	Step         int64  `json:"step"`
	Goroutines   *int   `json:"goroutines"`
	Microbatches struct {
		Completed uint64 `json:"completed"`
		Retried   uint64 `json:"retried"`
		Failed    uint64 `json:"failed"`
		Replayed  uint64 `json:"replayed"`
		TakenBack uint64 `json:"taken_back"`
	} `json:"microbatches"`
	Stepped []int64 `json:"stepped"`
	History []struct {
		Step    int64   `json:"step"`
		ValLoss float64 `json:"val_loss"`
	} `json:"history"`
	Errors  map[string]uint64 `json:"errors"`
	Holders map[string][]struct {
		PeerID string `json:"peer_id"`
	} `json:"holders"`
}

// httpClient reads status pages; a frozen peer's page must not hold a sampler
// up for long.
var httpClient = &http.Client{Timeout: 2 * time.Second}

// startProc starts `bin run --config cfg --data-dir dir` with args in root,
// its output in logPath. It does not wait for the start-up lines (waitReady).
func startProc(bin, root, cfg, name string, slot, stage int, dir, logPath string, args ...string) (*proc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, slot: slot, dir: dir, logPath: logPath, stage: stage, logFile: f,
		ready: make(chan struct{}), exited: make(chan struct{})}
	argv := append([]string{"run", "--config", cfg, "--data-dir", dir}, args...)
	p.cmd = exec.Command(bin, argv...)
	p.cmd.Dir = root
	p.cmd.Stdout = lineWriter{p}
	p.cmd.Stderr = f
	// Its own process group, so that a Ctrl-C at the terminal reaches the
	// soak only (which then stops everything in order), and killed with the
	// soak should the soak itself be killed.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(f, "# %s: %s %s\n", time.Now().Format(time.RFC3339), bin, strings.Join(argv, " "))
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p.pid, p.started = p.cmd.Process.Pid, time.Now()
	go func() {
		err := p.cmd.Wait()
		p.mu.Lock()
		p.exitErr, p.exitAt = err, time.Now()
		p.mu.Unlock()
		p.logFile.Close()
		removeShm(p.pid)
		close(p.exited)
	}()
	return p, nil
}

// lineWriter copies a process's stdout to its log and picks its start-up
// lines out ("address: …", "status: …", "peer id: …").
type lineWriter struct{ p *proc }

func (w lineWriter) Write(b []byte) (int, error) {
	p := w.p
	p.lineMu.Lock()
	defer p.lineMu.Unlock()
	p.logFile.Write(b)
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		line := string(p.partial[:i])
		p.partial = p.partial[i+1:]
		k, v, _ := strings.Cut(line, ": ")
		switch {
		case k == "peer id":
			p.peerID = v
		case k == "address" && strings.Contains(v, "/tcp/") && p.addr == "":
			p.addr = v
		case k == "status":
			p.statusURL = v
		}
		if p.statusURL != "" && p.addr != "" {
			p.readyOnce.Do(func() { close(p.ready) })
		}
	}
	return len(b), nil
}

// waitReady waits until p printed its address and status URL.
func (p *proc) waitReady(timeout time.Duration) error {
	select {
	case <-p.ready:
		return nil
	case <-p.exited:
		return fmt.Errorf("%s exited before it was up (%v); log %s:\n%s", p.name, p.exitErr, p.logPath, tail(p.logPath, 15))
	case <-time.After(timeout):
		return fmt.Errorf("%s printed no status URL within %s; log %s:\n%s", p.name, timeout, p.logPath, tail(p.logPath, 15))
	}
}

// alive reports whether p has not exited.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// signal sends sig to p and notes it (SIGSTOP and SIGCONT do not end it).
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	switch sig {
	case syscall.SIGSTOP:
		p.frozen = true
		p.freezes++
	case syscall.SIGCONT:
		p.frozen = false
	default:
		if p.signalled == "" {
			p.signalled = sigName(sig)
		}
	}
	p.mu.Unlock()
	return p.cmd.Process.Signal(sig)
}

// stop ends p: SIGCONT (it may be frozen), SIGTERM, and SIGKILL after grace.
// It returns how long it took to exit after the SIGTERM and whether it had to
// be killed.
func (p *proc) stop(grace time.Duration) (took time.Duration, killed bool) {
	if !p.alive() {
		return 0, false
	}
	start := time.Now()
	p.signal(syscall.SIGCONT)
	p.signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return time.Since(start), false
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.exited
		return time.Since(start), true
	}
}

func (p *proc) isFrozen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen
}

func (p *proc) currentStage() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stage
}

// setFault notes the churn's fault that ends p.
func (p *proc) setFault(f string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
}

// expectedExit reports whether the soak ended p (the signal's name), or ""
// when it exited on its own.
func (p *proc) expectedExit() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.signalled
}

func sigName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return sig.String()
}

// status reads p's /api/status.
func (p *proc) status() (*apiStatus, error) {
	if p.statusURL == "" {
		return nil, errors.New("no status URL yet")
	}
	resp, err := httpClient.Get(p.statusURL + "api/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	var s apiStatus
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, err
	}
	return &s, nil
}

// measure takes one sample of p: RSS and fds from /proc, goroutines and
// stage from its status page (not asked while it is frozen). It returns
// false when p is gone.
func (p *proc) measure(now time.Time) bool {
	rss, err := rssKB(p.pid)
	if err != nil || !p.alive() {
		return false
	}
	fds, err := countFDs(p.pid)
	if err != nil {
		return false
	}
	s := sample{at: now, rssKB: rss, fds: fds, goroutines: -1}
	var st *apiStatus
	if !p.isFrozen() {
		if st, err = p.status(); err == nil && st.Goroutines != nil {
			s.goroutines = *st.Goroutines
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.samples = append(p.samples, s)
	if st != nil {
		p.last = st
		if p.slot >= 0 && st.Stage >= 0 {
			p.stage = st.Stage
		}
	}
	return true
}

// rssKB reads the resident set size of pid, in kB, from /proc/PID/status.
func rssKB(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseRSS(f)
}

// parseRSS finds VmRSS in the text of a /proc/PID/status file.
func parseRSS(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) < 1 {
				break
			}
			return strconv.Atoi(f[0])
		}
	}
	return 0, errors.New("no VmRSS line (a zombie?)")
}

// countFDs counts the open file descriptors of pid.
func countFDs(pid int) (int, error) {
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(es), err
}

// removeShm removes the /dev/shm directories of the exited process pid (a
// killed peer cannot remove its own: wire.Shm names them swarmnode-<pid>-…).
func removeShm(pid int) {
	ms, _ := filepath.Glob(fmt.Sprintf("/dev/shm/swarmnode-%d-*", pid))
	for _, m := range ms {
		os.RemoveAll(m)
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}
