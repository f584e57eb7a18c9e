package averaging

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/codec"
)

const rawProto = "/swarmnode/bench/raw/1.0.0"

// benchFloats is the vector size of the all-reduce benchmark: 50M unless
// AVG_BENCH_FLOATS says otherwise.
func benchFloats() int {
	if s := os.Getenv("AVG_BENCH_FLOATS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			return n
		}
	}
	return 50_000_000
}

// sink serves rawProto: it reads everything, then closes.
func sink(s network.Stream) {
	_, _ = io.Copy(io.Discard, s)
	s.Close()
}

// blast sends n bytes to p over one rawProto stream and waits for the receiver
// to have read them all.
func blast(tb testing.TB, h host.Host, p peer.ID, n int) {
	s, err := h.NewStream(context.Background(), p, rawProto)
	if err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, 1<<18)
	for sent := 0; sent < n; {
		k := min(len(buf), n-sent)
		if _, err := s.Write(buf[:k]); err != nil {
			tb.Fatal(err)
		}
		sent += k
	}
	_ = s.CloseWrite()
	_, _ = io.Copy(io.Discard, s)
	s.Close()
}

// rawExchange times the butterfly's traffic pattern with no averaging: every
// member sends 2·V/G bytes to every other member, all at once.
func rawExchange(tb testing.TB, hs []host.Host, vecBytes int) time.Duration {
	g := len(hs)
	start := time.Now()
	var wg sync.WaitGroup
	for i, a := range hs {
		for j, b := range hs {
			if i != j {
				wg.Go(func() { blast(tb, a, b.ID(), 2*vecBytes/g) })
			}
		}
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkAllReduce averages a 50M-float vector among 4 in-process members over
// loopback TCP (default libp2p security and muxer), next to the raw stream
// bandwidth measured in the same run:
//
//   - raw_1stream_MB/s: one stream between two of the hosts;
//   - raw_pattern: the butterfly's exact traffic (each member sends 2·V/G to each
//     other) as plain streams; its time is the ideal round time on this machine;
//   - vector_MB/s: vector bytes per second of round time;
//   - ideal_ratio: ideal round time / round time (target ≥ 0.8);
//   - killed_round_s: survivors' round time when one member dies mid-round.
func BenchmarkAllReduce(b *testing.B) {
	n, g := benchFloats(), 4
	o := benchOptions(b)
	wireBytes := wireFormat(o.Codec).Len(n)
	base := randVec(rand.New(rand.NewPCG(7, 7)), n, 1)
	vecs := make([][]float32, g)
	for i := range vecs {
		vecs[i] = base // members copy it; the values do not matter to the speed
	}
	ms := newGroup(b, vecs, equal(g), o)
	hs := hosts(ms)
	for _, h := range hs {
		h.SetStreamHandler(rawProto, sink)
	}

	// Warm up: the first round allocates the snapshot buffer, which later rounds
	// reuse, and the streams' windows grow.
	r := uint64(100)
	slowestRound(b, ms, r, -1)
	rawExchange(b, hs, wireBytes)
	b.ResetTimer()
	var round, raw, single time.Duration
	for b.Loop() {
		t0 := time.Now()
		blast(b, hs[0], hs[1].ID(), wireBytes)
		single += time.Since(t0)
		raw += rawExchange(b, hs, wireBytes)
		r++
		round += slowestRound(b, ms, r, -1)
	}
	b.StopTimer()
	k := float64(b.N)
	roundS, rawS, singleS := round.Seconds()/k, raw.Seconds()/k, single.Seconds()/k
	b.ReportMetric(float64(4*n)/roundS/1e6, "vector_MB/s")
	b.ReportMetric(roundS, "round_s")
	b.ReportMetric(float64(wireBytes)/singleS/1e6, "raw_1stream_MB/s")
	b.ReportMetric(rawS, "raw_pattern_s")
	b.ReportMetric(rawS/roundS, "ideal_ratio")
	// The ideal by the single-stream bandwidth alone, as if each member had the
	// whole machine: round time ≥ 2(G−1)/G × V / bandwidth.
	b.ReportMetric(2*float64(g-1)/float64(g)*float64(wireBytes)/(float64(wireBytes)/singleS)/roundS, "ideal_ratio_1stream")

	const victim = 1
	ms[victim].dieWhileReducing(n, g)
	b.ReportMetric(slowestRound(b, ms, r+1, victim).Seconds(), "killed_round_s")
	b.ReportMetric(o.Deadline.Seconds(), "deadline_s")
}

// benchOptions are the all-reduce benchmark's options: fp32 in chunks of the
// default size, without audits, unless AVG_BENCH_CODEC, AVG_BENCH_CHUNK or
// AVG_BENCH_AUDIT (the audit rate) say otherwise.
func benchOptions(b *testing.B) Options {
	o := Options{Codec: codec.FP32, Deadline: 120 * time.Second, Matchmaking: 5 * time.Second, StallTimeout: 30 * time.Second}
	if c := os.Getenv("AVG_BENCH_CODEC"); c != "" {
		var err error
		if o.Codec, err = codec.Parse(c); err != nil {
			b.Fatal(err)
		}
	}
	if s := os.Getenv("AVG_BENCH_CHUNK"); s != "" {
		o.ChunkFloats, _ = strconv.Atoi(s)
	}
	if s := os.Getenv("AVG_BENCH_AUDIT"); s != "" {
		o.AuditRate, _ = strconv.ParseFloat(s, 64)
	}
	return o
}

// slowestRound runs round r on every member and returns the longest round time
// among them. With victim < 0 every member must average the whole vector; else
// that member's round is neither checked nor timed.
func slowestRound(b *testing.B, ms []*member, r uint64, victim int) time.Duration {
	res, errs := roundAll(ms, r)
	var worst time.Duration
	for i := range ms {
		if i == victim {
			continue
		}
		if victim < 0 {
			if errs[i] != nil || res[i].Averaged != 1 {
				b.Fatalf("member %d: %v %+v", i, errs[i], res[i])
			}
			b.Logf("member %d: took %s, phases %+v", i, res[i].Took, res[i].Phases)
		}
		worst = max(worst, res[i].Took)
	}
	return worst
}

// BenchmarkFetchState downloads a 3×4M-float state (params, m, v) from one holder
// and from two, each holder capped at 100 MB/s of serving: speedup_2holders is
// the one-holder time over the two-holder time (ideal 2).
func BenchmarkFetchState(b *testing.B) {
	st := testState(4 << 20)
	hs := []host.Host{newHost(b, nil), newHost(b, nil), newHost(b, nil)}
	connectAll(b, hs)
	for _, h := range hs[1:] {
		s, err := ServeState(h, "test", "stage-0", func() (State, error) { return cloneState(st), nil }, ServeOptions{Rate: 100e6})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
	}
	var one, two time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := FetchState(context.Background(), hs[0], "test", "stage-0", []peer.ID{hs[1].ID()}, FetchOptions{}); err != nil {
			b.Fatal(err)
		}
		one += time.Since(t0)
		t0 = time.Now()
		if _, err := FetchState(context.Background(), hs[0], "test", "stage-0", []peer.ID{hs[1].ID(), hs[2].ID()}, FetchOptions{}); err != nil {
			b.Fatal(err)
		}
		two += time.Since(t0)
	}
	k := float64(b.N)
	bytes := float64(12 * 4 << 20)
	b.ReportMetric(bytes/(one.Seconds()/k)/1e6, "1holder_MB/s")
	b.ReportMetric(bytes/(two.Seconds()/k)/1e6, "2holders_MB/s")
	b.ReportMetric(one.Seconds()/two.Seconds(), "speedup_2holders")
}
