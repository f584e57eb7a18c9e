// Package data reads a training corpus, a text file as bytes (vocab 256) split
// into train and val parts, or llm.c's token shards memory-mapped (shards.go),
// and cuts deterministic microbatches of next-token prediction pairs.
package data

import (
	"fmt"
	"math/rand/v2"
	"os"
	"syscall"
)

// Vocab is the size of the byte-level vocabulary.
const Vocab = 256

// Split names a part of the corpus.
type Split int

const (
	// Train is the leading part of the file.
	Train Split = iota
	// Val is the held-out tail of the file.
	Val
)

func (s Split) String() string {
	if s == Val {
		return "val"
	}
	return "train"
}

// Corpus is a tokenized text file with its train/val split, or token shards.
type Corpus struct {
	train, val []byte
	// trainShards and valShards are set instead for token shards.
	trainShards, valShards []*shard
}

// Load reads the corpus at path: token shards when path is a .bin file or a
// glob (isShards; every token must be below vocab), else a text file read as
// bytes whose last valFraction is held out for validation.
func Load(path string, valFraction float64, vocab int) (*Corpus, error) {
	if isShards(path) {
		return loadShards(path, vocab)
	}
	if vocab < Vocab {
		return nil, fmt.Errorf("data: %s is read as bytes: model.vocab %d is below their %d values", path, vocab, Vocab)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	return New(raw, valFraction)
}

// New splits raw bytes into train and val; the split point is fixed by valFraction
// alone, so every peer that holds the same file sees the same split.
func New(raw []byte, valFraction float64) (*Corpus, error) {
	if valFraction <= 0 || valFraction >= 1 {
		return nil, fmt.Errorf("data: val fraction %g not in (0, 1)", valFraction)
	}
	cut := int(float64(len(raw)) * (1 - valFraction))
	c := &Corpus{train: raw[:cut], val: raw[cut:]}
	if len(c.train) < 2 || len(c.val) < 2 {
		return nil, fmt.Errorf("data: corpus of %d bytes is too small to split", len(raw))
	}
	return c, nil
}

// Close unmaps a shard corpus's shards; a byte corpus holds nothing to free.
func (c *Corpus) Close() {
	for _, s := range append(c.trainShards, c.valShards...) {
		syscall.Munmap(s.mem)
	}
	c.trainShards, c.valShards = nil, nil
}

func (c *Corpus) part(s Split) []byte {
	if s == Val {
		return c.val
	}
	return c.train
}

func (c *Corpus) shards(s Split) []*shard {
	if s == Val {
		return c.valShards
	}
	return c.trainShards
}

// Len returns the number of tokens in a split.
func (c *Corpus) Len(s Split) int {
	if ss := c.shards(s); ss != nil {
		n := 0
		for _, sh := range ss {
			n += len(sh.tok)
		}
		return n
	}
	return len(c.part(s))
}

// MaxSeqLen is the longest T that Batch can serve from split s: a window lies
// within one shard.
func (c *Corpus) MaxSeqLen(s Split) int {
	if ss := c.shards(s); ss != nil {
		m := len(ss[0].tok)
		for _, sh := range ss {
			m = min(m, len(sh.tok))
		}
		return m - 1
	}
	return len(c.part(s)) - 1
}

// Batch draws B windows of T+1 tokens at offsets chosen by rng and returns inputs
// and next-token targets, each B*T long. The same rng state gives the same batch.
// Over shards, a window's place is drawn uniformly over all of a split's
// windows, one draw per window as for a byte corpus.
func (c *Corpus) Batch(s Split, B, T int, rng *rand.Rand) (tokens, targets []int32) {
	T = min(T, c.MaxSeqLen(s))
	tokens = make([]int32, B*T)
	targets = make([]int32, B*T)
	ss := c.shards(s)
	for b := 0; b < B; b++ {
		if ss == nil {
			p := c.part(s)
			off := rng.IntN(len(p) - T)
			for t := 0; t < T; t++ {
				tokens[b*T+t] = int32(p[off+t])
				targets[b*T+t] = int32(p[off+t+1])
			}
			continue
		}
		tok, off := window(ss, T, rng)
		for t := 0; t < T; t++ {
			tokens[b*T+t] = int32(tok[off+t])
			targets[b*T+t] = int32(tok[off+t+1])
		}
	}
	return tokens, targets
}

// window draws one window of T+1 tokens over the shards: the shard's tokens
// and the window's offset in them.
func window(ss []*shard, T int, rng *rand.Rand) ([]uint16, int) {
	total := 0
	for _, sh := range ss {
		total += len(sh.tok) - T
	}
	r := rng.IntN(total)
	for _, sh := range ss {
		if n := len(sh.tok) - T; r >= n {
			r -= n
			continue
		}
		return sh.tok, r
	}
	panic("unreachable")
}

// ValStream is the batch stream evaluation draws from: every evaluation, on
// every peer and in `swarmnode local`, averages over the same val windows, so
// val losses compare across runs.
const ValStream = 1

// NewRNG returns the batch-order generator for a seed and stream; trainers with
// different stream numbers draw different batches from the same seed.
func NewRNG(seed, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream^0x9e3779b97f4a7c15))
}
