// Package receipt is the evidence of work done in a run: receipts that a
// trainer signs when it commits a step, one per stage, naming the holders of
// the stage that stepped and the microbatches it counts at each. A holder
// keeps the receipts of its steps; anyone can collect them and check the
// signatures, so a third party can audit who did how much of the run. It
// knows nothing of the network.
package receipt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// MaxSize bounds an encoded receipt: a stage's members and counts.
const MaxSize = 16 << 10

// maxMembers bounds the holders one receipt names (the averaging protocol's
// largest group).
const maxMembers = 64

// Receipt is a trainer's signed word that the holders of stage Stage stepped
// together at its step Step, on Microbatches[i] microbatches of
// TokensPerMicrobatch tokens each at Members[i], counted exactly once.
type Receipt struct {
	// Run is the run id.
	Run string `json:"run"`
	// Trainer is the signing trainer's peer id.
	Trainer string `json:"trainer"`
	// Step is the trainer's step (1-based) and Stage the pipeline stage.
	Step  int `json:"step"`
	Stage int `json:"stage"`
	// Members are the holders that stepped, by peer id; Microbatches the
	// microbatches the trainer counts at each.
	Members      []string `json:"members"`
	Microbatches []int    `json:"microbatches"`
	// TokensPerMicrobatch is the tokens of one microbatch (microbatch size ×
	// sequence length).
	TokensPerMicrobatch int `json:"tokens_per_microbatch"`
	// Issued is when the trainer signed, by its clock.
	Issued time.Time `json:"issued"`
	// Sig is the trainer's signature over the fields above (SignedBytes).
	Sig []byte `json:"sig,omitempty"`
}

// SignedBytes is what the trainer signs: a domain tag, then the receipt's
// JSON without its signature.
func (r Receipt) SignedBytes() []byte {
	r.Sig = nil
	b, _ := json.Marshal(r) // plain fields: cannot fail
	return append([]byte("swarmnode work receipt v1\n"), b...)
}

// Sign sets r.Trainer to key's peer id, checks r and signs it.
func Sign(key crypto.PrivKey, r Receipt) (Receipt, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return Receipt{}, fmt.Errorf("receipt: key: %w", err)
	}
	r.Trainer, r.Sig = id.String(), nil
	if err := r.check(); err != nil {
		return Receipt{}, err
	}
	if r.Sig, err = key.Sign(r.SignedBytes()); err != nil {
		return Receipt{}, fmt.Errorf("receipt: sign: %w", err)
	}
	return r, nil
}

// check verifies r's fields, not its signature.
func (r Receipt) check() error {
	switch {
	case r.Run == "":
		return errors.New("receipt: empty run")
	case r.Step < 1 || r.Stage < 0 || r.Stage >= 1024:
		return fmt.Errorf("receipt: step %d stage %d out of range", r.Step, r.Stage)
	case len(r.Members) == 0 || len(r.Members) > maxMembers || len(r.Microbatches) != len(r.Members):
		return fmt.Errorf("receipt: %d members and %d counts", len(r.Members), len(r.Microbatches))
	case r.TokensPerMicrobatch < 1 || r.TokensPerMicrobatch > 1<<24:
		return fmt.Errorf("receipt: %d tokens per microbatch", r.TokensPerMicrobatch)
	}
	seen := map[string]bool{}
	for i, m := range r.Members {
		if _, err := peer.Decode(m); err != nil || seen[m] {
			return fmt.Errorf("receipt: member %q: bad or repeated", m)
		}
		seen[m] = true
		if r.Microbatches[i] < 0 || r.Microbatches[i] > 1<<20 {
			return fmt.Errorf("receipt: %d microbatches", r.Microbatches[i])
		}
	}
	return nil
}

// Verify checks that r is a well-formed receipt of run signed by its trainer.
func (r Receipt) Verify(run string) error {
	if r.Run != run {
		return fmt.Errorf("receipt: for run %q, not %q", r.Run, run)
	}
	if err := r.check(); err != nil {
		return err
	}
	id, err := peer.Decode(r.Trainer)
	if err != nil {
		return fmt.Errorf("receipt: trainer %q: %w", r.Trainer, err)
	}
	pub, err := id.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("receipt: trainer id carries no public key: %w", err)
	}
	ok, err := pub.Verify(r.SignedBytes(), r.Sig)
	if err != nil || !ok {
		return errors.New("receipt: bad signature")
	}
	return nil
}

// Key identifies the step a receipt is for: one receipt per trainer, step and
// stage counts, however many holders kept a copy.
func (r Receipt) Key() string { return fmt.Sprintf("%s/%d/%d", r.Trainer, r.Step, r.Stage) }

// Encode is r's JSON.
func (r Receipt) Encode() []byte {
	b, _ := json.Marshal(r)
	return b
}

// Parse decodes a receipt, refusing oversized input and unknown fields. It
// does not verify it.
func Parse(b []byte) (Receipt, error) {
	if len(b) > MaxSize {
		return Receipt{}, fmt.Errorf("receipt: %d bytes, over %d", len(b), MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Receipt
	if err := dec.Decode(&r); err != nil {
		return Receipt{}, fmt.Errorf("receipt: %w", err)
	}
	return r, nil
}

// Work is what verified receipts credit one peer with.
type Work struct {
	// Steps counts the receipts naming the peer.
	Steps int `json:"steps"`
	// Microbatches and Tokens are the work counted at the peer.
	Microbatches int   `json:"microbatches"`
	Tokens       int64 `json:"tokens"`
	// FLOPs are the training FLOPs of that work: 6 × the stage's parameters ×
	// tokens (forward and backward; attention's own FLOPs left out).
	FLOPs float64 `json:"flops"`
}

// Tally sums verified receipts per peer, each (trainer, step, stage) once.
type Tally struct {
	// Peers is the work credited to each peer id.
	Peers map[string]*Work `json:"peers"`
	// Receipts counts the distinct receipts summed.
	Receipts int `json:"receipts"`
	seen     map[string]bool
	// params returns a stage's parameter count, for FLOPs; nil leaves them 0.
	params func(stage int) int
}

// NewTally makes an empty tally; params, if set, gives each stage's
// parameter count.
func NewTally(params func(stage int) int) *Tally {
	return &Tally{Peers: map[string]*Work{}, seen: map[string]bool{}, params: params}
}

// Add sums r, which the caller verified; it reports false for a receipt
// already summed.
func (t *Tally) Add(r Receipt) bool {
	if t.seen[r.Key()] {
		return false
	}
	t.seen[r.Key()] = true
	t.Receipts++
	for i, m := range r.Members {
		w := t.Peers[m]
		if w == nil {
			w = &Work{}
			t.Peers[m] = w
		}
		tokens := int64(r.Microbatches[i]) * int64(r.TokensPerMicrobatch)
		w.Steps++
		w.Microbatches += r.Microbatches[i]
		w.Tokens += tokens
		if t.params != nil {
			w.FLOPs += 6 * float64(t.params(r.Stage)) * float64(tokens)
		}
	}
	return true
}
