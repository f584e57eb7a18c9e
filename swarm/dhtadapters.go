package swarm

import (
	"context"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/pipeline"
)

// The run's DHT seen as pipeline/ and averaging/ want it: neither package
// knows the DHT, so the adapters live here, where the three meet.

// dhtRouter is the pipeline's Router over the run's DHT service: its table of
// live holders, fed by provider records, signed peer records and load gossip.
type dhtRouter struct{ n *Node }

// Holders lists the DHT table's live holders of stage k that are not banned.
func (r dhtRouter) Holders(k int) []pipeline.Holder {
	hs := r.n.DHT().Holders(k)
	out := make([]pipeline.Holder, 0, len(hs))
	for _, h := range hs {
		if r.n.bans.has(h.Peer) {
			continue
		}
		out = append(out, pipeline.Holder{ID: h.Peer, Throughput: h.Throughput, Queue: h.Queue, Addrs: h.Addrs})
	}
	return out
}

// MarkDown hides p from the DHT table for its down backoff.
func (r dhtRouter) MarkDown(p peer.ID) { r.n.DHT().MarkDown(p) }

// Recovered lists the holders of stage k the DHT table hides after a failed
// call that have announced themselves since, banned ones left out.
func (r dhtRouter) Recovered(k int) []pipeline.Holder {
	var out []pipeline.Holder
	for _, h := range r.n.DHT().Recovered(k) {
		if !r.n.bans.has(h.Peer) {
			out = append(out, pipeline.Holder{ID: h.Peer, Throughput: h.Throughput, Queue: h.Queue, Addrs: h.Addrs})
		}
	}
	return out
}

// dhtPeers lists the live holders of one stage for the averager.
type dhtPeers struct {
	n *Node
	k int
}

// Holders lists this peer and the other live holders of the stage.
func (p dhtPeers) Holders(context.Context) ([]peer.ID, error) {
	return append([]peer.ID{p.n.ID()}, p.n.otherHolders(p.k)...), nil
}

// otherHolders lists the live holders of stage k other than this peer.
func (n *Node) otherHolders(k int) []peer.ID {
	var ids []peer.ID
	for _, h := range n.DHT().Holders(k) {
		if h.Peer != n.ID() && !n.bans.has(h.Peer) {
			ids = append(ids, h.Peer)
		}
	}
	return ids
}
