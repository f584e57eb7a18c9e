package pipeline

import (
	"math"
	"slices"
	"time"
)

// A trainer with pipeline.in_flight 0 chooses how many microbatches to keep in
// the pipeline from what it measures, so that a swarm on slow or distant links
// keeps its slowest stage busy without a hand-tuned setting. By Little's law the
// pipeline holds throughput × round trip: the round trip of a microbatch when
// nothing queues (the fastest of the recent calls to stage 0: links and
// compute) times the speed of the slowest stage (its holders' gossiped
// throughput together), plus one to cover the variation. What a step admits
// (pipeline.staleness) and the servers' own cap (pipeline.max_in_flight) bound
// it.

// autoInFlightEvery is how often auto mode recomputes its limit: the inputs
// (recent round trips, gossiped throughputs) move on that scale, while the
// trainer's loop asks at every microbatch sent or answered.
const autoInFlightEvery = 500 * time.Millisecond

// autoInFlightCap bounds the trainer's workers in auto mode: far beyond any
// bandwidth-delay product a stage server will take.
const autoInFlightCap = 64

// inFlightWorkers is the number of trainer workers: pipeline.in_flight, or the
// most auto mode may use.
func (t *Trainer) inFlightWorkers() int {
	if n := t.opts.Pipeline.InFlight; n > 0 {
		return n
	}
	return min(autoInFlightCap, max(1, t.opts.Pipeline.MaxInFlight))
}

// inFlightLimit is how many microbatches the trainer keeps in flight now. Only
// Run's loop calls it.
func (t *Trainer) inFlightLimit(tokensPerMicro int) int {
	if n := t.opts.Pipeline.InFlight; n > 0 {
		return n
	}
	if n := t.autoLimit.Load(); n > 0 && time.Since(t.autoAt) < autoInFlightEvery {
		return int(n)
	}
	t.autoAt = time.Now()
	n := autoInFlight(t.call.lat.fastest(), t.bottleneck(), tokensPerMicro, t.opts.Stages)
	n = min(n, t.inFlightWorkers())
	t.autoLimit.Store(int64(n))
	return n
}

// bottleneck is the speed in tokens/s of the slowest stage, its holders'
// throughputs added; 0 while a stage's is unknown.
func (t *Trainer) bottleneck() float64 {
	slowest := math.Inf(1)
	for k := range t.opts.Stages {
		var sum float64
		for _, h := range t.call.router.Holders(k) {
			sum += h.Throughput
		}
		slowest = min(slowest, sum)
	}
	if math.IsInf(slowest, 1) {
		return 0
	}
	return slowest
}

// autoInFlight is ceil(roundTrip × tokensPerSec / tokensPerMicro) + 1; before
// both are measured, one microbatch per stage and one more, which fills a
// pipeline whose links cost nothing.
func autoInFlight(roundTrip time.Duration, tokensPerSec float64, tokensPerMicro, stages int) int {
	if roundTrip <= 0 || tokensPerSec <= 0 || tokensPerMicro <= 0 {
		return stages + 1
	}
	return int(math.Ceil(roundTrip.Seconds()*tokensPerSec/float64(tokensPerMicro))) + 1
}

// fastest is the shortest recent call, 0 when none completed yet.
func (l *latencies) fastest() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == 0 {
		return 0
	}
	return slices.Min(l.ring[:l.n])
}
