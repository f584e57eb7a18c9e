package swarm

import (
	"maps"
	"math"
	"slices"
	"sync"
	"time"
)

// MaxHistory bounds the loss history kept for the status page; beyond it the
// history is thinned (every other point dropped) so the whole curve stays.
const MaxHistory = 2048

// HistoryPoint is one point of the loss curve.
type HistoryPoint struct {
	// Step is the optimizer step.
	Step int64 `json:"step"`
	// Loss is the training loss at Step.
	Loss float64 `json:"loss"`
	// ValLoss is the validation loss at Step, 0 when not evaluated.
	ValLoss float64 `json:"val_loss"`
	// Time is when the point was recorded.
	Time time.Time `json:"time"`
}

// MicrobatchCounts are the microbatch counters.
type MicrobatchCounts struct {
	// Completed counts microbatches whose forward and backward finished.
	Completed uint64 `json:"completed"`
	// Retried counts partial retries after a downstream hop failed.
	Retried uint64 `json:"retried"`
	// Failed counts microbatches given up on.
	Failed uint64 `json:"failed"`
	// Replayed counts microbatches a trainer sent again because a stage had
	// lost their gradients with a holder; TakenBack counts extra copies the
	// holders took back at a commit (a microbatch computed twice at a stage).
	Replayed  uint64 `json:"replayed"`
	TakenBack uint64 `json:"taken_back"`
}

func (m MicrobatchCounts) add(o MicrobatchCounts) MicrobatchCounts {
	return MicrobatchCounts{
		Completed: m.Completed + o.Completed, Retried: m.Retried + o.Retried, Failed: m.Failed + o.Failed,
		Replayed: m.Replayed + o.Replayed, TakenBack: m.TakenBack + o.TakenBack,
	}
}

// AveragingStats are the averaging counters.
type AveragingStats struct {
	// Rounds counts finished averaging rounds.
	Rounds uint64 `json:"rounds"`
	// LastGroupSize is the number of peers in the last round.
	LastGroupSize int `json:"last_group_size"`
	// LastRoundMS is the duration of the last round in milliseconds.
	LastRoundMS float64 `json:"last_round_ms"`
	// Failures counts rounds that did not finish.
	Failures uint64 `json:"failures"`
	// Skipped counts rounds skipped (e.g. no partner in the group).
	Skipped uint64 `json:"skipped"`
	// Evicted counts the stage's holders this peer evicted from its
	// averaging and gradient all-reduce: parts far outside the others'
	// (CenteredClip's outliers) or not finite.
	Evicted int `json:"evicted"`
	// Audits counts the audits of other holders' reductions that passed
	// (averaging.audit_rate); a holder failing one is evicted.
	Audits uint64 `json:"audits"`
}

// Training is the training progress as the status page shows it.
type Training struct {
	// Step is the latest optimizer step.
	Step int64 `json:"step"`
	// Loss is the latest training loss.
	Loss float64 `json:"loss"`
	// TokensPerSec is the training throughput.
	TokensPerSec float64 `json:"tokens_per_sec"`
}

// Status holds the progress figures the status server shows: the roles
// (roles.go) fill them in from the trainer's, the stage server's and the
// averager's counters. All methods are safe for concurrent use.
type Status struct {
	mu       sync.Mutex
	training Training
	history  []HistoryPoint
	// server and trainer mirror the totals kept by the stage server and the
	// trainer (roles.go); the page shows their sum.
	server, trainer MicrobatchCounts
	stepped         []int64 // per stage, sequences stepped at this trainer's commits
	inFlight        int     // microbatches the trainer keeps in flight
	avg             AveragingStats
	errors          map[string]uint64
	sample          *Sample
}

// Sample is a short text generated from the model at an evaluation.
type Sample struct {
	// Step is the evaluation's step.
	Step int64 `json:"step"`
	// Text is a greedy continuation of a newline (or of <|endoftext|>).
	Text string `json:"text"`
	// Time is when it was made.
	Time time.Time `json:"time"`
}

// SetSample shows s as the latest sample (Time defaults to now).
func (s *Status) SetSample(smp Sample) {
	if smp.Time.IsZero() {
		smp.Time = time.Now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sample = &smp
}

func newStatus() *Status { return &Status{errors: make(map[string]uint64)} }

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// SetTraining records the current step, loss and speed. A non-finite loss or
// speed is not stored (JSON cannot carry it) and counts as error "non_finite".
func (s *Status) SetTraining(step int64, loss, tokensPerSec float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !finite(loss) || !finite(tokensPerSec) {
		s.errors["non_finite"]++
		return
	}
	s.training = Training{Step: step, Loss: loss, TokensPerSec: tokensPerSec}
}

// AddHistory appends a loss curve point (Time defaults to now). A point with
// a non-finite loss counts as error "non_finite" instead.
func (s *Status) AddHistory(p HistoryPoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !finite(p.Loss) || !finite(p.ValLoss) {
		s.errors["non_finite"]++
		return
	}
	if p.Time.IsZero() {
		p.Time = time.Now()
	}
	if len(s.history) >= MaxHistory {
		kept := s.history[:0]
		for i := 0; i < len(s.history); i += 2 {
			kept = append(kept, s.history[i])
		}
		s.history = kept
	}
	s.history = append(s.history, p)
}

// IncError counts one error of the given kind (e.g. "dial", "bad_frame").
func (s *Status) IncError(kind string) {
	if kind == "" {
		kind = "unknown"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errors[kind]++
}

// Counters is a consistent copy of everything in a Status.
type Counters struct {
	// Training, History, Microbatches, Averaging and Errors are the
	// figures of the status page's sections of the same names.
	Training     Training
	History      []HistoryPoint
	Microbatches MicrobatchCounts
	Stepped      []int64
	InFlight     int
	Averaging    AveragingStats
	Errors       map[string]uint64
	Sample       *Sample
}

// Snapshot returns a copy of the counters.
func (s *Status) Snapshot() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Counters{
		Training:     s.training,
		History:      slices.Clone(s.history),
		Microbatches: s.server.add(s.trainer),
		Stepped:      slices.Clone(s.stepped),
		InFlight:     s.inFlight,
		Averaging:    s.avg,
		Errors:       maps.Clone(s.errors),
		Sample:       s.sample,
	}
}
