package wire

import "sync/atomic"

// Traffic counts the frames this process has written on every Conn: what went
// on the wire, and what the same frames would have taken with every tensor sent
// as plain 4-byte values (no quantization, no zstd). One process is one node, so
// the totals are the node's; they are what compression saves, measured.
type Traffic struct {
	// Frames is the number of frames written.
	Frames int64 `json:"frames"`
	// Bytes is what was written, headers and encoded payloads.
	Bytes int64 `json:"bytes"`
	// RawBytes is what the same frames take uncompressed.
	RawBytes int64 `json:"raw_bytes"`
}

var traffic struct{ frames, bytes, raw atomic.Int64 }

// Sent returns the process's totals so far.
func Sent() Traffic {
	return Traffic{Frames: traffic.frames.Load(), Bytes: traffic.bytes.Load(), RawBytes: traffic.raw.Load()}
}
