package dht

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
)

// Limits on a peer record; anything beyond them is malformed.
const (
	// MaxRecordSize bounds a signed record on the wire.
	MaxRecordSize = 4096
	// MaxAddrs bounds the addresses one record may list.
	MaxAddrs = 16
	// MaxStages bounds stage numbers, so a record cannot name absurd stages.
	MaxStages = 1024
	// MaxRecordLifetime bounds how far in the future a record may expire, so a
	// peer cannot publish a record that outlives it for days.
	MaxRecordLifetime = time.Hour
	// MaxClockSkew is how far a peer's clock may be off its readers' either
	// way: a record is valid until MaxClockSkew past its expiry by the
	// reader's clock. How long a holder stays listed does not depend on it:
	// the reader corrects an author's expiry by the author's clock offset,
	// learned from its gossip (holders.go).
	MaxClockSkew = 10 * time.Minute
)

// Roles a peer can announce.
const (
	RoleServer  = "server"
	RoleTrainer = "trainer"
	RoleBoth    = "both"
)

// RecordDomain is the libp2p signed-envelope domain of peer records: a
// signature made for another purpose never verifies as a peer record.
const RecordDomain = "swarmnode-peer-record"

// RecordCodec is the envelope payload type of peer records.
var RecordCodec = []byte("/swarmnode/peer-record/1")

// PeerRecord is what a peer says about itself in the DHT. It travels as the
// JSON payload of a libp2p signed envelope made with the peer's own key.
type PeerRecord struct {
	// Run is the run id; it must match the run in the record's key, so a record
	// cannot be replayed into another run.
	Run string `json:"run"`
	// Peer is the peer the record describes; it must be the signer.
	Peer peer.ID `json:"peer"`
	// Stage is the stage the peer serves, -1 for none.
	Stage int `json:"stage"`
	// Role is server, trainer or both.
	Role string `json:"role"`
	// Throughput is the peer's measured speed in tokens per second.
	Throughput float64 `json:"throughput"`
	// Queue is the number of microbatches waiting at the peer.
	Queue int `json:"queue"`
	// Addrs are the peer's listen addresses, without /p2p.
	Addrs []string `json:"addrs"`
	// Seq orders the records of one peer; a larger one replaces a smaller one.
	Seq uint64 `json:"seq"`
	// Expires is the record's expiry in Unix milliseconds.
	Expires int64 `json:"expires"`
}

// ExpiresAt returns Expires as a time.
func (r *PeerRecord) ExpiresAt() time.Time { return time.UnixMilli(r.Expires) }

// Multiaddrs parses Addrs; Check has already rejected unparsable ones.
func (r *PeerRecord) Multiaddrs() []ma.Multiaddr {
	out := make([]ma.Multiaddr, 0, len(r.Addrs))
	for _, s := range r.Addrs {
		if a, err := ma.NewMultiaddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// Check reports whether the record's content is well formed and unexpired at now.
func (r *PeerRecord) Check(now time.Time) error {
	if r.Run == "" {
		return errors.New("empty run")
	}
	if err := r.Peer.Validate(); err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	if err := (Self{Stage: r.Stage, Role: r.Role, Throughput: r.Throughput, Queue: r.Queue}).check(); err != nil {
		return err
	}
	if len(r.Addrs) > MaxAddrs {
		return fmt.Errorf("%d addrs: at most %d", len(r.Addrs), MaxAddrs)
	}
	for _, s := range r.Addrs {
		if _, err := ma.NewMultiaddr(s); err != nil {
			return fmt.Errorf("addr %q: %w", s, err)
		}
	}
	// The author's clock may be off ours by MaxClockSkew either way.
	exp := r.ExpiresAt()
	if !exp.After(now.Add(-MaxClockSkew)) {
		return fmt.Errorf("expired at %s", exp.UTC().Format(time.RFC3339Nano))
	}
	if exp.Sub(now) > MaxRecordLifetime+MaxClockSkew {
		return fmt.Errorf("expires %s from now, more than %s", exp.Sub(now).Round(time.Second), MaxRecordLifetime+MaxClockSkew)
	}
	return nil
}

// checkLoad reports whether a throughput (tokens/s) and a queue length are
// possible values.
func checkLoad(throughput float64, queue int) error {
	if math.IsNaN(throughput) || math.IsInf(throughput, 0) || throughput < 0 {
		return fmt.Errorf("throughput %v: want a finite number >= 0", throughput)
	}
	if queue < 0 {
		return fmt.Errorf("queue %d: negative", queue)
	}
	return nil
}

// payload adapts PeerRecord to libp2p's record.Record for signed envelopes.
type payload struct{ rec *PeerRecord }

func (payload) Domain() string { return RecordDomain }
func (payload) Codec() []byte  { return RecordCodec }
func (p payload) MarshalRecord() ([]byte, error) {
	return json.Marshal(p.rec)
}
func (p payload) UnmarshalRecord(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(p.rec); err != nil {
		return fmt.Errorf("record payload: %w", err)
	}
	if dec.More() {
		return errors.New("record payload: trailing data")
	}
	return nil
}

// Sign seals rec in an envelope signed with key, whose peer id must be rec.Peer.
func Sign(rec PeerRecord, key crypto.PrivKey) ([]byte, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("sign record: %w", err)
	}
	if id != rec.Peer {
		return nil, fmt.Errorf("sign record: key of %s cannot sign for %s", id, rec.Peer)
	}
	env, err := record.Seal(payload{&rec}, key)
	if err != nil {
		return nil, fmt.Errorf("sign record: %w", err)
	}
	b, err := env.Marshal()
	if err != nil {
		return nil, fmt.Errorf("sign record: %w", err)
	}
	if len(b) > MaxRecordSize {
		return nil, fmt.Errorf("sign record: %d bytes, more than %d", len(b), MaxRecordSize)
	}
	return b, nil
}

// Open verifies a signed record and returns its content: the signature must
// verify, the signer must be the peer the record names, and the content must be
// well formed and unexpired at now. It does not check the DHT key; Validator does.
func Open(data []byte, now time.Time) (PeerRecord, error) {
	if len(data) > MaxRecordSize {
		return PeerRecord{}, fmt.Errorf("record: %d bytes, more than %d", len(data), MaxRecordSize)
	}
	var rec PeerRecord
	env, err := record.ConsumeTypedEnvelope(data, payload{&rec})
	if err != nil {
		return PeerRecord{}, fmt.Errorf("record: %w", err)
	}
	if !bytes.Equal(env.PayloadType, RecordCodec) {
		return PeerRecord{}, fmt.Errorf("record: payload type %q, want %q", env.PayloadType, RecordCodec)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return PeerRecord{}, fmt.Errorf("record: signer key: %w", err)
	}
	if signer != rec.Peer {
		return PeerRecord{}, fmt.Errorf("record: signed by %s but describes %s", signer, rec.Peer)
	}
	if err := rec.Check(now); err != nil {
		return PeerRecord{}, fmt.Errorf("record of %s: %w", rec.Peer, err)
	}
	return rec, nil
}
