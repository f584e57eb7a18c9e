package wire

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// Typed frames are the averaging protocol's format: a little-endian uint32 length n,
// then n bytes: a type byte, whose meaning the protocol defines, and the payload.
// The length counts the type byte, so a typed frame is never empty.

// TypedHeaderSize is the size of a typed frame's length and type.
const TypedHeaderSize = 5

// PutTypedHeader writes to h[:TypedHeaderSize] the header of a typed frame of type
// typ whose payload has n bytes.
func PutTypedHeader(h []byte, typ byte, n int) {
	binary.LittleEndian.PutUint32(h[:TypedHeaderSize], uint32(1+n))
	h[4] = typ
}

// WriteTyped writes one typed frame. Callers set deadlines on the stream.
func WriteTyped(w io.Writer, typ byte, payload []byte) error {
	var h [TypedHeaderSize]byte
	PutTypedHeader(h[:], typ, len(payload))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// WriteJSON writes v as the JSON payload of a typed frame of type typ.
func WriteJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteTyped(w, typ, b)
}

// ReadTypedHeader reads a typed frame's header and returns its type and payload
// length. A frame whose length (type byte included) is over limit is refused
// before its payload is read.
func ReadTypedHeader(r io.Reader, limit int) (typ byte, n int, err error) {
	var h [TypedHeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, err
	}
	switch size := int(binary.LittleEndian.Uint32(h[:])); {
	case size < 1:
		return 0, 0, fmt.Errorf("%w: empty typed frame", ErrHeader)
	case size > limit:
		return 0, 0, fmt.Errorf("%w: typed frame of %d bytes (limit %d)", ErrOversize, size, limit)
	default:
		return h[4], size - 1, nil
	}
}

// ReadTyped reads one typed frame of at most limit bytes, type byte included. It
// returns the type and the payload, read into buf (reallocated if its capacity is
// short, so it also returns the buffer to reuse).
func ReadTyped(r io.Reader, buf []byte, limit int) (typ byte, payload, grown []byte, err error) {
	typ, n, err := ReadTypedHeader(r, limit)
	if err != nil {
		return 0, nil, buf, err
	}
	if buf, err = ReadPayload(r, buf, n); err != nil {
		return 0, nil, buf, bodyErr(err)
	}
	return typ, buf, buf, nil
}

// ReadPayload reads exactly n bytes from r into buf, reallocated if its capacity
// is short, and returns them.
func ReadPayload(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err := io.ReadFull(r, buf)
	return buf, err
}
