package stages

import (
	"math"
	"testing"
)

func TestExp32(t *testing.T) {
	worst := 0.0
	for x := -87.0; x <= 88.5; x += 0.000731 {
		got := float64(exp32(float32(x)))
		want := math.Exp(float64(float32(x)))
		worst = max(worst, math.Abs(got-want)/want)
	}
	if worst > 3e-7 {
		t.Errorf("exp32 worst relative error %.3g", worst)
	}
	if exp32(100) != float32(math.Inf(1)) || exp32(-100) != 0 {
		t.Error("exp32 out-of-range values")
	}
	t.Logf("exp32 worst relative error %.3g", worst)
}

func TestTanh32(t *testing.T) {
	worst := 0.0
	for x := -12.0; x <= 12; x += 0.000917 {
		worst = max(worst, math.Abs(float64(tanh32(float32(x)))-math.Tanh(float64(float32(x)))))
	}
	// A few ulp of values near ±1.
	if worst > 5e-7 {
		t.Errorf("tanh32 worst absolute error %.3g", worst)
	}
	for _, x := range []float32{1e-3, 1e-6, -1e-5} {
		if r := math.Abs(float64(tanh32(x))/math.Tanh(float64(x)) - 1); r > 1e-6 {
			t.Errorf("tanh32(%g) relative error %.3g", x, r)
		}
	}
}

func TestExpShift(t *testing.T) {
	v := []float32{3, 1, -2, -100, 2.5}
	want := make([]float64, len(v))
	var sum float64
	for i, x := range v {
		want[i] = math.Exp(float64(x - 3))
		sum += want[i]
	}
	got := expShift(v, 3)
	if math.Abs(got-sum)/sum > 1e-6 {
		t.Errorf("sum %v, want %v", got, sum)
	}
	for i := range v {
		if math.Abs(float64(v[i])-want[i]) > 1e-7*(1+want[i]) {
			t.Errorf("e^(x-3) at %d = %v, want %v", i, v[i], want[i])
		}
	}
}
