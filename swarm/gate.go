package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"

	"swarmnode/admission"
	"swarmnode/config"
)

// An admitted run's node talks its run's protocols only with peers that hold
// a certificate of the run's owner. The gate sits in the host every package
// is given: each stream handler registered through it (DHT, gossip, stage,
// commit, averaging, state) first checks the remote peer, and so does each
// stream opened through it. A peer's certificate is asked for once, over the
// admission protocol (which the gate itself leaves open), verified and kept
// until it expires; a peer refused is not asked again for gateRetry. An
// outsider knowing the run id and a bootstrap address can connect, but it
// can open no stream of the run and none is opened to it: it cannot serve,
// train, average, query the DHT or publish gossip.

// AdmissionProtocol is the protocol over which a peer presents its
// certificate of run.
func AdmissionProtocol(run string) protocol.ID {
	return protocol.ID("/swarmnode/" + run + "/admission/1.0.0")
}

// Admission configures an admitted run's gate.
type Admission struct {
	// Owner is the run owner's peer id, whose key signs the certificates.
	Owner peer.ID
	// Certificate is this peer's own certificate.
	Certificate admission.Certificate
	// Revocations, when set, is the owner's revocation list file, read at
	// start and every revocationsEvery (revoke.go).
	Revocations string
}

// gateRetry is how long a refused peer stays refused before it is asked
// again (its certificate may have been renewed); gateAsk bounds one ask.
const (
	gateRetry = 30 * time.Second
	gateAsk   = 5 * time.Second
)

// ErrNotAdmitted is the error of a stream to or from a peer that holds no
// valid certificate of the run.
var ErrNotAdmitted = errors.New("not admitted to the run")

// gate decides which peers take part in an admitted run.
type gate struct {
	base    host.Host
	run     string
	adm     Admission
	refused func() // counts one refused peer (status page)

	mu      sync.Mutex
	known   map[peer.ID]*verdict
	pending map[peer.ID]chan struct{}
	revoked *admission.Revocations // the owner's newest list, nil if none
}

// verdict is what the gate concluded about one peer, and until when.
type verdict struct {
	cert  admission.Certificate
	err   error
	until time.Time
}

func newGate(h host.Host, run string, adm Admission, refused func()) (*gate, error) {
	if err := adm.Certificate.Verify(adm.Owner, run, h.ID(), time.Now()); err != nil {
		return nil, fmt.Errorf("this peer's own certificate: %w", err)
	}
	g := &gate{base: h, run: run, adm: adm, refused: refused, known: map[peer.ID]*verdict{}, pending: map[peer.ID]chan struct{}{}}
	own := adm.Certificate.Encode()
	h.SetStreamHandler(AdmissionProtocol(run), func(s network.Stream) {
		_ = s.SetDeadline(time.Now().Add(gateAsk))
		_, _ = s.Write(own)
		_ = s.Close()
	})
	return g, nil
}

// admit checks that p may take part in the run, in role when role is set.
func (g *gate) admit(ctx context.Context, p peer.ID, role string) error {
	if p == g.base.ID() {
		return nil
	}
	if r := g.revocations(); r != nil && r.Revoked(p) {
		return fmt.Errorf("%w: %s: its certificate was revoked by the run owner (list of %s)", ErrNotAdmitted, p.ShortString(), r.Issued.Format(time.RFC3339))
	}
	v, err := g.verdictOf(ctx, p)
	if err != nil {
		return err
	}
	if v.err != nil {
		return v.err
	}
	if role != "" && !v.cert.Has(role) {
		return fmt.Errorf("%w: %s may not act as %s (its roles: %s)", ErrNotAdmitted, p.ShortString(), role, strings.Join(v.cert.Roles, ", "))
	}
	return nil
}

