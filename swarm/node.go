// Package swarm runs one swarmnode peer: the libp2p host (identity, transports,
// resource limits, NAT traversal), the run's DHT and load gossip (package dht),
// GossipSub, and the local status server. It is where the pipeline and
// averaging packages are wired together: they register their stream handlers
// on Node.Host, find stage holders through Node.DHT, and report progress
// through Node.Status. In short:
//
//	n, err := swarm.New(ctx, opts)          // host, DHT, gossip, status server
//	n.Host().SetStreamHandler(proto, h)     // serve a protocol
//	hs := n.DHT().Holders(k)                // live holders of stage k, with load
//	n.DHT().MarkDown(p)                     // a call to p failed: route around it
//	n.DHT().SetLoad(tokensPerSec, queueLen) // gossiped to the run
//	n.Status().SetTraining(step, loss, tps) // shown on /, /api/status, /metrics
//	n.Close()
//
// Run is the whole peer of `swarmnode run` built on a Node: it picks the stage,
// plays the server and trainer roles (roles.go) and shuts down. RunLocal is
// the single-process training baseline of `swarmnode local`.
package swarm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"swarmnode/config"
	"swarmnode/dht"
	"swarmnode/wire"
)

// Options configures a Node. Zero values take the defaults noted.
type Options struct {
	// Run is the run id.
	Run string
	// NumStages is the number of pipeline stages of the run.
	NumStages int
	// Listen lists multiaddrs to listen on. Default: TCP and QUIC on every
	// interface, OS-chosen ports.
	Listen []string
	// Bootstrap lists full multiaddrs (with /p2p/<id>) of peers to join through.
	Bootstrap []string
	// Identity is the Ed25519 key file. Default: <DataDir>/identity.key.
	Identity string
	// DataDir holds the identity key. Default ".swarmnode".
	DataDir string
	// StatusAddr is the HOST:PORT of the status server; "" or "off" disables it.
	StatusAddr string
	// Stage is the stage to serve, -1 for none.
	Stage int
	// Role is server, trainer or both. Default server.
	Role string
	// DHTClient runs the DHT in client mode.
	DHTClient bool
	// Relay serves as a circuit relay v2 for peers behind NAT. go-libp2p
	// runs the relay service only while the peer believes it is publicly
	// reachable, so a relay whose AutoNAT verdict is still unknown (no
	// public peers to test it yet) should also set Reachability "public".
	Relay bool
	// Reachability overrides AutoNAT: "public" for a peer known to be
	// reachable (a relay or bootstrap on a public IP), "private" for one known
	// to be behind NAT (it reserves relay slots at once); "" asks AutoNAT.
	Reachability string
	// RelayRetry is how often a NATed peer looks for relays among its peers
	// and retries a failed reservation. Default 30s.
	RelayRetry time.Duration
	// RecordTTL, GossipEvery, RefreshEvery, DownBackoff and OpTimeout are
	// passed to dht.Options (see there for defaults).
	RecordTTL, GossipEvery, RefreshEvery, DownBackoff, OpTimeout time.Duration
	// ConnLow and ConnHigh are the connection manager's watermarks. Default 64, 256.
	ConnLow, ConnHigh int
	// MaxStreamsPerPeer caps streams per peer. Default 256.
	MaxStreamsPerPeer int
	// MaxMemoryPerPeer caps the memory one peer's streams may reserve. Default 128 MiB.
	MaxMemoryPerPeer int64
	// MaxMemory caps the memory of all libp2p streams. Default 2 GiB.
	MaxMemory int64
	// Admission, when set, admits only peers holding a certificate of the
	// run owner (gate.go); nil is an open run.
	Admission *Admission
	// NetworkKey, when set, makes the host join a libp2p private network of
	// this key, over TCP only (pnet.go).
	NetworkKey pnet.PSK
	// Logger receives progress and errors; nil discards them.
	Logger *slog.Logger
}

// OptionsFromConfig maps a run config to node options. The stage is left at
// -1; the caller resolves node.stage ("auto" needs a running node).
func OptionsFromConfig(cfg config.Config) Options {
	n := cfg.Node
	reach := n.Reachability
	if reach == "auto" {
		reach = ""
	}
	return Options{
		Run: cfg.Run, NumStages: len(cfg.Stages), Listen: n.Listen, Bootstrap: n.Bootstrap,
		Identity: n.Identity, DataDir: n.DataDir, StatusAddr: n.Status, Stage: -1, Role: n.Role,
		DHTClient: n.DHTClient, Relay: n.Relay, Reachability: reach, RecordTTL: n.RecordTTL, GossipEvery: n.GossipEvery,
	}
}

