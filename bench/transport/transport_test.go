package transport

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bytesPerToken is what one token's activation row costs on the wire: 768
// int8 values plus their block scales (~1.06 bytes a value).
const bytesPerToken = 768 * 1.06

// refRounds is how many round trips the raw TCP reference is timed over.
const refRounds = 40

// benchCase is one sub-benchmark: a variant, over links separate
// connections, each carrying streams round trips at once.
type benchCase struct {
	variant        Variant
	links, streams int
}

// name is the sub-benchmark's name.
func (c benchCase) name() string {
	switch {
	case c.links > 1:
		return fmt.Sprintf("%s/%dconns", c.variant.Name, c.links)
	case c.streams > 1:
		return fmt.Sprintf("%s/%dstreams", c.variant.Name, c.streams)
	}
	return c.variant.Name
}

// benchCases are every variant one round trip at a time, then raw TCP,
// TCP+TLS+yamux and QUIC with four round trips at once.
func benchCases() []benchCase {
	var cases []benchCase
	byName := map[string]Variant{}
	for _, v := range Variants() {
		cases = append(cases, benchCase{variant: v, links: 1, streams: 1})
		byName[v.Name] = v
	}
	return append(cases,
		benchCase{variant: byName["raw-tcp"], links: 4, streams: 1},
		benchCase{variant: byName["tcp-tls-yamux"], links: 1, streams: 4},
		benchCase{variant: byName["tcp-tls-yamux"], links: 4, streams: 1},
		benchCase{variant: byName["quic"], links: 1, streams: 4},
	)
}

var (
	refOnce sync.Once
	refMBps float64 // raw TCP reference, MB/s of one direction's payload
	refErr  error
)

// reference times refRounds round trips over a raw TCP socket, once per run.
func reference() (float64, error) {
	refOnce.Do(func() {
		l, err := dialRaw()
		if err != nil {
			refErr = err
			return
		}
		defer l.Close()
		out, in := randomFrame(), make([]byte, FrameBytes)
		if refErr = l.RoundTrip(out, in); refErr != nil {
			return
		}
		start := time.Now()
		for range refRounds {
			if refErr = l.RoundTrip(out, in); refErr != nil {
				return
			}
		}
		refMBps = refRounds * FrameBytes / time.Since(start).Seconds() / 1e6
	})
	return refMBps, refErr
}

// randomFrame is a frame's payload of random bytes.
func randomFrame() []byte {
	p := make([]byte, FrameBytes)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(p)
	return p
}

// dialLinks dials n links of variant v.
func dialLinks(v Variant, n int) ([]Link, error) {
	links := make([]Link, 0, n)
	for range n {
		l, err := v.Dial()
		if err != nil {
			closeLinks(links)
			return nil, err
		}
		links = append(links, l)
	}
	return links, nil
}

// closeLinks closes every link.
func closeLinks(links []Link) {
	for _, l := range links {
		l.Close()
	}
}

// drive runs n round trips of out over links, streams at a time on each:
// worker w uses links[w/streams] and reads its answers into ins[w].
func drive(links []Link, streams, n int, out []byte, ins [][]byte) error {
	var left atomic.Int64
	left.Store(int64(n))
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for w := range ins {
		wg.Go(func() {
			link := links[w/streams]
			for left.Add(-1) >= 0 {
				if err := link.RoundTrip(out, ins[w]); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// BenchmarkTransport times request/answer round trips of one ~6.3 MB frame
// each way over loopback for each transport variant. MB/s counts one
// direction's payload (the answer carries as much back); x_raw_tcp is the
// ratio to a raw TCP socket timed in the same run, tokens/s what a hop could
// carry at bytesPerToken.
func BenchmarkTransport(b *testing.B) {
	ref, err := reference()
	if err != nil {
		b.Fatalf("raw TCP reference: %v", err)
	}
	b.Logf("raw TCP reference: %.0f MB/s", ref)
	for _, c := range benchCases() {
		b.Run(c.name(), func(b *testing.B) { runCase(b, c, ref) })
	}
}

// runCase is one sub-benchmark: dial, warm every worker up with one round
// trip (yamux measures its RTT, windows open), then time b.N round trips.
func runCase(b *testing.B, c benchCase, ref float64) {
	links, err := dialLinks(c.variant, c.links)
	if err != nil {
		b.Fatal(err)
	}
	defer closeLinks(links)
	out := randomFrame()
	ins := make([][]byte, c.links*c.streams)
	for w := range ins {
		ins[w] = make([]byte, FrameBytes)
	}
	if err := drive(links, c.streams, len(ins), out, ins); err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	b.SetBytes(FrameBytes)
	b.ResetTimer()
	if err := drive(links, c.streams, b.N, out, ins); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	mbps := float64(b.N) * FrameBytes / b.Elapsed().Seconds() / 1e6
	b.ReportMetric(mbps/ref, "x_raw_tcp")
	b.ReportMetric(mbps*1e6/bytesPerToken, "tokens/s")
}

// TestTransportRoundTrip checks that one frame of random bytes comes back
// intact over every variant, and over two concurrent streams of one libp2p
// connection, so the benchmark cannot silently measure nothing.
func TestTransportRoundTrip(t *testing.T) {
	out := randomFrame()
	for _, v := range Variants() {
		t.Run(v.Name, func(t *testing.T) {
			links, err := dialLinks(v, 1)
			if err != nil {
				t.Fatal(err)
			}
			defer closeLinks(links)
			streams := 1
			if !v.Raw {
				streams = 2
			}
			ins := make([][]byte, streams)
			for w := range ins {
				ins[w] = make([]byte, FrameBytes)
			}
			errs := make([]error, streams)
			var wg sync.WaitGroup
			for w := range ins {
				wg.Go(func() { errs[w] = links[0].RoundTrip(out, ins[w]) })
			}
			wg.Wait()
			for w, in := range ins {
				if errs[w] != nil {
					t.Fatalf("stream %d: %v", w, errs[w])
				}
				if !bytes.Equal(in, out) {
					t.Fatalf("stream %d: answer differs from the frame sent", w)
				}
			}
		})
	}
}
