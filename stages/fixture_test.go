package stages

import (
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"swarmnode/model"
	"swarmnode/stages/blas"
)

// fixture is what testdata/gen_fixtures.py (PyTorch, float64) wrote.
type fixture struct {
	Config struct {
		Vocab  int `json:"vocab"`
		DModel int `json:"d_model"`
		NHead  int `json:"n_head"`
		NLayer int `json:"n_layer"`
		SeqLen int `json:"seq_len"`
	} `json:"config"`
	B, T  int
	Split []int `json:"split"`
	Micro int   `json:"micro"`
	Steps int   `json:"steps"`
	Opt   struct {
		LR          float32 `json:"lr"`
		MinLR       float32 `json:"min_lr"`
		Warmup      int     `json:"warmup"`
		Steps       int     `json:"steps"`
		WeightDecay float32 `json:"weight_decay"`
		Beta1       float32 `json:"beta1"`
		Beta2       float32 `json:"beta2"`
		Eps         float32 `json:"eps"`
		Clip        float32 `json:"clip"`
	} `json:"opt"`
	Tokens      [][]int32   `json:"tokens"`
	Targets     [][]int32   `json:"targets"`
	Loss        float64     `json:"loss"`
	TrainLosses []float64   `json:"train_losses"`
	GradNorms   [][]float64 `json:"grad_norms"`
	Tensors     map[string]struct {
		Offset int   `json:"offset"`
		Shape  []int `json:"shape"`
	} `json:"tensors"`
	data []float32
}

