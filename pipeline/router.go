package pipeline

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Holder is a live holder of a stage as the router knows it.
type Holder struct {
	// ID is the holder's peer id.
	ID peer.ID
	// Throughput is its measured speed in tokens per second (0: unknown yet).
	Throughput float64
	// Queue is its number of microbatches waiting for or in computation.
	Queue int
	// Addrs are addresses to dial it on, if the router knows any.
	Addrs []ma.Multiaddr
}

// Router is the pipeline's view of the swarm: who holds each stage, and a way to
// report a holder whose call just failed. It must be safe for concurrent use.
type Router interface {
	// Holders returns the live holders of stage k.
	Holders(k int) []Holder
	// MarkDown reports that a call to p failed.
	MarkDown(p peer.ID)
}

// RecoveredLister is a Router that also lists the holders of stage k that it
// hides after a failed call but that have been heard from since. A trainer
// asks them at its prepare and commit too: its own backoff keeps them out of
// its routing, but the stage above may be sending them work again, which
// would otherwise be counted lost and sent again.
type RecoveredLister interface {
	Recovered(k int) []Holder
}

// backoff hides holders whose calls failed, for a time that doubles with each
// consecutive failure and resets on success.
type backoff struct {
	base, max time.Duration

	mu sync.Mutex
	m  map[peer.ID]*downState
}

type downState struct {
	until time.Time
	n     int
}

func newBackoff(base, max time.Duration) *backoff {
	return &backoff{base: base, max: max, m: make(map[peer.ID]*downState)}
}

// down marks p down and returns how long it stays down.
func (b *backoff) down(p peer.ID, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.m) > 4096 {
		for id, d := range b.m {
			if now.Sub(d.until) > b.max {
				delete(b.m, id)
			}
		}
	}
	d := b.m[p]
	if d == nil {
		d = &downState{}
		b.m[p] = d
	}
	d.n++
	wait := b.base << min(d.n-1, 20)
	if wait > b.max || wait <= 0 {
		wait = b.max
	}
	d.until = now.Add(wait)
	return wait
}

// busy keeps p out of the picks for one base period without counting a
// failure: a holder that answered "busy" is alive and will have a free slot
// soon, so repeated busy answers must not escalate into the long backoff of a
// dead peer (that starves the pipeline when every holder of a stage is full).
func (b *backoff) busy(p peer.ID, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.m[p]
	if d == nil {
		d = &downState{}
		b.m[p] = d
	}
	if until := now.Add(b.base); until.After(d.until) {
		d.until = until
	}
}

// up forgets p's failures after a successful call.
func (b *backoff) up(p peer.ID) {
	b.mu.Lock()
	delete(b.m, p)
	b.mu.Unlock()
}

// hasFailed reports whether p is in backoff for a failed call (not for a busy
// answer: a busy holder is alive, and takes part in commits).
func (b *backoff) hasFailed(p peer.ID, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.m[p]
	return d != nil && d.n > 0 && now.Before(d.until)
}

func (b *backoff) isDown(p peer.ID, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.m[p]
	return d != nil && now.Before(d.until)
}

// picker chooses next hops: at random, with probability proportional to
// throughput/(1+queue), among holders not in backoff, the throughput being the
// holder's compute speed slowed by the rate this peer measured of the link to it
// (overLink). The queue counts both what
// the holder last reported and the calls this peer has outstanding to it, so that
// load shifts within one microbatch even when gossip lags.
type picker struct {
	router Router
	bo     *backoff
	self   peer.ID // never picked: a peer does not call itself
	log    *slog.Logger

	mu       sync.Mutex
	rng      *rand.Rand
	inflight map[peer.ID]int
	links    map[peer.ID]*linkRate // measured by this peer's calls
	service  map[peer.ID]float64   // tokens/s of this peer's calls to each holder, averaged
	shunned  map[peer.ID]bool      // holders most of their stage evicted: never picked
}

// shun stops p from being picked; it reports whether p was not shunned yet.
func (p *picker) shun(id peer.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shunned[id] {
		return false
	}
	if p.shunned == nil || len(p.shunned) > 4096 {
		p.shunned = map[peer.ID]bool{}
	}
	p.shunned[id] = true
	return true
}

func (p *picker) isShunned(id peer.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.shunned[id]
}

// linkRate is what this peer measured of the link to one holder: the rate its
// answers arrived at and their bytes per token, averaged over recent calls.
type linkRate struct {
	rate float64 // bytes per second
	bpt  float64 // bytes per token of an answer
}

