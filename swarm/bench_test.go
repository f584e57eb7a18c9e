package swarm

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"swarmnode/dht"
)

// Reference figures from the issue: hivemind's DHT with 64 peers on this kind
// of machine (single get p50 42 ms; swarm start 31–36 s, midpoint 33.5 s).
const (
	hivemindGetP50MS = 42.0
	hivemindStartS   = 33.5
)

// The benchmark's swarm: 4 stages of 16 holders.
const (
	benchNodes   = 64
	benchStages  = 4
	benchHolders = benchNodes / benchStages
	// benchRefRuns is how many times each same-run reference is measured.
	benchRefRuns = 50
)

// BenchmarkSwarm64Lookup starts 64 nodes in one process (4 stages, 16 holders
// each), then a client-mode node looks up the holders of a stage through the
// DHT (short walk to the stage key's closest peers + signed records, see
// dht.Service.Lookup), b.N times. It reports the start-up time of the 64
// hosts, the lookup's p50 and p99, how its providers were found, and ratios
// against hivemind's figures and against, measured here, the same lookup over
// kad-dht's full provider walk and the bare walk alone.
//
//	go test -run '^$' -bench Swarm64 -benchtime 200x ./swarm/
func BenchmarkSwarm64Lookup(b *testing.B) {
	ctx := b.Context()
	start := time.Now()
	boot := startBenchSwarm(b, ctx)
	up := time.Since(start)
	client := startBenchClient(b, ctx, boot)
	ready := time.Since(start)

	st0 := client.DHT().LookupStats()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lat = append(lat, timeLookup(b, ctx, "lookup", i, client.DHT().Lookup))
	}
	b.StopTimer()
	st := client.DHT().LookupStats()
	st.Near -= st0.Near
	st.Followups -= st0.Followups
	st.Fallbacks -= st0.Fallbacks
	reportSwarm64(b, up, ready, lat, st, measureReferences(b, ctx, client))
}

// benchOptions are the options of the benchmark's node i.
func benchOptions(b *testing.B, i int) Options {
	return Options{
		Run: "bench", NumStages: benchStages, Stage: i % benchStages, Role: dht.RoleServer,
		Listen: []string{"/ip4/127.0.0.1/tcp/0"}, DataDir: b.TempDir(), StatusAddr: "off",
		// Gossip and the holders' own refresh lookups are slowed down here:
		// 64 peers gossiping and walking the DHT inside one process on two
		// cores would measure their background load, not the lookup.
		GossipEvery: 10 * time.Second, RefreshEvery: time.Minute,
	}
}

// startBenchSwarm starts the benchmark's 64 nodes, the others all at once
// once the first is up, and returns the bootstrap address they joined
// through. The benchmark's end closes them.
func startBenchSwarm(b *testing.B, ctx context.Context) []string {
	nodes := make([]*Node, benchNodes)
	b.Cleanup(func() {
		var cw sync.WaitGroup
		for _, nd := range nodes {
			if nd != nil {
				cw.Add(1)
				go func() { defer cw.Done(); nd.Close() }()
			}
		}
		cw.Wait()
	})
	first, err := New(ctx, benchOptions(b, 0))
	if err != nil {
		b.Fatal(err)
	}
	nodes[0] = first
	boot := []string{first.Addrs()[0].String()}
	var wg sync.WaitGroup
	errs := make(chan error, benchNodes)
	for i := 1; i < benchNodes; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			o := benchOptions(b, i)
			o.Bootstrap = boot
			nd, err := New(ctx, o)
			if err != nil {
				errs <- err
				return
			}
			nodes[i] = nd
		}(i)
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	return boot
}

