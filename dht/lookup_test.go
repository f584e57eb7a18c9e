package dht

import (
	"fmt"
	"slices"
	"testing"
	"time"

	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/internal/wait"
)

// holdersOf returns the ids of the nodes serving stage.
func holdersOf(nodes []*tnode, stage int) []peer.ID {
	var out []peer.ID
	for _, n := range nodes {
		if n.s.Self().Stage == stage {
			out = append(out, n.h.ID())
		}
	}
	return out
}

// covers reports whether got lists every peer of want.
func covers(got []peer.AddrInfo, want []peer.ID) error {
	for _, w := range want {
		if !slices.ContainsFunc(got, func(ai peer.AddrInfo) bool { return ai.ID == w }) {
			return fmt.Errorf("%s missing from %d providers", w.ShortString(), len(got))
		}
	}
	return nil
}

// TestNearLookupFindsAllHolders: among real loopback hosts, the short walk to
// the stage key's closest peers finds every holder of every stage on its own
// (no holder known beforehand, so no help from the cache), Lookup takes that
// path, and it still does after the peer closest to a key died.
func TestNearLookupFindsAllHolders(t *testing.T) {
	ctx := t.Context()
	const n, stages = 9, 3
	opts := testOpts(stages)
	// Background walks slower than testOpts: 10 hosts walking every 300 ms
	// under -race on two cores starve the requests under test. Records last
	// longer too (re-provided every 7.5 s, the warm-up announcing faster): a
	// 3 s provider record that the loaded machine re-provides late is gone
	// from the closest peers, and the short walk rightly falls back then.
	opts.RefreshEvery, opts.GossipEvery = 2*time.Second, 500*time.Millisecond
	opts.RecordTTL = 30 * time.Second
	// A provide that times out stores its record only on the peers its
	// walk reached so far; -race on a loaded machine needs long deadlines.
	opts.OpTimeout = 20 * time.Second // 5 s per GET_PROVIDERS
	nodes := startSwarm(t, ctx, n, opts, func(i int) int { return i % stages })
	copts := opts
	copts.Client = true
	c := startNode(t, ctx, copts, Self{Stage: -1, Role: RoleTrainer}, []peer.AddrInfo{addrInfo(nodes[0].h)})

	wait.For(t, 30*time.Second, func() error {
		for k := 0; k < stages; k++ {
			provs, ok := c.s.nearProviders(ctx, StageCID(opts.Run, k), nil)
			if !ok {
				return fmt.Errorf("stage %d: short walk gave up", k)
			}
			if err := covers(provs, holdersOf(nodes, k)); err != nil {
				return fmt.Errorf("stage %d: %w", k, err)
			}
			if len(provs) != len(holdersOf(nodes, k)) {
				return fmt.Errorf("stage %d: %d providers, want %d", k, len(provs), len(holdersOf(nodes, k)))
			}
		}
		return nil
	})
	before := c.s.LookupStats()
	for k := 0; k < stages; k++ {
		hs, err := c.s.Lookup(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != len(holdersOf(nodes, k)) {
			t.Fatalf("stage %d: Lookup found %d holders, want %d", k, len(hs), len(holdersOf(nodes, k)))
		}
	}
	after := c.s.LookupStats()
	if after.Near-before.Near != stages || after.Fallbacks != before.Fallbacks {
		t.Fatalf("lookup paths: %+v, then %+v; want %d short walks and no fallback", before, after, stages)
	}

	// The peer closest to stage 0's key dies: the walk skips it.
	key := string(StageCID(opts.Run, 0).Hash())
	dead := nodes[0]
	for _, nd := range nodes[1:] {
		if kb.Closer(nd.h.ID(), dead.h.ID(), key) {
			dead = nd
		}
	}
	dead.s.Close()
	dead.h.Close()
	var live []peer.ID
	for _, p := range holdersOf(nodes, 0) {
		if p != dead.h.ID() {
			live = append(live, p)
		}
	}
	wait.For(t, 30*time.Second, func() error {
		provs, ok := c.s.nearProviders(ctx, StageCID(opts.Run, 0), nil)
		if !ok {
			return fmt.Errorf("short walk gave up after the closest peer died")
		}
		return covers(provs, live)
	})
}

// TestNearLookupFallsBack: the short walk gives up when it has nobody to ask
// or nobody knows a provider, and Lookup then runs the full walk, which
// still finds what there is.
func TestNearLookupFallsBack(t *testing.T) {
	ctx := t.Context()
	opts := testOpts(2)
	// Alone: an empty routing table; the full walk still finds this peer
	// in its own provider store.
	lone := startNode(t, ctx, opts, Self{Stage: 0, Role: RoleServer}, nil)
	if _, ok := lone.s.nearProviders(ctx, StageCID(opts.Run, 0), nil); ok {
		t.Fatal("short walk answered with an empty routing table")
	}
	wait.For(t, 3*time.Second, func() error {
		hs, err := lone.s.Lookup(ctx, 0)
		if err != nil {
			return err
		}
		if len(hs) != 1 || hs[0].Peer != lone.h.ID() {
			return fmt.Errorf("lone lookup: %+v", hs)
		}
		return nil
	})
	if st := lone.s.LookupStats(); st.Fallbacks == 0 || st.Near != 0 {
		t.Fatalf("lone lookup paths %+v, want only fallbacks", st)
	}

	// A stage nobody serves: the short walk finds no provider, the full
	// walk confirms it.
	nodes := startSwarm(t, ctx, 4, opts, func(int) int { return 0 })
	wait.For(t, 5*time.Second, func() error {
		provs, ok := nodes[1].s.nearProviders(ctx, StageCID(opts.Run, 0), nil)
		if !ok {
			return fmt.Errorf("short walk gave up on stage 0")
		}
		return covers(provs, holdersOf(nodes, 0))
	})
	if provs, ok := nodes[1].s.nearProviders(ctx, StageCID(opts.Run, 1), nil); ok {
		t.Fatalf("short walk answered %v for a stage nobody serves", provs)
	}
	before := nodes[1].s.LookupStats()
	hs, err := nodes[1].s.Lookup(ctx, 1)
	if err != nil || len(hs) != 0 {
		t.Fatalf("lookup of an empty stage: %+v, %v", hs, err)
	}
	if st := nodes[1].s.LookupStats(); st.Fallbacks != before.Fallbacks+1 {
		t.Fatalf("lookup paths %+v then %+v, want one fallback", before, st)
	}
}
