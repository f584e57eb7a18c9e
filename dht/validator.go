package dht

import (
	"errors"
	"fmt"
	"time"

	record "github.com/libp2p/go-libp2p-record"
)

// Validator is the DHT validator of a run's peer records, registered under
// Namespace. Every record stored or fetched goes through it.
type Validator struct {
	// Run is the only run whose keys it accepts.
	Run string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

var _ record.Validator = Validator{}

func (v Validator) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// Validate accepts value under key only if it is a well-formed, unexpired
// record of this run, signed by the peer named in the key.
func (v Validator) Validate(key string, value []byte) error {
	_, err := v.open(key, value)
	return err
}

func (v Validator) open(key string, value []byte) (PeerRecord, error) {
	run, id, err := ParsePeerKey(key)
	if err != nil {
		return PeerRecord{}, err
	}
	if run != v.Run {
		return PeerRecord{}, fmt.Errorf("key %q: run %q, want %q", key, run, v.Run)
	}
	rec, err := Open(value, v.now())
	if err != nil {
		return PeerRecord{}, err
	}
	if rec.Peer != id {
		return PeerRecord{}, fmt.Errorf("key %q: record describes %s", key, rec.Peer)
	}
	if rec.Run != run {
		return PeerRecord{}, fmt.Errorf("key %q: record is for run %q", key, rec.Run)
	}
	return rec, nil
}

// Select picks the valid record with the largest sequence number; on a tie,
// the one with the later expiry, then the first.
func (v Validator) Select(key string, values [][]byte) (int, error) {
	best := -1
	var bestRec PeerRecord
	for i, val := range values {
		rec, err := v.open(key, val)
		if err != nil {
			continue
		}
		if best < 0 || rec.Seq > bestRec.Seq || rec.Seq == bestRec.Seq && rec.Expires > bestRec.Expires {
			best, bestRec = i, rec
		}
	}
	if best < 0 {
		return 0, errors.New("no valid record to select")
	}
	return best, nil
}
