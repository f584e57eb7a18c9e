package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// longestStall is the longest time between two consecutive steps the
// trainer's status showed (at pollEvery's resolution), and when it ended (the
// index in steps of the step that ended it; -1 with fewer than 2 steps).
func longestStall(steps []stepAt) (time.Duration, int) {
	var longest time.Duration
	at := -1
	for i := 1; i < len(steps); i++ {
		if d := steps[i].at.Sub(steps[i-1].at); d > longest {
			longest, at = d, i
		}
	}
	return longest, at
}

// rates is the trainer's steps per second in consecutive windows of width
// from its first step; the last, partial window is left out unless it is
// the only one.
func rates(steps []stepAt, width time.Duration) []float64 {
	if len(steps) < 2 {
		return nil
	}
	first, last := steps[0], steps[len(steps)-1]
	var out []float64
	i := 0
	stepAtTime := func(t time.Time) int64 { // the step reached by t
		for i+1 < len(steps) && !steps[i+1].at.After(t) {
			i++
		}
		return steps[i].step
	}
	prev := first.step
	for end := first.at.Add(width); !end.After(last.at); end = end.Add(width) {
		s := stepAtTime(end)
		out = append(out, float64(s-prev)/width.Seconds())
		prev = s
	}
	if len(out) == 0 {
		out = append(out, float64(last.step-first.step)/last.at.Sub(first.at).Seconds())
	}
	return out
}

// meanRate is the steps per second from the first to the last step seen.
func meanRate(steps []stepAt) float64 {
	if len(steps) < 2 {
		return 0
	}
	first, last := steps[0], steps[len(steps)-1]
	return float64(last.step-first.step) / last.at.Sub(first.at).Seconds()
}

// growth is a process's figure at warm-up against later.
type growth struct {
	// base is the first sample taken at least warm after the start; end
	// the last, max the largest from base on.
	base, end, max int
	ok             bool // a sample after warm-up exists
}

// grew reports each of RSS, goroutines and fds of p from its first sample at
// least warm after its start.
func grew(p *proc, warm time.Duration) (rss, gor, fds growth) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.samples {
		if s.at.Sub(p.started) < warm {
			continue
		}
		for _, g := range []struct {
			g *growth
			v int
		}{{&rss, s.rssKB}, {&gor, s.goroutines}, {&fds, s.fds}} {
			if g.v < 0 {
				continue
			}
			if !g.g.ok {
				*g.g = growth{base: g.v, ok: true}
			}
			g.g.end, g.g.max = g.v, max(g.g.max, g.v)
		}
	}
	return rss, gor, fds
}

// rssBound is how many times its post-warm-up RSS a process may reach, and
// rssSlackKB how much it may grow in any case: the issue's "growing without
// bound", made generous for noisy machines (a holder little used in its
// first minute can start near 40 MB and settle near 90 MB).
const (
	rssBound   = 2.0
	rssSlackKB = 64 << 10
)

// checkRSS returns a failure for each process whose RSS passed rssBound times
// its value after warm-up, and by more than rssSlackKB.
func checkRSS(procs []*proc, warm time.Duration) []string {
	var out []string
	for _, p := range procs {
		rss, _, _ := grew(p, warm)
		if rss.ok && float64(rss.max) > rssBound*float64(rss.base) && rss.max-rss.base > rssSlackKB {
			out = append(out, fmt.Sprintf("RSS of %s (pid %d) grew from %.1f MB after warm-up to %.1f MB (> %.0f× and > +%d MB)",
				p.name, p.pid, mb(rss.base), mb(rss.max), rssBound, rssSlackKB>>10))
		}
	}
	return out
}

func mb(kb int) float64 { return float64(kb) / 1024 }

// fmtDur prints d to 0.1 s (1m05.3s style).
func fmtDur(d time.Duration) string {
	return d.Round(100 * time.Millisecond).String()
}

