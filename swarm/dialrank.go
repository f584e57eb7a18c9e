package swarm

import (
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
)

// Dial delays of preferTCPRanker.
const (
	// nonTCPDelay holds back QUIC and other direct transports while a TCP
	// dial is under way.
	nonTCPDelay = 250 * time.Millisecond
	// relayDelay holds back relayed addresses while direct dials are tried.
	relayDelay = 500 * time.Millisecond
)

// preferTCPRanker orders dials TCP first, then the other direct transports,
// then relays. go-libp2p's default dials QUIC first, but on our bulk tensor
// traffic QUIC moved about half of TCP's bytes (measured on loopback), and a
// peer's connection carries all its streams, so the first transport to win
// is the one the pipeline gets. A transport that fails still falls back to
// the next after its delay.
func preferTCPRanker(addrs []ma.Multiaddr) []network.AddrDelay {
	var hasTCP, hasDirect bool
	for _, a := range addrs {
		if isRelay(a) {
			continue
		}
		hasDirect = true
		if isTCP(a) {
			hasTCP = true
		}
	}
	out := make([]network.AddrDelay, 0, len(addrs))
	for _, a := range addrs {
		var d time.Duration
		switch {
		case isRelay(a):
			if hasDirect {
				d = relayDelay
			}
		case !isTCP(a) && hasTCP:
			d = nonTCPDelay
		}
		out = append(out, network.AddrDelay{Addr: a, Delay: d})
	}
	return out
}

func isRelay(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// isTCP matches plain TCP, not WebSocket, which also runs over TCP.
func isTCP(a ma.Multiaddr) bool {
	if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
		return false
	}
	for _, p := range []int{ma.P_WS, ma.P_WSS} {
		if _, err := a.ValueForProtocol(p); err == nil {
			return false
		}
	}
	return true
}
