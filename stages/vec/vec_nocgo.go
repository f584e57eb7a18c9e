//go:build !cgo

package vec

const haveC = false

func cImpl() string { return "go" }

func expShiftC(v []float32, shift float32) float64 { return ExpShiftGo(v, shift) }

func geluForwardC(out, th, inp []float32) { GeluForwardGo(out, th, inp) }

func geluBackwardC(dinp, th, inp, dout []float32) { GeluBackwardGo(dinp, th, inp, dout) }
