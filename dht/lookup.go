package dht

import (
	"bytes"
	"context"
	"slices"

	"github.com/ipfs/go-cid"
	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
)

// Short provider lookup. kad-dht's FindProvidersAsync(key, 0) runs a walk
// towards the key and then a follow-up that queries every one of the K (20)
// closest peers it found, whatever the earlier answers held; in a 64-peer run
// that is about a third of the swarm per lookup. But every holder provides its
// stage to the K peers closest to the key, so in a healthy swarm each of those
// closest peers holds every provider record. nearProviders therefore runs the
// walk with kad-dht's own termination rule and replaces the fixed follow-up
// with one that stops as soon as the answers confirm each other:
//
//   - it starts from the nearSeed peers of the routing table closest to the
//     key (when the table holds most of the swarm, these are the key's closest
//     peers already) and asks the nearAlpha closest not yet asked, in parallel,
//     with GET_PROVIDERS; every answer's closer peers join the candidates;
//   - the walk has converged when the nearBeta closest candidates that did not
//     fail have all answered; it gives up after nearMaxRounds rounds;
//   - the answer is complete when at least two peers each returned the whole
//     union of the providers heard of; until then it asks the next nearAlpha
//     closest peers, up to nearFollowMax peers in all (the full follow-up's
//     reach), and gives up if the answers never confirm each other;
//   - while a holder this peer already knows of (gossip, earlier lookups) is
//     missing from the union, it goes on asking the same way, and then returns
//     the union (the full walk would ask no one else).
//
// It reports failure, and Lookup falls back to the full walk, when no peer
// answered, the walk did not converge, the answers never confirmed each other,
// or nobody knew a provider. The periodic refresh keeps doing full walks, so a
// provider that only far peers know of still reaches the cache within
// RefreshEvery.
const (
	nearAlpha     = 3
	nearBeta      = 3
	nearSeed      = 20
	nearMaxRounds = 4
	// nearFollowMax bounds the peers asked in all (K, as the full walk's
	// follow-up asks).
	nearFollowMax = 20
)

type nearCand struct {
	id     peer.ID
	dist   kb.ID // XOR distance to the key, in kad-dht's key space
	asked  bool
	failed bool
	answer []peer.ID // sorted provider ids of its answer
}

// nearProviders finds the providers of c from the peers closest to it, as
// described above. ok is false when the caller must fall back to the walk.
// known are holders of the stage this peer has heard of already (gossip,
// earlier lookups); while one of them is missing from the answers, the
// follow-up goes on.
func (s *Service) nearProviders(ctx context.Context, c cid.Cid, known []peer.ID) (provs []peer.AddrInfo, ok bool) {
	mh := c.Hash()
	target := kb.ConvertKey(string(mh))
	self := s.h.ID()
	byID := make(map[peer.ID]*nearCand)
	var cands []*nearCand
	add := func(p peer.ID) {
		if p == self || p == "" {
			return
		}
		if _, seen := byID[p]; seen {
			return
		}
		nc := &nearCand{id: p, dist: kb.Xor(kb.ConvertPeerID(p), target)}
		byID[p] = nc
		cands = append(cands, nc)
	}
	for _, p := range s.kad.RoutingTable().NearestPeers(target, nearSeed) {
		add(p)
	}
	if len(cands) == 0 {
		return nil, false
	}
	found := make(map[peer.ID]peer.AddrInfo)
	// A server-mode peer may be one of the closest itself.
	local := 0
	if provs, err := s.kad.ProviderStore().GetProviders(ctx, mh); err == nil {
		for _, ai := range provs {
			if _, dup := found[ai.ID]; !dup {
				found[ai.ID] = ai
				local++
			}
		}
	}
	sortCands := func() {
		slices.SortFunc(cands, func(a, b *nearCand) int { return bytes.Compare(a.dist, b.dist) })
	}
	// next returns up to n of the closest live candidates not yet asked.
	next := func(n int) []*nearCand {
		var out []*nearCand
		for _, nc := range cands {
			if len(out) == n {
				break
			}
			if !nc.asked && !nc.failed {
				out = append(out, nc)
			}
		}
		return out
	}
	type reply struct {
		nc     *nearCand
		provs  []*peer.AddrInfo
		closer []*peer.AddrInfo
		err    error
	}
	ask := func(batch []*nearCand) {
		replies := make(chan reply, len(batch))
		rctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout/4)
		defer cancel()
		for _, nc := range batch {
			nc.asked = true
			go func() {
				pv, cl, err := s.msgr.GetProviders(rctx, nc.id, mh)
				replies <- reply{nc: nc, provs: pv, closer: cl, err: err}
			}()
		}
		for range batch {
			r := <-replies
			if r.err != nil {
				r.nc.failed = true
				s.log.Debug("near GET_PROVIDERS", "peer", r.nc.id, "err", r.err)
				continue
			}
			ids := make([]peer.ID, 0, len(r.provs))
			for _, ai := range r.provs {
				if ai == nil || ai.ID == "" {
					continue
				}
				ids = append(ids, ai.ID)
				if old, seen := found[ai.ID]; !seen || (len(old.Addrs) == 0 && len(ai.Addrs) > 0) {
					found[ai.ID] = *ai
				}
			}
			slices.Sort(ids)
			r.nc.answer = slices.Compact(ids)
			for _, ai := range r.closer {
				if ai == nil {
					continue
				}
				if ai.ID != self && len(ai.Addrs) > 0 {
					s.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
				}
				add(ai.ID)
			}
		}
	}
	for round := 0; ; round++ {
		if ctx.Err() != nil {
			return nil, false
		}
		sortCands()
		// Converged: the nearBeta closest live candidates have all answered.
		live, pending := 0, false
		for _, nc := range cands {
			if nc.failed {
				continue
			}
			pending = pending || !nc.asked
			if live++; live == nearBeta {
				break
			}
		}
		if live == 0 {
			return nil, false
		}
		if !pending {
			break
		}
		if round == nearMaxRounds {
			return nil, false
		}
		ask(next(nearAlpha))
	}
	// Follow-up, bounded by nearFollowMax peers asked in all.
	for {
		if ctx.Err() != nil {
			return nil, false
		}
		sortCands()
		complete := confirmed(cands, local, len(found))
		missing := slices.ContainsFunc(known, func(p peer.ID) bool {
			_, ok := found[p]
			return !ok && p != self
		})
		if complete && !missing {
			break
		}
		asked := 0
		for _, nc := range cands {
			if nc.asked {
				asked++
			}
		}
		batch := next(nearAlpha)
		if len(batch) == 0 || asked >= nearFollowMax {
			if !complete {
				return nil, false
			}
			break
		}
		ask(batch)
		s.nearFollowups.Add(1)
	}
	if len(found) == 0 {
		return nil, false
	}
	provs = make([]peer.AddrInfo, 0, len(found))
	for _, ai := range found {
		provs = append(provs, ai)
	}
	return provs, true
}

// confirmed reports whether at least two answers (the local provider store,
// local, counting as one) each hold all n providers heard of, n > 0. Answers
// list distinct providers, all of them in the union, so a complete one has
// length n.
func confirmed(cands []*nearCand, local, n int) bool {
	if n == 0 {
		return false
	}
	full := 0
	if local == n {
		full++
	}
	for _, nc := range cands {
		if nc.asked && !nc.failed && len(nc.answer) == n {
			full++
		}
	}
	return full >= 2
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
			s.nearHits.Add(1)
			return ch
		}
		s.nearMisses.Add(1)
	}
	return s.kad.FindProvidersAsync(ctx, c, 0)
}
