package dht

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"swarmnode/internal/wait"
)

// TestBootstrapRedialedUntilReachable: a peer started before its bootstrap
// peer is up (or whose first dial failed for any reason) must keep trying and
// join once the bootstrap answers, not stay outside the swarm for good.
func TestBootstrapRedialedUntilReachable(t *testing.T) {
	ctx := t.Context()
	key, bootID := newKey(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", l.Addr().(*net.TCPAddr).Port))
	l.Close()

	opts := testOpts(2)
	late := startNode(t, ctx, opts, Self{Stage: 1, Role: RoleServer}, []peer.AddrInfo{{ID: bootID, Addrs: []ma.Multiaddr{addr}}})
	// New returns only after its first dial of the bootstrap peers has ended:
	// here it has failed, and left the address in dial backoff, which the
	// redial must clear.
	if late.h.Network().Connectedness(bootID) == network.Connected {
		t.Fatal("connected to a bootstrap peer that is not listening")
	}
	if !late.h.Network().(*swarm.Swarm).Backoff().Backoff(bootID, addr) {
		t.Fatal("the failed first dial left no dial backoff")
	}

	h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrs(addr),
		libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	ps, err := NewPubSub(ctx, h, "test")
	if err != nil {
		t.Fatal(err)
	}
	boot := startService(t, ctx, h, ps, opts, Self{Stage: 0, Role: RoleServer}, nil)

	wait.For(t, 15*time.Second, func() error {
		for _, hd := range boot.s.Holders(1) {
			if hd.Peer == late.h.ID() {
				return nil
			}
		}
		return fmt.Errorf("the bootstrap never heard of the late peer")
	})
}
