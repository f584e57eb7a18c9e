package dht

import (
	"crypto/rand"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"swarmnode/internal/wait"
)

// TestBootstrapRedialedUntilReachable: a peer started before its bootstrap
// peer is up (or whose first dial failed for any reason) must keep trying and
// join once the bootstrap answers, not stay outside the swarm for good.
func TestBootstrapRedialedUntilReachable(t *testing.T) {
	ctx := t.Context()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	bootID, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", l.Addr().(*net.TCPAddr).Port)
	l.Close()

	opts := testOpts(2)
	late := startNode(t, ctx, opts, Self{Stage: 1, Role: RoleServer}, []peer.AddrInfo{{ID: bootID, Addrs: []ma.Multiaddr{ma.StringCast(addr)}}})
	time.Sleep(1500 * time.Millisecond) // the first dial has failed by now

	h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings(addr),
		libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	ps, err := NewPubSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	boot, err := New(ctx, h, ps, Self{Stage: 0, Role: RoleServer}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { boot.Close(); h.Close() })

	wait.For(t, 15*time.Second, func() error {
		for _, hd := range boot.Holders(1) {
			if hd.Peer == late.h.ID() {
				return nil
			}
		}
		return fmt.Errorf("the bootstrap never heard of the late peer")
	})
}
