package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"

	"swarmnode/codec"
)

// buf is an in-memory stream: writes append, reads consume.
type buf struct{ bytes.Buffer }

func (*buf) SetReadDeadline(time.Time) error  { return nil }
func (*buf) SetWriteDeadline(time.Time) error { return nil }

var never time.Time

func randFloats(n int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 1))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

func TestRoundTrip(t *testing.T) {
	x := randFloats(2*5*16, 1)
	toks := []int32{1, 2, 3, 255, 0, 7, 9, 10, 11, 12}
	for _, enc := range []Encoding{
		{Codec: codec.FP32},
		{Codec: codec.BF16},
		{Codec: codec.Int8, Block: 16},
		{Codec: codec.Int8, Block: 7, Link: codec.NewLink(codec.ZstdOn)},
		{Codec: codec.BF16, Link: codec.NewLink(codec.ZstdAuto)},
	} {
		var s buf
		c := NewConn(&s, 1<<20, nil)
		if err := c.WriteInts(Header{Kind: Tokens, ID: 42, Stage: 0, B: 2, T: 5, D: 1}, toks, never); err != nil {
			t.Fatal(err)
		}
		h := Header{Kind: Activations, Flags: FlagEval, ID: 42, Stage: 3, B: 2, T: 5, D: 16, Budget: 1234 * time.Millisecond}
		if err := c.WriteFloats(h, x, enc, never); err != nil {
			t.Fatal(err)
		}
		if err := c.WriteResult(42, 2, 0, 1.5, never); err != nil {
			t.Fatal(err)
		}
		if err := c.WriteError(42, 1, ErrBusy, never); err != nil {
			t.Fatal(err)
		}

		f, err := c.Read(never)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Expect(Tokens, 2, 5, 1, 0); err != nil {
			t.Fatal(err)
		}
		got, err := f.Ints(nil, 256)
		if err != nil || !slices.Equal(got, toks) {
			t.Fatalf("tokens %v %v", got, err)
		}
		f, err = c.Read(never)
		if err != nil {
			t.Fatal(err)
		}
		if f.ID != 42 || f.Stage != 3 || !f.Eval() || f.Codec != enc.Codec || f.Budget != 1240*time.Millisecond {
			t.Fatalf("header %+v", f.Header)
		}
		if err := f.Expect(Activations, 0, 0, 16, 8); err != nil {
			t.Fatal(err)
		}
		y, err := f.Floats(nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range x {
			if d := math.Abs(float64(x[i] - y[i])); d > 0.05*math.Abs(float64(x[i]))+0.02 {
				t.Fatalf("%v: value %d %g -> %g", enc.Codec, i, x[i], y[i])
			}
		}
		f, err = c.Read(never)
		if err != nil || f.Kind != Result || f.Loss != 1.5 {
			t.Fatalf("result %+v %v", f, err)
		}
		_, err = c.Read(never)
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != CodeBusy || !errors.Is(err, ErrBusy) || re.Stage != 1 {
			t.Fatalf("error frame: %v", err)
		}
	}
}

func TestZstdShrinks(t *testing.T) {
	x := make([]float32, 4096)
	for i := range x {
		x[i] = float32(i%7) * 0.25 // very compressible
	}
	var s1, s2 buf
	h := Header{Kind: Gradient, B: 1, T: 64, D: 64}
	if err := NewConn(&s1, 1<<20, nil).WriteFloats(h, x, Encoding{Codec: codec.FP32}, never); err != nil {
		t.Fatal(err)
	}
	if err := NewConn(&s2, 1<<20, nil).WriteFloats(h, x, Encoding{Codec: codec.FP32, Link: codec.NewLink(codec.ZstdOn)}, never); err != nil {
		t.Fatal(err)
	}
	if s2.Len() >= s1.Len()/2 {
		t.Fatalf("zstd frame %d bytes vs raw %d", s2.Len(), s1.Len())
	}
	f, err := NewConn(&s2, 1<<20, nil).Read(never)
	if err != nil || !f.Zstd {
		t.Fatalf("%v zstd=%v", err, f != nil && f.Zstd)
	}
	y, err := f.Floats(nil)
	if err != nil || !slices.Equal(x, y) {
		t.Fatalf("zstd round trip: %v", err)
	}
}

// frame builds a valid activations frame of 1x2x4 fp32 values.
func frame(t *testing.T) []byte {
	var s buf
	if err := NewConn(&s, 1<<20, nil).WriteFloats(Header{Kind: Activations, ID: 9, Stage: 1, B: 1, T: 2, D: 4}, randFloats(8, 2), Encoding{Codec: codec.FP32}, never); err != nil {
		t.Fatal(err)
	}
	return s.Bytes()
}

// resum recomputes the checksum after a deliberate edit, so that the reader's
// deeper checks are what rejects the frame.
func resum(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[44:], Checksum(b[:44], b[HeaderSize:]))
	return b
}

