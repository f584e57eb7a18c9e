package admission

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func newID(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return k, id
}

func TestCertificateChecks(t *testing.T) {
	ownerKey, owner := newID(t)
	_, p := newID(t)
	_, q := newID(t)
	now := time.Now()
	c, err := Sign(ownerKey, "run", p, []string{Server}, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(c.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Verify(owner, "run", p, now); err != nil {
		t.Fatalf("a good certificate: %v", err)
	}
	if !back.Has(Server) || back.Has(Trainer) {
		t.Errorf("roles %v", back.Roles)
	}
	tampered := back
	tampered.Roles = []string{Server, Trainer}
	otherKey, _ := newID(t)
	forged, _ := Sign(otherKey, "run", p, []string{Server}, now.Add(time.Hour))
	forged.Owner = owner.String()
	for _, tc := range []struct {
		name string
		c    Certificate
		run  string
		p    peer.ID
		at   time.Time
		want string
	}{
		{"another run", back, "other", p, now, "run"},
		{"another peer", back, "run", q, now, "presented by"},
		{"expired", back, "run", p, now.Add(2 * time.Hour), "expired"},
		{"roles added", tampered, "run", p, now, "bad signature"},
		{"forged", forged, "run", p, now, "bad signature"},
	} {
		if err := tc.c.Verify(owner, tc.run, tc.p, tc.at); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if _, err := Sign(ownerKey, "run", p, []string{"admin"}, now); err == nil {
		t.Error("an unknown role was signed")
	}
	if _, err := Parse([]byte(`{"run":"x","extra":1}`)); err == nil {
		t.Error("an unknown field was accepted")
	}
}

// FuzzParse: no input panics the decoder, and whatever it accepts encodes
// and decodes to the same certificate.
func FuzzParse(f *testing.F) {
	k, _, _ := crypto.GenerateEd25519Key(nil)
	_, p := newID(f)
	c, _ := Sign(k, "run", p, []string{Server, Trainer}, time.Unix(2e9, 0))
	f.Add(c.Encode())
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"sig":"!!"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		again, err := Parse(c.Encode())
		if err != nil || string(again.SignedBytes()) != string(c.SignedBytes()) || string(again.Sig) != string(c.Sig) {
			t.Fatalf("round trip of %q: %v", b, err)
		}
	})
}

// TestRevocationChecks: the owner's list verifies and names whom it revokes;
// a list signed by another key, for another run, or altered after signing
// does not verify.
func TestRevocationChecks(t *testing.T) {
	ownerKey, owner := newID(t)
	otherKey, _ := newID(t)
	_, p := newID(t)
	_, q := newID(t)
	now := time.Now()
	r, err := SignRevocations(ownerKey, "run", []peer.ID{p, p}, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(owner, "run"); err != nil {
		t.Fatal(err)
	}
	if !r.Revoked(p) || r.Revoked(q) || len(r.Peers) != 1 {
		t.Errorf("list %v: revokes p %v, q %v", r.Peers, r.Revoked(p), r.Revoked(q))
	}
	again, err := ParseRevocations(r.Encode())
	if err != nil || again.Verify(owner, "run") != nil {
		t.Fatalf("round trip: %v", err)
	}
	forged, _ := SignRevocations(otherKey, "run", []peer.ID{q}, now)
	added := r
	added.Peers = append(slices.Clone(r.Peers), q.String())
	removed := r
	removed.Peers = nil
	older := r
	older.Issued = now.Add(-time.Hour)
	for _, tc := range []struct {
		name string
		r    Revocations
		run  string
		want string
	}{
		{"another owner's", forged, "run", "not the run owner"},
		{"another run's", r, "other", "for run"},
		{"a peer added", withOwner(added, owner), "run", "bad signature"},
		{"peers removed", withOwner(removed, owner), "run", "bad signature"},
		{"re-dated", withOwner(older, owner), "run", "bad signature"},
	} {
		if err := tc.r.Verify(owner, tc.run); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if _, err := ParseRevocations([]byte(`{"run":"x","extra":1}`)); err == nil {
		t.Error("an unknown field was accepted")
	}
}

func withOwner(r Revocations, owner peer.ID) Revocations {
	r.Owner = owner.String()
	return r
}

// FuzzParseRevocations: no input panics the decoder, and whatever it accepts
// encodes and decodes to the same list.
func FuzzParseRevocations(f *testing.F) {
	k, _, _ := crypto.GenerateEd25519Key(nil)
	_, p := newID(f)
	r, _ := SignRevocations(k, "run", []peer.ID{p}, time.Unix(2e9, 0))
	f.Add(r.Encode())
	f.Add([]byte(`{"peers":["a","b"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRevocations(b)
		if err != nil {
			return
		}
		again, err := ParseRevocations(r.Encode())
		if err != nil || string(again.SignedBytes()) != string(r.SignedBytes()) || string(again.Sig) != string(r.Sig) {
			t.Fatalf("round trip of %q: %v", b, err)
		}
	})
}
