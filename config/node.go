package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	ma "github.com/multiformats/go-multiaddr"

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
	DataDir string `yaml:"data_dir" check:"nonempty"`
	// Status is the HOST:PORT of the local status page, or "off".
	Status string `yaml:"status"`
	// Stage is the stage to serve: a number, or "auto" for the one that needs it most.
	Stage string `yaml:"stage"`
	// Role is server (serve a stage), trainer (feed data) or both.
	Role string `yaml:"role" check:"oneof=server|trainer|both"`
	// DHTClient runs the DHT in client mode, for peers that cannot accept connections.
	DHTClient bool `yaml:"dht_client"`
	// Relay makes this peer serve as a circuit relay v2 for peers behind NAT.
	Relay bool `yaml:"relay"`
	// Reachability overrides AutoNAT's verdict: "auto" (ask AutoNAT), "public"
	// for a peer known to be reachable (a relay or bootstrap on a public IP:
	// go-libp2p serves relaying only while it believes it is public), or
	// "private" for a peer known to be behind NAT (it looks for relays at once).
	Reachability string `yaml:"reachability" check:"oneof=auto|public|private"`
	// RecordTTL is how long a peer's stage record and provider record stay valid.
	RecordTTL time.Duration `yaml:"record_ttl" check:"min=1s"`
	// GossipEvery is the period of load (throughput, queue) gossip.
	GossipEvery time.Duration `yaml:"gossip_every" check:"positive"`
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

// StageIndex is node.stage as a stage number, -1 for auto. It is meant for a
// validated config, where node.stage is auto or a stage of the run.
func (n Node) StageIndex() int {
	k, err := strconv.Atoi(n.Stage)
	if err != nil {
		return -1
	}
	return k
}

// validate checks the node section; numStages bounds node.stage.
func (n Node) validate(numStages int) error {
	if err := checkFields("node", n); err != nil {
		return err
	}
	if n.Stage != "auto" {
		if k, err := strconv.Atoi(n.Stage); err != nil || k < 0 || k >= numStages {
			return fieldErr("node.stage", "%q: want auto or a stage number in [0, %d)", n.Stage, numStages)
		}
	}
	if err := validAddrs("node.listen", n.Listen, false); err != nil {
		return err
	}
	if len(n.Listen) == 0 {
		return fieldErr("node.listen", "needs at least one address")
	}
	if err := validAddrs("node.bootstrap", n.Bootstrap, true); err != nil {
		return err
	}
	if n.Status != "off" {
		if _, _, err := net.SplitHostPort(n.Status); err != nil {
			return fieldErr("node.status", "%q: want HOST:PORT or off", n.Status)
		}
	}
	return nil
}

// validAddrs checks that every entry of a list field parses as a multiaddr and,
// with withPeer, names the peer to dial (a bootstrap peer must end in
// /p2p/<peer-id>: a libp2p dial authenticates the peer it expects).
func validAddrs(field string, addrs []string, withPeer bool) error {
	for i, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err == nil && withPeer {
			if _, perr := a.ValueForProtocol(ma.P_P2P); perr != nil {
				err = errors.New("no /p2p/<peer-id> part")
			}
		}
		if err != nil {
			return fieldErr(fmt.Sprintf("%s[%d]", field, i), "%q: %v", s, err)
		}
	}
	return nil
}
