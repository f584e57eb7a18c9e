package swarm

import (
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/internal/wait"
)

// TestWireVersionRefused: a swarmnode peer that announces another wire
// version is dropped, with an error counted on the status page; one that
// announces ours, and a libp2p peer that is no swarmnode, stay connected.
func TestWireVersionRefused(t *testing.T) {
	n := startTestNode(t, testOptions(t, 0))
	target := peer.AddrInfo{ID: n.Host().ID(), Addrs: n.Host().Addrs()}
	dial := func(agent string) network.Network {
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.UserAgent(agent))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		if err := h.Connect(t.Context(), target); err != nil {
			t.Fatal(err)
		}
		return h.Network()
	}
	other := dial("swarmnode/v9.9.9 wire/99")
	wait.For(t, 5*time.Second, func() error {
		if other.Connectedness(n.Host().ID()) == network.Connected {
			return errors.New("still connected")
		}
		if n.status.Snapshot().Errors["wire_version"] == 0 {
			return errors.New("no wire_version error counted")
		}
		return nil
	})
	same, plain := dial(agentVersion()), dial("some-other-libp2p-app/1.0")
	time.Sleep(time.Second) // identify has run: nothing must drop them
	for name, net := range map[string]network.Network{"same wire": same, "not swarmnode": plain} {
		if net.Connectedness(n.Host().ID()) != network.Connected {
			t.Errorf("the %s peer was dropped", name)
		}
	}
	if v, ok := wireOf(agentVersion()); !ok || v != WireVersion {
		t.Errorf("our agent version %q reads as wire %d", agentVersion(), v)
	}
}
