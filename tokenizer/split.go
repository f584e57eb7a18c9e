package tokenizer

import (
	"strings"
	"unicode"
)

// split cuts text into GPT-2's pre-tokenization pieces, the matches of
//
//	's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// tried in that order at each position. Go's regexp has no lookahead, so the
// pattern is followed by hand.
func split(text string) []string {
	r := []rune(text)
	var out []string
	for i := 0; i < len(r); {
		n := match(r, i)
		out = append(out, string(r[i:i+n]))
		i += n
	}
	return out
}

var contractions = []string{"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}

// match is the length of the pattern's match at r[i:].
func match(r []rune, i int) int {
	for _, c := range contractions {
		if strings.HasPrefix(string(r[i:min(len(r), i+3)]), c) {
			return len([]rune(c))
		}
	}
	j := i
	if r[i] == ' ' && i+1 < len(r) {
		j = i + 1 // " ?" before a run of one class
	}
	for _, class := range []func(rune) bool{unicode.IsLetter, unicode.IsNumber, isOther} {
		if class(r[j]) {
			k := j
			for k < len(r) && class(r[k]) {
				k++
			}
			return k - i
		}
	}
	if !isSpace(r[i]) {
		return 1 // cannot happen: every rune is in one class or whitespace
	}
	k := i
	for k < len(r) && isSpace(r[k]) {
		k++
	}
	if k == len(r) || k-i == 1 {
		return k - i // \s+ to the end, or a lone space before the next word
	}
	return k - i - 1 // \s+(?!\S): the last space goes with what follows
}

func isSpace(c rune) bool { return unicode.IsSpace(c) }

func isOther(c rune) bool { return !isSpace(c) && !unicode.IsLetter(c) && !unicode.IsNumber(c) }