func (o *Options) fill() error {
	if o.DataDir == "" {
		o.DataDir = config.DefaultNode().DataDir
	}
	if o.Identity == "" {
		o.Identity = filepath.Join(o.DataDir, "identity.key")
	}
	if len(o.Listen) == 0 {
		o.Listen = config.DefaultNode().Listen
	}
	switch o.Reachability {
	case "", "public", "private":
	default:
		return fmt.Errorf("reachability %q: want public, private or empty", o.Reachability)
	}
	if o.RelayRetry <= 0 {
		o.RelayRetry = 30 * time.Second
	}
	if o.Role == "" {
		o.Role = dht.RoleServer
	}
	if o.ConnLow <= 0 {
		o.ConnLow = 64
	}
	if o.ConnHigh <= 0 {
		o.ConnHigh = 256
	}
	if o.ConnHigh < o.ConnLow {
		return fmt.Errorf("connection high watermark %d below low %d", o.ConnHigh, o.ConnLow)
	}
	if o.MaxStreamsPerPeer <= 0 {
		o.MaxStreamsPerPeer = 256
	}
	if o.MaxMemoryPerPeer <= 0 {
		o.MaxMemoryPerPeer = 128 << 20
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = 2 << 30
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Stage >= o.NumStages {
		return fmt.Errorf("stage %d: the run has %d stages", o.Stage, o.NumStages)
	}
	return nil
}

// Node is one running peer.
type Node struct {
	opts   Options
	log    *slog.Logger
	host   host.Host
	ps     *pubsub.PubSub
	dht    *dht.Service
	status *Status
	bans   *banList // peers this node's averaging evicted, kept in the data dir
	reg    *prometheus.Registry
	srv    *statusServer
	reach  atomic.Int32
	lock   *os.File // held identity lock; closing it releases the lock

	// traffic counts the pipeline frames this node's server and trainer write.
	traffic wire.Counter

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
	ledger    *workLedger // receipts of this node's steps (ledger.go)
}

// New starts a node: it loads (or creates) the identity, starts the host,
// dials the bootstrap peers, joins the DHT and gossip, announces opts.Stage
// and starts the status server. ctx bounds the start-up; the node then runs
// until Close.
func New(ctx context.Context, opts Options) (*Node, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	boot, err := parseBootstrap(opts.Bootstrap)
	if err != nil {
		return nil, err
	}
	key, err := LoadIdentity(opts.Identity)
	if err != nil {
		return nil, err
	}
	lock, err := lockIdentity(opts.Identity)
	if err != nil {
		return nil, err
	}
	// The peers this node knew when it last ran join the bootstrap peers:
	// the bootstrap may be gone for good (peers.go).
	boot = withRemembered(boot, loadPeers(peersFile(opts.DataDir, opts.Run), idOf(key)))
	reg := prometheus.NewRegistry()
	h, err := newHost(&opts, key, reg)
	if err != nil {
		lock.Close()
		return nil, err
	}
	status := newStatus()
	if h, err = gateHost(h, opts, status); err != nil {
		lock.Close()
		return nil, err
	}
	lctx, cancel := context.WithCancel(context.Background())
	n := &Node{opts: opts, log: opts.Logger, host: h, status: status, reg: reg, cancel: cancel, lock: lock,
		bans: loadBans(bansFile(opts.DataDir, opts.Run), opts.Logger), ledger: newLedger(opts.DataDir, opts.Run)}
	h.SetStreamHandler(LedgerProtocol(opts.Run), n.ledger.serve)
	fail := func(err error) (*Node, error) {
		n.Close()
		return nil, err
	}
	if err := n.watchReachability(lctx); err != nil {
		return fail(err)
	}
	if err := n.watchWireVersions(lctx); err != nil {
		return fail(err)
	}
	n.ps, err = dht.NewPubSub(lctx, h, opts.Run)
	if err != nil {
		return fail(err)
	}
	if opts.Admission != nil {
		if err := n.followRevocations(lctx, opts.Admission.Revocations); err != nil {
			return fail(err)
		}
	}
	n.dht, err = dht.New(lctx, h, n.ps, dht.Self{Stage: opts.Stage, Role: opts.Role}, dht.Options{
		Run: opts.Run, NumStages: opts.NumStages, Client: opts.DHTClient, Bootstrap: boot,
		RecordTTL: opts.RecordTTL, GossipEvery: opts.GossipEvery, RefreshEvery: opts.RefreshEvery,
		DownBackoff: opts.DownBackoff, OpTimeout: opts.OpTimeout, Logger: opts.Logger,
	})
	if err != nil {
		return fail(err)
	}
	n.wg.Add(2)
	go n.rememberPeers(lctx)
	go n.reconnect(lctx, boot)
	// ctx bounds start-up only (the bootstrap dials above are its slow
	// part); a start-up cancelled by a signal leaves nothing running.
	if err := ctx.Err(); err != nil {
		return fail(fmt.Errorf("start-up cancelled: %w", err))
	}
	if err := reg.Register(&collector{n: n}); err != nil {
		return fail(fmt.Errorf("metrics: %w", err))
	}
	if opts.StatusAddr != "" && opts.StatusAddr != "off" {
		n.srv, err = startStatusServer(opts.StatusAddr, n)
		if err != nil {
			return fail(err)
		}
	}
	return n, nil
}

// gateHost puts h behind an admitted run's gate (gate.go); h as it is in an
// open run. On error h is closed.
func gateHost(h host.Host, opts Options, status *Status) (host.Host, error) {
	if opts.Admission == nil {
		return h, nil
	}
	g, err := newGate(h, opts.Run, *opts.Admission, func() { status.IncError("not_admitted") })
	if err != nil {
		h.Close()
		return nil, err
	}
	return &gatedHost{Host: h, g: g}, nil
}

func parseBootstrap(addrs []string) ([]peer.AddrInfo, error) {
	var mas []ma.Multiaddr
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("bootstrap %q: %w", s, err)
		}
		mas = append(mas, a)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(mas...)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w (want full multiaddrs ending in /p2p/<peer-id>)", err)
	}
	return infos, nil
}