// verdictOf returns the gate's verdict on p, asking p for its certificate
// when there is none or it ran out. Concurrent calls for one peer ask once.
func (g *gate) verdictOf(ctx context.Context, p peer.ID) (*verdict, error) {
	for {
		g.mu.Lock()
		if v := g.known[p]; v != nil && time.Now().Before(v.until) {
			g.mu.Unlock()
			return v, nil
		}
		wait, asking := g.pending[p]
		if !asking {
			wait = make(chan struct{})
			g.pending[p] = wait
		}
		g.mu.Unlock()
		if asking {
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		v := g.ask(ctx, p)
		g.mu.Lock()
		if len(g.known) > 4096 {
			clear(g.known) // peers come and go: forget rather than grow
		}
		g.known[p] = v
		delete(g.pending, p)
		close(wait)
		g.mu.Unlock()
		if v.err != nil && g.refused != nil {
			g.refused()
		}
		return v, nil
	}
}

// ask reads p's certificate over the admission protocol and verifies it.
func (g *gate) ask(ctx context.Context, p peer.ID) *verdict {
	now := time.Now()
	refuse := func(err error) *verdict {
		return &verdict{err: fmt.Errorf("%w: %s: %w", ErrNotAdmitted, p.ShortString(), err), until: now.Add(gateRetry)}
	}
	ctx, cancel := context.WithTimeout(ctx, gateAsk)
	defer cancel()
	s, err := g.base.NewStream(ctx, p, AdmissionProtocol(g.run))
	if err != nil {
		return refuse(fmt.Errorf("no certificate: %w", err))
	}
	defer s.Close()
	_ = s.SetDeadline(now.Add(gateAsk))
	b, err := io.ReadAll(io.LimitReader(s, admission.MaxSize+1))
	if err != nil {
		return refuse(fmt.Errorf("reading its certificate: %w", err))
	}
	c, err := admission.Parse(b)
	if err == nil {
		err = c.Verify(g.adm.Owner, g.run, p, now)
	}
	if err != nil {
		return refuse(err)
	}
	return &verdict{cert: c, until: c.Expires}
}

// revocations returns the owner's newest revocation list the gate applies,
// nil if none.
func (g *gate) revocations() *admission.Revocations {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.revoked
}

// newer reports whether r was issued after the list the gate applies.
func (g *gate) newer(r admission.Revocations) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.revoked == nil || r.Issued.After(g.revoked.Issued)
}

// revoke applies r, a verified list of the owner's, if it is newer than the
// gate's, and reports whether it did.
func (g *gate) revoke(r admission.Revocations) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.revoked != nil && !r.Issued.After(g.revoked.Issued) {
		return false
	}
	g.revoked = &r
	return true
}

// wrap gates handler: a stream from a peer without a certificate (or
// without role) is reset unread.
func (g *gate) wrap(pid protocol.ID, handler network.StreamHandler) network.StreamHandler {
	role := inboundRole(pid)
	return func(s network.Stream) {
		ctx, cancel := context.WithTimeout(context.Background(), gateAsk)
		err := g.admit(ctx, s.Conn().RemotePeer(), role)
		cancel()
		if err != nil {
			_ = s.Reset()
			return
		}
		handler(s)
	}
}

// inboundRole is the role a peer needs to open a stream of pid to us:
// averaging and state transfer are between holders; the rest (DHT, gossip,
// stage calls from trainers and upstream holders, commits) any admitted peer.
func inboundRole(pid protocol.ID) string {
	if strings.Contains(string(pid), "/avg/") {
		return admission.Server
	}
	return ""
}

// outboundRole is the role a peer needs for us to open a stream of pids to
// it: we call it as a stage holder, or average with it.
func outboundRole(pids []protocol.ID) string {
	for _, pid := range pids {
		s := string(pid)
		if strings.Contains(s, "/stage/") || strings.Contains(s, "/avg/") || strings.Contains(s, "/commit/") {
			return admission.Server
		}
	}
	return ""
}

// gatedHost is a host whose run protocols are gated: the host every package
// of an admitted run's node is given.
type gatedHost struct {
	host.Host
	g *gate
}

// SetStreamHandler registers handler behind the gate.
func (h *gatedHost) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	h.Host.SetStreamHandler(pid, h.g.wrap(pid, handler))
}

// SetStreamHandlerMatch registers handler behind the gate.
func (h *gatedHost) SetStreamHandlerMatch(pid protocol.ID, match func(protocol.ID) bool, handler network.StreamHandler) {
	h.Host.SetStreamHandlerMatch(pid, match, h.g.wrap(pid, handler))
}

// NewStream opens a stream to p once the gate admits p.
func (h *gatedHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if err := h.g.admit(ctx, p, outboundRole(pids)); err != nil {
		return nil, err
	}
	return h.Host.NewStream(ctx, p, pids...)
}

// AdmissionFromConfig loads the admission section: nil for an open run, else
// the owner and this peer's certificate.
func AdmissionFromConfig(c config.Admission) (*Admission, error) {
	if c.Mode != "admitted" {
		return nil, nil
	}
	owner, err := peer.Decode(c.Owner)
	if err != nil {
		return nil, fmt.Errorf("admission.owner %q: %w", c.Owner, err)
	}
	if c.Certificate == "" {
		return nil, errors.New("an admitted run: this peer's certificate is needed (admission.certificate or --certificate; the run owner makes one with swarmnode admit)")
	}
	cert, err := admission.Load(c.Certificate)
	if err != nil {
		return nil, fmt.Errorf("admission.certificate: %w", err)
	}
	return &Admission{Owner: owner, Certificate: cert, Revocations: c.Revocations}, nil
}

// NetworkKeyFromConfig loads admission.network_key: nil when unset.
func NetworkKeyFromConfig(c config.Admission) (pnet.PSK, error) {
	if c.NetworkKey == "" {
		return nil, nil
	}
	return LoadNetworkKey(c.NetworkKey)
}

// gate is the node's gate, nil in an open run.
func (n *Node) gate() *gate {
	if gh, ok := n.host.(*gatedHost); ok {
		return gh.g
	}
	return nil
}