// minLinkSample is the smallest answer whose transfer time says something of
// the link's rate: below it the payload is a few packets and the time noise.
const minLinkSample = 64 << 10

// observeLink takes one answer of holder id: n bytes for tokens tokens, whose
// payload arrived in d.
func (p *picker) observeLink(id peer.ID, n, tokens int, d time.Duration) {
	if n < minLinkSample || tokens <= 0 || d <= 0 {
		return
	}
	rate, bpt := float64(n)/d.Seconds(), float64(n)/float64(tokens)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.links == nil || len(p.links) > 4096 {
		p.links = make(map[peer.ID]*linkRate)
	}
	l := p.links[id]
	if l == nil {
		p.links[id] = &linkRate{rate: rate, bpt: bpt}
		return
	}
	const alpha = 0.3
	l.rate += alpha * (rate - l.rate)
	l.bpt += alpha * (bpt - l.bpt)
}

// overLink is the rate in tokens per second at which a holder of compute
// throughput tp serves this peer across a link l: each token's activations go
// out and its gradient comes back (as many bytes as the answers measured) at the
// link's rate, one after the other with its computation.
func overLink(tp float64, l *linkRate) float64 {
	if l == nil || l.rate <= 0 || tp <= 0 {
		return tp
	}
	return 1 / (1/tp + 2*l.bpt/l.rate)
}

func newPicker(r Router, bo *backoff, self peer.ID, seed uint64, log *slog.Logger) *picker {
	return &picker{router: r, bo: bo, self: self, log: log, rng: rand.New(rand.NewPCG(seed, 0x5eed)), inflight: make(map[peer.ID]int)}
}

// Routing does not take a holder's word for a speed far above its stage's.
// A claim of up to claimCap times the stage's median claim stands as it is:
// honest holders of similar machines claim within that spread, and routing
// them less on a noisy measurement would starve them (fewer calls, so fewer
// in flight, so a lower measured rate). A claim above it needs this peer's
// measurements to back it:
//
//   - Each answered call gives a service rate: tokens over the call's wall
//     time, times our calls in flight to that holder (they share it).
//   - A call's time per token is the holder's own compute plus an overhead
//     the holders of a stage share (the hops downstream, the link). The
//     median of 1/service − 1/claim over the measured holders estimates that
//     overhead; what is left is the holder's credible rate.
//   - Not measured yet: the claim counts as claimCap × the median claim, so a
//     newcomer gets work and is measured, and a liar draws a bounded share.
//   - Measured at no more than the median claim while claiming overclaim
//     times that: the claim is a lie, and the holder is routed on what it
//     was measured at.
//   - Otherwise (a GPU among CPUs) the claim counts up to overclaim times its
//     credible rate, and never below the cap.

// claimCap is how far above its stage's median claim a claim stands
// unmeasured; overclaim how far above a measured rate.
const (
	claimCap  = 4
	overclaim = 4
)

// observeService takes one answered call to holder id: tokens tokens in d,
// with concurrent calls of ours to it in flight once it began.
func (p *picker) observeService(id peer.ID, tokens, concurrent int, d time.Duration) {
	if tokens <= 0 || d <= 0 {
		return
	}
	rate := float64(tokens*max(1, concurrent)) / d.Seconds()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.service == nil || len(p.service) > 4096 {
		p.service = make(map[peer.ID]float64)
	}
	if old, ok := p.service[id]; ok {
		rate = old + 0.3*(rate-old)
	}
	p.service[id] = rate
}

// credible returns the throughput routing uses for each candidate (p.mu
// held); mean stands for claims not made yet.
func (p *picker) credible(cands []Holder, mean float64) []float64 {
	claims := make([]float64, len(cands))
	var excess []float64
	for i, h := range cands {
		claims[i] = h.Throughput
		if claims[i] <= 0 {
			claims[i] = mean
		}
		if m := p.service[h.ID]; m > 0 {
			excess = append(excess, 1/m-1/claims[i])
		}
	}
	sorted := slices.Clone(claims)
	slices.Sort(sorted)
	median := sorted[(len(sorted)-1)/2]
	overhead := 0.0
	if len(excess) > 0 {
		slices.Sort(excess)
		overhead = max(0, excess[(len(excess)-1)/2])
	}
	out := make([]float64, len(cands))
	for i, h := range cands {
		c, capAt := claims[i], claimCap*median
		if c <= capAt {
			out[i] = c
			continue
		}
		m := p.service[h.ID]
		if m <= 0 || len(excess) < 2 {
			out[i] = capAt // nothing to compare a measurement with yet
			continue
		}
		cred := c
		if own := 1/m - overhead; own > 1/c {
			cred = 1 / own
		}
		if c > overclaim*cred && cred <= median {
			out[i] = cred
		} else {
			out[i] = min(c, max(capAt, overclaim*cred))
		}
	}
	return out
}

