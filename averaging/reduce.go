package averaging

import (
	"errors"
	"math"
	"sync"
)

// accPool recycles Mean's float64 accumulators, one chunk each.
var accPool sync.Pool

// Reducer combines the parts of one chunk of a shard into out. parts[i] holds
// member i's values (all of len(out)) and weights[i] its weight: the samples it
// processed since its last round. Only members whose part arrived in time are
// passed. A Reducer must not keep parts or out after it returns. An error leaves
// the shard's remaining chunks at every member's local values.
//
// The mean is the only reducer today; a robust one (e.g. CenteredClip) can replace
// it without touching the protocol.
type Reducer func(parts [][]float32, weights []float64, out []float32) error

// Mean is the weighted mean. When every weight is zero (no member trained since
// its last round) all parts count equally. It accumulates in float64, so the fp32
// result is the weighted mean rounded once.
func Mean(parts [][]float32, weights []float64, out []float32) error {
	if len(parts) == 0 || len(parts) != len(weights) {
		return errors.New("mean: no parts or mismatched weights")
	}
	var total float64
	for _, w := range weights {
		total += w
	}
	ws := weights
	if total <= 0 || math.IsInf(total, 0) || math.IsNaN(total) {
		ws = make([]float64, len(parts))
		for i := range ws {
			ws[i] = 1
		}
		total = float64(len(parts))
	}
	// Part by part over a float64 accumulator: plain streaming loops.
	ap, _ := accPool.Get().(*[]float64)
	if ap == nil || cap(*ap) < len(out) {
		ap = new([]float64)
		*ap = make([]float64, len(out))
	}
	defer accPool.Put(ap)
	acc := (*ap)[:len(out)]
	clear(acc)
	for i, p := range parts {
		w := ws[i]
		p = p[:len(acc)]
		for k, x := range p {
			acc[k] += w * float64(x)
		}
	}
	inv := 1 / total
	for k, x := range acc {
		out[k] = float32(x * inv)
	}
	return nil
}
