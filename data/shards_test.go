package data

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeShards writes a train and a val shard of tokens counting up mod vocab.
func writeShards(t *testing.T, dir string, vocab int) {
	t.Helper()
	for _, s := range []struct {
		name string
		n    int
	}{{"tiny_train_000000.bin", 5000}, {"tiny_train_000001.bin", 3000}, {"tiny_val_000000.bin", 800}} {
		tok := make([]uint16, s.n)
		for i := range tok {
			tok[i] = uint16((i*7 + len(s.name)) % vocab)
		}
		if err := WriteShard(filepath.Join(dir, s.name), tok); err != nil {
			t.Fatal(err)
		}
	}
}

// TestShards: a glob of shards loads (memory-mapped), splits into train and
// val by name, and gives the same deterministic batches from the same seed,
// each window a contiguous run of one shard's tokens.
func TestShards(t *testing.T) {
	dir := t.TempDir()
	writeShards(t, dir, 50)
	c, err := Load(filepath.Join(dir, "tiny_*.bin"), 0.1, 50)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Len(Train) != 8000 || c.Len(Val) != 800 || c.MaxSeqLen(Val) != 799 {
		t.Fatalf("train %d, val %d tokens, val max T %d", c.Len(Train), c.Len(Val), c.MaxSeqLen(Val))
	}
	a, at := c.Batch(Train, 4, 16, NewRNG(1, 0))
	b, _ := c.Batch(Train, 4, 16, NewRNG(1, 0))
	if !slices.Equal(a, b) {
		t.Fatal("the same seed drew other batches")
	}
	for i := range a {
		if i%16 != 15 && at[i] != a[i+1] {
			t.Fatalf("targets are not the next tokens at %d", i)
		}
		if d := (at[i] - a[i] + 50) % 50; d != 7 {
			t.Fatalf("window at %d is not a run of one shard (step %d)", i, d)
		}
	}
}

// TestBadShards: a wrong magic, a truncated file, a token not below the
// vocabulary and a glob without val shards are refused naming the file.
func TestBadShards(t *testing.T) {
	dir := t.TempDir()
	writeShards(t, dir, 50)
	spoil := func(name string, f func(b []byte) []byte) string {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(filepath.Join(dir, "tiny_val_000000.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f(b), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		path, want string
	}{
		{spoil("magic_val.bin", func(b []byte) []byte { binary.LittleEndian.PutUint32(b, 7); return b }), "magic 7"},
		{spoil("short_val.bin", func(b []byte) []byte { return b[:len(b)-3] }), "truncated"},
		{spoil("big_val.bin", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[headerBytes+10:], 60); return b }), "token 60 at 5"},
	}
	for _, c := range cases {
		if _, err := Load(c.path, 0.1, 50); err == nil || !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming it and %q", c.path, err, c.want)
		}
	}
	if _, err := Load(filepath.Join(dir, "tiny_train_*.bin"), 0.1, 50); err == nil || !strings.Contains(err.Error(), "val") {
		t.Errorf("a glob of train shards alone: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "none_*.bin"), 0.1, 50); err == nil {
		t.Error("a glob matching nothing loaded")
	}
	if _, err := Load(filepath.Join("..", "examples", "gpt", "data", "tinyshakespeare.txt"), 0.1, 200); err == nil || !strings.Contains(err.Error(), "model.vocab 200") {
		t.Errorf("bytes with vocab 200: %v", err)
	}
}
