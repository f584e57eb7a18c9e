// Package admission is the run owner's word on who may take part in an
// admitted run: certificates that the owner's key signs for a peer id, with
// the roles it may take and an expiry, and their checks. It knows nothing of
// the network; package swarm gates the run's protocols with it.
package admission

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Roles a certificate may grant.
const (
	// Server may hold stages: serve microbatches, average, serve state.
	Server = "server"
	// Trainer may send microbatches through the stages and commit steps.
	Trainer = "trainer"
)

// MaxSize bounds an encoded certificate.
const MaxSize = 4 << 10

// Certificate admits Peer to Run in Roles until Expires, signed by Owner.
type Certificate struct {
	// Run is the run id the certificate is good for.
	Run string `json:"run"`
	// Peer is the admitted peer's id.
	Peer string `json:"peer"`
	// Roles are what the peer may do: server, trainer.
	Roles []string `json:"roles"`
	// Expires is when the certificate stops being good.
	Expires time.Time `json:"expires"`
	// Owner is the run owner's peer id (its public key inlined).
	Owner string `json:"owner"`
	// Sig is the owner's signature over the fields above (SignedBytes).
	Sig []byte `json:"sig"`
}

// SignedBytes is what the owner signs: a domain tag and the fields, one per
// line, so that no certificate reads as another message.
func (c Certificate) SignedBytes() []byte {
	return []byte(strings.Join([]string{
		"swarmnode admission certificate v1", c.Run, c.Peer, strings.Join(c.Roles, ","),
		c.Expires.UTC().Format(time.RFC3339), c.Owner,
	}, "\n"))
}

// Sign makes owner's certificate admitting p to run in roles until expires.
func Sign(owner crypto.PrivKey, run string, p peer.ID, roles []string, expires time.Time) (Certificate, error) {
	if err := checkRoles(roles); err != nil {
		return Certificate{}, err
	}
	if run == "" {
		return Certificate{}, errors.New("admission: empty run id")
	}
	oid, err := peer.IDFromPrivateKey(owner)
	if err != nil {
		return Certificate{}, fmt.Errorf("admission: owner key: %w", err)
	}
	c := Certificate{Run: run, Peer: p.String(), Roles: slices.Clone(roles), Expires: expires.UTC().Truncate(time.Second), Owner: oid.String()}
	if c.Sig, err = owner.Sign(c.SignedBytes()); err != nil {
		return Certificate{}, fmt.Errorf("admission: sign: %w", err)
	}
	return c, nil
}

func checkRoles(roles []string) error {
	if len(roles) == 0 {
		return errors.New("admission: no role")
	}
	for _, r := range roles {
		if r != Server && r != Trainer {
			return fmt.Errorf("admission: unknown role %q (want server or trainer)", r)
		}
	}
	return nil
}

// Verify checks that c admits p to run, signed by owner, at now.
func (c Certificate) Verify(owner peer.ID, run string, p peer.ID, now time.Time) error {
	switch {
	case c.Owner != owner.String():
		return fmt.Errorf("admission: certificate signed by %s, not the run owner %s", short(c.Owner), short(owner.String()))
	case c.Run != run:
		return fmt.Errorf("admission: certificate for run %q, not %q", c.Run, run)
	case c.Peer != p.String():
		return fmt.Errorf("admission: certificate for peer %s, presented by %s", short(c.Peer), short(p.String()))
	case !now.Before(c.Expires):
		return fmt.Errorf("admission: certificate of %s expired at %s", short(c.Peer), c.Expires.Format(time.RFC3339))
	}
	if err := checkRoles(c.Roles); err != nil {
		return err
	}
	pub, err := owner.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("admission: owner id %s carries no public key: %w", short(owner.String()), err)
	}
	ok, err := pub.Verify(c.SignedBytes(), c.Sig)
	if err != nil || !ok {
		return fmt.Errorf("admission: bad signature on the certificate of %s", short(c.Peer))
	}
	return nil
}

// Has reports whether c grants role.
func (c Certificate) Has(role string) bool { return slices.Contains(c.Roles, role) }

// Encode is c's JSON.
func (c Certificate) Encode() []byte {
	b, _ := json.Marshal(c) // plain fields: cannot fail
	return b
}

