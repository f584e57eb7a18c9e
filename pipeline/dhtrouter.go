package pipeline

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/dht"
)

// DHTRouter routes through the run's DHT service: its table of live holders, fed by
// provider records, signed peer records and load gossip.
func DHTRouter(s *dht.Service) Router { return dhtRouter{s} }

type dhtRouter struct{ s *dht.Service }

// Holders lists the DHT table's live holders of stage k.
func (r dhtRouter) Holders(k int) []Holder {
	hs := r.s.Holders(k)
	out := make([]Holder, 0, len(hs))
	for _, h := range hs {
		out = append(out, Holder{ID: h.Peer, Throughput: h.Throughput, Queue: h.Queue, Addrs: h.Addrs})
	}
	return out
}

// MarkDown hides p from the DHT table for its down backoff.
func (r dhtRouter) MarkDown(p peer.ID) { r.s.MarkDown(p) }
