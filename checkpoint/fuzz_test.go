package checkpoint

import (
	"bytes"
	"testing"
)

// FuzzReadSafetensors: any bytes are parsed or refused, never a panic or an
// allocation beyond the input's size; what parses writes back to a file that
// parses to the same tensors.
func FuzzReadSafetensors(f *testing.F) {
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, []Tensor{{Name: "a", Shape: []int{2, 2}, Data: []float32{1, 2, 3, 4}}, {Name: "b", Shape: []int{1}, Data: []float32{5}}}, map[string]string{"k": "v"}); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '})
	f.Fuzz(func(t *testing.T, b []byte) {
		tensors, meta, err := ReadSafetensors(b)
		if err != nil {
			return
		}
		var list []Tensor
		for _, x := range tensors {
			list = append(list, x)
		}
		var out bytes.Buffer
		if err := WriteSafetensors(&out, list, meta); err != nil {
			t.Fatalf("a parsed file does not write back: %v", err)
		}
		again, _, err := ReadSafetensors(out.Bytes())
		if err != nil || len(again) != len(tensors) {
			t.Fatalf("written back: %d tensors, %v", len(again), err)
		}
	})
}
