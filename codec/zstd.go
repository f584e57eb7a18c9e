package codec

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// The zstd encoder and decoder are safe for concurrent EncodeAll/DecodeAll calls, so
// one pair serves the whole process.
var (
	zstdOnce sync.Once
	zstdEnc  *zstd.Encoder
	zstdDec  *zstd.Decoder
	zstdErr  error
)

func zstdInit() error {
	zstdOnce.Do(func() {
		// Without all-literal entropy coding zstd finds no matches in float data and
		// stores it raw, gaining nothing.
		zstdEnc, zstdErr = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithAllLitEntropyCompression(true),
			zstd.WithEncoderConcurrency(1),
			zstd.WithLowerEncoderMem(true))
		if zstdErr != nil {
			return
		}
		// The cap limit makes DecodeAll stop at cap(dst), which Unzstd sets to the
		// size the header promises: a small payload cannot inflate into a large one.
		zstdDec, zstdErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderLowmem(true))
	})
	return zstdErr
}

// Zstd appends the zstd compression of src to dst.
func Zstd(dst, src []byte) ([]byte, error) {
	if err := zstdInit(); err != nil {
		return dst, fmt.Errorf("codec: zstd: %w", err)
	}
	return zstdEnc.EncodeAll(src, dst), nil
}

// Unzstd decompresses src, which must decode to exactly want bytes, into dst[:0]
// (reallocated if its capacity is short).
func Unzstd(dst, src []byte, want int) ([]byte, error) {
	if err := zstdInit(); err != nil {
		return nil, fmt.Errorf("codec: zstd: %w", err)
	}
	var h zstd.Header
	if err := h.Decode(src); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrZstd, err)
	}
	if h.HasFCS && h.FrameContentSize != uint64(want) {
		return nil, fmt.Errorf("%w: content size %d, want %d", ErrZstd, h.FrameContentSize, want)
	}
	if cap(dst) < want {
		dst = make([]byte, 0, want)
	}
	out, err := zstdDec.DecodeAll(src, dst[:0:want])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrZstd, err)
	}
	if len(out) != want {
		return nil, fmt.Errorf("%w: decoded %d bytes, want %d", ErrZstd, len(out), want)
	}
	return out, nil
}
