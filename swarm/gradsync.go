package swarm

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/averaging"
	"swarmnode/config"
	"swarmnode/pipeline"
	"swarmnode/stages"
)

// gradKey is the averaging key of stage k's gradient all-reduce: its own
// protocols, beside the parameter averaging of stageKey(k).
func gradKey(k int) string { return stageKey(k) + "-grads" }

// gradSync all-reduces a stage's accumulated gradients with the other holders
// stepping at the same commit (pipeline.WorkerOptions.Reduce), through an
// averaging.Averager over the gradients.
type gradSync struct {
	avg *averaging.Averager
	src *gradSource
}

// newGradSync registers stage k's gradient all-reduce on the node. Its group is
// as large as the averaging protocol allows, so that every holder of a stage
// meets in one group; a straggler is waited for at most the averaging
// section's matchmaking window.
func newGradSync(n *Node, cfg config.Config, k int, st *stages.Stage, log *slog.Logger) (*gradSync, error) {
	opts, err := averaging.OptionsFromConfig(cfg.Run, gradKey(k), cfg.Averaging)
	if err != nil {
		return nil, err
	}
	opts.GroupSize = maxGradGroup
	opts.Logger = log
	opts.Registerer = n.Registry()
	src := &gradSource{st: st, n: st.NumParams(), log: log}
	opts.OnEvict = func(p peer.ID, why string) { n.bans.add(p, opts.Key, why) }
	avg, err := averaging.New(n.Host(), averaging.PeerList(nil), src, opts)
	if err != nil {
		return nil, err
	}
	n.bans.guard(avg)
	return &gradSync{avg: avg, src: src}, nil
}

// maxGradGroup is the largest group the averaging protocol forms.
const maxGradGroup = 64

// reduce is the worker's Reduce: it presents the gradients as their mean per
// microbatch, weighted by r.Micro, and leaves the group's mean in them. Parts
// of the vector whose average did not come back are brought to this holder's
// own mean, so that the step may divide by nothing more.
func (g *gradSync) reduce(ctx context.Context, r pipeline.Round) (pipeline.Reduced, error) {
	g.src.start(r.Micro)
	res, err := g.avg.RoundAmong(ctx, r.ID, r.Members, r.Weights)
	if errors.Is(err, averaging.ErrSkipped) || g.src.coveredNone() {
		return pipeline.Reduced{}, err
	}
	red := pipeline.Reduced{Averaged: true, Group: res.Members, Complete: err == nil && res.Dropped == 0 && res.Averaged >= 1}
	for p := range g.avg.Evicted() {
		if len(red.Evicted) < maxGradGroup {
			red.Evicted = append(red.Evicted, p)
		}
	}
	if ferr := g.src.finish(); ferr != nil {
		return red, ferr
	}
	if err == nil && res.Averaged < 1 {
		err = errors.New("part of the gradient kept this holder's own mean")
	}
	return red, err
}

func (g *gradSync) close() { g.avg.Close() }

// gradSource is the averaging.Source of a stage's gradients during one round:
// the accumulated sum over micro microbatches, read as its mean.
type gradSource struct {
	st  *stages.Stage
	n   int
	log *slog.Logger

	lie *gradLiar // tests only: an adversary's corruption of what it sends

	mu      sync.Mutex
	micro   int
	covered []span // ranges that received the group's mean
	failed  error
}

type span struct{ off, n int }

func (s *gradSource) start(micro int) {
	s.mu.Lock()
	s.micro, s.covered, s.failed = micro, s.covered[:0], nil
	s.mu.Unlock()
}

// scale is what turns the accumulated sum into the mean.
func (s *gradSource) scale() float32 {
	if s.micro < 1 {
		return 1 // nothing accumulated: the gradients are zero
	}
	return 1 / float32(s.micro)
}

// Len is the number of gradients.
func (s *gradSource) Len() int { return s.n }

// Samples is the round's weight: the microbatches accumulated.
func (s *gradSource) Samples() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.micro)
}

// Read copies the mean gradient at [off, off+len(dst)).
func (s *gradSource) Read(off int, dst []float32) {
	if err := s.st.ReadGrads(off, dst); err != nil {
		clear(dst)
		s.fail(err)
		return
	}
	c := s.scale()
	for i := range dst {
		dst[i] *= c
	}
	if s.lie != nil {
		s.lie.corruptAt(off, dst)
	}
}

// gradLiar makes a holder send corrupted gradients to the all-reduce while
// it applies the group's honest result itself, so that only what it sends
// lies (the averaging attack alone, not a holder serving a diverged model).
// Only tests set one: the adversarial corruption is theirs.
type gradLiar struct {
	corrupt func(vals []float32)

	mu   sync.Mutex
	told map[int][]float32 // by offset: sent − honest
}

// corrupt corrupts vals, read at off, and remembers by how much.
func (l *gradLiar) corruptAt(off int, vals []float32) {
	honest := slices.Clone(vals)
	l.corrupt(vals)
	for i := range honest {
		honest[i] = vals[i] - honest[i]
	}
	l.mu.Lock()
	if l.told == nil {
		l.told = map[int][]float32{}
	}
	l.told[off] = honest
	l.mu.Unlock()
}

// undo adds back to delta (the result minus what was sent, at off) what the
// lie added to what was sent.
func (l *gradLiar) undo(off int, delta []float32) {
	l.mu.Lock()
	d := l.told[off]
	delete(l.told, off)
	l.mu.Unlock()
	for i := range min(len(d), len(delta)) {
		delta[i] += d[i]
	}
}

// Add turns [off, off+len(delta)) into the group's mean: mean sent + delta,
// where the gradients hold the sum.
func (s *gradSource) Add(off int, delta []float32) {
	if s.lie != nil {
		s.lie.undo(off, delta)
	}
	sum := make([]float32, len(delta))
	if err := s.st.ReadGrads(off, sum); err != nil {
		s.fail(err)
		return
	}
	c := s.scale()
	for i, g := range sum {
		sum[i] = g*(c-1) + delta[i]
	}
	if err := s.st.AddGrads(off, sum); err != nil {
		s.fail(err)
		return
	}
	s.mu.Lock()
	s.covered = append(s.covered, span{off, len(delta)})
	s.mu.Unlock()
}

func (s *gradSource) fail(err error) {
	s.mu.Lock()
	if s.failed == nil {
		s.failed = err
		s.log.Warn("gradient all-reduce: stage gradient access failed", "err", err.Error())
	}
	s.mu.Unlock()
}

func (s *gradSource) coveredNone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.covered) == 0
}

// scaleRange adds f times the gradients at [off, off+n) to them.
func (s *gradSource) scaleRange(off, n int, f float32) error {
	g := make([]float32, n)
	if err := s.st.ReadGrads(off, g); err != nil {
		return err
	}
	for i := range g {
		g[i] *= f
	}
	return s.st.AddGrads(off, g)
}

// finish scales every range that did not receive the group's mean to this
// holder's own mean.
func (s *gradSource) finish() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.scale()
	if c == 1 {
		return s.failed
	}
	slices.SortFunc(s.covered, func(a, b span) int { return a.off - b.off })
	lo := 0 // the first value not known to be covered
	for _, sp := range append(s.covered, span{off: s.n}) {
		if sp.off > lo {
			if err := s.scaleRange(lo, sp.off-lo, c-1); err != nil {
				return err
			}
		}
		lo = max(lo, sp.off+sp.n)
	}
	return s.failed
}
