package model

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

var tiny = Config{Vocab: 11, DModel: 8, NHead: 2, NLayer: 2, SeqLen: 6}

func TestValidateNamesField(t *testing.T) {
	for field, c := range map[string]Config{
		"vocab":   {Vocab: 1, DModel: 8, NHead: 2, NLayer: 1, SeqLen: 4},
		"d_model": {Vocab: 5, DModel: 0, NHead: 2, NLayer: 1, SeqLen: 4},
		"n_head":  {Vocab: 5, DModel: 6, NHead: 4, NLayer: 1, SeqLen: 4},
		"n_layer": {Vocab: 5, DModel: 8, NHead: 2, NLayer: 0, SeqLen: 4},
		"seq_len": {Vocab: 5, DModel: 8, NHead: 2, NLayer: 1, SeqLen: 0},
	} {
		var fe *FieldError
		if err := c.Validate(); !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%+v: error %v, want one naming %s", c, err, field)
		}
	}
	if err := tiny.Validate(); err != nil {
		t.Fatal(err)
	}
	o := Optim{LR: 1, MinLR: 2, Beta1: 0.9, Beta2: 0.9, Eps: 1}
	var fe *FieldError
	if err := o.Validate(); !errors.As(err, &fe) || fe.Field != "min_lr" {
		t.Errorf("min_lr above lr: error %v", err)
	}
}

func TestLRAt(t *testing.T) {
	o := Optim{LR: 1, MinLR: 0.1, Warmup: 4, Steps: 14}
	cases := map[int]float64{0: 0.25, 3: 1, 4: 1, 9: 0.55, 14: 0.1, 100: 0.1}
	for step, want := range cases {
		if got := float64(o.LRAt(step)); math.Abs(got-want) > 1e-6 {
			t.Errorf("LRAt(%d) = %v, want %v", step, got, want)
		}
	}
	if got := (Optim{LR: 0.5}).LRAt(7); got != 0.5 {
		t.Errorf("no schedule: LRAt = %v, want 0.5", got)
	}
}

