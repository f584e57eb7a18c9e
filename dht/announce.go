package dht

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Self is what this peer announces about itself.
type Self struct {
	// Stage is the stage served, -1 for none.
	Stage int
	// Role is server, trainer or both.
	Role string
	// Throughput is the measured speed in tokens per second.
	Throughput float64
	// Queue is the number of microbatches waiting here.
	Queue int
}

// check reports whether a peer may announce s; a peer record carries the
// same fields and is held to the same rules.
func (s Self) check() error {
	if s.Stage < -1 || s.Stage >= MaxStages {
		return fmt.Errorf("stage %d out of range [-1, %d)", s.Stage, MaxStages)
	}
	switch s.Role {
	case RoleServer, RoleTrainer, RoleBoth:
	default:
		return fmt.Errorf("role %q: want server, trainer or both", s.Role)
	}
	return checkLoad(s.Throughput, s.Queue)
}

// Self returns what this peer currently announces.
func (s *Service) Self() Self {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.self
}

// SetSelf changes what this peer announces. A change of stage or role is
// announced at once; load alone goes out with the next gossip.
func (s *Service) SetSelf(self Self) error {
	if err := self.check(); err != nil {
		return fmt.Errorf("dht: %w", err)
	}
	s.mu.Lock()
	changed := self.Stage != s.self.Stage || self.Role != s.self.Role
	if self.Stage < 0 && s.self.Stage >= 0 {
		old := s.self
		s.left = &old
	}
	s.self = self
	s.mu.Unlock()
	if changed {
		s.kick()
	}
	return nil
}

// SetLoad updates the throughput (tokens/s) and queue length this peer
// gossips; non-finite or negative values are ignored.
func (s *Service) SetLoad(throughput float64, queue int) {
	if checkLoad(throughput, queue) != nil {
		return
	}
	s.mu.Lock()
	s.self.Throughput, s.self.Queue = throughput, queue
	s.mu.Unlock()
}

// kick makes the announce loop announce now.
func (s *Service) kick() {
	select {
	case s.announceNow <- struct{}{}:
	default:
	}
}

// nextSeq returns a sequence number larger than any before it, also across
// restarts (it follows the wall clock).
func (s *Service) nextSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := uint64(s.opts.Now().UnixNano())
	if seq <= s.lastSeq {
		seq = s.lastSeq + 1
	}
	s.lastSeq = seq
	return seq
}

// Record builds and signs this peer's current record.
func (s *Service) Record() (PeerRecord, []byte, error) {
	self := s.Self()
	addrs := s.h.Addrs()
	if len(addrs) > MaxAddrs {
		addrs = addrs[:MaxAddrs]
	}
	rec := PeerRecord{
		Run: s.opts.Run, Peer: s.h.ID(), Stage: self.Stage, Role: self.Role,
		Throughput: self.Throughput, Queue: self.Queue,
		Seq: s.nextSeq(), Expires: s.opts.Now().Add(s.opts.RecordTTL).UnixMilli(),
	}
	for _, a := range addrs {
		rec.Addrs = append(rec.Addrs, a.String())
	}
	b, err := Sign(rec, s.key)
	return rec, b, err
}

// announce puts this peer's record and provides its stage.
func (s *Service) announce(ctx context.Context) error {
	rec, b, err := s.Record()
	if err != nil {
		return err
	}
	if rec.Stage >= 0 {
		s.tab.observeRecord(rec, time.Now())
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	var errs []error
	if err := s.kad.PutValue(cctx, PeerKey(s.opts.Run, rec.Peer), b); err != nil {
		errs = append(errs, fmt.Errorf("put record: %w", err))
	}
	if rec.Stage >= 0 {
		if err := s.kad.Provide(cctx, StageCID(s.opts.Run, rec.Stage), true); err != nil {
			errs = append(errs, fmt.Errorf("provide stage %d: %w", rec.Stage, err))
		}
	}
	return errors.Join(errs...)
}

// announceLoop re-announces every RepublishEvery, at once on a stage change,
// and every GossipEvery while the last attempt failed (e.g. no peers yet).
// Right after joining the routing table is still filling, so the first
// announcements reach few peers: the period starts at min(GossipEvery, 1s)
// and doubles up to RepublishEvery.
func (s *Service) announceLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	warmStart := min(s.opts.GossipEvery, time.Second)
	warm := warmStart
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.announceNow:
			s.gossipChange(ctx)
			warm = warmStart
		}
		next := min(warm, s.opts.RepublishEvery)
		warm *= 2
		if err := s.announce(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Debug("announce", "err", err)
			next = min(next, s.opts.GossipEvery)
		}
		t.Reset(next)
	}
}

// gossipChange tells the run at once what SetSelf changed: that this peer
// left the stage it served, if it did, and what it serves now.
func (s *Service) gossipChange(ctx context.Context) {
	s.mu.Lock()
	left := s.left
	s.left = nil
	s.mu.Unlock()
	if left != nil {
		s.publish(ctx, *left, true)
	}
	s.publishLoad(ctx, false)
}
