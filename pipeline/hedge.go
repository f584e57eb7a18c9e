package pipeline

import (
	"slices"
	"sync"
	"time"
)

// Hedging. A training microbatch must train exactly once at every stage, so a
// slow call cannot simply be duplicated: both holders would run backward passes
// (and so would the stages below them). Instead the hop asks the slow holder to
// give up, which it does only while nothing of the microbatch is committed (no
// backward pass has run at it or below), and then sends its cached output to
// another holder. A holder measured several times slower than the others commits
// early in its share of the time (after its forward pass and the fast stages
// below it; the rest is its long backward pass), so the ask must come early: it
// comes once the call has taken hedgeFactor times the stage's recent median
// latency (at least hedgeFloor), and only when some other live holder of the
// stage is measured at least hedgeSpeedup times as fast. Between holders of
// similar speed, slowness is queueing that the other would share, and no hedge
// is sent.
const (
	hedgeFactor = 0.5
	hedgeFloor  = 500 * time.Microsecond
	// hedgeSpeedup is how much faster (measured throughput) another holder must
	// be for a call to be hedged.
	hedgeSpeedup = 2.0
	// hedgeMinSamples calls must have completed before the median is trusted.
	hedgeMinSamples = 8
	latWindow       = 64
)

// latencies keeps the durations of a caller's recent successful calls.
type latencies struct {
	mu   sync.Mutex
	ring [latWindow]time.Duration
	n    int // calls recorded, capped at latWindow
	next int
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.ring[l.next] = d
	l.next = (l.next + 1) % latWindow
	l.n = min(l.n+1, latWindow)
	l.mu.Unlock()
}

// hedgeAfter is how long a call may take before it is hedged; 0 while too few
// calls have completed to tell what is usual.
func (l *latencies) hedgeAfter() time.Duration {
	l.mu.Lock()
	if l.n < hedgeMinSamples {
		l.mu.Unlock()
		return 0
	}
	ds := slices.Clone(l.ring[:l.n])
	l.mu.Unlock()
	slices.Sort(ds)
	return max(hedgeFloor, time.Duration(hedgeFactor*float64(ds[len(ds)/2])))
}