func loadFixture(t *testing.T) *fixture {
	t.Helper()
	js, err := os.ReadFile(filepath.Join("testdata", "gpt_tiny.json"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{}
	if err := json.Unmarshal(js, f); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "gpt_tiny.bin"))
	if err != nil {
		t.Fatal(err)
	}
	f.data = make([]float32, len(raw)/4)
	for i := range f.data {
		f.data[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return f
}

func (f *fixture) tensor(t *testing.T, key string) []float32 {
	t.Helper()
	e, ok := f.Tensors[key]
	if !ok {
		t.Fatalf("fixture has no tensor %q", key)
	}
	n := 1
	for _, d := range e.Shape {
		n *= d
	}
	return f.data[e.Offset : e.Offset+n]
}

func (f *fixture) model() model.Config {
	c := f.Config
	return model.Config{Vocab: c.Vocab, DModel: c.DModel, NHead: c.NHead, NLayer: c.NLayer, SeqLen: c.SeqLen}
}

func (f *fixture) optim() model.Optim {
	o := f.Opt
	return model.Optim{LR: o.LR, MinLR: o.MinLR, Warmup: o.Warmup, Steps: o.Steps, WeightDecay: o.WeightDecay,
		Beta1: o.Beta1, Beta2: o.Beta2, Eps: o.Eps, Clip: o.Clip}
}

// fixtureWeight mirrors fixture_weight in gen_fixtures.py: uniform values in
// [center-a, center+a) from splitmix64(fnv1a64(name) + i), exact in float32.
func fixtureWeight(name string, dst []float32, center, a float64) {
	h := fnv.New64a()
	h.Write([]byte(name))
	base := h.Sum64()
	for i := range dst {
		z := base + uint64(i) + 0x9E3779B97F4A7C15
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		z ^= z >> 31
		u := float64(z>>40) / (1 << 24)
		dst[i] = float32(center + (u-0.5)*2*a)
	}
}

// fixtureRange mirrors weight_range in gen_fixtures.py.
func fixtureRange(name string, shape []int) (center, a float64) {
	switch {
	case strings.HasSuffix(name, "ln_1.weight"), strings.HasSuffix(name, "ln_2.weight"), name == "ln_f.weight":
		return 1, 0.1
	case len(shape) == 1:
		return 0, 0.05
	case name == "wte", name == "wpe":
		return 0, 0.1
	}
	return 0, 0.05
}

func loadFixtureWeights(s *Stage) {
	for _, v := range s.Views() {
		c, a := fixtureRange(v.Name, v.Shape)
		fixtureWeight(v.Name, s.View(v.Name), c, a)
	}
}

// relErr is ‖got − want‖ / ‖want‖.
func relErr(got, want []float32) float64 {
	var d, w float64
	for i := range want {
		e := float64(got[i]) - float64(want[i])
		d += e * e
		w += float64(want[i]) * float64(want[i])
	}
	if w == 0 {
		return math.Sqrt(d)
	}
	return math.Sqrt(d / w)
}

const fixtureTol = 1e-5

// TestMatchesPyTorch checks logits, loss, every parameter gradient and the
// parameters after several AdamW steps against PyTorch on a 3-stage split, once
// through each BLAS backend this build can load.
func TestMatchesPyTorch(t *testing.T) {
	f := loadFixture(t)
	defer blas.Use("auto")
	for _, be := range []string{"gonum", "openblas"} {
		t.Run(be, func(t *testing.T) {
			if err := blas.Use(be); err != nil {
				t.Skip(err)
			}
			matchPyTorch(t, f)
		})
	}
}

func matchPyTorch(t *testing.T, f *fixture) {
	c, err := NewChain(f.model(), f.Split, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range c.Stages() {
		loadFixtureWeights(s)
	}
	matchOneMicrobatch(t, f, c.Stages())
	for _, s := range c.Stages() {
		s.ZeroGrad()
	}
	matchTraining(t, f, c)
}

// matchOneMicrobatch runs the first microbatch stage by stage, to look at the
// logits inside the last pass, and checks the logits, the loss and every
// parameter gradient.
func matchOneMicrobatch(t *testing.T, f *fixture, st []*Stage) {
	passes := make([]*Pass, len(st))
	var x []float32
	var err error
	for k, s := range st {
		in := model.Input{B: f.B, T: f.T}
		if k == 0 {
			in.Tokens = f.Tokens[0]
		} else {
			in.X = x
		}
		if s.IsLast() {
			in.Targets = f.Targets[0]
		}
		if passes[k], err = s.Forward(in); err != nil {
			t.Fatal(err)
		}
		x = passes[k].Out
	}
	last := passes[len(st)-1]
	if e := relErr(last.cpu.logits, f.tensor(t, "logits")); e > fixtureTol {
		t.Errorf("logits: relative error %.3g", e)
	}
	if e := math.Abs(float64(last.Loss)-f.Loss) / f.Loss; e > fixtureTol {
		t.Errorf("loss %v, PyTorch %v", last.Loss, f.Loss)
	}
	var d []float32
	for k := len(st) - 1; k >= 0; k-- {
		if d, err = st[k].Backward(passes[k], d); err != nil {
			t.Fatal(err)
		}
	}
	matchTensors(t, f, st, "grad/", (*Stage).GradView)
}

// matchTraining runs Micro microbatches per step with per-stage clipping, AdamW
// and the schedule, and checks the losses, the gradient norms and the final
// parameters.
func matchTraining(t *testing.T, f *fixture, c *Chain) {
	opt := f.optim()
	for step := 0; step < f.Steps; step++ {
		for j := 0; j < f.Micro; j++ {
			i := step*f.Micro + j
			loss, err := c.ForwardBackward(f.Tokens[i], f.Targets[i], f.B, f.T)
			if err != nil {
				t.Fatal(err)
			}
			if e := math.Abs(float64(loss)-f.TrainLosses[i]) / f.TrainLosses[i]; e > fixtureTol {
				t.Errorf("step %d microbatch %d: loss %v, PyTorch %v", step, j, loss, f.TrainLosses[i])
			}
		}
		for k, s := range c.Stages() {
			norm := float64(s.Step(opt, f.Micro))
			if want := f.GradNorms[step][k]; math.Abs(norm-want) > fixtureTol*want {
				t.Errorf("step %d stage %d: grad norm %v, PyTorch %v", step, k, norm, want)
			}
			if s.Version() != uint64(step+1) {
				t.Errorf("stage %d version %d after %d steps", k, s.Version(), step+1)
			}
		}
	}
	matchTensors(t, f, c.Stages(), "final/", (*Stage).View)
}

// matchTensors compares every tensor of the stages, as get returns it, with the
// fixture's tensor of the same name under prefix.
func matchTensors(t *testing.T, f *fixture, st []*Stage, prefix string, get func(*Stage, string) []float32) {
	t.Helper()
	worst := 0.0
	for _, s := range st {
		for _, v := range s.Views() {
			e := relErr(get(s, v.Name), f.tensor(t, prefix+v.Name))
			worst = max(worst, e)
			if e > fixtureTol {
				t.Errorf("%s%s: relative error %.3g", prefix, v.Name, e)
			}
		}
	}
	t.Logf("worst relative error of %s tensors %.3g", prefix, worst)
}