func readAll(b []byte, maxFrame int) error {
	var s buf
	s.Write(b)
	f, err := NewConn(&s, maxFrame, nil).Read(never)
	if err != nil {
		return err
	}
	if err := f.Expect(Activations, 1, 2, 4, 0); err != nil {
		return err
	}
	_, err = f.Floats(nil)
	return err
}

func TestBadFrames(t *testing.T) {
	good := frame(t)
	if err := readAll(good, 1<<20); err != nil {
		t.Fatalf("good frame rejected: %v", err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	nan := math.Float32bits(float32(math.NaN()))
	for _, tc := range []struct {
		name string
		b    []byte
		max  int
		want error
	}{
		{"empty header", good[:0], 0, nil},
		{"truncated header", good[:20], 0, ErrTruncated},
		{"truncated payload", good[:len(good)-3], 0, ErrTruncated},
		{"magic", edit(func(b []byte) []byte { b[0] = 'X'; return b }), 0, ErrMagic},
		{"version", edit(func(b []byte) []byte { b[3] = 2; return b }), 0, ErrVersion},
		{"checksum", edit(func(b []byte) []byte { b[HeaderSize+1] ^= 1; return b }), 0, ErrChecksum},
		{"header checksum", edit(func(b []byte) []byte { b[16] ^= 1; return b }), 0, ErrChecksum},
		{"oversize", good, HeaderSize + 16, ErrOversize},
		{"oversize length", edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[40:], 1<<30); return b }), 0, ErrOversize},
		{"huge shape", edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[24:], 1<<20)
			binary.LittleEndian.PutUint32(b[28:], 1<<20)
			return resum(b)
		}), 0, ErrOversize},
		{"shape vs length", edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[32:], 5); return resum(b) }), 0, ErrShape},
		{"wrong shape for stage", edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[28:], 4)
			binary.LittleEndian.PutUint32(b[32:], 2)
			return resum(b)
		}), 0, ErrShape},
		{"wrong kind", edit(func(b []byte) []byte { b[4] = byte(Gradient); return resum(b) }), 0, ErrUnexpect},
		{"unknown kind", edit(func(b []byte) []byte { b[4] = 99; return resum(b) }), 0, ErrHeader},
		{"dtype", edit(func(b []byte) []byte { b[7] = byte(Int32); return resum(b) }), 0, ErrHeader},
		{"codec", edit(func(b []byte) []byte { b[6] = 9; return resum(b) }), 0, ErrHeader},
		{"flags", edit(func(b []byte) []byte { b[5] = 0x40; return resum(b) }), 0, ErrHeader},
		{"NaN", edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[HeaderSize+8:], nan); return resum(b) }), 0, ErrNonFinite},
		{"Inf", edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[HeaderSize:], 0xff800000); return resum(b) }), 0, ErrNonFinite},
		{"NaN loss", edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[36:], nan); return resum(b) }), 0, ErrNonFinite},
		{"bad zstd", edit(func(b []byte) []byte { b[6] |= zstdBit; return resum(b) }), 0, ErrPayload},
	} {
		max := tc.max
		if max == 0 {
			max = 1 << 20
		}
		err := readAll(tc.b, max)
		if tc.want == nil {
			if err == nil {
				t.Errorf("%s: accepted", tc.name)
			}
			continue
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
		if c := CodeOf(err); c == CodeInternal {
			t.Errorf("%s: %v maps to code %v", tc.name, err, c)
		}
	}
}

func TestTokenRange(t *testing.T) {
	var s buf
	c := NewConn(&s, 1<<20, nil)
	if err := c.WriteInts(Header{Kind: Targets, B: 1, T: 3, D: 1}, []int32{1, 300, 2}, never); err != nil {
		t.Fatal(err)
	}
	f, err := c.Read(never)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Ints(nil, 256); !errors.Is(err, ErrRange) || CodeOf(err) != CodeRange {
		t.Fatalf("token 300: %v", err)
	}
}

func TestWriteRefusesOversize(t *testing.T) {
	var s buf
	err := NewConn(&s, HeaderSize+100, nil).WriteFloats(Header{Kind: Activations, B: 1, T: 1, D: 100}, randFloats(100, 3), Encoding{Codec: codec.FP32}, never)
	if !errors.Is(err, ErrOversize) || s.Len() != 0 {
		t.Fatalf("err %v, %d bytes written", err, s.Len())
	}
	err = NewConn(&s, 1<<20, nil).WriteFloats(Header{Kind: Activations, B: 1, T: 1, D: 2}, []float32{1, float32(math.Inf(1))}, Encoding{Codec: codec.Int8, Block: 2}, never)
	if !errors.Is(err, codec.ErrNonFinite) || CodeOf(err) != CodeNonFinite {
		t.Fatalf("Inf sent: %v", err)
	}
}

