package stages

import (
	"strings"
	"testing"

	"swarmnode/model"
)

// TestReadAddState checks the ranged accessors against WithState on ranges that
// cross the Params|M|V boundaries, and that out-of-range requests are errors.
func TestReadAddState(t *testing.T) {
	s, err := New(tinyCfg, []int{1, 1}, 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	n := s.NumParams()
	if s.StateLen() != 3*n || len(s.Params()) != n {
		t.Fatalf("StateLen %d, NumParams %d, len(Params) %d", s.StateLen(), n, len(s.Params()))
	}
	// Distinct moments so that a read from the wrong part shows.
	s.WithState(func(st *model.State) {
		for i := range st.M {
			st.M[i] = float32(i) + 0.25
			st.V[i] = -float32(i) - 0.5
		}
	})
	want := func() []float32 {
		var all []float32
		s.WithState(func(st *model.State) { all = append(append(append(all, st.Params...), st.M...), st.V...) })
		return all
	}
	all := want()
	for _, r := range [][2]int{{0, n}, {n - 3, 7}, {2*n - 1, 2}, {0, 3 * n}, {3*n - 1, 1}, {5, 0}} {
		dst := make([]float32, r[1])
		if err := s.ReadState(r[0], dst); err != nil {
			t.Fatalf("ReadState(%d, %d): %v", r[0], r[1], err)
		}
		for i, v := range dst {
			if v != all[r[0]+i] {
				t.Fatalf("ReadState(%d, %d)[%d] = %v, want %v", r[0], r[1], i, v, all[r[0]+i])
			}
		}
	}
	delta := make([]float32, n+4)
	for i := range delta {
		delta[i] = float32(i%5) - 2
	}
	off := 2*n - 2 // M's tail and V's head
	if err := s.AddState(off, delta[:6]); err != nil {
		t.Fatal(err)
	}
	if err := s.AddState(3, delta); err != nil { // Params' tail and M's head
		t.Fatal(err)
	}
	got := want()
	exp := append([]float32(nil), all...)
	for i, d := range delta[:6] {
		exp[off+i] += d
	}
	for i, d := range delta {
		exp[3+i] += d
	}
	for i := range exp {
		if got[i] != exp[i] {
			t.Fatalf("after AddState value %d = %v, want %v", i, got[i], exp[i])
		}
	}
	for _, r := range [][2]int{{-1, 1}, {3*n - 1, 2}, {3 * n, 1}} {
		if err := s.ReadState(r[0], make([]float32, r[1])); err == nil || !strings.Contains(err.Error(), "outside") {
			t.Errorf("ReadState(%d, %d): err %v, want an out-of-range error", r[0], r[1], err)
		}
		if err := s.AddState(r[0], make([]float32, r[1])); err == nil {
			t.Errorf("AddState(%d, %d) accepted an out-of-range request", r[0], r[1])
		}
	}
	if s.OnGPU() || s.Device() != "cpu" || s.DeviceErr() != nil || s.Close() != nil {
		t.Errorf("CPU stage: OnGPU %v, Device %q, DeviceErr %v", s.OnGPU(), s.Device(), s.DeviceErr())
	}
}

// TestReadAddGrads checks the gradient accessors against Grads, and that they
// leave the parameters and moments alone and refuse ranges outside the gradients.
func TestReadAddGrads(t *testing.T) {
	s, err := New(tinyCfg, []int{1, 1}, 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	n := s.NumParams()
	for i := range s.Grads() {
		s.Grads()[i] = float32(i%13) - 6
	}
	before := append([]float32(nil), s.Params()...)
	delta := make([]float32, n-7)
	for i := range delta {
		delta[i] = float32(i%3) * 0.5
	}
	if err := s.AddGrads(5, delta); err != nil {
		t.Fatal(err)
	}
	dst := make([]float32, n)
	if err := s.ReadGrads(0, dst); err != nil {
		t.Fatal(err)
	}
	for i, v := range dst {
		want := float32(i%13) - 6
		if i >= 5 && i < 5+len(delta) {
			want += delta[i-5]
		}
		if v != want {
			t.Fatalf("gradient %d = %v, want %v", i, v, want)
		}
	}
	for i, p := range s.Params() {
		if p != before[i] {
			t.Fatalf("AddGrads changed parameter %d", i)
		}
	}
	if err := s.ReadGrads(n-1, make([]float32, 2)); err == nil {
		t.Error("ReadGrads accepted a range past the gradients")
	}
	if err := s.AddGrads(-1, make([]float32, 1)); err == nil {
		t.Error("AddGrads accepted a negative offset")
	}
}