// Parse decodes a certificate, refusing oversized input and unknown fields.
func Parse(b []byte) (Certificate, error) {
	if len(b) > MaxSize {
		return Certificate{}, fmt.Errorf("admission: certificate of %d bytes, over %d", len(b), MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Certificate
	if err := dec.Decode(&c); err != nil {
		return Certificate{}, fmt.Errorf("admission: certificate: %w", err)
	}
	return c, nil
}

// Load reads a certificate file.
func Load(path string) (Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Certificate{}, fmt.Errorf("admission: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return Certificate{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:6] + "…" + id[len(id)-6:]
	}
	return id
}

// MaxRevocationsSize bounds an encoded revocation list.
const MaxRevocationsSize = 1 << 20

// Revocations is the run owner's signed list of peers whose certificates no
// longer count, however long they still run. A newer list (by Issued)
// replaces an older one, so a list names every peer revoked so far.
type Revocations struct {
	// Run is the run id the list is for.
	Run string `json:"run"`
	// Issued is when the owner signed the list; the newest list wins.
	Issued time.Time `json:"issued"`
	// Peers are the revoked peer ids.
	Peers []string `json:"peers"`
	// Owner is the run owner's peer id.
	Owner string `json:"owner"`
	// Sig is the owner's signature over the fields above (SignedBytes).
	Sig []byte `json:"sig"`
}

// SignedBytes is what the owner signs: a domain tag, then the fields one per
// line, then the peers one per line.
func (r Revocations) SignedBytes() []byte {
	lines := append([]string{"swarmnode admission revocations v1", r.Run, r.Issued.UTC().Format(time.RFC3339Nano), r.Owner}, r.Peers...)
	return []byte(strings.Join(lines, "\n"))
}

// SignRevocations makes owner's list revoking peers in run, issued at issued.
func SignRevocations(owner crypto.PrivKey, run string, peers []peer.ID, issued time.Time) (Revocations, error) {
	if run == "" {
		return Revocations{}, errors.New("admission: empty run id")
	}
	oid, err := peer.IDFromPrivateKey(owner)
	if err != nil {
		return Revocations{}, fmt.Errorf("admission: owner key: %w", err)
	}
	r := Revocations{Run: run, Issued: issued.UTC(), Owner: oid.String()}
	for _, p := range peers {
		if !slices.Contains(r.Peers, p.String()) {
			r.Peers = append(r.Peers, p.String())
		}
	}
	if r.Sig, err = owner.Sign(r.SignedBytes()); err != nil {
		return Revocations{}, fmt.Errorf("admission: sign: %w", err)
	}
	return r, nil
}

// Verify checks that r is owner's list for run.
func (r Revocations) Verify(owner peer.ID, run string) error {
	switch {
	case r.Owner != owner.String():
		return fmt.Errorf("admission: revocation list signed by %s, not the run owner %s", short(r.Owner), short(owner.String()))
	case r.Run != run:
		return fmt.Errorf("admission: revocation list for run %q, not %q", r.Run, run)
	}
	pub, err := owner.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("admission: owner id %s carries no public key: %w", short(owner.String()), err)
	}
	ok, err := pub.Verify(r.SignedBytes(), r.Sig)
	if err != nil || !ok {
		return errors.New("admission: bad signature on the revocation list")
	}
	return nil
}

// Revoked reports whether r revokes p.
func (r Revocations) Revoked(p peer.ID) bool { return slices.Contains(r.Peers, p.String()) }

// Encode is r's JSON.
func (r Revocations) Encode() []byte {
	b, _ := json.Marshal(r) // plain fields: cannot fail
	return b
}

// ParseRevocations decodes a revocation list, refusing oversized input and
// unknown fields.
func ParseRevocations(b []byte) (Revocations, error) {
	if len(b) > MaxRevocationsSize {
		return Revocations{}, fmt.Errorf("admission: revocation list of %d bytes, over %d", len(b), MaxRevocationsSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Revocations
	if err := dec.Decode(&r); err != nil {
		return Revocations{}, fmt.Errorf("admission: revocation list: %w", err)
	}
	return r, nil
}

// LoadRevocations reads a revocation list file.
func LoadRevocations(path string) (Revocations, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Revocations{}, fmt.Errorf("admission: %w", err)
	}
	r, err := ParseRevocations(b)
	if err != nil {
		return Revocations{}, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}
