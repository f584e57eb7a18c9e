package dht

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"swarmnode/internal/wait"
)

type tnode struct {
	h  host.Host
	ps *pubsub.PubSub
	s  *Service
}

// testOpts are short periods so the tests run in seconds.
func testOpts(stages int) Options {
	return Options{
		Run: "test", NumStages: stages, RecordTTL: 3 * time.Second,
		GossipEvery: 150 * time.Millisecond, RefreshEvery: 300 * time.Millisecond,
		DownBackoff: 500 * time.Millisecond, OpTimeout: 2 * time.Second,
	}
}

func newTestHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(), libp2p.DisableMetrics(),
	)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// startService starts a Service on h and ps, joining through boot; the test's
// end closes both the service and the host.
func startService(t testing.TB, ctx context.Context, h host.Host, ps *pubsub.PubSub, opts Options, self Self, boot []peer.AddrInfo) *tnode {
	t.Helper()
	opts.Bootstrap = boot
	s, err := New(ctx, h, ps, self, opts)
	if err != nil {
		t.Fatal(err)
	}
	n := &tnode{h: h, ps: ps, s: s}
	t.Cleanup(func() { n.s.Close(); n.h.Close() })
	return n
}

// startNode starts a Service on a new loopback host.
func startNode(t testing.TB, ctx context.Context, opts Options, self Self, boot []peer.AddrInfo) *tnode {
	t.Helper()
	h := newTestHost(t)
	ps, err := NewPubSub(ctx, h, "test")
	if err != nil {
		t.Fatal(err)
	}
	return startService(t, ctx, h, ps, opts, self, boot)
}

func addrInfo(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }

// startSwarm starts n nodes; node i serves stage stageOf(i); all join via node 0.
func startSwarm(t testing.TB, ctx context.Context, n int, opts Options, stageOf func(int) int) []*tnode {
	nodes := []*tnode{startNode(t, ctx, opts, Self{Stage: stageOf(0), Role: RoleServer}, nil)}
	boot := []peer.AddrInfo{addrInfo(nodes[0].h)}
	for i := 1; i < n; i++ {
		nodes = append(nodes, startNode(t, ctx, opts, Self{Stage: stageOf(i), Role: RoleServer, Throughput: float64(100 * i)}, boot))
	}
	return nodes
}

