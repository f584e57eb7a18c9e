package dht

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Lookup searches the DHT for the holders of stage now (and updates the
// cache): it finds the stage's providers and returns those with a valid
// signed record. The providers come from the peers closest to the stage key,
// found by a short walk without kad-dht's follow-up (see nearProviders); when
// that walk does not converge or finds nobody, Lookup runs the full kad-dht
// provider walk instead. Records are fetched only for providers whose record
// is not cached with at least half its lifetime left (a signed record does
// not change until it expires; load changes travel by gossip). Providers
// without a valid record are left out.
func (s *Service) Lookup(ctx context.Context, stage int) ([]Holder, error) {
	return s.lookup(ctx, stage, false)
}

// LookupFull is Lookup with kad-dht's full provider walk (walk, then a
// follow-up query to each of the K closest peers found), as the periodic
// refresh runs it.
func (s *Service) LookupFull(ctx context.Context, stage int) ([]Holder, error) {
	return s.lookup(ctx, stage, true)
}

// LookupStats counts how Lookups found their providers.
type LookupStats struct {
	// Near is how many the short walk towards the closest peers answered.
	Near uint64
	// Followups is how many extra rounds those needed because the answers
	// disagreed or missed a holder already known.
	Followups uint64
	// Fallbacks is how many ran the full kad-dht walk instead.
	Fallbacks uint64
}

// lookupCounts are the live counters behind LookupStats.
type lookupCounts struct {
	near, followups, fallbacks atomic.Uint64
}

// LookupStats returns the counts of Lookups since the start.
func (s *Service) LookupStats() LookupStats {
	return LookupStats{Near: s.counts.near.Load(), Followups: s.counts.followups.Load(), Fallbacks: s.counts.fallbacks.Load()}
}

func (s *Service) lookup(ctx context.Context, stage int, full bool) ([]Holder, error) {
	if stage < 0 || stage >= MaxStages {
		return nil, fmt.Errorf("stage %d out of range", stage)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	horizon := time.Now().Add(s.opts.RecordTTL / 2)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		out  []Holder
		errs []error
	)
	var known []peer.ID
	for _, h := range s.tab.holders(stage, time.Now()) {
		known = append(known, h.Peer)
	}
	for ai := range s.providersOf(ctx, StageCID(s.opts.Run, stage), full, known) {
		if h, ok := s.tab.fresh(ai.ID, horizon); ok {
			if h.Stage == stage {
				mu.Lock()
				out = append(out, h)
				mu.Unlock()
			}
			continue
		}
		wg.Add(1)
		go func(ai peer.AddrInfo) {
			defer wg.Done()
			rec, err := s.fetchProviderRecord(ctx, ai)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			now := time.Now()
			s.tab.observeRecord(rec, now)
			if rec.Stage == stage && !s.tab.isHidden(rec.Peer, now) {
				out = append(out, Holder{Peer: rec.Peer, Stage: rec.Stage, Role: rec.Role,
					Throughput: rec.Throughput, Queue: rec.Queue, Addrs: rec.Multiaddrs(),
					Seq: rec.Seq, LastSeen: now, Expires: rec.ExpiresAt()})
			}
		}(ai)
	}
	wg.Wait()
	sortHolders(out)
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// providersOf streams the providers of c: from nearProviders when full is
// false and it succeeds, from kad-dht's full walk otherwise. The channel is
// closed when the search ends.
func (s *Service) providersOf(ctx context.Context, c cid.Cid, full bool, known []peer.ID) <-chan peer.AddrInfo {
	if !full {
		if provs, ok := s.nearProviders(ctx, c, known); ok {
			ch := make(chan peer.AddrInfo, len(provs))
			for _, ai := range provs {
				ch <- ai
			}
			close(ch)
			s.counts.near.Add(1)
			return ch
		}
		s.counts.fallbacks.Add(1)
	}
	return s.kad.FindProvidersAsync(ctx, c, 0)
}
