package averaging

import (
	"fmt"
	"maps"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Eviction. A sender whose part CenteredClip finds an outlier in at least half
// the chunks of a shard it was judged in, in evictStrikes rounds in a row
// (rounds where it held no weight do not count either way), is evicted by that
// shard's reducer: from then on this
// Averager refuses its parts, sends it no shard to reduce (that shard keeps our
// own values) and leaves it out of the groups it forms. An honest member is
// not far from the others in most chunks (τ is twice the typical distance),
// so the rule evicts garbage, sign-flipped, scaled and stale updates and
// leaves the honest spread alone. The eviction is local to this member: each
// honest reducer sees the liar's parts and evicts it on its own evidence.
//
// Only chunks of at least minJudged values are judged: distances between
// honest parts concentrate around their typical value as the dimension grows
// (relative spread about 1/√(2n)), while a handful of values can lie far apart
// honestly.

// minJudged is the fewest values of a chunk whose outliers count towards
// eviction.
const minJudged = 1024

// evictStrikes is how many rounds in a row a sender must be an outlier to be
// evicted. Honest gradients of one or two microbatches can lie far out in one
// round (their noise is that of a single sample); garbage lies far out in
// every round. A non-finite part is evicted at once.
const evictStrikes = 3

// maxStrikes bounds the senders whose strikes are remembered.
const maxStrikes = 4096

// judge counts one round's verdict on sender p: an outlier in it, or not.
func (a *Averager) judge(p peer.ID, outlier bool, why string) {
	a.mu.Lock()
	if !outlier {
		delete(a.strikes, p)
		a.mu.Unlock()
		return
	}
	if len(a.strikes) > maxStrikes {
		clear(a.strikes) // many liars come and go: forget, rather than grow
	}
	a.strikes[p]++
	n := a.strikes[p]
	a.mu.Unlock()
	if n >= evictStrikes {
		a.evict(p, fmt.Sprintf("%s, and in the %d rounds before", why, n-1))
	}
}

// Evict evicts p from this Averager's rounds, as if it had been caught (a
// ban list restored at start).
func (a *Averager) Evict(p peer.ID, why string) { a.evict(p, why) }

// evict records that p is evicted, and why, and tells Options.OnEvict.
func (a *Averager) evict(p peer.ID, why string) {
	if p == "" || p == a.h.ID() {
		return
	}
	a.mu.Lock()
	_, known := a.evicted[p]
	if !known {
		a.evicted[p] = why
		a.stats.Evicted++
	}
	a.mu.Unlock()
	if !known {
		a.o.Logger.Warn("averaging member evicted", "key", a.o.Key, "peer", p.ShortString(), "why", why)
		if a.o.OnEvict != nil {
			a.o.OnEvict(p, why)
		}
	}
}

// isEvicted reports whether p was evicted.
func (a *Averager) isEvicted(p peer.ID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.evicted[p]
	return ok
}

// Evicted returns the evicted members and why each was.
func (a *Averager) Evicted() map[peer.ID]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.evicted)
}

// notEvicted filters the evicted out of holders.
func (a *Averager) notEvicted(holders []peer.ID) []peer.ID {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.evicted) == 0 {
		return holders
	}
	out := make([]peer.ID, 0, len(holders))
	for _, h := range holders {
		if _, ok := a.evicted[h]; !ok {
			out = append(out, h)
		}
	}
	return out
}