func TestReadDeadline(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	_, err := NewConn(a, 1<<20, nil).Read(time.Now().Add(50 * time.Millisecond))
	if !errors.Is(err, ErrTimeout) || CodeOf(err) != CodeTimeout {
		t.Fatalf("hanging peer: %v", err)
	}
	// A peer that sends half a frame and stalls is also cut off.
	go b.Write(frame(t)[:30])
	_, err = NewConn(a, 1<<20, nil).Read(time.Now().Add(50 * time.Millisecond))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("stalled peer: %v", err)
	}
}

func TestErrorFrameLimits(t *testing.T) {
	var s buf
	long := string(bytes.Repeat([]byte("x"), 5000)) + "\xff"
	if err := NewConn(&s, 1<<20, nil).WriteError(1, 2, errors.New(long), never); err != nil {
		t.Fatal(err)
	}
	_, err := NewConn(&s, 1<<20, nil).Read(never)
	var re *RemoteError
	if !errors.As(err, &re) || len(re.Msg) != MaxErrorMsg || re.Code != CodeInternal {
		t.Fatalf("long error: %v", err)
	}
}

// FuzzRead feeds arbitrary bytes to the frame reader and decoders: no panic, no
// allocation beyond the cap, and anything accepted is finite and in range.
func FuzzRead(f *testing.F) {
	f.Add(frameBytes(Header{Kind: Activations, ID: 1, Stage: 1, B: 1, T: 2, D: 4}, Encoding{Codec: codec.FP32}))
	f.Add(frameBytes(Header{Kind: Gradient, B: 2, T: 3, D: 5}, Encoding{Codec: codec.Int8, Block: 4}))
	f.Add(frameBytes(Header{Kind: Gradient, B: 2, T: 3, D: 5}, Encoding{Codec: codec.BF16, Link: codec.NewLink(codec.ZstdOn)}))
	var s buf
	c := NewConn(&s, 1<<16, nil)
	_ = c.WriteInts(Header{Kind: Tokens, B: 1, T: 4, D: 1}, []int32{1, 2, 3, 4}, never)
	_ = c.WriteResult(3, 2, FlagEval, 2.5, never)
	_ = c.WriteError(3, 2, ErrShape, never)
	f.Add(s.Bytes())
	f.Add([]byte("SWF\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s buf
		s.Write(b)
		c := NewConn(&s, 1<<16, nil)
		c.AcceptShared() // names that are not a Shm's, or of no file, are refused
		for range 4 {
			fr, err := c.Read(never)
			if err != nil {
				return
			}
			switch fr.DType {
			case Float32:
				if fr.Codec == codec.Int8 {
					// What a GPU stage takes instead of Floats: exactly the
					// int8 layout's length, whatever the header claimed.
					if w, err := fr.Int8Wire(); err == nil && len(w) != fr.Format().Len(fr.N()) {
						t.Fatalf("Int8Wire gave %d bytes for %d values in blocks of %d", len(w), fr.N(), fr.Block)
					}
				}
				x, err := fr.Floats(nil)
				if err == nil {
					for _, v := range x {
						if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
							t.Fatalf("accepted %g", v)
						}
					}
				}
			case Int32:
				x, err := fr.Ints(nil, 256)
				if err == nil {
					for _, v := range x {
						if v < 0 || v >= 256 {
							t.Fatalf("accepted token %d", v)
						}
					}
				}
			}
		}
	})
}

func frameBytes(h Header, enc Encoding) []byte {
	var s buf
	_ = NewConn(&s, 1<<16, nil).WriteFloats(h, randFloats(h.N(), 4), enc, never)
	return s.Bytes()
}

// throttled is a stream whose writes take as long as a link of bw bytes/s needs.
type throttled struct {
	buf
	bw float64
}

func (s *throttled) Write(p []byte) (int, error) {
	time.Sleep(time.Duration(float64(len(p)) / s.bw * float64(time.Second)))
	return s.buf.Write(p)
}

