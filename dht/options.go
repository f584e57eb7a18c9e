package dht

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/dht/defaults"
)

// Options configures a Service. Zero durations take the defaults of package
// dht/defaults, which also says why each has its value.
type Options struct {
	// Run is the run id; it names the DHT protocol, keys and gossip topic.
	Run string
	// NumStages is how many stages the run has; the refresh looks up each.
	NumStages int
	// Client runs the DHT in client mode: it queries but stores nothing for others.
	Client bool
	// Bootstrap lists the peers to join through.
	Bootstrap []peer.AddrInfo
	// RecordTTL is the validity of this peer's record and provider record, and
	// how long a holder stays listed after it was last heard of; at most
	// MaxRecordLifetime. Default defaults.RecordTTL.
	RecordTTL time.Duration
	// RepublishEvery is the period of re-providing and re-putting this peer's
	// record. Default RecordTTL/defaults.RepublishesPerTTL.
	RepublishEvery time.Duration
	// GossipEvery is the period of load gossip. Default defaults.GossipEvery.
	GossipEvery time.Duration
	// RefreshEvery is the period of DHT lookups of every stage's holders.
	// Default defaults.RefreshEvery.
	RefreshEvery time.Duration
	// DownBackoff is how long MarkDown hides a holder. Default defaults.DownBackoff.
	DownBackoff time.Duration
	// OpTimeout is the deadline of each DHT operation. Default defaults.OpTimeout.
	OpTimeout time.Duration
	// RTRefreshEvery is the period of routing-table refreshes (a lookup per
	// stale bucket). The first comes at a random point within the first fifth
	// of a period, not at start: peers that join together would otherwise
	// all refresh together, a storm of lookups that delays their first
	// announcements (docs/dht-notes.md). Default defaults.RTRefreshEvery.
	RTRefreshEvery time.Duration
	// Now is the wall clock this peer signs its records with (seq and
	// expires); nil means time.Now. Tests set a skewed one.
	Now func() time.Time
	// Logger receives progress and errors; nil discards them.
	Logger *slog.Logger
}

// fill checks o and sets the defaults of its zero fields.
func (o *Options) fill() error {
	if o.Run == "" {
		return errors.New("dht: empty run")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.NumStages < 0 || o.NumStages > MaxStages {
		return fmt.Errorf("dht: %d stages out of range [0, %d]", o.NumStages, MaxStages)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.RecordTTL, defaults.RecordTTL)
	if o.RecordTTL > MaxRecordLifetime {
		return fmt.Errorf("dht: record TTL %s above %s", o.RecordTTL, MaxRecordLifetime)
	}
	def(&o.RepublishEvery, o.RecordTTL/defaults.RepublishesPerTTL)
	def(&o.GossipEvery, defaults.GossipEvery)
	def(&o.RefreshEvery, defaults.RefreshEvery)
	def(&o.DownBackoff, defaults.DownBackoff)
	def(&o.OpTimeout, defaults.OpTimeout)
	def(&o.RTRefreshEvery, defaults.RTRefreshEvery)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