// watchReachability follows AutoNAT's verdict for the status page.
func (n *Node) watchReachability(ctx context.Context) error {
	return n.onEvents(ctx, new(event.EvtLocalReachabilityChanged), func(e any) {
		n.reach.Store(int32(e.(event.EvtLocalReachabilityChanged).Reachability))
	})
}

// onEvents calls fn, on a goroutine of the node's, with every event of evt's
// type (a pointer to one) that the host's event bus emits, until ctx ends.
func (n *Node) onEvents(ctx context.Context, evt any, fn func(any)) error {
	sub, err := n.host.EventBus().Subscribe(evt)
	if err != nil {
		return fmt.Errorf("host events %T: %w", evt, err)
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-sub.Out():
				if !ok {
					return
				}
				fn(e)
			}
		}
	}()
	return nil
}

// Host is the libp2p host; other packages register stream handlers on it.
func (n *Node) Host() host.Host { return n.host }

// ID is this peer's id.
func (n *Node) ID() peer.ID { return n.host.ID() }

// DHT is the run's DHT service: holders of each stage, MarkDown, announcing.
func (n *Node) DHT() *dht.Service { return n.dht }

// PubSub is the node's GossipSub instance, for other topics of the run.
func (n *Node) PubSub() *pubsub.PubSub { return n.ps }

// Status is where the pipeline and averaging report progress.
func (n *Node) Status() *Status { return n.status }

// Registry is the node's Prometheus registry, served on /metrics; other
// packages may register their collectors here.
func (n *Node) Registry() *prometheus.Registry { return n.reg }

// Options returns the node's options with defaults filled in.
func (n *Node) Options() Options { return n.opts }

// Reachability is AutoNAT's current verdict.
func (n *Node) Reachability() network.Reachability {
	return network.Reachability(n.reach.Load())
}

// Addrs returns the full multiaddrs (ending in /p2p/<id>) others can dial.
func (n *Node) Addrs() []ma.Multiaddr {
	out, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: n.host.ID(), Addrs: n.host.Addrs()})
	if err != nil {
		return nil
	}
	return out
}

// StatusURL is the status page's URL, "" when the server is off.
func (n *Node) StatusURL() string {
	if n.srv == nil {
		return ""
	}
	return "http://" + n.srv.addr + "/"
}

// SetStage switches the stage this peer announces (-1 for none).
func (n *Node) SetStage(stage int) error {
	if stage < -1 || stage >= n.opts.NumStages {
		return fmt.Errorf("stage %d: the run has %d stages", stage, n.opts.NumStages)
	}
	self := n.dht.Self()
	self.Stage = stage
	return n.dht.SetSelf(self)
}

// Close stops the status server, leaves the run (a leave message, so peers
// drop us at once), and closes the DHT, GossipSub and the host.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.srv != nil {
			errs = append(errs, n.srv.close())
		}
		if n.dht != nil {
			if err := n.savePeers(); err != nil {
				n.log.Debug("remembering peers", "err", err)
			}
			errs = append(errs, n.dht.Close())
		}
		n.cancel()
		errs = append(errs, n.host.Close())
		n.wg.Wait()
		errs = append(errs, n.ledger.close())
		if n.lock != nil {
			errs = append(errs, n.lock.Close())
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}
