package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestGPT2MatchesReference: the ids of every reference text equal those of
// GPT-2's own encoder (testdata/gen_gpt2_ids.js: edge cases of spaces,
// contractions, numbers, unicode and code, and 20 kB of Shakespeare), and
// decoding gives the text back.
func TestGPT2MatchesReference(t *testing.T) {
	tok, err := GPT2()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "gpt2_ids.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Text string
		IDs  []int32
	}
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		got := tok.Encode(c.Text)
		if !slices.Equal(got, c.IDs) {
			n := 0
			for n < min(len(got), len(c.IDs)) && got[n] == c.IDs[n] {
				n++
			}
			t.Errorf("%.40q: %d ids, reference %d; first difference at %d", c.Text, len(got), len(c.IDs), n)
			continue
		}
		back, err := tok.Decode(got)
		if err != nil || string(back) != c.Text {
			t.Errorf("%.40q does not decode back: %v", c.Text, err)
		}
	}
	if _, err := tok.Decode([]int32{GPT2Vocab}); err == nil {
		t.Error("decoded an id outside the vocabulary")
	}
	if eot, _ := tok.Decode([]int32{EndOfText}); string(eot) != "<|endoftext|>" {
		t.Errorf("EndOfText decodes to %q", eot)
	}
}

// FuzzEncodeDecode: any text encodes to ids inside the vocabulary that decode
// back to its bytes.
func FuzzEncodeDecode(f *testing.F) {
	f.Add("Hello, world! don't  \n\n x 12345 café 😀")
	f.Add("\xff\xfe invalid utf-8")
	tok, err := GPT2()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(s)
		back, err := tok.Decode(ids)
		if err != nil {
			t.Fatal(err)
		}
		if string(back) != s && string([]rune(s)) == s {
			t.Fatalf("%q decodes to %q", s, back)
		}
	})
}
