package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"

	"swarmnode/admission"
	"swarmnode/dht"
	"swarmnode/internal/wait"
	"swarmnode/pipeline"
)

// admittedOptions are testOptions of an admitted run owned by owner, with an
// identity certified for roles until expires.
func admittedOptions(t *testing.T, stage int, owner crypto.PrivKey, roles []string, expires time.Time) Options {
	t.Helper()
	o := testOptions(t, stage)
	o.Identity = filepath.Join(o.DataDir, "identity.key")
	key, err := LoadIdentity(o.Identity)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(key)
	cert, err := admission.Sign(owner, o.Run, id, roles, expires)
	if err != nil {
		t.Fatal(err)
	}
	oid, _ := peer.IDFromPrivateKey(owner)
	o.Admission = &Admission{Owner: oid, Certificate: cert}
	return o
}

// TestAdmittedRunKeepsOutsiders: in an admitted run, two certified peers find
// each other through the DHT and gossip. An outsider that knows the run id
// and a bootstrap address connects, but none of its streams of the run's
// protocols is served and none is opened to it: it shows up as no holder,
// cannot call a stage, query the DHT or average. Peers presenting a forged
// certificate, an expired one, one of another run or another peer's are
// refused the same way; a trainer-only peer cannot average.
func TestAdmittedRunKeepsOutsiders(t *testing.T) {
	owner, _, _ := crypto.GenerateEd25519Key(nil)
	far := time.Now().Add(time.Hour)
	a := startTestNode(t, admittedOptions(t, 0, owner, []string{admission.Server}, far))
	ob := admittedOptions(t, 1, owner, []string{admission.Server, admission.Trainer}, far)
	ob.Bootstrap = []string{a.Addrs()[0].String()}
	b := startTestNode(t, ob)

	oo := testOptions(t, 2) // an open-run peer of the same run id: the outsider
	oo.Bootstrap = ob.Bootstrap
	out := startTestNode(t, oo)

	wait.For(t, 5*time.Second, func() error {
		if hs := a.DHT().Holders(1); len(hs) != 1 || hs[0].Peer != b.ID() {
			return errors.New("a does not see b as the holder of stage 1")
		}
		return nil
	})
	// Long enough for the outsider's records and gossip to have arrived.
	time.Sleep(time.Second)
	for _, n := range []*Node{a, b} {
		if hs := n.DHT().Holders(2); len(hs) != 0 {
			t.Errorf("%s lists the outsider as a holder of stage 2: %v", n.ID().ShortString(), hs)
		}
	}
	if _, err := out.DHT().Lookup(t.Context(), 0); err == nil {
		if slices.ContainsFunc(out.DHT().Holders(0), func(h dht.Holder) bool { return h.Peer == a.ID() }) {
			t.Error("the outsider found a's record through the DHT")
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	// a serves an echo on the stage protocol and on an averaging protocol,
	// registered through its (gated) host as the roles register theirs.
	join := protocol.ID("/swarmnode/test/avg/stage-0/join/1.0.0")
	for _, pid := range []protocol.ID{pipeline.Protocol("test"), join} {
		a.Host().SetStreamHandler(pid, func(s network.Stream) {
			buf := make([]byte, 5)
			if _, err := io.ReadFull(s, buf); err == nil {
				_, _ = s.Write(buf)
			}
			_ = s.Close()
		})
	}
	served := func(from host.Host, to peer.ID, pid protocol.ID) bool {
		s, err := from.NewStream(ctx, to, pid)
		if err != nil {
			return false // refused while negotiating
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := s.Write([]byte("hello")); err != nil {
			return false
		}
		_, err = io.ReadFull(s, make([]byte, 5))
		return err == nil
	}
	refused := func(from host.Host, to peer.ID, what string, pid string) {
		t.Helper()
		proto := pipeline.Protocol("test")
		if pid != "" {
			proto = protocol.ID(pid)
		}
		if served(from, to, proto) {
			t.Errorf("%s: a stream to %s was served", what, to.ShortString())
		}
	}
	// The control: a certified server is served on both.
	if !served(b.Host(), a.ID(), pipeline.Protocol("test")) || !served(b.Host(), a.ID(), join) {
		t.Fatal("a certified peer was not served")
	}
	refused(out.Host(), a.ID(), "outsider's stage call", "")
	refused(out.Host(), a.ID(), "outsider's DHT query", string(dht.ProtocolPrefix("test"))+"/kad/1.0.0")
	if _, err := a.Host().NewStream(ctx, out.ID(), pipeline.Protocol("test")); !errors.Is(err, ErrNotAdmitted) {
		t.Errorf("a opened a stage stream to the outsider: %v", err)
	}
	if a.Report().Errors["not_admitted"] == 0 {
		t.Error("a's status counts no refused peer")
	}

	for _, tc := range []struct {
		name string
		cert func(id peer.ID) admission.Certificate
	}{
		{"forged (another key)", func(id peer.ID) admission.Certificate {
			other, _, _ := crypto.GenerateEd25519Key(nil)
			c, _ := admission.Sign(other, "test", id, []string{admission.Server}, far)
			c.Owner = ob.Admission.Owner.String() // claims the owner's name
			return c
		}},
		{"expired", func(id peer.ID) admission.Certificate {
			c, _ := admission.Sign(owner, "test", id, []string{admission.Server}, time.Now().Add(-time.Minute))
			return c
		}},
		{"of another run", func(id peer.ID) admission.Certificate {
			c, _ := admission.Sign(owner, "other", id, []string{admission.Server}, far)
			return c
		}},
		{"another peer's (b's)", func(peer.ID) admission.Certificate { return ob.Admission.Certificate }},
	} {
		h := presenter(t, tc.cert)
		if err := h.Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
		refused(h, a.ID(), tc.name+" certificate's stage call", "")
	}
	// A trainer-only peer may call stages but not average with holders.
	trainer := presenter(t, func(id peer.ID) admission.Certificate {
		c, _ := admission.Sign(owner, "test", id, []string{admission.Trainer}, far)
		return c
	})
	if err := trainer.Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	if !served(trainer, a.ID(), pipeline.Protocol("test")) {
		t.Error("a certified trainer's stage call was not served")
	}
	refused(trainer, a.ID(), "trainer-only peer's averaging join", string(join))
	if err := a.gate().admit(ctx, trainer.ID(), admission.Trainer); err != nil {
		t.Errorf("a refused the certified trainer: %v", err)
	}
}

// presenter is a bare libp2p host (test code's adversary) that answers the
// admission protocol with the certificate cert makes for its id.
func presenter(t *testing.T, cert func(peer.ID) admission.Certificate) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	b := cert(h.ID()).Encode()
	h.SetStreamHandler(AdmissionProtocol("test"), func(s network.Stream) {
		_, _ = s.Write(b)
		_ = s.Close()
	})
	return h
}

// TestOwnCertificateChecked: a node refuses to start with a certificate that
// is not its own, or expired.
func TestOwnCertificateChecked(t *testing.T) {
	owner, _, _ := crypto.GenerateEd25519Key(nil)
	o := admittedOptions(t, 0, owner, []string{admission.Server}, time.Now().Add(-time.Second))
	if _, err := New(t.Context(), o); err == nil {
		t.Fatal("a node started with an expired certificate")
	}
	o2 := admittedOptions(t, 0, owner, []string{admission.Server}, time.Now().Add(time.Hour))
	o2.Admission.Certificate = admittedOptions(t, 0, owner, []string{admission.Server}, time.Now().Add(time.Hour)).Admission.Certificate
	if _, err := New(t.Context(), o2); err == nil {
		t.Fatal("a node started with another peer's certificate")
	}
}

// TestRevokedPeerRefused: the owner revokes c, a certified holder, by writing
// a signed list into the file a's config names. a applies it from the file,
// b hears it by gossip, and d, which joins afterwards with no file, hears it
// from their republishing: all three refuse c from then on and keep the list
// in their data dirs.
func TestRevokedPeerRefused(t *testing.T) {
	old := revocationsEvery
	revocationsEvery = 200 * time.Millisecond
	t.Cleanup(func() { revocationsEvery = old })
	owner, _, _ := crypto.GenerateEd25519Key(nil)
	far := time.Now().Add(time.Hour)
	roles := []string{admission.Server, admission.Trainer}
	oa := admittedOptions(t, 0, owner, roles, far)
	list := filepath.Join(t.TempDir(), "revoked.json")
	oa.Admission.Revocations = list
	a := startTestNode(t, oa)
	boot := []string{a.Addrs()[0].String()}
	ob := admittedOptions(t, 1, owner, roles, far)
	ob.Bootstrap = boot
	b := startTestNode(t, ob)
	oc := admittedOptions(t, 2, owner, roles, far)
	oc.Bootstrap = boot
	c := startTestNode(t, oc)
	wait.For(t, 5*time.Second, func() error {
		if hs := b.DHT().Holders(2); len(hs) != 1 || hs[0].Peer != c.ID() {
			return errors.New("b does not see c as the holder of stage 2")
		}
		return nil
	})

	b.Host().SetStreamHandler(pipeline.Protocol("test"), func(s network.Stream) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(s, buf); err == nil {
			_, _ = s.Write(buf)
		}
		_ = s.Close()
	})
	if !echoed(t, c.Host(), b.ID()) {
		t.Fatal("b does not serve c before the revocation")
	}

	r, err := admission.SignRevocations(owner, "test", []peer.ID{c.ID()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(list, r.Encode(), 0o644); err != nil {
		t.Fatal(err)
	}
	refuses := func(n *Node) error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := n.gate().admit(ctx, c.ID(), ""); err == nil || !strings.Contains(err.Error(), "revoked") {
			return fmt.Errorf("%s admits c: %v", n.ID().ShortString(), err)
		}
		if _, err := os.Stat(revocationsFile(n.opts.DataDir, "test")); err != nil {
			return fmt.Errorf("%s keeps no list: %v", n.ID().ShortString(), err)
		}
		return nil
	}
	wait.For(t, 10*time.Second, func() error { return errors.Join(refuses(a), refuses(b)) })
	od := admittedOptions(t, 1, owner, roles, far)
	od.Bootstrap = []string{b.Addrs()[0].String()}
	d := startTestNode(t, od)
	wait.For(t, 10*time.Second, func() error { return refuses(d) })
	// c, certified until far, cannot call b any more.
	if echoed(t, c.Host(), b.ID()) {
		t.Error("b served a stream of the revoked c")
	}
	if !echoed(t, d.Host(), b.ID()) {
		t.Error("b did not serve d's stream (the control)")
	}
}

// echoed reports whether to serves from an echo on the stage protocol,
// which it registers through its own (gated) host.
func echoed(t *testing.T, from host.Host, to peer.ID) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	s, err := from.NewStream(ctx, to, pipeline.Protocol("test"))
	if err != nil {
		return false
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := s.Write([]byte("hello")); err != nil {
		return false
	}
	_, err = io.ReadFull(s, make([]byte, 5))
	return err == nil
}

// TestPrivateNetwork: hosts sharing a network key find each other; a host
// with another key, or none, cannot connect to them at all.
func TestPrivateNetwork(t *testing.T) {
	keyFile := func() pnet.PSK {
		b, err := NewNetworkKey()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "network.key")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := LoadNetworkKey(path)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	key, other := keyFile(), keyFile()
	oa := testOptions(t, 0) // listens on TCP and QUIC: QUIC is dropped
	oa.NetworkKey = key
	a := startTestNode(t, oa)
	for _, addr := range a.Addrs() {
		if !strings.Contains(addr.String(), "/tcp/") {
			t.Errorf("a private-network host listens on %s", addr)
		}
	}
	ob := testOptions(t, 1)
	ob.NetworkKey, ob.Bootstrap = key, []string{a.Addrs()[0].String()}
	b := startTestNode(t, ob)
	wait.For(t, 5*time.Second, func() error {
		if hs := a.DHT().Holders(1); len(hs) != 1 || hs[0].Peer != b.ID() {
			return errors.New("a does not see b as the holder of stage 1")
		}
		return nil
	})
	oc := testOptions(t, 2)
	oc.NetworkKey = other
	c := startTestNode(t, oc)
	d := startTestNode(t, testOptions(t, 2))
	for name, n := range map[string]*Node{"another key": c, "no key": d} {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		err := n.Host().Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Host().Addrs()})
		cancel()
		if err == nil {
			t.Errorf("a host with %s connected to the private network", name)
		}
	}
	if _, _, err := tcpOnly([]string{"/ip4/0.0.0.0/udp/0/quic-v1"}); err == nil {
		t.Error("a private network without a TCP address was accepted")
	}
}
