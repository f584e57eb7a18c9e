package codec

import "fmt"

// Setting is one codec configuration of the stage protocol as compared by the codec
// table (cmd codectable and BenchmarkCodecs).
type Setting struct {
	Format
	Zstd bool
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
		for _, f := range []Format{{Kind: FP32}, {Kind: BF16}, {Kind: Int8, Block: 64}, {Kind: Int8, Block: 256}} {
			out = append(out, Setting{Format: f, Zstd: z})
		}
	}
	return out
}

// Scratch holds the buffers RoundTrip reuses between calls.
type Scratch struct{ enc, z, raw []byte }

// RoundTrip encodes x and decodes it into y as a sender and a receiver would,
// returning the wire size in bytes.
func (s Setting) RoundTrip(sc *Scratch, x, y []float32) (int, error) {
	var err error
	if sc.enc, err = s.Append(sc.enc[:0], x); err != nil {
		return 0, err
	}
	if !s.Zstd {
		return len(sc.enc), s.Decode(y, sc.enc)
	}
	if sc.z, err = Zstd(sc.z[:0], sc.enc); err != nil {
		return 0, err
	}
	if sc.raw, err = Unzstd(sc.raw, sc.z, len(sc.enc)); err != nil {
		return 0, err
	}
	return len(sc.z), s.Decode(y, sc.raw)
}
