package data

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"unsafe"
)

// Token shards in llm.c's .bin format: a header of 256 little-endian int32
// (magic 20240520, version 1, the token count, the rest 0), then the tokens
// as little-endian uint16. Shards written by llm.c's own scripts (FineWeb,
// TinyStories: GPT-2 tokens) load as they are. A glob in data.path selects
// shards; those with "val" in their name are the val split, the others train.

const (
	shardMagic   = 20240520
	shardVersion = 1
	headerInts   = 256
	headerBytes  = 4 * headerInts
)

// shard is one memory-mapped shard's tokens.
type shard struct {
	name string
	mem  []byte   // the whole mapping
	tok  []uint16 // its tokens
}

// isShards reports whether data.path names token shards (a .bin file or a
// glob) rather than a text file read as bytes.
func isShards(path string) bool {
	return strings.HasSuffix(path, ".bin") || strings.ContainsAny(path, "*?[")
}

// loadShards maps the shards path matches and splits them into train and val
// by name; every token must be below vocab.
func loadShards(path string, vocab int) (*Corpus, error) {
	names, err := filepath.Glob(path)
	if err != nil {
		return nil, fmt.Errorf("data: %q: %w", path, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("data: no shard matches %q", path)
	}
	sort.Strings(names) // the same order on every peer
	c := &Corpus{}
	for _, n := range names {
		s, err := mapShard(n, vocab)
		if err != nil {
			c.Close()
			return nil, err
		}
		if strings.Contains(filepath.Base(n), "val") {
			c.valShards = append(c.valShards, s)
		} else {
			c.trainShards = append(c.trainShards, s)
		}
	}
	if len(c.trainShards) == 0 || len(c.valShards) == 0 {
		c.Close()
		return nil, fmt.Errorf("data: %q gives %d train and %d val shards (val shards have \"val\" in their name); want both", path, len(c.trainShards), len(c.valShards))
	}
	return c, nil
}

// mapShard maps and checks one shard: header, size, and every token below
// vocab.
func mapShard(name string, vocab int) (*shard, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	size := fi.Size()
	if size < headerBytes {
		return nil, fmt.Errorf("data: shard %s: %d bytes, shorter than its %d-byte header", name, size, headerBytes)
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("data: shard %s: mmap: %w", name, err)
	}
	s := &shard{name: name, mem: mem}
	if err := s.check(size, vocab); err != nil {
		syscall.Munmap(mem)
		return nil, err
	}
	return s, nil
}

func (s *shard) check(size int64, vocab int) error {
	hdr := func(i int) int32 { return int32(binary.LittleEndian.Uint32(s.mem[4*i:])) }
	if hdr(0) != shardMagic {
		return fmt.Errorf("data: shard %s: magic %d, want %d (llm.c's token shards)", s.name, hdr(0), shardMagic)
	}
	if hdr(1) != shardVersion {
		return fmt.Errorf("data: shard %s: version %d, want %d (uint16 tokens)", s.name, hdr(1), shardVersion)
	}
	n := int64(hdr(2))
	if n < 2 || size != headerBytes+2*n {
		return fmt.Errorf("data: shard %s: %d bytes for %d tokens: want %d (truncated or odd)", s.name, size, n, headerBytes+2*n)
	}
	s.tok = unsafe.Slice((*uint16)(unsafe.Pointer(&s.mem[headerBytes])), n)
	for i, t := range s.tok {
		if int(t) >= vocab {
			return fmt.Errorf("data: shard %s: token %d at %d is not below model.vocab %d", s.name, t, i, vocab)
		}
	}
	return nil
}

// WriteShard writes tokens as a shard in llm.c's format, crash-safe.
func WriteShard(path string, tokens []uint16) error {
	b := make([]byte, headerBytes+2*len(tokens))
	binary.LittleEndian.PutUint32(b[0:], shardMagic)
	binary.LittleEndian.PutUint32(b[4:], shardVersion)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(tokens)))
	for i, t := range tokens {
		binary.LittleEndian.PutUint16(b[headerBytes+2*i:], t)
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("data: writing %s: %w", path, err)
	}
	return nil
}

// PrepareBytes writes the bytes of files as token shards (Prepare with one
// token per byte, named bytes_*).
func PrepareBytes(files []string, out string, valFraction float64, shardTokens int) ([]string, error) {
	return Prepare(files, out, "bytes", valFraction, shardTokens, func(b []byte) []uint16 {
		tok := make([]uint16, len(b))
		for i, c := range b {
			tok[i] = uint16(c)
		}
		return tok
	})
}

// Prepare tokenizes files, read in order, with encode and writes the tokens
// as shards in out: the last valFraction of them as <name>_val_NNNNNN.bin,
// the rest as <name>_train_NNNNNN.bin, at most shardTokens tokens a shard. It
// returns the shards' paths.
func Prepare(files []string, out, name string, valFraction float64, shardTokens int, encode func([]byte) []uint16) ([]string, error) {
	if len(files) == 0 {
		return nil, fmt.Errorf("data: no input files")
	}
	if valFraction <= 0 || valFraction >= 1 || shardTokens < 2 {
		return nil, fmt.Errorf("data: val fraction %g (want (0, 1)), shard tokens %d (want ≥ 2)", valFraction, shardTokens)
	}
	var raw []uint16
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("data: %w", err)
		}
		raw = append(raw, encode(b)...)
	}
	cut := int(float64(len(raw)) * (1 - valFraction))
	if cut < 2 || len(raw)-cut < 2 {
		return nil, fmt.Errorf("data: %d tokens are too few to split", len(raw))
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	var paths []string
	for _, part := range []struct {
		name string
		tok  []uint16
	}{{"train", raw[:cut]}, {"val", raw[cut:]}} {
		for i, off := 0, 0; off < len(part.tok); i, off = i+1, off+shardTokens {
			chunk := part.tok[off:min(off+shardTokens, len(part.tok))]
			if len(chunk) < 2 && i > 0 {
				break // a last token alone makes no window
			}
			p := filepath.Join(out, fmt.Sprintf("%s_%s_%06d.bin", name, part.name, i))
			if err := WriteShard(p, chunk); err != nil {
				return nil, err
			}
			paths = append(paths, p)
		}
	}
	return paths, nil
}