// printPhase prints a phase's figures.
func printPhase(w io.Writer, r phaseResult, batch int, warm time.Duration) {
	fmt.Fprintf(w, "\n== %s run: %d steps asked", r.name, r.steps)
	if r.summary != nil {
		fmt.Fprintf(w, ", trainer finished at step %d, val loss %.4f, %.0f tokens/s (its last window)", r.summary.Step, r.summary.ValLoss, r.summary.TokensPerSec)
	} else {
		fmt.Fprintf(w, ", no trainer summary")
	}
	fmt.Fprintln(w)
	if len(r.stepsAt) >= 2 {
		last := r.stepsAt[len(r.stepsAt)-1]
		fmt.Fprintf(w, "training: %s from the first step to step %d; mean %.2f steps/s\n",
			fmtDur(last.at.Sub(r.first)), last.step, meanRate(r.stepsAt))
		rs := rates(r.stepsAt, progressEvery)
		parts := make([]string, len(rs))
		for i, x := range rs {
			parts[i] = fmt.Sprintf("%.2f", x)
		}
		sorted := slices.Clone(rs)
		slices.Sort(sorted)
		fmt.Fprintf(w, "steps/s per %s window: %s\n  (min %.2f, median %.2f, max %.2f)\n", fmtDur(progressEvery), strings.Join(parts, " "),
			sorted[0], sorted[len(sorted)/2], sorted[len(sorted)-1])
		stall, i := longestStall(r.stepsAt)
		fmt.Fprintf(w, "longest stall (no trainer step; resolution %s): %s, before step %d at %s", pollEvery, fmtDur(stall), r.stepsAt[i].step, fmtDur(r.stepsAt[i].at.Sub(r.first)))
		begin := r.stepsAt[i-1].at.Sub(r.first)
		var near []string
		for _, e := range r.events {
			if e.at <= begin+time.Second && e.at >= begin-20*time.Second {
				near = append(near, fmt.Sprintf("%s at %s", e.what, fmtDur(e.at)))
			}
		}
		if len(near) > 0 {
			fmt.Fprintf(w, "; faults in the 20 s before it: %s", strings.Join(near, "; "))
		}
		fmt.Fprintln(w)
		var stalls []time.Duration
		for j := 1; j < len(r.stepsAt); j++ {
			stalls = append(stalls, r.stepsAt[j].at.Sub(r.stepsAt[j-1].at))
		}
		sort.Slice(stalls, func(a, b int) bool { return stalls[a] > stalls[b] })
		over := func(d time.Duration) int {
			n := 0
			for _, s := range stalls {
				if s > d {
					n++
				}
			}
			return n
		}
		fmt.Fprintf(w, "gaps between steps over 2 s: %d, over 5 s: %d, over 10 s: %d\n", over(2*time.Second), over(5*time.Second), over(10*time.Second))
	}
	if t := r.trainer; t != nil {
		m := t.Microbatches
		fmt.Fprintf(w, "trainer microbatches: completed %d, retried %d, failed %d, replayed %d, taken back %d\n",
			m.Completed, m.Retried, m.Failed, m.Replayed, m.TakenBack)
	}
	if s := r.summary; s != nil && len(s.Stepped) > 0 {
		sent := int64(s.Step) * int64(batch)
		verdict := "equal"
		for _, n := range s.Stepped {
			if n != sent {
				verdict = "NOT equal"
			}
		}
		fmt.Fprintf(w, "sequences stepped on per stage: %v; sent %d (%d steps × batch %d): %s\n", s.Stepped, sent, s.Step, batch, verdict)
	}
	var served, retried, failed uint64
	holders := 0
	for _, p := range r.procs {
		p.mu.Lock()
		if p.slot >= 0 && p.last != nil {
			holders++
			served += p.last.Microbatches.Completed
			retried += p.last.Microbatches.Retried
			failed += p.last.Microbatches.Failed
		}
		p.mu.Unlock()
	}
	fmt.Fprintf(w, "holders per stage when training ended: %v; stage moves by the rebalancer: %d\n", r.holders, r.moves)
	fmt.Fprintf(w, "holders' counters (last seen, summed over %d holder processes): served %d, partial retries %d, requests answered with an error %d\n",
		holders, served, retried, failed)
	if len(r.events) > 0 {
		kinds := map[string]int{}
		for _, e := range r.events {
			k, _, _ := strings.Cut(e.what, " ")
			if k == "replaced" {
				if strings.Contains(e.what, "same identity") {
					k = "replaced (same identity)"
				} else {
					k = "replaced (new identity)"
				}
			}
			kinds[k]++
		}
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(kinds)) {
			parts = append(parts, fmt.Sprintf("%s %d", k, kinds[k]))
		}
		fmt.Fprintf(w, "faults: %s\n", strings.Join(parts, ", "))
	}
	if len(r.terms) > 0 {
		var worst time.Duration
		bad := 0
		for _, t := range r.terms {
			worst = max(worst, t.took)
			if t.err != nil || t.killed {
				bad++
			}
		}
		fmt.Fprintf(w, "SIGTERMed holders: %d, slowest exit %s, exits not 0 or killed: %d\n", len(r.terms), fmtDur(worst), bad)
	}
	if len(r.warnings) > 0 {
		fmt.Fprintf(w, "warnings and errors in the logs:\n")
		for _, k := range slices.Sorted(maps.Keys(r.warnings)) {
			fmt.Fprintf(w, "  %4d× %s\n", r.warnings[k], k)
		}
	}
	fmt.Fprintf(w, "processes (sampled every %s; 'warm' is the first sample %s or more after its start):\n", sampleEvery, fmtDur(warm))
	fmt.Fprintf(w, "  %-10s %7s %6s %8s  %-24s %-18s %-14s %s\n", "process", "pid", "stage", "lived", "RSS MB warm→end (max)", "goroutines", "fds", "end")
	for _, p := range r.procs {
		rss, gor, fds := grew(p, warm)
		p.mu.Lock()
		lived := p.exitAt.Sub(p.started)
		if p.exitAt.IsZero() {
			lived = time.Since(p.started)
		}
		stage := p.stage
		end := endOf(p)
		p.mu.Unlock()
		f := func(g growth, scale func(int) string) string {
			if !g.ok {
				return "-"
			}
			return fmt.Sprintf("%s→%s (%s)", scale(g.base), scale(g.end), scale(g.max))
		}
		mbs := func(v int) string { return fmt.Sprintf("%.1f", mb(v)) }
		ints := func(v int) string { return fmt.Sprint(v) }
		fmt.Fprintf(w, "  %-10s %7d %6d %8s  %-24s %-18s %-14s %s\n", p.name, p.pid, stage, fmtDur(lived.Truncate(time.Second)),
			f(rss, mbs), f(gor, ints), f(fds, ints), end)
	}
	longLived(w, r, warm)
}

