package dht

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// MaxLoadSize bounds a load gossip message.
const MaxLoadSize = 512

// Load is a load gossip message: the JSON data of a GossipSub message on
// GossipTopic, signed by its author through GossipSub's strict signing.
type Load struct {
	// Stage is the stage the author serves.
	Stage int `json:"stage"`
	// Role is server, trainer or both.
	Role string `json:"role"`
	// Throughput is the author's measured speed in tokens per second.
	Throughput float64 `json:"throughput"`
	// Queue is the number of microbatches waiting at the author.
	Queue int `json:"queue"`
	// Seq orders the author's messages and records (one counter for both).
	Seq uint64 `json:"seq"`
	// Leaving says the author is shutting down: drop it from routing now.
	Leaving bool `json:"leaving,omitempty"`
}

// EncodeLoad encodes a load message.
func EncodeLoad(l Load) ([]byte, error) { return json.Marshal(l) }

// DecodeLoad parses and checks a load message.
func DecodeLoad(b []byte) (Load, error) {
	if len(b) > MaxLoadSize {
		return Load{}, fmt.Errorf("load message: %d bytes, more than %d", len(b), MaxLoadSize)
	}
	var l Load
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return Load{}, fmt.Errorf("load message: %w", err)
	}
	if dec.More() {
		return Load{}, errors.New("load message: trailing data")
	}
	if l.Stage < 0 || l.Stage >= MaxStages {
		return Load{}, fmt.Errorf("load message: stage %d out of range [0, %d)", l.Stage, MaxStages)
	}
	switch l.Role {
	case RoleServer, RoleBoth:
	default:
		return Load{}, fmt.Errorf("load message: role %q does not serve a stage", l.Role)
	}
	if err := checkLoad(l.Throughput, l.Queue); err != nil {
		return Load{}, fmt.Errorf("load message: %w", err)
	}
	return l, nil
}

// FollowLoad sets the load this peer gossips from load (a stage server's
// Load method) now and then every period, until ctx ends.
func (s *Service) FollowLoad(ctx context.Context, period time.Duration, load func() (throughput float64, queue int)) {
	repeat(ctx, period, func() { s.SetLoad(load()) })
}

// publishLoad gossips this peer's current load, or that it leaves its stage.
func (s *Service) publishLoad(ctx context.Context, leaving bool) {
	s.publish(ctx, s.Self(), leaving)
}

// publish gossips self's load, or that it leaves self.Stage.
func (s *Service) publish(ctx context.Context, self Self, leaving bool) {
	if self.Stage < 0 {
		return
	}
	l := Load{Stage: self.Stage, Role: self.Role, Throughput: self.Throughput, Queue: self.Queue, Seq: s.nextSeq(), Leaving: leaving}
	b, err := EncodeLoad(l)
	if err != nil {
		s.log.Warn("encode load", "err", err)
		return
	}
	// Our own table too: a peer that stops serving drops its own entry.
	s.tab.observeLoad(s.h.ID(), l, time.Now())
	cctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	if err := s.topic.Publish(cctx, b); err != nil && ctx.Err() == nil {
		s.log.Debug("publish load", "err", err)
	}
}

// gossipLoop gossips this peer's load every GossipEvery.
func (s *Service) gossipLoop(ctx context.Context) {
	repeat(ctx, s.opts.GossipEvery, func() { s.publishLoad(ctx, false) })
}

// MinLoadInterval is the shortest interval between two accepted load
// messages of one author; faster ones are dropped unforwarded, so a peer
// cannot make the swarm verify and relay a flood of its messages.
const MinLoadInterval = 100 * time.Millisecond

// rateMemory is how long the rate limit remembers an author it has not heard
// from; far above MinLoadInterval, so forgetting one never lets a flood pass.
const rateMemory = 10 * time.Second

// validateLoadMsg is the topic validator: GossipSub has checked the signature
// already; this rejects malformed content (the sender's score drops) and
// ignores an author's messages that come faster than MinLoadInterval.
func (s *Service) validateLoadMsg(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	l, err := DecodeLoad(m.Data)
	if err != nil {
		return pubsub.ValidationReject
	}
	if from := m.GetFrom(); from != s.h.ID() && !l.Leaving {
		now := time.Now()
		s.rateMu.Lock()
		last, seen := s.lastMsg[from]
		tooSoon := seen && now.Sub(last) < MinLoadInterval
		if !tooSoon {
			s.lastMsg[from] = now
		}
		s.rateMu.Unlock()
		if tooSoon {
			return pubsub.ValidationIgnore
		}
	}
	m.ValidatorData = l
	return pubsub.ValidationAccept
}

// pruneRate forgets authors not heard from for rateMemory.
func (s *Service) pruneRate(now time.Time) {
	s.rateMu.Lock()
	defer s.rateMu.Unlock()
	for p, t := range s.lastMsg {
		if now.Sub(t) > rateMemory {
			delete(s.lastMsg, p)
		}
	}
}

// readLoop applies the other peers' load messages, as validateLoadMsg
// decoded them, to the holders table.
func (s *Service) readLoop(ctx context.Context) {
	for {
		m, err := s.sub.Next(ctx)
		if err != nil {
			return
		}
		from := m.GetFrom()
		if from == s.h.ID() {
			continue
		}
		l, ok := m.ValidatorData.(Load)
		if !ok {
			continue
		}
		s.tab.observeLoad(from, l, time.Now())
	}
}
