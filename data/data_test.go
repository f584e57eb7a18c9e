package data

import (
	"slices"
	"testing"
)

func TestSplitAndBatch(t *testing.T) {
	raw := []byte("abcdefghijklmnopqrstuvwxyz0123456789")
	c, err := New(raw, 0.25)
	if err != nil {
		t.Fatal(err)
	}
	if c.Len(Train)+c.Len(Val) != len(raw) || c.Len(Val) != 9 {
		t.Fatalf("split %d/%d", c.Len(Train), c.Len(Val))
	}
	tok, tgt := c.Batch(Train, 4, 5, NewRNG(7, 0))
	tok2, _ := c.Batch(Train, 4, 5, NewRNG(7, 0))
	if !slices.Equal(tok, tok2) {
		t.Fatal("same seed gave different batches")
	}
	for i := range tok {
		if i%5 != 4 && tgt[i] != tok[i+1] {
			t.Fatalf("target %d is not the next token", i)
		}
		if tgt[i] != tok[i]+1 && !(tok[i] == 'z' && tgt[i] == '0') {
			t.Fatalf("target %q does not follow %q", tgt[i], tok[i])
		}
		if tok[i] >= '0' && tok[i] <= '9' && tok[i] > '0' {
			// train part ends at index 27 ('1'); nothing from val may appear.
			t.Fatalf("val token %q leaked into train", tok[i])
		}
	}
	vtok, _ := c.Batch(Val, 2, 3, NewRNG(1, 0))
	for _, v := range vtok {
		if v < '1' {
			t.Fatalf("train token %q in val batch", v)
		}
	}
	other, _ := c.Batch(Train, 4, 5, NewRNG(7, 1))
	if slices.Equal(tok, other) {
		t.Fatal("different streams gave the same batches")
	}
}

func TestTooSmall(t *testing.T) {
	if _, err := New([]byte("ab"), 0.5); err == nil {
		t.Fatal("want error for a tiny corpus")
	}
	if _, err := New([]byte("abcdef"), 0); err == nil {
		t.Fatal("want error for val fraction 0")
	}
}