// longLived prints the RSS and goroutines of the processes that lived
// through the whole phase, one figure per minute, and their spread after
// warm-up (the issue asks for flat within ±10%).
func longLived(w io.Writer, r phaseResult, warm time.Duration) {
	var worstRSS, worstGor float64
	var whoRSS, whoGor string
	for _, p := range r.procs {
		p.mu.Lock()
		churned := p.fault != ""
		p.mu.Unlock()
		if churned {
			continue
		}
		rss, gor, _ := grew(p, warm)
		if rss.ok && rss.base > 0 {
			if x := float64(rss.max)/float64(rss.base) - 1; x > worstRSS {
				worstRSS, whoRSS = x, p.name
			}
		}
		if gor.ok && gor.base > 0 {
			if x := float64(gor.max)/float64(gor.base) - 1; x > worstGor {
				worstGor, whoGor = x, p.name
			}
		}
	}
	fmt.Fprintf(w, "growth after warm-up of the processes the churn left alone: RSS at most +%.1f%% (%s), goroutines at most +%.1f%% (%s)\n",
		100*worstRSS, orNone(whoRSS), 100*worstGor, orNone(whoGor))
}

// endOf says how p ended (p.mu held).
func endOf(p *proc) string {
	exit := "exit 0"
	if p.exitErr != nil {
		exit = p.exitErr.Error()
	}
	var end string
	switch {
	case p.fault == "SIGKILL":
		end = "SIGKILLed by the churn"
	case p.fault == "SIGTERM":
		end = "SIGTERMed by the churn: " + exit
	case p.exitAt.IsZero():
		end = "running"
	case p.signalled == "":
		end = "exited on its own: " + exit
	case p.endKilled:
		end = fmt.Sprintf("at the end: still running %s after SIGTERM, killed", fmtDur(p.endTook))
	default:
		end = fmt.Sprintf("at the end: %s, %s after SIGTERM", exit, fmtDur(p.endTook))
	}
	if p.freezes > 0 {
		end += fmt.Sprintf("; frozen %d×", p.freezes)
	}
	return end
}

func orNone(s string) string {
	if s == "" {
		return "none grew"
	}
	return s
}
