package averaging

import (
	"context"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// newHost starts a libp2p host on 127.0.0.1 over TCP only, closed at cleanup.
func newHost(tb testing.TB, bwc *metrics.BandwidthCounter) host.Host {
	tb.Helper()
	opts := []libp2p.Option{
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	if bwc != nil {
		opts = append(opts, libp2p.BandwidthReporter(bwc))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	return h
}

// connectAll connects every pair of hosts.
func connectAll(tb testing.TB, hs []host.Host) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, a := range hs {
		for _, b := range hs[i+1:] {
			if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

func ids(hs []host.Host) PeerList {
	var l PeerList
	for _, h := range hs {
		l = append(l, h.ID())
	}
	return l
}

// vecSource is a Source over one slice. afterRead, when set, runs on each range
// right after it was read, standing for training steps taken during the round.
type vecSource struct {
	mu        sync.RWMutex
	vec       []float32
	samples   float64
	afterRead func(vals []float32)
}

func (s *vecSource) Len() int { return len(s.vec) }

func (s *vecSource) Samples() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.samples
	s.samples = 0
	return w
}

// Read takes the read lock only, as a trainer's parameters allow concurrent
// readers (forward passes); the test hook that writes takes the write lock.
func (s *vecSource) Read(off int, dst []float32) {
	if s.afterRead != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		copy(dst, s.vec[off:])
		s.afterRead(s.vec[off : off+len(dst)])
		return
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	copy(dst, s.vec[off:])
}

func (s *vecSource) Add(off int, delta []float32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vec[off : off+len(delta)]
	for k := range v {
		v[k] += delta[k]
	}
}

func randVec(rng *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * scale)
	}
	return v
}

// weightedMean computes the reference average in float64.
func weightedMean(vecs [][]float32, w []float64) []float64 {
	out := make([]float64, len(vecs[0]))
	var tot float64
	for _, x := range w {
		tot += x
	}
	for i, v := range vecs {
		for k, x := range v {
			out[k] += w[i] * float64(x)
		}
	}
	for k := range out {
		out[k] /= tot
	}
	return out
}

// ourGoroutines counts goroutines running this package's non-test code.
func ourGoroutines() (int, string) {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var dump strings.Builder
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			if strings.Contains(line, "/averaging/") && !strings.Contains(line, "_test.go") {
				n++
				dump.WriteString(g + "\n\n")
				break
			}
		}
	}
	return n, dump.String()
}

// waitNoGoroutines fails if this package's goroutines outlive the rounds.
func waitNoGoroutines(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, dump := ourGoroutines()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d averaging goroutines left behind:\n%s", n, dump)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
