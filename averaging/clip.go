package averaging

import (
	"errors"
	"math"
	"slices"
)

// CenteredClip is the robust reducer of BTARD-SGD (Gorbunov et al., ICML 2022),
// applied to each chunk of each shard as ButterflyClip applies it to each
// all-reduce partition. It looks for the point v where the weighted parts,
// each pulled towards v no further than τ, balance:
//
//	Σ_i w_i · (x_i − v) · min(1, τ / ‖x_i − v‖) = 0
//
// iterating v ← v + Σ_i w_i·(x_i − v)·min(1, τ/‖x_i − v‖) / Σ_i w_i from the
// coordinate-wise median. A part far from the others moves v by at most τ
// times its share of the weight, whatever its values.
//
// τ is not a tuning constant but read from the parts: ClipRadius times the
// median distance of the parts from their coordinate-wise median. While fewer
// than half the weight lies, that median distance is an honest one, so τ stays
// within ClipRadius times the honest spread.
//
// The bound, when every honest part lies within τ of v (which the honest parts
// of a chunk do unless one is ClipRadius times further out than the typical
// one): honest weight W_H, liars' weight W_B, and μ_H the honest weighted mean,
//
//	‖v − μ_H‖ ≤ τ · W_B / W_H
//
// because the honest parts are not clipped, so W_H·(μ_H − v) equals minus the
// liars' clipped pulls, each of norm at most τ.
//
// Where no part lies further than τ from the weighted mean, that mean is the
// fixed point and is returned as Mean computes it: an honest group costs one
// median and one mean per chunk and gets Mean's result. Two parts cannot
// outvote each other, so two parts get their mean.
//
// outlier[i] reports a part that kept less than half of its pull: further than
// 2τ from the result.
func CenteredClip(parts [][]float32, weights []float64, out []float32, outlier []bool) error {
	if len(parts) == 0 || len(parts) != len(weights) {
		return errors.New("centered clip: no parts or mismatched weights")
	}
	clear(outlier)
	if len(parts) <= 2 {
		return Mean(parts, weights, out, nil)
	}
	c := newClipper(parts, weights, len(out))
	defer c.release()
	tau := c.radius()
	if err := Mean(parts, c.w, out, nil); err != nil {
		return err
	}
	if c.within(out, tau) {
		return nil
	}
	v := c.solve(tau)
	for k, x := range v {
		out[k] = float32(x)
	}
	for i, p := range parts {
		if outlier != nil && distance64(p, v) > 2*tau {
			outlier[i] = true
		}
	}
	return nil
}

// ClipRadius is τ in units of the parts' median distance from their
// coordinate-wise median. Honest parts of one chunk (gradients of different
// microbatches, or parameters of replicas) lie at similar distances, so twice
// the median clips none of them while a liar's pull is held to that radius.
const ClipRadius = 2

// clipIterations bounds the fixed-point iteration; it stops earlier once v
// moves less than clipTolerance·τ.
const (
	clipIterations = 50
	clipTolerance  = 1e-6
)

// clipper holds one chunk's parts, weights and float64 scratch.
type clipper struct {
	parts [][]float32
	w     []float64
	n     int
	v, dv []float64
	col   []float32
}

func newClipper(parts [][]float32, weights []float64, n int) *clipper {
	c := &clipper{parts: parts, w: equalIfNone(weights), n: n, col: make([]float32, len(parts))}
	c.v, c.dv = getAcc(n), getAcc(n)
	return c
}

func (c *clipper) release() {
	putAcc(c.v)
	putAcc(c.dv)
}

// equalIfNone returns weights, or equal weights when they sum to nothing (as
// Mean does).
func equalIfNone(weights []float64) []float64 {
	var total float64
	for _, w := range weights {
		total += w
	}
	if total > 0 && !math.IsInf(total, 0) {
		return weights
	}
	eq := make([]float64, len(weights))
	for i := range eq {
		eq[i] = 1
	}
	return eq
}

// radius sets v to the coordinate-wise median of the parts and returns τ.
func (c *clipper) radius() float64 {
	if len(c.parts) == 3 { // the common group: a median of three, no sort
		a, b, d := c.parts[0][:c.n], c.parts[1][:c.n], c.parts[2][:c.n]
		for k := range c.n {
			c.v[k] = float64(max(min(a[k], b[k]), min(max(a[k], b[k]), d[k])))
		}
	} else {
		for k := 0; k < c.n; k++ {
			for i, p := range c.parts {
				c.col[i] = p[k]
			}
			c.v[k] = median32(c.col)
		}
	}
	d := make([]float64, len(c.parts))
	for i, p := range c.parts {
		d[i] = distance64(p, c.v)
	}
	slices.Sort(d)
	return ClipRadius * d[(len(d)-1)/2]
}

// median32 is the median of col, which it sorts in place (insertion sort:
// groups are small, and a generic sort per value costs more than the rest of
// the reduction).
func median32(col []float32) float64 {
	for i := 1; i < len(col); i++ {
		x, j := col[i], i
		for ; j > 0 && col[j-1] > x; j-- {
			col[j] = col[j-1]
		}
		col[j] = x
	}
	m := len(col)
	if m%2 == 1 {
		return float64(col[m/2])
	}
	return (float64(col[m/2-1]) + float64(col[m/2])) / 2
}

// within reports whether every part lies within tau of mean.
func (c *clipper) within(mean []float32, tau float64) bool {
	for _, p := range c.parts {
		var s float64
		for k, x := range p[:c.n] {
			d := float64(x) - float64(mean[k])
			s += d * d
		}
		if math.Sqrt(s) > tau {
			return false
		}
	}
	return true
}

// solve iterates the clipped update from the median (already in v) and
// returns v.
func (c *clipper) solve(tau float64) []float64 {
	var total float64
	for _, w := range c.w {
		total += w
	}
	for range clipIterations {
		clear(c.dv)
		for i, p := range c.parts {
			d := distance64(p, c.v)
			f := c.w[i]
			if d > tau {
				f *= tau / d
			}
			if f == 0 {
				continue
			}
			for k, x := range p[:c.n] {
				c.dv[k] += f * (float64(x) - c.v[k])
			}
		}
		var step float64
		for k := range c.v {
			s := c.dv[k] / total
			c.v[k] += s
			step += s * s
		}
		if math.Sqrt(step) <= clipTolerance*tau {
			break
		}
	}
	return c.v
}

// distance64 is the Euclidean distance between p and v.
func distance64(p []float32, v []float64) float64 {
	var s float64
	for k, x := range p[:len(v)] {
		d := float64(x) - v[k]
		s += d * d
	}
	return math.Sqrt(s)
}

// BoundWeights caps every claimed weight at the group's lower median claim, in
// place, so that a member claiming a huge weight counts no more than a typical
// member; while most members are honest, that median claim is an honest one,
// so the liars hold less weight than the honest (CenteredClip's bound needs
// W_B < W_H). Claims below the median stand. It returns weights.
func BoundWeights(weights []float64) []float64 {
	if len(weights) < 2 {
		return weights
	}
	s := slices.Clone(weights)
	slices.Sort(s)
	limit := s[(len(s)-1)/2] // zero when most trained nothing: all then count equally
	for i, w := range weights {
		weights[i] = min(w, limit)
	}
	return weights
}
