package checkpoint_test

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"swarmnode/checkpoint"
	"swarmnode/model"
	"swarmnode/stages"
)

// The export fixture: a small GPT trained a few steps (so that no LayerNorm
// weight is 1 and no bias 0), exported by swarmnode into testdata/export/,
// and the logits that PyTorch code following Hugging Face's GPT-2 computes
// from those files (testdata/gen_export.py, run once with Debian's
// python3-torch; GEN_EXPORT_FIXTURE=1 go test -run TestExportMatchesPyTorch
// ./checkpoint writes the model first).
var (
	exportCfg    = model.Config{Vocab: 32, DModel: 16, NHead: 2, NLayer: 3, SeqLen: 8}
	exportSplit  = []int{1, 2}
	exportTokens = []int32{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3}
)

// trainedChain is the fixture's model: initial weights of seed 7, then three
// AdamW steps on fixed batches.
func trainedChain(t *testing.T) *stages.Chain {
	t.Helper()
	ch, err := stages.NewChain(exportCfg, exportSplit, 7)
	if err != nil {
		t.Fatal(err)
	}
	opt := model.Optim{LR: 0.05, MinLR: 0.05, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
	tok, tgt := exportTokens, append(slices.Clone(exportTokens[1:]), 0)
	for range 3 {
		if _, err := ch.ForwardBackward(tok, tgt, 2, 8); err != nil {
			t.Fatal(err)
		}
		ch.Step(opt, 1)
	}
	return ch
}

func parts(ch *stages.Chain) []checkpoint.Part {
	var ps []checkpoint.Part
	for _, s := range ch.Stages() {
		ps = append(ps, checkpoint.Part{Views: s.Views(), Params: s.Params()})
	}
	return ps
}

// logits runs tokens through the chain's stages and returns the last stage's
// logits.
func logits(t *testing.T, ch *stages.Chain) []float32 {
	t.Helper()
	var x []float32
	var out []float32
	for _, s := range ch.Stages() {
		in := model.Input{B: 2, T: 8, X: x}
		if s.IsFirst() {
			in.Tokens = exportTokens
		}
		if s.IsLast() {
			in.Targets = make([]int32, len(exportTokens))
		}
		p, err := s.Forward(in)
		if err != nil {
			t.Fatal(err)
		}
		x, out = p.Out, p.Logits()
		p.Release()
	}
	return out
}

// TestExportMatchesPyTorch: the model swarmnode exported, read back into
// stages, gives the logits that PyTorch computes from the same files as a
// Hugging Face GPT-2; and exporting a model then reading it back gives the
// same tensors.
func TestExportMatchesPyTorch(t *testing.T) {
	dir := filepath.Join("testdata", "export")
	if os.Getenv("GEN_EXPORT_FIXTURE") != "" {
		if err := checkpoint.Export(dir, exportCfg, parts(trainedChain(t)), nil); err != nil {
			t.Fatal(err)
		}
		t.Skip("wrote the exported model; now run testdata/gen_export.py")
	}
	hc, tensors, err := checkpoint.ReadHF(dir)
	if err != nil {
		t.Fatal(err)
	}
	if hc.NEmbd != exportCfg.DModel || hc.NLayer != exportCfg.NLayer || hc.VocabSize != exportCfg.Vocab || hc.TieWordEmbeddings {
		t.Fatalf("config.json: %+v", hc)
	}
	ch, err := stages.NewChain(exportCfg, exportSplit, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ch.Stages() {
		s.WithState(func(st *model.State) {
			if err := checkpoint.FillHF(st.Params, s.Views(), tensors); err != nil {
				t.Fatal(err)
			}
		})
	}
	raw, err := os.ReadFile(filepath.Join(dir, "logits.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want []float64
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	got := logits(t, ch)
	if len(got) != len(want) {
		t.Fatalf("%d logits, PyTorch %d", len(got), len(want))
	}
	var num, den float64
	for i := range got {
		d := float64(got[i]) - want[i]
		num, den = num+d*d, den+want[i]*want[i]
	}
	if rel := math.Sqrt(num / den); rel > 1e-5 {
		t.Fatalf("logits differ from PyTorch's by %.3g (relative, 2-norm)", rel)
	}
	// The round trip: what Export writes of this model, ReadHF gives back.
	out := t.TempDir()
	if err := checkpoint.Export(out, exportCfg, parts(ch), nil); err != nil {
		t.Fatal(err)
	}
	_, again, err := checkpoint.ReadHF(out)
	if err != nil {
		t.Fatal(err)
	}
	for name, x := range tensors {
		if y := again[name]; !slices.Equal(x.Data, y.Data) || !slices.Equal(x.Shape, y.Shape) {
			t.Fatalf("tensor %s changed in the round trip", name)
		}
	}
}

// TestExportRefuses: a subspace model, and stages that are not the whole
// model, are refused.
func TestExportRefuses(t *testing.T) {
	ch := trainedChain(t)
	if err := checkpoint.Export(t.TempDir(), exportCfg, parts(ch)[:1], nil); err == nil {
		t.Error("exported the first stage alone")
	}
	sub := exportCfg
	sub.Subspace = 4
	if err := checkpoint.Export(t.TempDir(), sub, parts(ch), nil); err == nil {
		t.Error("exported a subspace model as a GPT-2")
	}
}

// TestInitFromTransformersLayout: a GPT-2 saved by transformers (names under
// "transformer.", no lm_head.weight since it is tied, 16 positions for a
// config of 8) fills a stage: the head is wte, wpe its first 8 rows.
func TestInitFromTransformersLayout(t *testing.T) {
	ch := trainedChain(t)
	var tensors []checkpoint.Tensor
	for _, p := range parts(ch) {
		for _, v := range p.Views {
			x := checkpoint.Tensor{Name: v.Name, Shape: v.Shape, Data: v.Of(p.Params)}
			switch v.Name {
			case "lm_head.weight":
				continue
			case "wte", "wpe":
				x.Name += ".weight"
			}
			if v.Name == "wpe" {
				x.Shape = []int{16, exportCfg.DModel}
				x.Data = append(slices.Clone(x.Data), make([]float32, 8*exportCfg.DModel)...)
			}
			x.Name = "transformer." + x.Name
			tensors = append(tensors, x)
		}
	}
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.WriteSafetensors(f, tensors, nil); err != nil {
		t.Fatal(err)
	}
	f.Close()
	hc := checkpoint.HFConfig{VocabSize: exportCfg.Vocab, NPositions: 16, NEmbd: exportCfg.DModel, NLayer: exportCfg.NLayer, NHead: exportCfg.NHead}
	cj, _ := json.Marshal(hc)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cj, 0o644); err != nil {
		t.Fatal(err)
	}
	for k, s := range ch.Stages() {
		views := s.Views()
		params := make([]float32, s.NumParams())
		if err := checkpoint.InitFromHF(dir, exportCfg, views, params); err != nil {
			t.Fatalf("stage %d: %v", k, err)
		}
		want := s.Params()
		if s.IsLast() {
			want = slices.Clone(want) // lm_head becomes wte
			for _, v := range views {
				if v.Name == "lm_head.weight" {
					copy(v.Of(want), ch.Stages()[0].View("wte"))
				}
			}
		}
		if !slices.Equal(params, want) {
			t.Fatalf("stage %d filled with other values", k)
		}
	}
	other := exportCfg
	other.NHead = 4
	if err := checkpoint.InitFromHF(dir, other, ch.Stages()[0].Views(), make([]float32, ch.Stages()[0].NumParams())); err == nil {
		t.Fatal("a model of another shape was taken")
	}
}
