package codec

import "fmt"

// Setting is one codec configuration as compared by the codec table.
type Setting struct {
	Kind  Kind
	Block int
	Zstd  bool
}

// Name is the setting as the table prints it, e.g. "int8/64+zstd".
func (s Setting) Name() string {
	n := s.Kind.String()
	if s.Kind == Int8 {
		n += fmt.Sprintf("/%d", s.Block)
	}
	if s.Zstd {
		n += "+zstd"
	}
	return n
}

// Table lists the settings worth comparing: every quantizer with and without zstd.
func Table() []Setting {
	var out []Setting
	for _, z := range []bool{false, true} {
		out = append(out,
			Setting{Kind: FP32, Zstd: z},
			Setting{Kind: BF16, Zstd: z},
			Setting{Kind: Int8, Block: 64, Zstd: z},
			Setting{Kind: Int8, Block: 256, Zstd: z})
	}
	return out
}

// Scratch holds the buffers RoundTrip reuses between calls.
type Scratch struct{ enc, z, raw []byte }

// RoundTrip encodes x and decodes it into y as a sender and a receiver would,
// returning the wire size in bytes.
func (s Setting) RoundTrip(sc *Scratch, x, y []float32) (int, error) {
	var err error
	if sc.enc, err = Encode(sc.enc[:0], s.Kind, s.Block, x); err != nil {
		return 0, err
	}
	if !s.Zstd {
		return len(sc.enc), Decode(y, s.Kind, s.Block, sc.enc)
	}
	if sc.z, err = Zstd(sc.z[:0], sc.enc); err != nil {
		return 0, err
	}
	if sc.raw, err = Unzstd(sc.raw, sc.z, len(sc.enc)); err != nil {
		return 0, err
	}
	return len(sc.z), Decode(y, s.Kind, s.Block, sc.raw)
}
