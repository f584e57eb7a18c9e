package swarm

import (
	"context"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// A network partition closes every connection across it, and nothing in
// libp2p dials them again: the DHT's routing table and GossipSub only use the
// connections they have, so when the network heals the two halves go on as
// two swarms. So a node keeps the peers of its run it has met (bootstrap
// peers, holders it listed, peers it was connected to) and, every
// reconnectEvery, dials those it is not connected to, each with its own
// backoff, so that a dead peer costs a dial every few minutes at most.

// reconnectEvery is how often a node redials the peers it lost (a variable
// for tests).
var reconnectEvery = 10 * time.Second

const (
	// maxMet bounds the peers a node keeps for redialing; the least recently
	// seen go first.
	maxMet = 64
	// reconnectBackoffMax caps the wait between dials of a peer that keeps
	// failing; metForget is how long a peer is kept once last seen.
	reconnectBackoffMax = 5 * time.Minute
	metForget           = time.Hour
	reconnectTimeout    = 5 * time.Second
)

// metPeer is one peer a node has met.
type metPeer struct {
	addrs    []ma.Multiaddr
	seen     time.Time // last listed or connected
	next     time.Time // earliest next dial
	failures int
}

// metPeers is the set of peers a node redials.
type metPeers struct {
	mu    sync.Mutex
	peers map[peer.ID]*metPeer
}

// note records that p, at addrs, was seen at now.
func (m *metPeers) note(p peer.ID, addrs []ma.Multiaddr, now time.Time) {
	if len(addrs) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mp := m.peers[p]
	if mp == nil {
		mp = &metPeer{}
		m.peers[p] = mp
	}
	mp.addrs, mp.seen = addrs, now
	if len(m.peers) > maxMet {
		var oldest peer.ID
		for id, x := range m.peers {
			if oldest == "" || x.seen.Before(m.peers[oldest].seen) {
				oldest = id
			}
		}
		delete(m.peers, oldest)
	}
}

// due returns the peers to dial now: not connected (connected reports it),
// their backoff over. Peers unseen for metForget are forgotten.
func (m *metPeers) due(now time.Time, connected func(peer.ID) bool) []peer.AddrInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []peer.AddrInfo
	for id, mp := range m.peers {
		switch {
		case now.Sub(mp.seen) > metForget:
			delete(m.peers, id)
		case connected(id):
			mp.failures, mp.next = 0, time.Time{}
		case !now.Before(mp.next):
			out = append(out, peer.AddrInfo{ID: id, Addrs: mp.addrs})
		}
	}
	return out
}

// dialed records the outcome of a dial of p at now.
func (m *metPeers) dialed(p peer.ID, err error, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mp := m.peers[p]
	if mp == nil {
		return
	}
	if err == nil {
		mp.failures, mp.next, mp.seen = 0, time.Time{}, now
		return
	}
	mp.failures++
	wait := reconnectEvery << min(mp.failures, 8)
	mp.next = now.Add(min(wait, reconnectBackoffMax))
}

// reconnect notes the peers this node meets and redials the ones it lost,
// every reconnectEvery until ctx ends. boot are the bootstrap (and
// remembered) peers it started from.
func (n *Node) reconnect(ctx context.Context, boot []peer.AddrInfo) {
	defer n.wg.Done()
	met := &metPeers{peers: map[peer.ID]*metPeer{}}
	for _, b := range boot {
		met.note(b.ID, b.Addrs, time.Now())
	}
	t := time.NewTicker(reconnectEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		for _, rp := range n.knownPeers() {
			id, err := peer.Decode(rp.ID)
			if err != nil {
				continue
			}
			var addrs []ma.Multiaddr
			for _, s := range rp.Addrs {
				if a, err := ma.NewMultiaddr(s); err == nil {
					addrs = append(addrs, a)
				}
			}
			met.note(id, addrs, now)
		}
		connected := func(p peer.ID) bool { return n.host.Network().Connectedness(p) == network.Connected }
		var wg sync.WaitGroup
		for _, ai := range met.due(now, connected) {
			if ai.ID == n.host.ID() || n.bans.has(ai.ID) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				dctx, cancel := context.WithTimeout(ctx, reconnectTimeout)
				defer cancel()
				err := n.host.Connect(dctx, ai)
				met.dialed(ai.ID, err, time.Now())
				if err == nil {
					n.log.Info("reconnected to a peer of the run", "peer", ai.ID.ShortString())
				}
			}()
		}
		wg.Wait()
	}
}
