package swarm

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
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
