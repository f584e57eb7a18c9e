package receipt

import (
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

func sample(t testing.TB, key crypto.PrivKey, step int, members ...peer.ID) Receipt {
	t.Helper()
	r := Receipt{Run: "run", Step: step, Stage: 1, TokensPerMicrobatch: 128, Issued: time.Unix(2e9, 5)}
	for i, m := range members {
		r.Members = append(r.Members, m.String())
		r.Microbatches = append(r.Microbatches, i+2)
	}
	s, err := Sign(key, r)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestReceiptChecks: a signed receipt verifies after a round trip; one
// altered after signing, claimed by another trainer, of another run or
// malformed does not.
func TestReceiptChecks(t *testing.T) {
	key, trainer := newID(t)
	_, a := newID(t)
	_, b := newID(t)
	r := sample(t, key, 3, a, b)
	if r.Trainer != trainer.String() {
		t.Fatalf("trainer %s, want %s", r.Trainer, trainer)
	}
	again, err := Parse(r.Encode())
	if err != nil || again.Verify("run") != nil {
		t.Fatalf("round trip: %v / %v", err, again.Verify("run"))
	}
	_, other := newID(t)
	for name, f := range map[string]func(*Receipt){
		"more microbatches": func(r *Receipt) { r.Microbatches[0]++ },
		"another member":    func(r *Receipt) { r.Members[1] = other.String() },
		"another trainer":   func(r *Receipt) { r.Trainer = other.String() },
		"another step":      func(r *Receipt) { r.Step++ },
		"counts missing":    func(r *Receipt) { r.Microbatches = r.Microbatches[:1] },
	} {
		bad, _ := Parse(r.Encode())
		f(&bad)
		if bad.Verify("run") == nil {
			t.Errorf("%s: verified", name)
		}
	}
	if r.Verify("other") == nil {
		t.Error("a receipt of another run verified")
	}
	if _, err := Sign(key, Receipt{Run: "run", Step: 1, Members: []string{a.String(), a.String()}, Microbatches: []int{1, 1}, TokensPerMicrobatch: 1}); err == nil {
		t.Error("a receipt naming a member twice was signed")
	}
}

// TestTally: receipts sum per peer, each (trainer, step, stage) once.
func TestTally(t *testing.T) {
	key, _ := newID(t)
	_, a := newID(t)
	_, b := newID(t)
	tl := NewTally(func(int) int { return 1000 })
	r1, r2 := sample(t, key, 1, a, b), sample(t, key, 2, a)
	if !tl.Add(r1) || !tl.Add(r2) || tl.Add(r1) {
		t.Fatal("Add took a duplicate or refused a new receipt")
	}
	wa, wb := tl.Peers[a.String()], tl.Peers[b.String()]
	if tl.Receipts != 2 || wa.Steps != 2 || wa.Microbatches != 4 || wa.Tokens != 4*128 || wb.Microbatches != 3 || wa.FLOPs != 6*1000*4*128 {
		t.Fatalf("tally %+v: a %+v b %+v", tl, wa, wb)
	}
}

// FuzzParse: no input panics the decoder or the checks, and what parses
// encodes and parses to the same signed bytes.
func FuzzParse(f *testing.F) {
	key, _, _ := crypto.GenerateEd25519Key(nil)
	_, aid := newID(f)
	r, _ := Sign(key, Receipt{Run: "run", Step: 1, Members: []string{aid.String()}, Microbatches: []int{2}, TokensPerMicrobatch: 64})
	f.Add(r.Encode())
	f.Add([]byte(`{"members":["x"],"microbatches":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Parse(b)
		if err != nil {
			return
		}
		_ = r.Verify("run")
		again, err := Parse(r.Encode())
		if err != nil || string(again.SignedBytes()) != string(r.SignedBytes()) {
			t.Fatalf("round trip of %q: %v", b, err)
		}
	})
}