// startBenchClient starts the client-mode node that looks up, and returns
// once its full DHT lookup (provider walk with kad-dht's follow-up) finds all
// 16 holders of every stage.
func startBenchClient(b *testing.B, ctx context.Context, boot []string) *Node {
	co := benchOptions(b, 0)
	co.Stage, co.Role, co.DHTClient, co.Bootstrap = -1, dht.RoleTrainer, true, boot
	client, err := New(ctx, co)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	deadline := time.Now().Add(120 * time.Second)
	for k := 0; k < benchStages; k++ {
		for {
			hs, err := client.DHT().LookupFull(ctx, k)
			if len(hs) == benchHolders {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("stage %d: lookup finds %d of %d holders after 120s (%v)", k, len(hs), benchHolders, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return client
}

// timeLookup times the i-th lookup, of stage i%benchStages, which must find
// every holder.
func timeLookup(b *testing.B, ctx context.Context, name string, i int,
	lookup func(context.Context, int) ([]dht.Holder, error)) time.Duration {
	t0 := time.Now()
	hs, err := lookup(ctx, i%benchStages)
	d := time.Since(t0)
	if err != nil || len(hs) != benchHolders {
		b.Fatalf("%s %d: %d holders, %v", name, i, len(hs), err)
	}
	return d
}

// timeWalk times kad-dht's provider walk for stage i%benchStages, stopping
// after count providers (0: the full walk), and returns how many it found.
func timeWalk(ctx context.Context, client *Node, i, count int) (time.Duration, int) {
	t0 := time.Now()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	found := 0
	for range client.DHT().Kad().FindProvidersAsync(lctx, dht.StageCID("bench", i%benchStages), count) {
		found++
	}
	cancel()
	return time.Since(t0), found
}

// benchRefs are the same-run references of the lookup's latency.
type benchRefs struct {
	// full is the lookup with the full kad-dht walk (what Lookup was before
	// the short walk, and what the refresh loop runs); walk is that bare
	// provider walk alone.
	full, walk []time.Duration
	// For context: early is a walk that may stop once it has seen all 16
	// holders (every one of the key's closest peers stores all of them), and
	// cached is the cached Holders() that routing actually calls per hop.
	early, cached []time.Duration
}

func measureReferences(b *testing.B, ctx context.Context, client *Node) benchRefs {
	var r benchRefs
	for i := 0; i < benchRefRuns; i++ {
		r.full = append(r.full, timeLookup(b, ctx, "full lookup", i, client.DHT().LookupFull))
	}
	for i := 0; i < benchRefRuns; i++ {
		d, found := timeWalk(ctx, client, i, 0)
		r.walk = append(r.walk, d)
		if found != benchHolders {
			b.Fatalf("reference walk found %d providers", found)
		}
	}
	for i := 0; i < benchRefRuns; i++ {
		d, _ := timeWalk(ctx, client, i, benchHolders)
		r.early = append(r.early, d)
		t0 := time.Now()
		if len(client.DHT().Holders(i%benchStages)) != benchHolders {
			b.Fatal("cached holders incomplete")
		}
		r.cached = append(r.cached, time.Since(t0))
	}
	return r
}

// reportSwarm64 reports the benchmark's metrics and prints its summary, with
// the ratios against hivemind's figures and the same-run references.
func reportSwarm64(b *testing.B, up, ready time.Duration, lat []time.Duration, st dht.LookupStats, r benchRefs) {
	p50, p99 := pct(lat, 50), pct(lat, 99)
	walk50 := pct(r.walk, 50)
	b.ReportMetric(up.Seconds(), "hosts-up-s")
	b.ReportMetric(ready.Seconds(), "swarm-ready-s")
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(walk50), "kad-walk-p50-ms")
	b.ReportMetric(ms(pct(r.full, 50)), "full-lookup-p50-ms")
	fmt.Printf("64 hosts up in %.2fs (target <= 5s; hivemind %.1fs: %.1fx faster); all holders findable after %.2fs\n",
		up.Seconds(), hivemindStartS, hivemindStartS/up.Seconds(), ready.Seconds())
	fmt.Printf("holders lookup over %d runs: p50 %.2f ms, p99 %.2f ms (target p50 <= 5 ms; hivemind get p50 %.0f ms: %.1fx faster); "+
		"bare kad-dht provider walk p50 %.2f ms (lookup/walk = %.2f)\n",
		len(lat), ms(p50), ms(p99), hivemindGetP50MS, hivemindGetP50MS/ms(p50), ms(walk50), ms(p50)/ms(walk50))
	fmt.Printf("lookup paths: %d short walks (%d follow-up rounds), %d full-walk fallbacks; "+
		"lookup with the full walk p50 %.2f ms, p99 %.2f ms\n",
		st.Near, st.Followups, st.Fallbacks, ms(pct(r.full, 50)), ms(pct(r.full, 99)))
	fmt.Printf("provider walk stopping at 16 holders p50 %.2f ms; cached Holders() p50 %.1f µs\n",
		ms(pct(r.early, 50)), float64(pct(r.cached, 50).Nanoseconds())/1000)
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
