// Package tokenizer holds GPT-2's byte-level BPE tokenizer (the gpt2 / r50k
// encoding: 50257 tokens, the last <|endoftext|>), built into the binary so
// that nothing is downloaded at run time.
//
// The vocabulary is GPT-2's merges file (OpenAI's gpt-2 release, MIT
// license), gzipped in gpt2_merges.bpe.gz. Token ids follow from it: ids
// 0–255 are the 256 bytes in GPT-2's bytes-to-unicode order, merge i makes id
// 256+i, and 50256 is <|endoftext|>. Encoding splits text with GPT-2's
// pre-tokenization pattern (split.go), then merges each piece's bytes by
// rank.
package tokenizer

import (
	"bufio"
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"strings"
	"sync"
)

//go:embed gpt2_merges.bpe.gz
var gpt2Merges []byte

// EndOfText is the id of <|endoftext|>, which separates documents.
const EndOfText = 50256

// GPT2Vocab is the size of GPT-2's vocabulary.
const GPT2Vocab = 50257

// BPE is a byte-level BPE tokenizer. It is safe for concurrent use.
type BPE struct {
	byteID [256]int32         // a byte's token id
	rank   map[[2]int32]int32 // a mergeable pair's rank; the merged id is 256+rank
	bytes  [][]byte           // each token's bytes
	mu     sync.Mutex
	cache  map[string][]int32
}

var (
	gpt2Once sync.Once
	gpt2     *BPE
	gpt2Err  error
)

// GPT2 returns GPT-2's tokenizer, built on first use.
func GPT2() (*BPE, error) {
	gpt2Once.Do(func() { gpt2, gpt2Err = load(gpt2Merges) })
	return gpt2, gpt2Err
}

// byteOrder is GPT-2's bytes-to-unicode order: the printable bytes first, as
// themselves, then the others; byte order[i] is token i.
func byteOrder() ([]byte, map[rune]byte) {
	var order []byte
	printable := func(b int) bool { return b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF }
	for b := range 256 {
		if printable(b) {
			order = append(order, byte(b))
		}
	}
	char := map[rune]byte{} // the character each byte is written as in the merges file
	for _, b := range order {
		char[rune(b)] = b
	}
	n := 0
	for b := range 256 {
		if !printable(b) {
			order = append(order, byte(b))
			char[rune(256+n)] = byte(b)
			n++
		}
	}
	return order, char
}

func load(gz []byte) (*BPE, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	order, char := byteOrder()
	t := &BPE{rank: map[[2]int32]int32{}, cache: map[string][]int32{}}
	ids := map[string]int32{} // a token's bytes → id
	for i, b := range order {
		t.byteID[b] = int32(i)
		t.bytes = append(t.bytes, []byte{b})
		ids[string([]byte{b})] = int32(i)
	}
	decode := func(s string) (string, error) { // merges-file characters → bytes
		var out []byte
		for _, r := range s {
			b, ok := char[r]
			if !ok {
				return "", fmt.Errorf("tokenizer: character %q in the merges", r)
			}
			out = append(out, b)
		}
		return string(out), nil
	}
	// Merge i makes token 256+i; a merge may name a token that a later one
	// makes, so every token gets its id before the pairs are ranked.
	var pairs [][2]string
	sc := bufio.NewScanner(zr)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#version") || line == "" {
			continue // the header; "# #" is a merge
		}
		a, b, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("tokenizer: merge %q", line)
		}
		ab, err := decode(a)
		if err != nil {
			return nil, err
		}
		bb, err := decode(b)
		if err != nil {
			return nil, err
		}
		pairs = append(pairs, [2]string{ab, bb})
		ids[ab+bb] = int32(len(t.bytes))
		t.bytes = append(t.bytes, []byte(ab+bb))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	for i, p := range pairs {
		ia, oka := ids[p[0]]
		ib, okb := ids[p[1]]
		if !oka || !okb {
			return nil, fmt.Errorf("tokenizer: merge %q of unknown tokens", p[0]+" "+p[1])
		}
		t.rank[[2]int32{ia, ib}] = int32(i)
	}
	t.bytes = append(t.bytes, []byte("<|endoftext|>"))
	if len(t.bytes) != GPT2Vocab {
		return nil, fmt.Errorf("tokenizer: %d tokens, want %d", len(t.bytes), GPT2Vocab)
	}
	return t, nil
}

// Encode returns the token ids of text (<|endoftext|> in the text is
// encoded as text, as tiktoken's encode_ordinary does).
func (t *BPE) Encode(text string) []int32 {
	var out []int32
	for _, piece := range split(text) {
		out = append(out, t.piece(piece)...)
	}
	return out
}

// piece merges the bytes of one pre-tokenized piece by rank.
func (t *BPE) piece(p string) []int32 {
	t.mu.Lock()
	ids, ok := t.cache[p]
	t.mu.Unlock()
	if ok {
		return ids
	}
	ids = make([]int32, len(p))
	for i := range len(p) {
		ids[i] = t.byteID[p[i]]
	}
	for len(ids) > 1 {
		best, at := int32(-1), -1
		for i := 0; i+1 < len(ids); i++ {
			if r, ok := t.rank[[2]int32{ids[i], ids[i+1]}]; ok && (best < 0 || r < best) {
				best, at = r, i
			}
		}
		if at < 0 {
			break
		}
		pair := [2]int32{ids[at], ids[at+1]}
		merged := ids[:0:0]
		for i := 0; i < len(ids); i++ {
			if i+1 < len(ids) && ids[i] == pair[0] && ids[i+1] == pair[1] {
				merged = append(merged, 256+best)
				i++
				continue
			}
			merged = append(merged, ids[i])
		}
		ids = merged
	}
	t.mu.Lock()
	if len(t.cache) < 1<<16 {
		t.cache[p] = ids
	}
	t.mu.Unlock()
	return ids
}

// Decode returns the bytes of ids; an id outside the vocabulary is an error.
func (t *BPE) Decode(ids []int32) ([]byte, error) {
	var out []byte
	for _, id := range ids {
		if id < 0 || int(id) >= len(t.bytes) {
			return out, fmt.Errorf("tokenizer: id %d outside the vocabulary of %d", id, len(t.bytes))
		}
		out = append(out, t.bytes[id]...)
	}
	return out, nil
}
