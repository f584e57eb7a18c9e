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
	const n, stages = 64, 4
	ctx := b.Context()
	opt := func(i int) Options {
		return Options{
			Run: "bench", NumStages: stages, Stage: i % stages, Role: dht.RoleServer,
			Listen: []string{"/ip4/127.0.0.1/tcp/0"}, DataDir: b.TempDir(), StatusAddr: "off",
			// Gossip and the holders' own refresh lookups are slowed down here:
			// 64 peers gossiping and walking the DHT inside one process on two
			// cores would measure their background load, not the lookup.
			GossipEvery: 10 * time.Second, RefreshEvery: time.Minute,
		}
	}
	start := time.Now()
	first, err := New(ctx, opt(0))
	if err != nil {
		b.Fatal(err)
	}
	nodes := make([]*Node, n)
	nodes[0] = first
	boot := []string{first.Addrs()[0].String()}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			o := opt(i)
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
	up := time.Since(start)
	defer func() {
		var cw sync.WaitGroup
		for _, nd := range nodes {
			if nd != nil {
				cw.Add(1)
				go func() { defer cw.Done(); nd.Close() }()
			}
		}
		cw.Wait()
	}()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}

	co := opt(0)
	co.Stage, co.Role, co.DHTClient, co.Bootstrap = -1, dht.RoleTrainer, true, boot
	client, err := New(ctx, co)
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	// Ready: the client's full DHT lookup (provider walk with kad-dht's
	// follow-up) finds all 16 holders of every stage.
	deadline := time.Now().Add(120 * time.Second)
	for k := 0; k < stages; k++ {
		for {
			hs, err := client.DHT().LookupFull(ctx, k)
			if len(hs) == n/stages {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("stage %d: lookup finds %d of %d holders after 120s (%v)", k, len(hs), n/stages, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ready := time.Since(start)

	st0 := client.DHT().LookupStats()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		hs, err := client.DHT().Lookup(ctx, i%stages)
		d := time.Since(t0)
		if err != nil || len(hs) != n/stages {
			b.Fatalf("lookup %d: %d holders, %v", i, len(hs), err)
		}
		lat = append(lat, d)
	}
	b.StopTimer()
	st := client.DHT().LookupStats()
	st.Near -= st0.Near
	st.Followups -= st0.Followups
	st.Fallbacks -= st0.Fallbacks
	// Same-run references: the lookup with the full kad-dht walk (what
	// Lookup was before the short walk, and what the refresh loop runs), and
	// the bare kad-dht provider walk alone.
	full := make([]time.Duration, 0, 50)
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		hs, err := client.DHT().LookupFull(ctx, i%stages)
		full = append(full, time.Since(t0))
		if err != nil || len(hs) != n/stages {
			b.Fatalf("full lookup %d: %d holders, %v", i, len(hs), err)
		}
	}
	ref := make([]time.Duration, 0, 50)
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cnt := 0
		for range client.DHT().Kad().FindProvidersAsync(lctx, dht.StageCID("bench", i%stages), 0) {
			cnt++
		}
		cancel()
		ref = append(ref, time.Since(t0))
		if cnt != n/stages {
			b.Fatalf("reference walk found %d providers", cnt)
		}
	}
	// For context: a walk that may stop once it has seen all 16 holders
	// (every one of the key's closest peers stores all of them), and the
	// cached Holders() that routing actually calls per hop.
	early := make([]time.Duration, 0, 50)
	cached := make([]time.Duration, 0, 50)
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		for range client.DHT().Kad().FindProvidersAsync(lctx, dht.StageCID("bench", i%stages), n/stages) {
		}
		cancel()
		early = append(early, time.Since(t0))
		t0 = time.Now()
		if len(client.DHT().Holders(i%stages)) != n/stages {
			b.Fatal("cached holders incomplete")
		}
		cached = append(cached, time.Since(t0))
	}
	p50, p99 := pct(lat, 50), pct(lat, 99)
	b.ReportMetric(up.Seconds(), "hosts-up-s")
	b.ReportMetric(ready.Seconds(), "swarm-ready-s")
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(pct(ref, 50)), "kad-walk-p50-ms")
	b.ReportMetric(ms(pct(full, 50)), "full-lookup-p50-ms")
	fmt.Printf("64 hosts up in %.2fs (target <= 5s; hivemind %.1fs: %.1fx faster); all holders findable after %.2fs\n",
		up.Seconds(), hivemindStartS, hivemindStartS/up.Seconds(), ready.Seconds())
	fmt.Printf("holders lookup over %d runs: p50 %.2f ms, p99 %.2f ms (target p50 <= 5 ms; hivemind get p50 %.0f ms: %.1fx faster); "+
		"bare kad-dht provider walk p50 %.2f ms (lookup/walk = %.2f)\n",
		len(lat), ms(p50), ms(p99), hivemindGetP50MS, hivemindGetP50MS/ms(p50), ms(pct(ref, 50)), ms(p50)/ms(pct(ref, 50)))
	fmt.Printf("lookup paths: %d short walks (%d follow-up rounds), %d full-walk fallbacks; "+
		"lookup with the full walk p50 %.2f ms, p99 %.2f ms\n",
		st.Near, st.Followups, st.Fallbacks, ms(pct(full, 50)), ms(pct(full, 99)))
	fmt.Printf("provider walk stopping at 16 holders p50 %.2f ms; cached Holders() p50 %.1f µs\n",
		ms(pct(early, 50)), float64(pct(cached, 50).Nanoseconds())/1000)
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
