package averaging

import (
	"errors"
	"math"
	"sync"
)

// accPool recycles Mean's float64 accumulators, one chunk each.
var accPool sync.Pool

// Reducer combines the parts of one chunk of a shard into out. parts[i] holds
// member i's values (all of len(out)) and weights[i] its weight (bounded, see
// Averager). Only members whose part arrived in time are passed. A robust
// Reducer sets outlier[i] (when outlier is not nil) for a part it found far
// from the others; the Averager evicts a sender that is an outlier in most
// chunks of a shard. A Reducer must not keep parts or out after it returns. An
// error leaves the shard's remaining chunks at every member's local values.
type Reducer func(parts [][]float32, weights []float64, out []float32, outlier []bool) error

// getAcc returns a zeroed float64 scratch vector of n values; putAcc recycles it.
func getAcc(n int) []float64 {
	ap, _ := accPool.Get().(*[]float64)
	if ap == nil || cap(*ap) < n {
		ap = new([]float64)
		*ap = make([]float64, n)
	}
	acc := (*ap)[:n]
	clear(acc)
	return acc
}

func putAcc(acc []float64) { accPool.Put(&acc) }

// Mean is the weighted mean; it finds no outliers. When every weight is zero
// (no member trained since its last round) all parts count equally. It
// accumulates in float64, so the fp32 result is the weighted mean rounded once.
func Mean(parts [][]float32, weights []float64, out []float32, _ []bool) error {
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
	inv := 1 / total
	n := len(out)
	switch len(parts) {
	case 2, 3, 4:
		// One pass over up to four parts (groups are small): no accumulator
		// array, and bounds checks hoisted by the reslicing.
		p0, p1 := parts[0][:n], parts[1][:n]
		w0, w1 := ws[0], ws[1]
		p2, p3 := p0, p0
		w2, w3 := 0.0, 0.0
		if len(parts) > 2 {
			p2, w2 = parts[2][:n], ws[2]
		}
		if len(parts) > 3 {
			p3, w3 = parts[3][:n], ws[3]
		}
		for k := range out {
			s := w0*float64(p0[k]) + w1*float64(p1[k]) + w2*float64(p2[k]) + w3*float64(p3[k])
			out[k] = float32(s * inv)
		}
		return nil
	}
	acc := getAcc(n)
	defer putAcc(acc)
	for i, p := range parts {
		w := ws[i]
		p = p[:n]
		for k, x := range p {
			acc[k] += w * float64(x)
		}
	}
	for k, x := range acc {
		out[k] = float32(x * inv)
	}
	return nil
}
