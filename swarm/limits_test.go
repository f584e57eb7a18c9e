package swarm

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// connectedPair starts a node with options oa and a second node connected to
// it; both listen on TCP and QUIC.
func connectedPair(t *testing.T, oa Options) (a, b *Node) {
	t.Helper()
	a = startTestNode(t, oa)
	ob := testOptions(t, 1)
	ob.StatusAddr = "off"
	b = startTestNode(t, ob)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := b.Host().Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// TestPrefersTCP: two nodes that both listen on TCP and QUIC connect over TCP.
func TestPrefersTCP(t *testing.T) {
	a, b := connectedPair(t, testOptions(t, 0))
	conns := b.Host().Network().ConnsToPeer(a.ID())
	if len(conns) == 0 {
		t.Fatal("no connection")
	}
	if addr := conns[0].RemoteMultiaddr(); !isTCP(addr) {
		t.Fatalf("connected over %s, want TCP", addr)
	}
}

func TestPreferTCPRanker(t *testing.T) {
	tcp := ma.StringCast("/ip4/1.2.3.4/tcp/1")
	quic := ma.StringCast("/ip4/1.2.3.4/udp/1/quic-v1")
	ws := ma.StringCast("/ip4/1.2.3.4/tcp/2/ws")
	relay := ma.StringCast("/ip4/5.6.7.8/tcp/1/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq/p2p-circuit")
	got := map[string]time.Duration{}
	for _, ad := range preferTCPRanker([]ma.Multiaddr{quic, relay, ws, tcp}) {
		got[ad.Addr.String()] = ad.Delay
	}
	if got[tcp.String()] != 0 || got[quic.String()] != nonTCPDelay || got[ws.String()] != nonTCPDelay || got[relay.String()] != relayDelay {
		t.Fatalf("delays %v", got)
	}
	// Without TCP, QUIC goes at once.
	if ds := preferTCPRanker([]ma.Multiaddr{quic}); ds[0].Delay != 0 {
		t.Fatalf("lone QUIC delayed %v", ds[0].Delay)
	}
}

// TestStreamFloodLimited: a peer opening streams without end hits the
// per-peer inbound stream limit; the node refuses the excess and stays up.
func TestStreamFloodLimited(t *testing.T) {
	o := testOptions(t, 0)
	o.MaxStreamsPerPeer = 16 // 8 inbound per peer
	a, b := connectedPair(t, o)
	hold := make(chan struct{})
	defer close(hold)
	a.Host().SetStreamHandler("/flood/1", func(s network.Stream) {
		<-hold
		s.Reset()
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var opened, refused int
	for i := 0; i < 40; i++ {
		s, err := b.Host().NewStream(ctx, a.ID(), "/flood/1")
		if err != nil {
			refused++
			continue
		}
		// The open succeeds locally; the remote's refusal shows when we use it.
		if _, err := s.Write([]byte("x")); err != nil {
			refused++
			continue
		}
		buf := make([]byte, 1)
		_ = s.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err = s.Read(buf)
		if err != nil && !strings.Contains(err.Error(), "deadline") && !strings.Contains(err.Error(), "timeout") {
			refused++ // reset by the remote: over its limit
			continue
		}
		opened++
	}
	t.Logf("opened %d, refused %d", opened, refused)
	if opened == 0 || refused == 0 || opened > 8 {
		t.Fatalf("opened %d, refused %d: want at most 8 held open and the rest refused", opened, refused)
	}
	// The node still serves everyone else.
	if len(a.DHT().AllHolders()) == 0 {
		t.Fatal("node lost its own holder entry")
	}
}
