// Package defaults holds the default settings of a run's DHT, in the manner of
// go-libp2p-kad-dht's amino package: constants only, importing nothing of
// ours, so that both package dht (which applies them to zero Options) and the
// run config (which shows them as the defaults of node.record_ttl and
// node.gossip_every) name the same values without config depending on the
// DHT's code.
package defaults

import "time"

const (
	// RecordTTL is how long a peer's signed record and provider record stay
	// valid, and how long a holder stays listed after it was last heard of:
	// a peer that dies without a word drops out of every holder list within
	// it. Two minutes keeps dead holders listed only briefly (a failed call
	// hides one at once anyway) while each peer re-announces itself (a put
	// and a provide, each a walk to the key's closest peers) only every
	// RecordTTL/RepublishesPerTTL, 30 s.
	RecordTTL = 2 * time.Minute

	// RepublishesPerTTL is how many times a peer re-puts its record and
	// re-provides its stage within one RecordTTL, so a record survives
	// RepublishesPerTTL-1 lost republishes in a row.
	RepublishesPerTTL = 4

	// GossipEvery is the period of load (throughput, queue) gossip. Routing
	// weights lag the real load by at most this; at 2 s, 64 peers publish 32
	// messages of at most 512 bytes a second, negligible next to activations.
	GossipEvery = 2 * time.Second

	// RefreshEvery is the period of the full DHT lookup of every stage's
	// holders, which finds the holders whose gossip does not reach this peer
	// (a gossip mesh still forming, or split). Each period costs one full
	// provider walk per stage, so it stays a few gossip periods long.
	RefreshEvery = 5 * time.Second

	// DownBackoff is how long a holder stays hidden after a call to it failed:
	// long enough that a dead peer is not retried with every microbatch, short
	// enough that a peer that was only briefly unreachable is routed to again
	// within a minute.
	DownBackoff = 30 * time.Second

	// OpTimeout is the deadline of each DHT operation (put, provide, lookup,
	// record fetch), so a stalled peer can hold up an announcement or a lookup
	// for at most this long. A walk is a few rounds of round trips; 10 s
	// leaves room for slow volunteer links and for peers that never answer.
	OpTimeout = 10 * time.Second

	// RTRefreshEvery is the period of routing-table refreshes (a lookup per
	// stale bucket): kad-dht's own default. Connections and lookups keep the
	// table of a small run full in between.
	RTRefreshEvery = 10 * time.Minute
)