// weight is a holder's share of the traffic. A holder whose throughput is still
// unknown is treated as average so that newcomers get work and get measured.
func weight(tp, mean float64, queue int) float64 {
	if tp <= 0 {
		tp = mean
	}
	return tp / float64(1+max(0, queue))
}

// choose picks among the holders of stage k, preferring those not in avoid; it
// returns false when every holder is in backoff or there are none.
func (p *picker) choose(k int, avoid map[peer.ID]bool) (Holder, bool) {
	hs := p.router.Holders(k)
	// Filter into a copy: the router's slice is not ours to modify.
	hs = slices.DeleteFunc(slices.Clone(hs), func(h Holder) bool { return h.ID == p.self || p.isShunned(h.ID) })
	now := time.Now()
	cands := make([]Holder, 0, len(hs))
	for _, h := range hs {
		if !p.bo.isDown(h.ID, now) && !avoid[h.ID] {
			cands = append(cands, h)
		}
	}
	if len(cands) == 0 {
		// Holders this microbatch already tried but that are not in backoff (they
		// were busy, or their own downstream failed) are still better than none.
		for _, h := range hs {
			if !p.bo.isDown(h.ID, now) {
				cands = append(cands, h)
			}
		}
	}
	if len(cands) == 0 {
		return Holder{}, false
	}
	mean, known := 0.0, 0
	for _, h := range cands {
		if h.Throughput > 0 {
			mean += h.Throughput
			known++
		}
	}
	if known > 0 {
		mean /= float64(known)
	} else {
		mean = 1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	tps := p.credible(cands, mean)
	ws := make([]float64, len(cands))
	total := 0.0
	for i, h := range cands {
		ws[i] = weight(overLink(tps[i], p.links[h.ID]), mean, h.Queue+p.inflight[h.ID])
		total += ws[i]
	}
	x := p.rng.Float64() * total
	for i, w := range ws {
		if x < w {
			return cands[i], true
		}
		x -= w
	}
	return cands[len(cands)-1], true
}

// pick waits until a holder of stage k is available or ctx ends; while it waits
// it says so in the log now and then, since a stage without a live holder stops
// the whole pipeline.
func (p *picker) pick(ctx context.Context, k int, avoid map[peer.ID]bool) (Holder, error) {
	start := time.Now()
	next := start.Add(10 * time.Second)
	for {
		if h, ok := p.choose(k, avoid); ok {
			return h, nil
		}
		if now := time.Now(); now.After(next) && p.log != nil {
			p.log.Info("waiting for a live holder", "stage", k, "waited", now.Sub(start).Round(time.Second), "known", len(p.router.Holders(k)))
			next = now.Add(30 * time.Second)
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return Holder{}, ctx.Err()
		case <-t.C:
		}
	}
}

// begin counts a call to id in flight and returns how many are now.
func (p *picker) begin(id peer.ID) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inflight[id]++
	return p.inflight[id]
}

func (p *picker) end(id peer.ID) {
	p.mu.Lock()
	if p.inflight[id]--; p.inflight[id] <= 0 {
		delete(p.inflight, id)
	}
	p.mu.Unlock()
}

// other reports whether a holder of stage k other than this peer and those in
// avoid, out of backoff, is measured at least hedgeSpeedup times as fast as
// holder not: somewhere a hedged call could go and be expected to finish sooner.
// Holders of similar speed are not hedged against each other: their slowness is
// a queue, which the other one would likely share.
func (p *picker) other(k int, not peer.ID, avoid map[peer.ID]bool) bool {
	now := time.Now()
	hs := p.router.Holders(k)
	slow := -1.0
	for _, h := range hs {
		if h.ID == not {
			slow = h.Throughput
		}
	}
	if slow < 0 {
		slow = 0 // gone from the router's view: anyone live is better
	}
	for _, h := range hs {
		if h.ID != not && h.ID != p.self && !avoid[h.ID] && !p.bo.isDown(h.ID, now) &&
			h.Throughput > 0 && h.Throughput >= hedgeSpeedup*slow {
			return true
		}
	}
	return false
}
