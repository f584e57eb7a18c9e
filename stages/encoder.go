package stages

// encoderForward writes out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:].
func encoderForward(out []float32, tokens []int32, wte, wpe []float32, B, T, C int) {
	clear(out[:B*T*C])
	encoderAdd(out, tokens, wte, wpe, B, T, C)
}

// encoderAdd adds wte[tokens[b,t],:] + wpe[t,:] to out[b,t,:].
func encoderAdd(out []float32, tokens []int32, wte, wpe []float32, B, T, C int) {
	parallelFor(B*T, 64, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			t := i % T
			o := out[i*C : i*C+C]
			e := wte[int(tokens[i])*C : int(tokens[i])*C+C]
			p := wpe[t*C : t*C+C]
			for c := range o {
				o[c] += e[c] + p[c]
			}
		}
	})
}

// encoderBackward accumulates dout into the rows of dwte and dwpe that the forward
// read. It runs on one goroutine: tokens repeat, so rows of dwte would race.
func encoderBackward(dwte, dwpe, dout []float32, tokens []int32, B, T, C int) {
	for i := 0; i < B*T; i++ {
		t := i % T
		d := dout[i*C : i*C+C]
		e := dwte[int(tokens[i])*C : int(tokens[i])*C+C]
		p := dwpe[t*C : t*C+C]
		for c, g := range d {
			e[c] += g
			p[c] += g
		}
	}
}
