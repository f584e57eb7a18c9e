package dht

import (
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// GossipSub peer scoring on the run's load topic. Every message that our
// validator rejects (malformed load) counts against the peer that delivered
// it, squared: one costs invalidWeight, three cost 9× that, below
// GraylistThreshold. A graylisted peer's messages, valid ones included, are
// dropped before validation and it gets no gossip from us, until its count
// decays (half-life invalidHalfLife). Publishing below PublishThreshold gets
// no flood publishing to it, below GossipThreshold no gossip. Colocation is
// not penalised: a host may run several peers (tests, multi-GPU machines).

// Score thresholds of the load topic.
const (
	GossipThreshold   = -10
	PublishThreshold  = -50
	GraylistThreshold = -80
	invalidWeight     = -10
	invalidHalfLife   = time.Hour
)

// peerScore returns the score parameters and thresholds for run.
func peerScore(run string) (*pubsub.PeerScoreParams, *pubsub.PeerScoreThresholds) {
	decay := pubsub.ScoreParameterDecay(invalidHalfLife / 4)
	topic := &pubsub.TopicScoreParams{
		TopicWeight:       1,
		TimeInMeshQuantum: time.Second,
		// A first delivery of a valid message earns a little, so that a peer
		// that relays honestly outweighs stray noise.
		FirstMessageDeliveriesWeight:   0.1,
		FirstMessageDeliveriesDecay:    pubsub.ScoreParameterDecay(time.Minute),
		FirstMessageDeliveriesCap:      10,
		InvalidMessageDeliveriesWeight: invalidWeight,
		InvalidMessageDeliveriesDecay:  decay,
	}
	params := &pubsub.PeerScoreParams{
		Topics:                      map[string]*pubsub.TopicScoreParams{GossipTopic(run): topic},
		AppSpecificScore:            func(peer.ID) float64 { return 0 },
		IPColocationFactorThreshold: 1,
		BehaviourPenaltyWeight:      -1,
		BehaviourPenaltyThreshold:   6,
		BehaviourPenaltyDecay:       decay,
		DecayInterval:               time.Second,
		DecayToZero:                 0.01,
		RetainScore:                 invalidHalfLife,
	}
	return params, &pubsub.PeerScoreThresholds{
		GossipThreshold: GossipThreshold, PublishThreshold: PublishThreshold, GraylistThreshold: GraylistThreshold,
		AcceptPXThreshold: 10, OpportunisticGraftThreshold: 5,
	}
}
