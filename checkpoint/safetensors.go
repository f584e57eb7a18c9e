package checkpoint

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
)

// Tensor is one named float32 tensor, row-major.
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
}

// maxHeader bounds a safetensors header: far above what any model's needs,
// and small enough that a forged length cannot make a reader allocate much.
const maxHeader = 100 << 20

type tensorInfo struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// WriteSafetensors writes tensors as float32 ("F32") in the safetensors format
// (an 8-byte little-endian header length, a JSON header padded with spaces to
// a multiple of 8, then the data) with meta as its __metadata__.
func WriteSafetensors(w io.Writer, tensors []Tensor, meta map[string]string) error {
	header := map[string]any{}
	if len(meta) > 0 {
		header["__metadata__"] = meta
	}
	var off int64
	for _, t := range tensors {
		if _, dup := header[t.Name]; dup || t.Name == "__metadata__" {
			return fmt.Errorf("safetensors: tensor name %q twice or reserved", t.Name)
		}
		if n := numel(t.Shape); n != len(t.Data) {
			return fmt.Errorf("safetensors: tensor %s of shape %v has %d values", t.Name, t.Shape, len(t.Data))
		}
		end := off + 4*int64(len(t.Data))
		header[t.Name] = tensorInfo{DType: "F32", Shape: t.Shape, Offsets: [2]int64{off, end}}
		off = end
	}
	h, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(h)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	if _, err := w.Write(h); err != nil {
		return err
	}
	buf := make([]byte, 0, 1<<20)
	for _, t := range tensors {
		for _, v := range t.Data {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			if len(buf) == cap(buf) {
				if _, err := w.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
	}
	_, err = w.Write(buf)
	return err
}

// ReadSafetensors parses a whole safetensors file of float32 tensors: the
// tensors by name and the __metadata__. It refuses a header that is too long,
// malformed or whose tensors are not F32, do not match their shapes, overlap,
// leave gaps or lie outside the data.
func ReadSafetensors(b []byte) (map[string]Tensor, map[string]string, error) {
	if len(b) < 8 {
		return nil, nil, errors.New("safetensors: shorter than its 8-byte header length")
	}
	hl := binary.LittleEndian.Uint64(b)
	if hl > maxHeader || hl > uint64(len(b)-8) {
		return nil, nil, fmt.Errorf("safetensors: header length %d beyond the file's %d bytes", hl, len(b))
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+hl], &raw); err != nil {
		return nil, nil, fmt.Errorf("safetensors: header: %w", err)
	}
	data := b[8+hl:]
	var meta map[string]string
	type span struct {
		name       string
		start, end int64
	}
	var spans []span
	out := map[string]Tensor{}
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &meta); err != nil {
				return nil, nil, fmt.Errorf("safetensors: __metadata__: %w", err)
			}
			continue
		}
		var ti tensorInfo
		if err := json.Unmarshal(msg, &ti); err != nil {
			return nil, nil, fmt.Errorf("safetensors: tensor %s: %w", name, err)
		}
		if ti.DType != "F32" {
			return nil, nil, fmt.Errorf("safetensors: tensor %s is %s, want F32", name, ti.DType)
		}
		n := numel(ti.Shape)
		start, end := ti.Offsets[0], ti.Offsets[1]
		if n < 0 || start < 0 || end < start || end > int64(len(data)) || end-start != 4*int64(n) {
			return nil, nil, fmt.Errorf("safetensors: tensor %s of shape %v at bytes [%d, %d) of %d", name, ti.Shape, start, end, len(data))
		}
		t := Tensor{Name: name, Shape: ti.Shape, Data: make([]float32, n)}
		for i := range t.Data {
			t.Data[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[start+4*int64(i):]))
		}
		out[name] = t
		spans = append(spans, span{name, start, end})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	var at int64
	for _, s := range spans {
		if s.start != at {
			return nil, nil, fmt.Errorf("safetensors: tensor %s starts at byte %d, want %d (overlap or gap)", s.name, s.start, at)
		}
		at = s.end
	}
	if at != int64(len(data)) {
		return nil, nil, fmt.Errorf("safetensors: %d bytes of data, tensors cover %d", len(data), at)
	}
	return out, meta, nil
}

// numel is the number of values of a shape, -1 if a dimension is negative or
// the count overflows.
func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		if d < 0 || (d > 0 && n > math.MaxInt32/d) {
			return -1
		}
		n *= d
	}
	return n
}
