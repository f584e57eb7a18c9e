package swarm

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/prometheus/client_golang/prometheus"
)

// resourceLimits are the resource manager's limits: explicit per-peer caps
// on streams and memory, so one peer flooding us cannot exhaust the node;
// everything not set here keeps go-libp2p's scaled defaults.
func resourceLimits(o *Options) rcmgr.ConcreteLimitConfig {
	peer := rcmgr.ResourceLimits{
		Streams:         rcmgr.LimitVal(o.MaxStreamsPerPeer),
		StreamsInbound:  rcmgr.LimitVal(o.MaxStreamsPerPeer / 2),
		StreamsOutbound: rcmgr.LimitVal(o.MaxStreamsPerPeer),
		Conns:           8,
		ConnsInbound:    4,
		ConnsOutbound:   4,
		Memory:          rcmgr.LimitVal64(o.MaxMemoryPerPeer),
	}
	// System and transient connection limits follow the connection manager's
	// high watermark, so the manager, not a hard refusal, trims connections.
	conns := rcmgr.LimitVal(2 * o.ConnHigh)
	system := rcmgr.ResourceLimits{
		Conns: conns, ConnsInbound: conns, ConnsOutbound: conns,
		Streams: rcmgr.LimitVal(16 * o.MaxStreamsPerPeer),
		Memory:  rcmgr.LimitVal64(o.MaxMemory),
	}
	transient := rcmgr.ResourceLimits{Conns: conns / 2, ConnsInbound: conns / 2, ConnsOutbound: conns / 2}
	return rcmgr.PartialLimitConfig{System: system, Transient: transient, PeerDefault: peer}.Build(rcmgr.DefaultLimits.AutoScale())
}

// newHost builds the libp2p host: TCP and QUIC, Noise/TLS, resource and
// connection managers, AutoNAT, relay v2 client (and service if asked),
// hole punching. It dials nobody by itself: no public bootstrap, no mDNS.
func newHost(o *Options, key crypto.PrivKey, reg prometheus.Registerer) (host.Host, error) {
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(resourceLimits(o)))
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	cm, err := connmgr.NewConnManager(o.ConnLow, o.ConnHigh)
	if err != nil {
		return nil, fmt.Errorf("connection manager: %w", err)
	}
	// AutoRelay looks for relays among the peers we are connected to, and so
	// needs the host it is part of; the source reads it once it exists.
	var hostRef atomic.Pointer[host.Host]
	relaySource := func(ctx context.Context, num int) <-chan peer.AddrInfo {
		out := make(chan peer.AddrInfo, num)
		defer close(out)
		hp := hostRef.Load()
		if hp == nil {
			return out
		}
		self := *hp
		for _, p := range self.Network().Peers() {
			if len(out) == num {
				break
			}
			if ok, _ := self.Peerstore().SupportsProtocols(p, proto.ProtoIDv2Hop); len(ok) > 0 {
				out <- self.Peerstore().PeerInfo(p)
			}
		}
		return out
	}
	listen, private, err := privateNetwork(o)
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrStrings(listen...),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.EnableNATService(),
		libp2p.EnableRelay(),
		// Swarms are small: one relay candidate is enough, and waiting minutes
		// for four (the default) would leave a NATed volunteer unreachable.
		libp2p.EnableAutoRelayWithPeerSource(relaySource,
			autorelay.WithMinCandidates(1), autorelay.WithNumRelays(2), autorelay.WithBootDelay(o.RelayRetry),
			autorelay.WithMinInterval(o.RelayRetry), autorelay.WithBackoff(o.RelayRetry)),
		libp2p.EnableHolePunching(),
		libp2p.DialRanker(preferTCPRanker),
		libp2p.Muxer(yamux.ID, streamMuxer()),
		libp2p.UserAgent(agentVersion()),
	}
	opts = append(opts, private...)
	if o.Relay {
		opts = append(opts, libp2p.EnableRelayService())
	}
	switch o.Reachability {
	case "public":
		opts = append(opts, libp2p.ForceReachabilityPublic())
	case "private":
		opts = append(opts, libp2p.ForceReachabilityPrivate())
	}
	if reg != nil {
		opts = append(opts, libp2p.PrometheusRegisterer(reg))
	} else {
		opts = append(opts, libp2p.DisableMetrics())
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
		cm.Close()
		return nil, fmt.Errorf("libp2p host: %w", err)
	}
	hostRef.Store(&h)
	return h, nil
}

// privateNetwork returns the listen addresses and the host options of o's
// private network: o.Listen and none without a network key; its TCP
// addresses, the key and the TCP transport alone with one.
func privateNetwork(o *Options) ([]string, []libp2p.Option, error) {
	if len(o.NetworkKey) == 0 {
		return o.Listen, nil, nil
	}
	tcpAddrs, dropped, err := tcpOnly(o.Listen)
	if err != nil {
		return nil, nil, err
	}
	if len(dropped) > 0 && o.Logger != nil {
		o.Logger.Info("private network: listening on TCP only", "dropped", dropped)
	}
	return tcpAddrs, []libp2p.Option{libp2p.PrivateNetwork(o.NetworkKey), libp2p.Transport(tcp.NewTCPTransport)}, nil
}

// streamMuxer is go-libp2p's yamux with every stream's receive window starting
// at its maximum, 16 MiB, instead of 256 KiB. The stage protocol opens a stream
// per microbatch and sends megabytes on it at once: from 256 KiB the window
// doubles once per round trip, which held a loopback hop to 444 MB/s against
// 609 with the full window (bench/transport on the H200 host, docs/transport.md)
// and a 200 Mbit/s, 80 ms link to a fraction of its rate for the first round
// trips of every microbatch. yamux allocates a stream's buffer as data arrives,
// not for the window it grants, and servers read a request's frames as they
// arrive, so the larger window costs memory only while a reader lags.
func streamMuxer() *yamux.Transport {
	t := *yamux.DefaultTransport
	t.InitialStreamWindowSize = t.MaxStreamWindowSize
	return &t
}

// reachabilityName is how the status page shows reachability.
func reachabilityName(r network.Reachability) string {
	switch r {
	case network.ReachabilityPublic:
		return "public"
	case network.ReachabilityPrivate:
		return "private"
	default:
		return "unknown"
	}
}
