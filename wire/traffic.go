package wire

import "sync/atomic"

// Traffic is what frames written on a node's Conns took on the wire, and what the
// same frames would have taken with every tensor sent as plain 4-byte values (no
// quantization, no zstd): what compression saves, measured.
type Traffic struct {
	// Frames is the number of frames written.
	Frames int64 `json:"frames"`
	// Bytes is what was written, headers and encoded payloads.
	Bytes int64 `json:"bytes"`
	// RawBytes is what the same frames take uncompressed.
	RawBytes int64 `json:"raw_bytes"`
}

// Counter adds up the Traffic of the Conns given it: one per node, so that nodes
// sharing a process (as in tests) count apart. It is safe for concurrent use, and
// its zero value is ready; a nil *Counter counts nothing.
type Counter struct{ frames, bytes, raw atomic.Int64 }

// add counts one frame of wire bytes that would take raw bytes uncompressed.
func (c *Counter) add(wire, raw int64) {
	if c == nil {
		return
	}
	c.frames.Add(1)
	c.bytes.Add(wire)
	c.raw.Add(raw)
}

// Sent returns the totals so far.
func (c *Counter) Sent() Traffic {
	if c == nil {
		return Traffic{}
	}
	return Traffic{Frames: c.frames.Load(), Bytes: c.bytes.Load(), RawBytes: c.raw.Load()}
}
