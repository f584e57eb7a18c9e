package swarm

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"

	"swarmnode/internal/wait"
)

// TestRelayReachesNATedPeer: a peer started with Relay serves circuit relay
// v2, and a peer behind it accepts connections relayed through it: a third
// peer that knows only the /p2p-circuit address reaches it and opens a stream.
//
// go-libp2p's AutoRelay builds circuit addresses only from a relay's public
// addresses, so on loopback the reservation is made here by hand; what is
// tested is our wiring of the relay service and the relay client transport.
func TestRelayReachesNATedPeer(t *testing.T) {
	ro := testOptions(t, 0)
	ro.Relay, ro.Reachability, ro.StatusAddr = true, "public", "off"
	relay := startTestNode(t, ro)

	bo := testOptions(t, 1)
	bo.Reachability, bo.StatusAddr = "private", "off"
	bo.Bootstrap = []string{relay.Addrs()[0].String()}
	natted := startTestNode(t, bo)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// The relay service starts once the relay host sees itself as public.
	wait.For(t, 5*time.Second, func() error {
		if _, err := client.Reserve(ctx, natted.Host(), peer.AddrInfo{ID: relay.ID(), Addrs: relay.Host().Addrs()}); err != nil {
			return fmt.Errorf("reserve: %w", err)
		}
		return nil
	})
	circuit := ma.Join(relay.Addrs()[0], ma.StringCast("/p2p-circuit"))

	co := testOptions(t, 2)
	co.StatusAddr = "off"
	outsider := startTestNode(t, co)
	if err := outsider.Host().Connect(ctx, peer.AddrInfo{ID: natted.ID(), Addrs: []ma.Multiaddr{circuit}}); err != nil {
		t.Fatalf("connect through relay %s: %v", circuit, err)
	}
	relayed := false
	for _, c := range outsider.Host().Network().ConnsToPeer(natted.ID()) {
		if strings.Contains(c.RemoteMultiaddr().String(), "/p2p-circuit") {
			relayed = true
		}
	}
	if !relayed {
		t.Fatal("no relayed connection to the NATed peer")
	}
	natted.Host().SetStreamHandler("/echo/1", func(s network.Stream) {
		defer s.Close()
		buf := make([]byte, 5)
		if _, err := s.Read(buf); err == nil {
			s.Write(buf)
		}
	})
	s, err := outsider.Host().NewStream(network.WithAllowLimitedConn(ctx, "test"), natted.ID(), "/echo/1")
	if err != nil {
		t.Fatalf("stream through relay: %v", err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := s.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo %q, %v", buf, err)
	}
}
