package codec

import (
	"encoding/binary"
	"fmt"
)

// EncodeInts appends int32 values (token ids, targets) to dst.
func EncodeInts(dst []byte, src []int32) []byte {
	off := len(dst)
	dst = grow(dst, 4*len(src))
	out := dst[off:]
	for i, v := range src {
		binary.LittleEndian.PutUint32(out[4*i:4*i+4], uint32(v))
	}
	return dst
}

// DecodeInts fills dst from src and checks every value lies in [0, limit).
func DecodeInts(dst []int32, src []byte, limit int) error {
	if len(src) != 4*len(dst) {
		return fmt.Errorf("%w: %d int32 values take %d bytes, got %d", ErrLength, len(dst), 4*len(dst), len(src))
	}
	for i := range dst {
		v := int32(binary.LittleEndian.Uint32(src[4*i : 4*i+4]))
		if v < 0 || int(v) >= limit {
			return fmt.Errorf("%w: value %d at index %d not in [0, %d)", ErrRange, v, i, limit)
		}
		dst[i] = v
	}
	return nil
}