// TestAutoZstdFollowsLink: with zstd: auto, frames to a slow link are compressed,
// frames to a fast one are not (apart from the periodic probes).
func TestAutoZstdFollowsLink(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	x := make([]float32, 16*256)
	for i := range x {
		x[i] = float32(rng.NormFloat64()) * float32(1+i%256) / 64
	}
	h := Header{Kind: Activations, B: 1, T: 16, D: 256}
	count := func(s Stream, frames int) (zstd int) {
		link := codec.NewLink(codec.ZstdAuto)
		c := NewConn(s, 1<<22, nil)
		for range frames {
			if err := c.WriteFloats(h, x, Encoding{Codec: codec.BF16, Link: link}, never); err != nil {
				t.Fatal(err)
			}
		}
		r := NewConn(s, 1<<22, nil)
		for range frames {
			f, err := r.Read(never)
			if err != nil {
				t.Fatal(err)
			}
			if f.Zstd {
				zstd++
			}
			if _, err := f.Floats(nil); err != nil {
				t.Fatal(err)
			}
		}
		return zstd
	}
	// 200 kB/s is far below what zstd gains per second of CPU even under -race.
	if n := count(&throttled{bw: 2e5}, 12); n < 11 {
		t.Errorf("slow link: %d of 12 frames compressed, want all but the first measurement", n)
	}
	// In memory, writes are instant: only the probes (1 in 16) and the odd frame
	// after a write that a GC pause made look slow should be compressed.
	if n := count(&buf{}, 64); n > 16 {
		t.Errorf("fast link: %d of 64 frames compressed, want about the %d probes", n, 64/16+1)
	}
}

// TestTrafficCounts checks that a Counter counts what went on the wire and what
// the frames would take as plain float32: an int8 frame of 1024 values in blocks
// of 64 carries 1024+4·16 payload bytes for 4096 raw. Another node's counter
// counts none of it.
func TestTrafficCounts(t *testing.T) {
	var traffic, other Counter
	var s buf
	c := NewConn(&s, 1<<20, &traffic)
	h := Header{Kind: Activations, ID: 1, Stage: 1, B: 2, T: 8, D: 64}
	if err := c.WriteFloats(h, randFloats(1024, 3), Encoding{Codec: codec.Int8, Block: 64}, never); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteResult(1, 0, 0, 1, never); err != nil {
		t.Fatal(err)
	}
	if err := NewConn(&buf{}, 1<<20, &other).WriteResult(2, 0, 0, 1, never); err != nil {
		t.Fatal(err)
	}
	got := traffic.Sent()
	frames, bytes, raw := got.Frames, got.Bytes, got.RawBytes
	if frames != 2 || bytes != int64(s.Len()) {
		t.Fatalf("counted %d frames of %d bytes, wrote 2 frames of %d bytes", frames, bytes, s.Len())
	}
	if want := int64(2*HeaderSize + 1024*4); raw != want {
		t.Fatalf("raw bytes %d, want %d", raw, want)
	}
	if want := int64(2*HeaderSize + 1024 + 4*16); bytes != want {
		t.Fatalf("wire bytes %d, want %d", bytes, want)
	}
}

// TestInt8WireFrames: a payload quantized elsewhere (a GPU) goes out as an int8
// frame that any receiver decodes, and comes back out of a frame byte for byte,
// with and without zstd; a message of the wrong length is refused.
func TestInt8WireFrames(t *testing.T) {
	x := randFloats(2*8*64, 5)
	msg, err := codec.Format{Kind: codec.Int8, Block: 64}.Append(nil, x)
	if err != nil {
		t.Fatal(err)
	}
	h := Header{Kind: Gradient, ID: 3, Stage: 2, B: 2, T: 8, D: 64}
	for _, enc := range []Encoding{{Codec: codec.Int8, Block: 64}, {Codec: codec.Int8, Block: 64, Link: codec.NewLink(codec.ZstdOn)}} {
		var s buf
		c := NewConn(&s, 1<<20, nil)
		if err := c.WriteInt8Wire(h, msg, 64, enc, never); err != nil {
			t.Fatal(err)
		}
		f, err := c.Read(never)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.Int8Wire()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatal("int8 payload changed on the way")
		}
		y, err := f.Floats(nil)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]float32, len(x))
		if err := (codec.Format{Kind: codec.Int8, Block: 64}).Decode(want, msg); err != nil {
			t.Fatal(err)
		}
		for i := range y {
			if y[i] != want[i] {
				t.Fatalf("value %d: %v, want %v", i, y[i], want[i])
			}
		}
	}
	var s buf
	if err := NewConn(&s, 1<<20, nil).WriteInt8Wire(h, msg[1:], 64, Encoding{}, never); !errors.Is(err, ErrShape) {
		t.Fatalf("short message: %v", err)
	}
	if err := NewConn(&s, 1<<20, nil).WriteFloats(h, x, Encoding{Codec: codec.FP32}, never); err != nil {
		t.Fatal(err)
	}
	f, err := NewConn(&s, 1<<20, nil).Read(never)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Int8Wire(); err == nil {
		t.Fatal("fp32 frame read as int8")
	}
}
