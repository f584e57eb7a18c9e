package codec

import (
	"encoding/binary"
	"fmt"
)

// IntKind returns the smallest integer codec that holds every value of src:
// Uint8, Uint16 or Int32 (a negative value needs Int32, so that the reader
// sees it and refuses it).
func IntKind(src []int32) Kind {
	var top int32
	for _, v := range src {
		if v < 0 {
			return Int32
		}
		top = max(top, v)
	}
	switch {
	case top < 1<<8:
		return Uint8
	case top < 1<<16:
		return Uint16
	}
	return Int32
}

// EncodeInts appends int32 values (token ids, targets) to dst as int32.
func EncodeInts(dst []byte, src []int32) []byte { return EncodeIntsAs(dst, src, Int32) }

// EncodeIntsAs appends src to dst in the integer codec k, which must hold
// every value (see IntKind).
func EncodeIntsAs(dst []byte, src []int32, k Kind) []byte {
	off := len(dst)
	dst = grow(dst, Format{Kind: k}.Len(len(src)))
	out := dst[off:]
	for i, v := range src {
		switch k {
		case Uint8:
			out[i] = uint8(v)
		case Uint16:
			binary.LittleEndian.PutUint16(out[2*i:], uint16(v))
		default:
			binary.LittleEndian.PutUint32(out[4*i:], uint32(v))
		}
	}
	return dst
}

// DecodeInts fills dst from int32 values in src and checks every value lies in
// [0, limit).
func DecodeInts(dst []int32, src []byte, limit int) error {
	return DecodeIntsAs(dst, src, Int32, limit)
}

// DecodeIntsAs fills dst from src in the integer codec k and checks every value
// lies in [0, limit).
func DecodeIntsAs(dst []int32, src []byte, k Kind, limit int) error {
	if !k.Integer() {
		return fmt.Errorf("%w: %v is no integer codec", ErrKind, k)
	}
	if n := (Format{Kind: k}).Len(len(dst)); len(src) != n {
		return fmt.Errorf("%w: %d %v values take %d bytes, got %d", ErrLength, len(dst), k, n, len(src))
	}
	for i := range dst {
		var v int32
		switch k {
		case Uint8:
			v = int32(src[i])
		case Uint16:
			v = int32(binary.LittleEndian.Uint16(src[2*i:]))
		default:
			v = int32(binary.LittleEndian.Uint32(src[4*i:]))
		}
		if v < 0 || int(v) >= limit {
			return fmt.Errorf("%w: value %d at index %d not in [0, %d)", ErrRange, v, i, limit)
		}
		dst[i] = v
	}
	return nil
}
