package main

import (
	"context"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// maxInFlight bounds the bytes a link holds, queued or delayed: unshaped, only
// the delay holds packets, and a sender's window is what bounds them.
const maxInFlight = 64 << 20

// shaper times the packets of one directed link: a token bucket of burst
// bytes filled at rate (the sender's uplink), a FIFO of at most limit bytes
// waiting for tokens, then the one-way delay. Its zero rate is unshaped.
type shaper struct {
	rate  float64 // bytes per second
	burst int
	limit int
	delay time.Duration
	free  time.Time // when the bytes admitted so far will all have left
}

// admit returns when a packet of n bytes arriving at now reaches the other end,
// or false if the queue is full and the packet is dropped. Successive arrivals
// (now never decreasing) get release times that never decrease either.
func (s *shaper) admit(now time.Time, n int) (time.Time, bool) {
	if s.rate == 0 {
		return now.Add(s.delay), true
	}
	start := s.free
	if floor := now.Add(-s.duration(s.burst)); start.Before(floor) {
		start = floor // the bucket holds at most burst bytes of tokens
	}
	if queued := start.Sub(now); queued > 0 && int(queued.Seconds()*s.rate)+n > s.limit {
		return time.Time{}, false
	}
	s.free = start.Add(s.duration(n))
	left := s.free
	if left.Before(now) {
		left = now
	}
	return left.Add(s.delay), true
}

func (s *shaper) duration(n int) time.Duration {
	return time.Duration(math.Round(float64(n) * float64(time.Second) / s.rate))
}

type packet struct {
	release time.Time
	data    []byte
}

// link is one directed link from peer From to peer To: send (from From's
// reader only) shapes and queues a packet, deliver writes it out on time.
type link struct {
	from, to int
	shaper   shaper

	mu      sync.Mutex
	queue   []packet // release times in order
	held    int      // bytes in queue
	wake    chan struct{}
	bytes   atomic.Int64
	packets atomic.Int64
	dropped atomic.Int64
	dropLen atomic.Int64
}

func newLink(from, to int, cfg Config) *link {
	return &link{
		from: from, to: to, wake: make(chan struct{}, 1),
		shaper: shaper{rate: float64(cfg.Rate) / 8, burst: burstSize, limit: cfg.queueBytes(), delay: cfg.Delay},
	}
}

// send queues p, which arrived at now, for delivery, or drops it.
func (l *link) send(now time.Time, p []byte) {
	release, ok := l.shaper.admit(now, len(p))
	l.mu.Lock()
	if ok && l.held+len(p) > maxInFlight {
		ok = false
	}
	if ok {
		l.queue = append(l.queue, packet{release, p})
		l.held += len(p)
	}
	l.mu.Unlock()
	if !ok {
		l.dropped.Add(1)
		l.dropLen.Add(int64(len(p)))
		return
	}
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// deliver writes each queued packet to out at its release time, until ctx
// ends.
func (l *link) deliver(ctx context.Context, out io.Writer) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p, wait := l.next(time.Now())
		switch {
		case p != nil:
			if _, err := out.Write(p); err == nil { // an error: the TUN is closing, or the packet lost
				l.bytes.Add(int64(len(p)))
				l.packets.Add(1)
			}
			continue
		case wait > 0:
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-l.wake: // a packet for an empty queue (later ones wait behind the head)
		case <-timer.C:
		}
		timer.Stop()
	}
}

// next pops the head packet if it is due at now; otherwise it returns how long
// until the head is due, or 0 for an empty queue.
func (l *link) next(now time.Time) ([]byte, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) == 0 {
		if cap(l.queue) > 4096 {
			l.queue = nil // let a long-grown array go
		}
		return nil, 0
	}
	head := l.queue[0]
	if wait := head.release.Sub(now); wait > 0 {
		return nil, wait
	}
	l.queue[0] = packet{}
	l.queue = l.queue[1:]
	l.held -= len(head.data)
	return head.data, 0
}

func (l *link) stats() LinkStats {
	return LinkStats{From: l.from, To: l.to, Bytes: l.bytes.Load(), Packets: l.packets.Load(),
		Dropped: l.dropped.Load(), DropLen: l.dropLen.Load()}
}
