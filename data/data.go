// Package data reads a text corpus as bytes (vocab 256), splits it into train and
// val parts, and cuts deterministic microbatches of next-token prediction pairs.
package data

import (
	"fmt"
	"math/rand/v2"
	"os"
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

// Corpus is a tokenized text file with its train/val split.
type Corpus struct {
	train, val []byte
}

// Load reads path and holds out its last valFraction for validation.
func Load(path string, valFraction float64) (*Corpus, error) {
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

// Len returns the number of tokens in a split.
func (c *Corpus) Len(s Split) int { return len(c.part(s)) }

func (c *Corpus) part(s Split) []byte {
	if s == Val {
		return c.val
	}
	return c.train
}

// MaxSeqLen is the longest T that Batch can serve from split s.
func (c *Corpus) MaxSeqLen(s Split) int { return len(c.part(s)) - 1 }

// Batch draws B windows of T+1 tokens at offsets chosen by rng and returns inputs
// and next-token targets, each B*T long. The same rng state gives the same batch.
func (c *Corpus) Batch(s Split, B, T int, rng *rand.Rand) (tokens, targets []int32) {
	p := c.part(s)
	if T > len(p)-1 {
		T = len(p) - 1
	}
	tokens = make([]int32, B*T)
	targets = make([]int32, B*T)
	for b := 0; b < B; b++ {
		off := rng.IntN(len(p) - T)
		for t := 0; t < T; t++ {
			tokens[b*T+t] = int32(p[off+t])
			targets[b*T+t] = int32(p[off+t+1])
		}
	}
	return tokens, targets
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
