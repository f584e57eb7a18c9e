package stages

import "math"

// crossEntropyForward returns the mean over the N rows of −log softmax(logits)[target].
// logits is [N,V]. The sum runs in float64 so the mean does not depend on N's size.
func crossEntropyForward(logits []float32, targets []int32, N, V int) float32 {
	losses := make([]float64, N)
	parallelFor(N, 8, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := logits[i*V : i*V+V]
			mx := row[0]
			for _, v := range row[1:] {
				if v > mx {
					mx = v
				}
			}
			var s float64
			for _, v := range row {
				s += math.Exp(float64(v - mx))
			}
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
			row := logits[i*V : i*V+V]
			d := dlogits[i*V : i*V+V]
			mx := row[0]
			for _, v := range row[1:] {
				if v > mx {
					mx = v
				}
			}
			var s float64
			for j, v := range row {
				e := math.Exp(float64(v - mx))
				d[j] = float32(e)
				s += e
			}
			f := float32(inv / s)
			for j := range d {
				d[j] *= f
			}
			d[targets[i]] -= float32(inv)
		}
	})
}
