package config

import (
	"time"

	"swarmnode/dht/defaults"
)

// Node holds the libp2p peer settings of `swarmnode run`; flags override them.
type Node struct {
	// Listen lists the multiaddrs to listen on (TCP and QUIC by default).
	Listen []string `yaml:"listen"`
	// Bootstrap lists full multiaddrs (with /p2p/<id>) of peers to join through.
	Bootstrap []string `yaml:"bootstrap"`
	// Identity is the Ed25519 key file; empty means <data_dir>/identity.key.
	Identity string `yaml:"identity"`
	// DataDir holds the identity key and other per-peer files.
	DataDir string `yaml:"data_dir"`
	// Status is the HOST:PORT of the local status page, or "off".
	Status string `yaml:"status"`
	// Stage is the stage to serve: a number, or "auto" for the one that needs it most.
	Stage string `yaml:"stage"`
	// Role is server (serve a stage), trainer (feed data) or both.
	Role string `yaml:"role"`
	// DHTClient runs the DHT in client mode, for peers that cannot accept connections.
	DHTClient bool `yaml:"dht_client"`
	// Relay makes this peer serve as a circuit relay v2 for peers behind NAT.
	Relay bool `yaml:"relay"`
	// Reachability overrides AutoNAT's verdict: "auto" (ask AutoNAT), "public"
	// for a peer known to be reachable (a relay or bootstrap on a public IP:
	// go-libp2p serves relaying only while it believes it is public), or
	// "private" for a peer known to be behind NAT (it looks for relays at once).
	Reachability string `yaml:"reachability"`
	// RecordTTL is how long a peer's stage record and provider record stay valid.
	RecordTTL time.Duration `yaml:"record_ttl"`
	// GossipEvery is the period of load (throughput, queue) gossip.
	GossipEvery time.Duration `yaml:"gossip_every"`
}

// DefaultNode listens on every interface, TCP and QUIC, on ports the OS picks.
func DefaultNode() Node {
	return Node{
		Listen:       []string{"/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"},
		DataDir:      ".swarmnode",
		Status:       "127.0.0.1:7070",
		Stage:        "auto",
		Role:         "server",
		Reachability: "auto",
		RecordTTL:    defaults.RecordTTL,
		GossipEvery:  defaults.GossipEvery,
	}
}

func (n Node) validate() error {
	switch n.Role {
	case "server", "trainer", "both":
	default:
		return fieldErr("node.role", "%q: want server, trainer or both", n.Role)
	}
	switch n.Reachability {
	case "auto", "public", "private":
	default:
		return fieldErr("node.reachability", "%q: want auto, public or private", n.Reachability)
	}
	if n.DataDir == "" {
		return fieldErr("node.data_dir", "must not be empty")
	}
	if n.RecordTTL < time.Second {
		return fieldErr("node.record_ttl", "must be at least 1s, got %s", n.RecordTTL)
	}
	if n.GossipEvery <= 0 {
		return fieldErr("node.gossip_every", "must be positive, got %s", n.GossipEvery)
	}
	return nil
}
