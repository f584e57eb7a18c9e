package dht

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
)

// The bootstrap redial waits redialMin after losing the last peer, doubling
// up to redialMax while the bootstrap peers stay unreachable: a peer that
// starts before its bootstrap joins within a second or so of it, and a
// bootstrap that is gone for good costs a dial every half minute.
const (
	redialMin = time.Second
	redialMax = 30 * time.Second
)

// repeat calls fn now and then every period, until ctx ends.
func repeat(ctx context.Context, period time.Duration, fn func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// connectBootstrap dials the bootstrap peers in parallel, each with a deadline.
func (s *Service) connectBootstrap(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ai := range s.opts.Bootstrap {
		if ai.ID == s.h.ID() {
			continue
		}
		wg.Add(1)
		go func(ai peer.AddrInfo) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
			defer cancel()
			if err := s.h.Connect(cctx, ai); err != nil {
				s.log.Warn("bootstrap peer unreachable", "peer", ai.ID, "err", err)
			}
		}(ai)
	}
	wg.Wait()
}

// bootstrapLoop redials the bootstrap peers while this peer is connected to
// none of them and to nobody else either: a first dial that failed (the
// bootstrap was still starting, the machine was overloaded, a dial backoff)
// must not leave the peer outside the swarm for good.
func (s *Service) bootstrapLoop(ctx context.Context) {
	if len(s.opts.Bootstrap) == 0 {
		return
	}
	wait := redialMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if len(s.h.Network().Peers()) > 0 {
			wait = redialMin
			continue
		}
		s.log.Info("no connected peers: dialing the bootstrap peers again")
		if sw, ok := s.h.Network().(*swarm.Swarm); ok {
			// A failed dial puts a peer in dial backoff; this redial is the
			// deliberate, already rate-limited retry, so it starts clean.
			for _, ai := range s.opts.Bootstrap {
				sw.Backoff().Clear(ai.ID)
			}
		}
		s.connectBootstrap(ctx)
		wait = min(2*wait, redialMax)
	}
}

// rtRefreshLoop refreshes the routing table's stale buckets every
// RTRefreshEvery, starting at a random point of the first fifth.
func (s *Service) rtRefreshLoop(ctx context.Context) {
	t := time.NewTimer(rand.N(s.opts.RTRefreshEvery/5 + 1))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case err := <-s.kad.RefreshRoutingTable():
			if err != nil && ctx.Err() == nil {
				s.log.Debug("routing table refresh", "err", err)
			}
		case <-ctx.Done():
			return
		}
		t.Reset(s.opts.RTRefreshEvery)
	}
}

// refreshLoop looks up every stage's holders with the full walk every
// RefreshEvery, and forgets expired holders and quiet authors.
func (s *Service) refreshLoop(ctx context.Context) {
	repeat(ctx, s.opts.RefreshEvery, func() {
		for k := 0; k < s.opts.NumStages; k++ {
			if _, err := s.lookup(ctx, k, true); err != nil && ctx.Err() == nil {
				s.log.Debug("refresh holders", "stage", k, "err", err)
			}
		}
		s.tab.prune(time.Now())
		s.pruneRate(time.Now())
	})
}
