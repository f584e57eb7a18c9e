package dht

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Holder is a live holder of a stage as this peer last heard of it.
type Holder struct {
	// Peer is the holder's peer id.
	Peer peer.ID
	// Stage is the stage it serves.
	Stage int
	// Role is server or both.
	Role string
	// Throughput is its last reported speed in tokens per second.
	Throughput float64
	// Queue is its last reported number of waiting microbatches.
	Queue int
	// Addrs are the addresses from its signed record, if one was seen.
	Addrs []ma.Multiaddr
	// Seq is the newest sequence number heard from it.
	Seq uint64
	// LastSeen is when a record or gossip message of it last arrived.
	LastSeen time.Time
	// Expires is when it drops out unless heard from again.
	Expires time.Time
}

// entry is what the table knows of one peer.
type entry struct {
	h Holder
	// recordSeq and gossipSeq are the newest seqs of each source.
	recordSeq, gossipSeq uint64
	// downUntil hides the peer; downSeq is its seq when it went down. A peer
	// that said it was leaving comes back with any newer seq (a restart); one
	// marked down after a failed call waits out its backoff.
	downUntil time.Time
	downSeq   uint64
	left      bool
	// recordExp is its newest record's expiry by its own clock, recordCap
	// a TTL after we first saw its newest record, gossipExp when its gossip
	// lapses by ours; offset is its clock minus ours, as its gossip showed
	// (offsetKnown once heard). h.Expires is the later of the record's
	// expiry and gossipExp; the record's is recordExp − offset, or, while
	// the offset is unknown, recordExp but no later than recordCap. So how
	// long a peer stays listed does not depend on our clocks agreeing.
	recordExp, recordCap, gossipExp time.Time
	offset                          time.Duration
	offsetKnown                     bool
}

// setExpires sets h.Expires from the record's expiry and the gossip's.
func (e *entry) setExpires() {
	e.h.Expires = e.gossipExp
	exp := e.recordExp.Add(-e.offset)
	if !e.offsetKnown && exp.After(e.recordCap) {
		exp = e.recordCap
	}
	if exp.After(e.h.Expires) {
		e.h.Expires = exp
	}
}

// clockOffset is the author's clock minus ours as a fresh message of seq
// (the author's wall clock in nanoseconds when it signed) shows it, within
// MaxClockSkew: a peer claiming more cannot stretch its own listing further.
func clockOffset(seq uint64, now time.Time) time.Duration {
	return min(MaxClockSkew, max(-MaxClockSkew, time.Unix(0, int64(seq)).Sub(now)))
}

// table is the thread-safe holders cache.
type table struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[peer.ID]*entry
}

func newTable(ttl time.Duration) *table {
	return &table{ttl: ttl, m: make(map[peer.ID]*entry)}
}

func (t *table) get(p peer.ID) *entry {
	e := t.m[p]
	if e == nil {
		e = &entry{h: Holder{Peer: p, Stage: -1}}
		t.m[p] = e
	}
	return e
}

// clearDown lifts a leave marker once the peer speaks with a newer seq.
func (e *entry) clearDown(seq uint64) {
	if e.left && seq > e.downSeq {
		e.left = false
		e.downUntil = time.Time{}
	}
}

func (e *entry) bumpSeq(seq uint64, now time.Time) {
	if seq > e.h.Seq {
		e.h.Seq = seq
	}
	e.h.LastSeen = now
}

// observeRecord merges a verified record.
func (t *table) observeRecord(rec PeerRecord, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.get(rec.Peer)
	if rec.Seq < e.recordSeq {
		return
	}
	if rec.Seq > e.recordSeq {
		// A record it signed since: it was alive a moment ago. The same
		// record fetched again says nothing new.
		e.recordCap = now.Add(t.ttl)
	}
	e.recordSeq = rec.Seq
	e.clearDown(rec.Seq)
	if rec.Seq >= e.h.Seq {
		e.h.Stage, e.h.Role = rec.Stage, rec.Role
		e.h.Throughput, e.h.Queue = rec.Throughput, rec.Queue
	}
	e.h.Addrs = rec.Multiaddrs()
	if exp := rec.ExpiresAt(); exp.After(e.recordExp) {
		e.recordExp = exp
	}
	e.setExpires()
	e.bumpSeq(rec.Seq, now)
}