func TestSplit(t *testing.T) {
	for _, split := range [][]int{{}, {1}, {1, 1, 1}, {2, -1, 1}, {1, 0, 1}} {
		if _, err := Split(tiny, split, 0); err == nil {
			t.Errorf("split %v accepted for n_layer %d", split, tiny.NLayer)
		}
	}
	if _, err := Split(tiny, []int{1, 1}, 2); err == nil {
		t.Error("stage index out of range accepted")
	}
	p, err := Split(Config{Vocab: 5, DModel: 8, NHead: 2, NLayer: 4, SeqLen: 4}, []int{0, 3, 1}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if p != (Part{Index: 2, Count: 3, First: 3, Blocks: 1}) || p.IsFirst() || !p.IsLast() {
		t.Errorf("part %+v", p)
	}
}

// TestLayout checks names, order, shapes and offsets of a middle and an end stage.
func TestLayout(t *testing.T) {
	cfg := Config{Vocab: 13, DModel: 16, NHead: 4, NLayer: 4, SeqLen: 8}
	mid := NewLayout(cfg, Part{Index: 1, Count: 3, First: 2, Blocks: 1})
	if len(mid.Views) != 12 || mid.Views[0].Name != "h.2.ln_1.weight" || mid.Blocks[0].FCProjB.Name != "h.2.mlp.c_proj.bias" {
		t.Fatalf("middle stage views: %+v", mid.Views)
	}
	if mid.WTE.Len != 0 || mid.Head.Len != 0 {
		t.Error("a middle stage holds embeddings or a head")
	}
	whole := NewLayout(cfg, Part{Index: 0, Count: 1, Blocks: 4})
	if len(whole.Views) != 2+4*12+3 || whole.Views[0].Name != "wte" || whole.Views[len(whole.Views)-1].Name != "lm_head.weight" {
		t.Fatalf("whole model has %d views", len(whole.Views))
	}
	at := 0
	for _, v := range whole.Views {
		n := 1
		for _, d := range v.Shape {
			n *= d
		}
		if v.Offset != at || v.Len != n || v.Decay != (len(v.Shape) == 2) {
			t.Errorf("%s: offset %d len %d decay %v, shape %v", v.Name, v.Offset, v.Len, v.Decay, v.Shape)
		}
		at += n
		if w, ok := whole.Find(v.Name); !ok || w.Offset != v.Offset {
			t.Errorf("Find(%s) = %+v, %v", v.Name, w, ok)
		}
	}
	if at != whole.Size {
		t.Errorf("views cover %d values, Size %d", at, whole.Size)
	}
	if _, ok := whole.Find("nope"); ok {
		t.Error("Find of an unknown name succeeded")
	}
	if v, _ := whole.Find("h.1.attn.c_attn.weight"); fmt.Sprint(v.Shape) != "[16 48]" {
		t.Errorf("c_attn shape %v", v.Shape)
	}
}

// TestInit checks GPT-2 initialisation statistics and that a tensor's values
// depend on (seed, name) only, not on the split.
func TestInit(t *testing.T) {
	cfg := Config{Vocab: 64, DModel: 64, NHead: 4, NLayer: 8, SeqLen: 16}
	whole := NewLayout(cfg, Part{Count: 1, Blocks: 8})
	p := make([]float32, whole.Size)
	whole.Init(p, 3)
	view := func(l *Layout, p []float32, name string) []float32 {
		v, ok := l.Find(name)
		if !ok {
			t.Fatalf("no %s", name)
		}
		return v.Of(p)
	}
	std := func(x []float32) float64 {
		var q float64
		for _, v := range x {
			q += float64(v) * float64(v)
		}
		return math.Sqrt(q / float64(len(x)))
	}
	if got := std(view(whole, p, "h.0.mlp.c_fc.weight")); math.Abs(got-0.02) > 0.001 {
		t.Errorf("c_fc std %v, want 0.02", got)
	}
	want := 0.02 / math.Sqrt(2*8)
	if got := std(view(whole, p, "h.5.attn.c_proj.weight")); math.Abs(got-want) > want/20 {
		t.Errorf("attn c_proj std %v, want %v", got, want)
	}
	for name, want := range map[string]float32{"h.1.ln_1.weight": 1, "ln_f.weight": 1, "h.1.attn.c_attn.bias": 0, "ln_f.bias": 0} {
		for _, v := range view(whole, p, name) {
			if v != want {
				t.Fatalf("%s has %v, want %v", name, v, want)
			}
		}
	}
	mid := NewLayout(cfg, Part{Index: 1, Count: 3, First: 5, Blocks: 2})
	q := make([]float32, mid.Size)
	mid.Init(q, 3)
	a, b := view(whole, p, "h.6.mlp.c_fc.weight"), view(mid, q, "h.6.mlp.c_fc.weight")
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("h.6.mlp.c_fc.weight[%d] differs between splits", i)
		}
	}
	p4 := make([]float32, whole.Size)
	whole.Init(p4, 4)
	if view(whole, p4, "wte")[0] == view(whole, p, "wte")[0] {
		t.Error("seeds 3 and 4 give the same wte")
	}
}

func TestInputCheck(t *testing.T) {
	first := Part{Index: 0, Count: 2, Blocks: 1}
	last := Part{Index: 1, Count: 2, First: 1, Blocks: 1}
	tok := []int32{1, 2, 3, 4}
	x := make([]float32, 4*tiny.DModel)
	nan := append([]float32(nil), x...)
	nan[3] = float32(math.NaN())
	cases := []struct {
		p    Part
		in   Input
		want string
	}{
		{first, Input{B: 1, T: 4, Tokens: tok[:3]}, "tokens"},
		{first, Input{B: 1, T: 4, Tokens: []int32{1, 2, 11, 0}}, "outside"},
		{first, Input{B: 1, T: 7, Tokens: make([]int32, 7)}, "seq_len"},
		{first, Input{B: 0, T: 4}, "positive"},
		{first, Input{B: 1, T: 4, Tokens: tok, X: x}, "activations"},
		{last, Input{B: 1, T: 4, X: nan, Targets: tok}, "NaN"},
		{last, Input{B: 1, T: 4, X: x[:5], Targets: tok}, "activations"},
		{last, Input{B: 1, T: 4, X: x, XWire: []byte{1}, Targets: tok}, "both"},
		{last, Input{B: 1, T: 4, X: x, Targets: tok[:2]}, "targets"},
		{last, Input{B: 1, T: 4, X: x, Targets: []int32{0, 1, -1, 2}}, "outside"},
	}
	for _, c := range cases {
		if err := c.in.Check(tiny, c.p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%+v) error %v, want one mentioning %q", c.in, err, c.want)
		}
	}
	if err := (Input{B: 1, T: 4, X: x, Targets: tok}).Check(tiny, last); err != nil {
		t.Errorf("valid input: %v", err)
	}
}
