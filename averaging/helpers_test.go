package averaging

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"swarmnode/config"
	"swarmnode/internal/wait"
)

// newHost starts a libp2p host on 127.0.0.1 over TCP only, closed at cleanup.
// rep, when not nil, receives the sizes of its streams' reads and writes.
func newHost(tb testing.TB, rep metrics.Reporter) host.Host {
	tb.Helper()
	opts := []libp2p.Option{
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	if rep != nil {
		opts = append(opts, libp2p.BandwidthReporter(rep))
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

// sentCounter counts the bytes written to a host's streams as each write
// returns; libp2p's own BandwidthCounter totals them only once a second. libp2p
// calls only the Log methods of a Reporter; the queries are left unimplemented.
type sentCounter struct {
	metrics.Reporter
	n atomic.Int64
}

func (c *sentCounter) LogSentMessage(n int64)                         { c.n.Add(n) }
func (*sentCounter) LogRecvMessage(int64)                             {}
func (*sentCounter) LogSentMessageStream(int64, protocol.ID, peer.ID) {}
func (*sentCounter) LogRecvMessageStream(int64, protocol.ID, peer.ID) {}

// member is one holder in a test group: its host, vector and averager.
type member struct {
	h    host.Host
	src  *vecSource
	avg  *Averager
	sent *sentCounter
}

// newGroup starts one connected member per vector, averaging a copy of it under
// run "test" and key "stage-1"; weights are the members' samples.
func newGroup(tb testing.TB, vecs [][]float32, weights []float64, o Options) []*member {
	tb.Helper()
	ms := make([]*member, len(vecs))
	for i := range ms {
		sent := &sentCounter{}
		ms[i] = &member{h: newHost(tb, sent), sent: sent, src: &vecSource{vec: slices.Clone(vecs[i]), samples: weights[i]}}
	}
	hs := hosts(ms)
	connectAll(tb, hs)
	o.Run, o.Key = "test", "stage-1"
	for _, m := range ms {
		a, err := New(m.h, ids(hs), m.src, o)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { a.Close() })
		m.avg = a
	}
	return ms
}

// roundAll runs round r on every member at once.
func roundAll(ms []*member, r uint64) ([]Result, []error) {
	res := make([]Result, len(ms))
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() { res[i], errs[i] = m.avg.Round(context.Background(), r) })
	}
	wg.Wait()
	return res, errs
}

func hosts(ms []*member) []host.Host {
	hs := make([]host.Host, len(ms))
	for i, m := range ms {
		hs[i] = m.h
	}
	return hs
}

// follower returns the index of a member that does not lead round r of a
// group of the default size.
func follower(ms []*member, r uint64) int {
	leader := assign(roundKey("test", "stage-1", r), ids(hosts(ms)), ms[0].h.ID(), config.DefaultAveraging().GroupSize)[0]
	return slices.IndexFunc(ms, func(m *member) bool { return m.h.ID() != leader })
}

// indexOf is m's index, and so its shard, in a round's group.
func (m *member) indexOf(res Result) int { return slices.Index(res.Members, m.h.ID()) }

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
	stubborn  bool // a liar that keeps its vector whatever the rounds return
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
	if s.stubborn {
		return
	}
	v := s.vec[off : off+len(delta)]
	for k := range v {
		v[k] += delta[k]
	}
}

// newRandGroup is newGroup of one member per weight, each with a random vector
// of n values drawn from seed; it returns the vectors too.
func newRandGroup(tb testing.TB, seed uint64, n int, weights []float64, o Options) ([]*member, [][]float32) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	vecs := make([][]float32, len(weights))
	for i := range vecs {
		vecs[i] = randVec(rng, n, 1)
	}
	return newGroup(tb, vecs, weights, o), vecs
}

// equal is n equal weights.
func equal(n int) []float64 {
	w := make([]float64, n)
	for i := range w {
		w[i] = 1
	}
	return w
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

// checkMeanBut checks that got, the vector of member i, holds want everywhere
// but in [lo, hi), which keeps the member's local values.
func checkMeanBut(tb testing.TB, i int, got, local []float32, want []float64, lo, hi int) {
	tb.Helper()
	for k, x := range got {
		ref := want[k]
		if k >= lo && k < hi {
			ref = float64(local[k])
		}
		if math.Abs(float64(x)-ref) > 1e-6 {
			tb.Fatalf("member %d value %d (local in [%d,%d)): %v, want %v", i, k, lo, hi, x, ref)
		}
	}
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
	wait.For(tb, 10*time.Second, func() error {
		if n, dump := ourGoroutines(); n > 0 {
			return fmt.Errorf("%d averaging goroutines left behind:\n%s", n, dump)
		}
		return nil
	})
}

// dieWhileReducing closes m's host once it has reduced a third of its shard of
// a vector of n values among g members, while its own parts still stream to
// the others.
func (m *member) dieWhileReducing(n, g int) {
	var reduced int
	cf := m.avg.o.ChunkFloats
	m.avg.o.Reducer = func(parts [][]float32, w []float64, out []float32, outlier []bool) error {
		if reduced++; reduced == (n/g/cf)/3 {
			m.h.Close()
		}
		return Mean(parts, w, out, outlier)
	}
}
