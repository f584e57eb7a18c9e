package stages

import (
	"math"

	"swarmnode/stages/vec"
)

// crossEntropyForward returns the mean over the N rows of −log softmax(logits)[target].
// logits is [N,V]. The sums run in float64.
func crossEntropyForward(logits []float32, targets []int32, N, V int) float32 {
	losses := make([]float64, N)
	parallelFor(N, 8, func(lo, hi int) {
		d := make([]float32, V)
		for i := lo; i < hi; i++ {
			row := logits[i*V : i*V+V]
			s, mx := expRow(d, row)
			losses[i] = math.Log(s) + float64(mx) - float64(row[targets[i]])
		}
	})
	var total float64
	for _, l := range losses {
		total += l
	}
	return float32(total / float64(N))
}

// crossEntropyBackward writes dlogits = (softmax(logits) − onehot(target)) / N,
// the gradient of the mean loss.
func crossEntropyBackward(dlogits, logits []float32, targets []int32, N, V int) {
	inv := 1 / float64(N)
	parallelFor(N, 8, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			d := dlogits[i*V : i*V+V]
			s, _ := expRow(d, logits[i*V:i*V+V])
			f := float32(inv / s)
			for j := range d {
				d[j] *= f
			}
			d[targets[i]] -= float32(inv)
		}
	})
}

// expRow writes exp(row − max(row)) into d and returns the sum of d and the max.
func expRow(d, row []float32) (sum float64, mx float32) {
	mx = row[0]
	for _, v := range row[1:] {
		if v > mx {
			mx = v
		}
	}
	copy(d, row)
	return vec.ExpShift(d, mx), mx
}
