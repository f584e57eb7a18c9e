package dht

import (
	"bytes"
	"context"
	"slices"

	"github.com/ipfs/go-cid"
	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	mh "github.com/multiformats/go-multihash"
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

// nearCand is a peer the short walk knows of, with what it answered.
type nearCand struct {
	id     peer.ID
	dist   kb.ID // XOR distance to the key, in kad-dht's key space
	asked  bool
	failed bool
	answer []peer.ID // sorted provider ids of its answer
}

// nearReply is one peer's answer to GET_PROVIDERS.
type nearReply struct {
	nc     *nearCand
	provs  []*peer.AddrInfo
	closer []*peer.AddrInfo
	err    error
}

// nearWalk is the state of one short lookup of the providers of key.
type nearWalk struct {
	s      *Service
	key    mh.Multihash
	target kb.ID
	byID   map[peer.ID]*nearCand
	// cands are the candidates, closest first after each sort.
	cands []*nearCand
	// found is the union of the providers heard of.
	found map[peer.ID]peer.AddrInfo
	// local is how many of them this peer's own provider store holds.
	local int
}

// nearProviders finds the providers of c from the peers closest to it, as
// described above. ok is false when the caller must fall back to the walk.
// known are holders of the stage this peer has heard of already (gossip,
// earlier lookups); while one of them is missing from the answers, the
// follow-up goes on.
func (s *Service) nearProviders(ctx context.Context, c cid.Cid, known []peer.ID) (provs []peer.AddrInfo, ok bool) {
	w := s.startNearWalk(ctx, c)
	if len(w.cands) == 0 || !w.converge(ctx) || !w.followUp(ctx, known) || len(w.found) == 0 {
		return nil, false
	}
	provs = make([]peer.AddrInfo, 0, len(w.found))
	for _, ai := range w.found {
		provs = append(provs, ai)
	}
	return provs, true
}

// startNearWalk seeds a walk with the routing table's peers closest to c and
// the providers this peer stores itself (a server-mode peer may be one of the
// closest).
func (s *Service) startNearWalk(ctx context.Context, c cid.Cid) *nearWalk {
	w := &nearWalk{s: s, key: c.Hash(), byID: make(map[peer.ID]*nearCand), found: make(map[peer.ID]peer.AddrInfo)}
	w.target = kb.ConvertKey(string(w.key))
	for _, p := range s.kad.RoutingTable().NearestPeers(w.target, nearSeed) {
		w.add(p)
	}
	if provs, err := s.kad.ProviderStore().GetProviders(ctx, w.key); err == nil {
		for _, ai := range provs {
			if _, dup := w.found[ai.ID]; !dup {
				w.found[ai.ID] = ai
				w.local++
			}
		}
	}
	return w
}

// add makes p a candidate, unless it is this peer or one already.
func (w *nearWalk) add(p peer.ID) {
	if p == w.s.h.ID() || p == "" {
		return
	}
	if _, seen := w.byID[p]; seen {
		return
	}
	nc := &nearCand{id: p, dist: kb.Xor(kb.ConvertPeerID(p), w.target)}
	w.byID[p] = nc
	w.cands = append(w.cands, nc)
}

func (w *nearWalk) sort() {
	slices.SortFunc(w.cands, func(a, b *nearCand) int { return bytes.Compare(a.dist, b.dist) })
}

// next returns up to n of the closest live candidates not yet asked.
func (w *nearWalk) next(n int) []*nearCand {
	var out []*nearCand
	for _, nc := range w.cands {
		if len(out) == n {
			break
		}
		if !nc.asked && !nc.failed {
			out = append(out, nc)
		}
	}
	return out
}

// asked counts the candidates asked so far.
func (w *nearWalk) asked() int {
	n := 0
	for _, nc := range w.cands {
		if nc.asked {
			n++
		}
	}
	return n
}

// ask sends GET_PROVIDERS to every candidate of batch in parallel and takes
// in their answers.
func (w *nearWalk) ask(ctx context.Context, batch []*nearCand) {
	replies := make(chan nearReply, len(batch))
	rctx, cancel := context.WithTimeout(ctx, w.s.opts.OpTimeout/4)
	defer cancel()
	for _, nc := range batch {
		nc.asked = true
		go func() {
			pv, cl, err := w.s.msgr.GetProviders(rctx, nc.id, w.key)
			replies <- nearReply{nc: nc, provs: pv, closer: cl, err: err}
		}()
	}
	for range batch {
		w.take(<-replies)
	}
}

// take records one answer: its providers join the union (with addresses,
// where an earlier answer gave none), its closer peers the candidates.
func (w *nearWalk) take(r nearReply) {
	if r.err != nil {
		r.nc.failed = true
		w.s.log.Debug("near GET_PROVIDERS", "peer", r.nc.id, "err", r.err)
		return
	}
	ids := make([]peer.ID, 0, len(r.provs))
	for _, ai := range r.provs {
		if ai == nil || ai.ID == "" {
			continue
		}
		ids = append(ids, ai.ID)
		if old, seen := w.found[ai.ID]; !seen || (len(old.Addrs) == 0 && len(ai.Addrs) > 0) {
			w.found[ai.ID] = *ai
		}
	}
	slices.Sort(ids)
	r.nc.answer = slices.Compact(ids)
	for _, ai := range r.closer {
		if ai == nil {
			continue
		}
		if ai.ID != w.s.h.ID() && len(ai.Addrs) > 0 {
			w.s.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		}
		w.add(ai.ID)
	}
}

// converge walks towards the key until the nearBeta closest live candidates
// have all answered. It reports false when the lookup must fall back: ctx
// ended, every candidate failed, or nearMaxRounds rounds did not converge.
func (w *nearWalk) converge(ctx context.Context) bool {
	for round := 0; ; round++ {
		if ctx.Err() != nil {
			return false
		}
		w.sort()
		live, pending := 0, false
		for _, nc := range w.cands {
			if nc.failed {
				continue
			}
			pending = pending || !nc.asked
			if live++; live == nearBeta {
				break
			}
		}
		if live == 0 {
			return false
		}
		if !pending {
			return true
		}
		if round == nearMaxRounds {
			return false
		}
		w.ask(ctx, w.next(nearAlpha))
	}
}

// followUp asks the next closest candidates, nearAlpha at a time and up to
// nearFollowMax asked in all, until two answers confirm the union and no
// known holder is missing from it. It reports false when the lookup must fall
// back: ctx ended, or the answers never confirmed each other.
func (w *nearWalk) followUp(ctx context.Context, known []peer.ID) bool {
	for {
		if ctx.Err() != nil {
			return false
		}
		w.sort()
		complete := confirmed(w.cands, w.local, len(w.found))
		if complete && !w.missing(known) {
			return true
		}
		batch := w.next(nearAlpha)
		if len(batch) == 0 || w.asked() >= nearFollowMax {
			return complete
		}
		w.ask(ctx, batch)
		w.s.counts.followups.Add(1)
	}
}

// missing reports whether a holder of known (other than this peer) is not
// among the providers found.
func (w *nearWalk) missing(known []peer.ID) bool {
	return slices.ContainsFunc(known, func(p peer.ID) bool {
		_, ok := w.found[p]
		return !ok && p != w.s.h.ID()
	})
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
