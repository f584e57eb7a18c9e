package pipeline

import (
	"time"

	"swarmnode/codec"
	"swarmnode/stages"
	"swarmnode/wire"
)

// arrived presents a float tensor frame to a stage, which decides whether to
// have it decoded here or to take the int8 message as it is (stages.Arrived).
type arrived struct{ f *wire.Frame }

func (a arrived) Int8Block() int {
	if a.f.Codec != codec.Int8 {
		return 0
	}
	return a.f.Block
}

func (a arrived) Int8() ([]byte, error)      { return a.f.Int8Wire() }
func (a arrived) Floats() ([]float32, error) { return a.f.Floats(nil) }

// writeTensor writes x as a float tensor frame: encoded with enc, or, when a
// stage has already quantized it, as the int8 message it is (enc.Link still
// decides on zstd).
func writeTensor(conn *wire.Conn, h wire.Header, x stages.Tensor, enc wire.Encoding, deadline time.Time) error {
	if x.Int8 != nil {
		return conn.WriteInt8Wire(h, x.Int8, x.Block, enc, deadline)
	}
	return conn.WriteFloats(h, x.F, enc, deadline)
}
