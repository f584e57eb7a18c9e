package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreValid(t *testing.T) {
	cfg := Default()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestEmptyFileMeansDefaults(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Train.Steps != DefaultTrain().Steps || cfg.Model != DefaultModel() {
		t.Fatalf("empty file did not give defaults: %+v", cfg)
	}
}

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "examples", "gpt", "tiny.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Run != "tiny-shakespeare" || len(cfg.Stages) != 3 {
		t.Fatalf("unexpected example config: %+v", cfg)
	}
}

func TestEveryExampleConfigLoads(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("..", "examples", "gpt", "*.yaml"))
	if err != nil || len(paths) < 2 {
		t.Fatalf("example configs: %v %v", paths, err)
	}
	for _, p := range paths {
		if _, err := Load(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func TestOverridesKeepOtherDefaults(t *testing.T) {
	cfg, err := Parse([]byte("train:\n  steps: 7\naveraging:\n  period: 3s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Train.Steps != 7 || cfg.Train.LR != DefaultTrain().LR {
		t.Fatalf("train section: %+v", cfg.Train)
	}
	if cfg.Averaging.Period != 3*time.Second || cfg.Averaging.GroupSize != DefaultAveraging().GroupSize {
		t.Fatalf("averaging section: %+v", cfg.Averaging)
	}
}

func TestUnknownFieldNamesFieldAndLine(t *testing.T) {
	_, err := Parse([]byte("run: x\ntrain:\n  stpes: 10\n"))
	if err == nil {
		t.Fatal("want error for a typo")
	}
	if !strings.Contains(err.Error(), "stpes") || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("error should name field and line: %v", err)
	}
}

func TestWrongTypeIsAnError(t *testing.T) {
	_, err := Parse([]byte("model:\n  d_model: big\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("want a line-numbered type error, got %v", err)
	}
}

func TestValidationNamesField(t *testing.T) {
	cases := map[string]string{
		"stages: [1, 1]\n":                             "stages",
		"model:\n  n_head: 5\n":                        "model.n_head",
		"train:\n  batch: 12\n":                        "train.batch",
		"node:\n  role: boss\n":                        "node.role",
		"compression:\n  activations: fp8\n":           "compression.activations",
		"averaging:\n  group_size: 1\n":                "averaging.group_size",
		"pipeline:\n  rebalance_ratio: 2\n":            "pipeline.rebalance_ratio",
		"run: \"a/b\"\n":                               "run",
		"device: tpu\n":                                "device",
		"data:\n  val_fraction: 1.5\n":                 "data.val_fraction",
		"train:\n  lr: 0\n":                            "train.lr",
		"stages: [2, -1, 3]\n":                         "stages[1]",
		"compression:\n  zstd: maybe\n":                "compression.zstd",
		"node:\n  gossip_every: 0s\n":                  "node.gossip_every",
		"train:\n  min_lr: 1\n":                        "train.min_lr",
		"model:\n  vocab: 1\n":                         "model.vocab",
		"averaging:\n  codec: zip\n":                   "averaging.codec",
		"pipeline:\n  max_frame_bytes: 10\n":           "pipeline.max_frame_bytes",
		"train:\n  eval_every: 0\n":                    "train.eval_every",
		"model:\n  seq_len: 0\n":                       "model.seq_len",
		"compression:\n  block_size: 0\n":              "compression.block_size",
		"pipeline:\n  hop_timeout: -1s\n":              "pipeline.hop_timeout",
		"train:\n  beta2: 1\n":                         "train.beta2",
		"node:\n  record_ttl: 10ms\n":                  "node.record_ttl",
		"averaging:\n  deadline: 0s\n":                 "averaging.deadline",
		"train:\n  clip: -1\n":                         "train.clip",
		"pipeline:\n  in_flight: 0\n":                  "pipeline.in_flight",
		"compression:\n  gradients: float16\n":         "compression.gradients",
		"node:\n  stage: \"2\"\n":                      "node.stage",
		"node:\n  stage: first\n":                      "node.stage",
		"node:\n  listen: []\n":                        "node.listen",
		"node:\n  listen: [/ip4/1.2.3]\n":              "node.listen[0]",
		"node:\n  bootstrap: [/ip4/127.0.0.1/tcp/1]\n": "node.bootstrap[0]",
		"node:\n  status: \"7070\"\n":                  "node.status",
	}
	for in, field := range cases {
		_, err := Parse([]byte(in))
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%q: want FieldError, got %v", in, err)
			continue
		}
		if fe.Field != field {
			t.Errorf("%q: error names %q, want %q (%v)", in, fe.Field, field, err)
		}
	}
}

// TestCheckMessages pins the messages of each kind of field rule (check.go).
func TestCheckMessages(t *testing.T) {
	cases := map[string]string{
		"train:\n  lr: 0\n":                  "config: train.lr: must be positive, got 0",
		"train:\n  clip: -1\n":               "config: train.clip: must not be negative, got -1",
		"pipeline:\n  max_frame_bytes: 10\n": "config: pipeline.max_frame_bytes: must be at least 1024, got 10",
		"node:\n  record_ttl: 10ms\n":        "config: node.record_ttl: must be at least 1s, got 10ms",
		"pipeline:\n  rebalance_ratio: 1\n":  "config: pipeline.rebalance_ratio: must be in (0, 1), got 1",
		"train:\n  beta1: 0\n":               "",
		"pipeline:\n  staleness: 65\n":       "config: pipeline.staleness: must be in [0, 64], got 65",
		"compression:\n  zstd: maybe\n":      `config: compression.zstd: "maybe": want on, off or auto`,
		"data:\n  path: \"\"\n":              "config: data.path: must not be empty",
		"device: tpu\n":                      `config: device: "tpu": want cpu, cuda or auto`,
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		if got := fmt.Sprint(err); want == "" && err != nil || want != "" && got != want {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
}

func TestStageIndex(t *testing.T) {
	for in, want := range map[string]int{"stages: [1, 1, 2]\nmodel: {n_layer: 4}\nnode: {stage: \"2\"}\n": 2, "": -1} {
		cfg, err := Parse([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Node.StageIndex(); got != want {
			t.Errorf("%q: StageIndex %d, want %d", in, got, want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("want not-exist error, got %v", err)
	}
}

// FuzzParse: whatever the file holds, Parse returns a config or an error; it
// never panics, and what it accepts passes validation.
func FuzzParse(f *testing.F) {
	if raw, err := os.ReadFile(filepath.Join("..", "examples", "gpt", "tiny.yaml")); err == nil {
		f.Add(raw)
	}
	f.Add([]byte("train:\n  steps: 7\n"))
	f.Add([]byte("stages: [1, -1]\n"))
	f.Add([]byte("model: {d_model: 1e99}\n"))
	f.Add([]byte("averaging: {period: -5s}\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg, err := Parse(raw)
		if err != nil {
			return
		}
		if verr := cfg.Validate(); verr != nil {
			t.Fatalf("Parse accepted an invalid config: %v", verr)
		}
	})
}