// sees reports whether n lists every node of want under its stage.
func sees(n *tnode, want []*tnode) error {
	all := n.s.AllHolders()
	for _, w := range want {
		st := w.s.Self().Stage
		found := false
		for _, h := range all[st] {
			if h.Peer == w.h.ID() {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%s does not list %s under stage %d", n.h.ID().ShortString(), w.h.ID().ShortString(), st)
		}
	}
	return nil
}

// TestEightHostsSeeEachOther is the acceptance check: 8 hosts on
// loopback each list every other's stage within 2 s of the swarm being up.
func TestEightHostsSeeEachOther(t *testing.T) {
	ctx := t.Context()
	nodes := startSwarm(t, ctx, 8, testOpts(3), func(i int) int { return i % 3 })
	wait.For(t, 2*time.Second, func() error {
		for _, n := range nodes {
			if err := sees(n, nodes); err != nil {
				return err
			}
		}
		return nil
	})
	// Load travels too: node 5 reported throughput 500.
	for _, h := range nodes[1].s.Holders(nodes[5].s.Self().Stage) {
		if h.Peer == nodes[5].h.ID() && h.Throughput != 500 {
			t.Fatalf("throughput of node 5 seen as %v, want 500", h.Throughput)
		}
	}
}

// TestLookupThroughDHT checks the DHT path alone: Lookup bypasses the gossip-fed
// cache, so a client-mode node must find every holder of a stage through the
// provider records and fetch each one's signed record.
func TestLookupThroughDHT(t *testing.T) {
	ctx := t.Context()
	nodes := startSwarm(t, ctx, 6, testOpts(2), func(i int) int { return i % 2 })
	copts := testOpts(2)
	copts.Client = true
	c := startNode(t, ctx, copts, Self{Stage: -1, Role: RoleTrainer}, []peer.AddrInfo{addrInfo(nodes[0].h)})
	want := map[peer.ID]bool{}
	for _, n := range nodes {
		if n.s.Self().Stage == 1 {
			want[n.h.ID()] = true
		}
	}
	wait.For(t, 5*time.Second, func() error {
		hs, err := c.s.Lookup(ctx, 1)
		if err != nil {
			return err
		}
		got := 0
		for _, h := range hs {
			if !want[h.Peer] || h.Stage != 1 || len(h.Addrs) == 0 {
				return fmt.Errorf("unexpected holder %+v", h)
			}
			got++
		}
		if got != len(want) {
			return fmt.Errorf("lookup found %d of %d holders", got, len(want))
		}
		return nil
	})
}

// TestStoppedNodeDisappears: a node that dies without a word drops out of
// every other node's holders within the record TTL; one that shuts down
// cleanly drops out at once.
func TestStoppedNodeDisappears(t *testing.T) {
	ctx := t.Context()
	opts := testOpts(2)
	nodes := startSwarm(t, ctx, 4, opts, func(i int) int { return i % 2 })
	wait.For(t, 3*time.Second, func() error {
		for _, n := range nodes {
			if err := sees(n, nodes); err != nil {
				return err
			}
		}
		return nil
	})
	gone := func(dead *tnode, stage int) func() error {
		return func() error {
			for _, n := range nodes {
				if n == dead {
					continue
				}
				for _, h := range n.s.Holders(stage) {
					if h.Peer == dead.h.ID() {
						return fmt.Errorf("%s still lists %s", n.h.ID().ShortString(), h.Peer.ShortString())
					}
				}
			}
			return nil
		}
	}
	// Crash: close the host first, so no leave message gets out.
	crashed := nodes[3]
	crashed.h.Close()
	crashed.s.Close()
	// The TTL runs from the last message received; 500 ms covers one still in
	// flight when the node died.
	wait.For(t, opts.RecordTTL+500*time.Millisecond, gone(crashed, 1))

	// Clean shutdown: the leave message removes it well before the TTL.
	left := nodes[2]
	left.s.Close()
	wait.For(t, opts.RecordTTL/2, gone(left, 0))
}

func TestMarkDownAndReturn(t *testing.T) {
	ctx := t.Context()
	opts := testOpts(1)
	nodes := startSwarm(t, ctx, 3, opts, func(int) int { return 0 })
	wait.For(t, 3*time.Second, func() error { return sees(nodes[0], nodes) })
	victim := nodes[1].h.ID()
	nodes[0].s.MarkDown(victim)
	for _, h := range nodes[0].s.Holders(0) {
		if h.Peer == victim {
			t.Fatal("MarkDown did not drop the holder at once")
		}
	}
	// A DHT lookup does not bring it back during the backoff either.
	hs, err := nodes[0].s.Lookup(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.Peer == victim {
			t.Fatal("Lookup lists a marked-down holder")
		}
	}
	// It keeps gossiping, so it comes back after the backoff.
	wait.For(t, opts.DownBackoff+2*time.Second, func() error { return sees(nodes[0], nodes) })
}

// TestStageChangeAnnounced: SetSelf moves a peer to another stage everywhere.
func TestStageChangeAnnounced(t *testing.T) {
	ctx := t.Context()
	nodes := startSwarm(t, ctx, 3, testOpts(2), func(int) int { return 0 })
	wait.For(t, 3*time.Second, func() error { return sees(nodes[0], nodes) })
	if err := nodes[2].s.SetSelf(Self{Stage: 1, Role: RoleBoth}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 3*time.Second, func() error {
		hs := nodes[0].s.Holders(1)
		if len(hs) != 1 || hs[0].Peer != nodes[2].h.ID() || hs[0].Role != RoleBoth {
			return fmt.Errorf("holders of stage 1: %+v", hs)
		}
		for _, h := range nodes[0].s.Holders(0) {
			if h.Peer == nodes[2].h.ID() {
				return fmt.Errorf("still listed under stage 0")
			}
		}
		return nil
	})
	// Stopping to serve (a peer turning pure trainer) is announced at once
	// too, not left to the record TTL.
	if err := nodes[2].s.SetSelf(Self{Stage: -1, Role: RoleTrainer}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 2*time.Second, func() error {
		for _, n := range []*tnode{nodes[0], nodes[2]} {
			if hs := n.s.Holders(1); len(hs) != 0 {
				return fmt.Errorf("stage 1 still lists %+v", hs)
			}
		}
		return nil
	})
	if err := nodes[2].s.SetSelf(Self{Stage: 1, Role: "king"}); err == nil {
		t.Fatal("SetSelf accepted a bad role")
	}
}

// TestClockSkew: peers whose clocks are 5 minutes ahead and behind join as
// any other: every node lists them, from gossip and from their records
// through the DHT, and one that dies drops out within the record TTL by the
// readers' clocks, not 5 minutes later.
func TestClockSkew(t *testing.T) {
	ctx := t.Context()
	opts := testOpts(3)
	skewed := func(d time.Duration) Options {
		o := opts
		o.Now = func() time.Time { return time.Now().Add(d) }
		return o
	}
	a := startNode(t, ctx, opts, Self{Stage: 0, Role: RoleServer}, nil)
	boot := []peer.AddrInfo{addrInfo(a.h)}
	ahead := startNode(t, ctx, skewed(5*time.Minute), Self{Stage: 1, Role: RoleServer}, boot)
	behind := startNode(t, ctx, skewed(-5*time.Minute), Self{Stage: 2, Role: RoleServer}, boot)
	nodes := []*tnode{a, ahead, behind}
	wait.For(t, 5*time.Second, func() error {
		for _, n := range nodes {
			if err := sees(n, nodes); err != nil {
				return err
			}
		}
		return nil
	})
	// Through the DHT: a client that looks the stages up finds both.
	copts := testOpts(3)
	copts.Client = true
	c := startNode(t, ctx, copts, Self{Stage: -1, Role: RoleTrainer}, boot)
	for _, w := range []*tnode{ahead, behind} {
		wait.For(t, 5*time.Second, func() error {
			hs, err := c.s.Lookup(ctx, w.s.Self().Stage)
			if err != nil {
				return err
			}
			if len(hs) != 1 || hs[0].Peer != w.h.ID() {
				return fmt.Errorf("lookup of stage %d found %v", w.s.Self().Stage, hs)
			}
			return nil
		})
	}
	// The peer ahead dies silently: its records expire 5 minutes late by
	// our clock, yet it drops out within the TTL.
	ahead.h.Close()
	ahead.s.Close()
	wait.For(t, opts.RecordTTL+time.Second, func() error {
		for _, n := range []*tnode{a, behind, c} {
			for _, h := range n.s.Holders(1) {
				if h.Peer == ahead.h.ID() {
					return fmt.Errorf("%s still lists the dead peer, until %s", n.h.ID().ShortString(), time.Until(h.Expires).Round(time.Second))
				}
			}
		}
		return nil
	})
}