// observeLoad merges a verified gossip message from p.
func (t *table) observeLoad(p peer.ID, l Load, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.get(p)
	if l.Seq <= e.gossipSeq {
		return
	}
	e.gossipSeq = l.Seq
	e.offset, e.offsetKnown = clockOffset(l.Seq, now), true
	if l.Leaving {
		e.left, e.downSeq = true, l.Seq
		e.downUntil = now.Add(t.ttl)
		return
	}
	e.clearDown(l.Seq)
	if l.Seq >= e.h.Seq {
		e.h.Stage, e.h.Role = l.Stage, l.Role
		e.h.Throughput, e.h.Queue = l.Throughput, l.Queue
	}
	e.gossipExp = now.Add(t.ttl)
	e.setExpires()
	e.bumpSeq(l.Seq, now)
}

// markDown hides p until now+backoff.
func (t *table) markDown(p peer.ID, now time.Time, backoff time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[p]
	if !ok {
		return
	}
	if until := now.Add(backoff); until.After(e.downUntil) {
		e.downUntil = until
	}
	e.downSeq = e.h.Seq
}

func (e *entry) live(now time.Time) bool {
	return e.h.Stage >= 0 && now.Before(e.h.Expires) && !e.hidden(now)
}

func (e *entry) hidden(now time.Time) bool {
	return now.Before(e.downUntil)
}

// fresh returns p's cached entry if its signed record is known and the entry
// stays valid beyond horizon, so a lookup can skip fetching the record again.
// A peer hidden by MarkDown or a leave message is not returned, fresh or not.
func (t *table) fresh(p peer.ID, horizon time.Time) (Holder, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[p]
	if !ok || e.recordSeq == 0 || !e.h.Expires.After(horizon) {
		return Holder{}, false
	}
	if e.hidden(time.Now()) {
		return Holder{Stage: -1}, true // known, but not to be listed
	}
	return copyHolder(e.h), true
}

// isHidden reports whether p is marked down or has left.
func (t *table) isHidden(p peer.ID, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[p]
	return ok && e.hidden(now)
}

// recovered returns the holders of stage that MarkDown hides but that have
// spoken since (a record or gossip with a newer seq), sorted by peer id: alive
// again, though this peer's backoff still hides them from its routing.
func (t *table) recovered(stage int, now time.Time) []Holder {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Holder
	for _, e := range t.m {
		if e.h.Stage == stage && now.Before(e.h.Expires) && e.hidden(now) && !e.left && e.h.Seq > e.downSeq {
			out = append(out, copyHolder(e.h))
		}
	}
	sortHolders(out)
	return out
}

// holders returns the live holders of stage, sorted by peer id.
func (t *table) holders(stage int, now time.Time) []Holder {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Holder
	for _, e := range t.m {
		if e.h.Stage == stage && e.live(now) {
			out = append(out, copyHolder(e.h))
		}
	}
	sortHolders(out)
	return out
}

// all returns the live holders of every stage.
func (t *table) all(now time.Time) map[int][]Holder {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int][]Holder)
	for _, e := range t.m {
		if e.live(now) {
			out[e.h.Stage] = append(out[e.h.Stage], copyHolder(e.h))
		}
	}
	for _, hs := range out {
		sortHolders(hs)
	}
	return out
}

// prune forgets peers that are neither live nor remembered as down.
func (t *table) prune(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p, e := range t.m {
		if !now.Before(e.h.Expires) && !e.hidden(now) {
			delete(t.m, p)
		}
	}
}

func copyHolder(h Holder) Holder {
	h.Addrs = slices.Clone(h.Addrs)
	return h
}

func sortHolders(hs []Holder) {
	slices.SortFunc(hs, func(a, b Holder) int { return strings.Compare(string(a.Peer), string(b.Peer)) })
}
