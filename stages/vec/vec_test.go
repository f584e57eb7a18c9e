package vec

import (
	"math"
	"testing"
)

func ramp(n int, lo, hi float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		// An irrational step so that values do not repeat a pattern of 8 lanes.
		f := math.Mod(float64(i)*0.6180339887, 1)
		v[i] = float32(lo + (hi-lo)*f)
	}
	return v
}

func TestExp32(t *testing.T) {
	worst := 0.0
	for x := -87.0; x <= 88.5; x += 0.000731 {
		got := float64(Exp32(float32(x)))
		want := math.Exp(float64(float32(x)))
		worst = max(worst, math.Abs(got-want)/want)
	}
	if worst > 3e-7 {
		t.Errorf("Exp32 worst relative error %.3g", worst)
	}
	if Exp32(100) != float32(math.Inf(1)) || Exp32(-100) != 0 {
		t.Error("Exp32 out-of-range values")
	}
}

func TestTanh32(t *testing.T) {
	worst := 0.0
	for x := -12.0; x <= 12; x += 0.000917 {
		worst = max(worst, math.Abs(float64(Tanh32(float32(x)))-math.Tanh(float64(float32(x)))))
	}
	// A few ulp of values near ±1.
	if worst > 5e-7 {
		t.Errorf("Tanh32 worst absolute error %.3g", worst)
	}
	for _, x := range []float32{1e-3, 1e-6, -1e-5} {
		if r := math.Abs(float64(Tanh32(x))/math.Tanh(float64(x)) - 1); r > 1e-6 {
			t.Errorf("Tanh32(%g) relative error %.3g", x, r)
		}
	}
}

// both runs f with the Go kernels and with the default ones.
func both(t *testing.T, f func(t *testing.T)) {
	defer UseGo(false)
	for _, goOnly := range []bool{true, false} {
		UseGo(goOnly)
		t.Run(Impl(), f)
	}
}

func TestExpShift(t *testing.T) {
	both(t, func(t *testing.T) {
		for _, n := range []int{1, 7, 8, 9, 100, 1003} {
			v := ramp(n, -95, 0)
			want := make([]float64, n)
			var sum float64
			for i, x := range v {
				want[i] = math.Exp(float64(x) - 0)
				sum += want[i]
			}
			got := ExpShift(v, 0)
			if math.Abs(got-sum) > 1e-6*sum+1e-37 {
				t.Errorf("n=%d: sum %v, want %v", n, got, sum)
			}
			for i := range v {
				if math.Abs(float64(v[i])-want[i]) > 3e-7*want[i]+1e-37 {
					t.Fatalf("n=%d: e^x at %d = %v, want %v", n, i, v[i], want[i])
				}
			}
		}
		v := []float32{3, 1, 2.5}
		if s := ExpShift(v, 3); v[0] != 1 || math.Abs(s-(1+math.Exp(-2)+math.Exp(-0.5))) > 1e-6 {
			t.Errorf("shift: %v, sum %v", v, s)
		}
	})
}

func TestGelu(t *testing.T) {
	both(t, func(t *testing.T) {
		for _, n := range []int{1, 8, 13, 1000} {
			x := ramp(n, -6, 6)
			dout := ramp(n, -1, 1)
			out, th, d := make([]float32, n), make([]float32, n), make([]float32, n)
			GeluForward(out, th, x)
			GeluBackward(d, th, x, dout)
			for i, v := range x {
				u := float64(v)
				tw := math.Tanh(GeluScale * (u + 0.044715*u*u*u))
				want := 0.5 * u * (1 + tw)
				if math.Abs(float64(out[i])-want) > 1e-6*(1+math.Abs(want)) {
					t.Fatalf("gelu(%v) = %v, want %v", v, out[i], want)
				}
				dw := 0.5*(1+tw) + 0.5*u*(1-tw*tw)*GeluScale*(1+3*0.044715*u*u)
				// Where tanh is within a few ulp of ±1, 1−tanh² is float32 rounding
				// multiplied by x·(1+3a·x²) (about 30 at |x| = 5).
				if math.Abs(float64(d[i])-dw*float64(dout[i])) > 1e-5 {
					t.Fatalf("gelu'(%v)·%v = %v, want %v", v, dout[i], d[i], dw*float64(dout[i]))
				}
			}
		}
	})
}

func BenchmarkExpShift(b *testing.B) {
	v := ramp(4096, -20, 0)
	w := make([]float32, len(v))
	for _, goOnly := range []bool{true, false} {
		UseGo(goOnly)
		b.Run(Impl(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				copy(w, v)
				ExpShift(w, 0)
			}
			b.SetBytes(int64(4 * len(v)))
		})
	}
	UseGo(false)
}

func BenchmarkGeluForward(b *testing.B) {
	x := ramp(4096, -6, 6)
	out, th := make([]float32, len(x)), make([]float32, len(x))
	for _, goOnly := range []bool{true, false} {
		UseGo(goOnly)
		b.Run(Impl(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				GeluForward(out, th, x)
			}
			b.SetBytes(int64(4 * len(x)))
		})
	}
	UseGo(false)
}

// TestPositionIndependent checks that a GELU result does not depend on where its
// element falls in the slice (vector body or tail): the model splits work by core
// count, and forward passes must be bit-identical across machines of one kind.
func TestPositionIndependent(t *testing.T) {
	x := ramp(37, -5, 5)
	out, th := make([]float32, len(x)), make([]float32, len(x))
	GeluForward(out, th, x)
	for off := 1; off < 9; off++ {
		o2, t2 := make([]float32, len(x)-off), make([]float32, len(x)-off)
		GeluForward(o2, t2, x[off:])
		d2 := make([]float32, len(x)-off)
		d := make([]float32, len(x))
		GeluBackward(d, th, x, out)
		GeluBackward(d2, t2, x[off:], out[off:])
		for i := range o2 {
			if o2[i] != out[off+i] || t2[i] != th[off+i] || d2[i] != d[off+i] {
				t.Fatalf("offset %d, element %d: results differ by position", off, i)
			}
		}
	}
}
