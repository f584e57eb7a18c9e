package config

import (
	"errors"
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

// TestValidationNamesField: every invalid value is a FieldError naming the
// field, with the message of its rule.
func TestValidationNamesField(t *testing.T) {
	cases := []struct{ in, want string }{
		{"stages: [1, 1]\n", "stages: layers per stage [1 1] sum to 2, but model.n_layer is 4"},
		{"model:\n  n_head: 5\n", "model.n_head: 5 does not divide d_model 64"},
		{"train:\n  batch: 12\n", "train.batch: 12 must be a positive multiple of train.microbatch 8"},
		{"node:\n  role: boss\n", "node.role: \"boss\": want server, trainer or both"},
		{"compression:\n  activations: fp8\n", "compression.activations: \"fp8\": want fp32, bf16 or int8"},
		{"averaging:\n  group_size: 1\n", "averaging.group_size: must be at least 2, got 1"},
		{"pipeline:\n  rebalance_ratio: 2\n", "pipeline.rebalance_ratio: must be in (0, 1), got 2"},
		{"run: \"a/b\"\n", "run: \"a/b\": use letters, digits, '-', '_' or '.' (it becomes part of protocol ids)"},
		{"device: tpu\n", "device: \"tpu\": want cpu, cuda or auto"},
		{"data:\n  val_fraction: 1.5\n", "data.val_fraction: must be in (0, 1), got 1.5"},
		{"train:\n  lr: 0\n", "train.lr: must be positive, got 0"},
		{"stages: [2, -1, 3]\n", "stages[1]: negative layer count -1"},
		{"compression:\n  zstd: maybe\n", "compression.zstd: \"maybe\": want on, off or auto"},
		{"node:\n  gossip_every: 0s\n", "node.gossip_every: must be positive, got 0s"},
		{"train:\n  min_lr: 1\n", "train.min_lr: must be in [0, lr], got 1"},
		{"model:\n  vocab: 1\n", "model.vocab: must be at least 2, got 1"},
		{"averaging:\n  codec: zip\n", "averaging.codec: \"zip\": want fp32, bf16 or int8"},
		{"pipeline:\n  max_frame_bytes: 10\n", "pipeline.max_frame_bytes: must be at least 1024, got 10"},
		{"train:\n  eval_every: 0\n", "train.eval_every: must be positive, got 0"},
		{"model:\n  seq_len: 0\n", "model.seq_len: must be positive, got 0"},
		{"model:\n  subspace: 65\n", "model.subspace: must be in [0, d_model 64], got 65"},
		{"compression:\n  block_size: 0\n", "compression.block_size: must be in [1, 65536], got 0"},
		{"pipeline:\n  hop_timeout: -1s\n", "pipeline.hop_timeout: must be positive, got -1s"},
		{"train:\n  beta2: 1\n", "train.beta2: must be in [0, 1), got 1"},
		{"node:\n  record_ttl: 10ms\n", "node.record_ttl: must be at least 1s, got 10ms"},
		{"averaging:\n  deadline: 0s\n", "averaging.deadline: must be positive, got 0s"},
		{"train:\n  clip: -1\n", "train.clip: must not be negative, got -1"},
		{"pipeline:\n  in_flight: -1\n", "pipeline.in_flight: must not be negative, got -1"},
		{"compression:\n  gradients: float16\n", "compression.gradients: \"float16\": want fp32, bf16 or int8"},
		{"node:\n  stage: \"2\"\n", "node.stage: \"2\": want auto or a stage number in [0, 2)"},
		{"node:\n  stage: first\n", "node.stage: \"first\": want auto or a stage number in [0, 2)"},
		{"node:\n  listen: []\n", "node.listen: needs at least one address"},
		{"node:\n  listen: [/ip4/1.2.3]\n", "node.listen[0]: \"/ip4/1.2.3\": failed to parse multiaddr"},
		{"node:\n  bootstrap: [/ip4/127.0.0.1/tcp/1]\n", "node.bootstrap[0]: \"/ip4/127.0.0.1/tcp/1\": no /p2p/<peer-id> part"},
		{"node:\n  status: \"7070\"\n", "node.status: \"7070\": want HOST:PORT or off"},
		{"pipeline:\n  staleness: 65\n", "pipeline.staleness: must be in [0, 64], got 65"},
		{"train:\n  stream: 1\n", "train.stream: 1 is the val stream; pick another"},
		{"data:\n  path: \"\"\n", "data.path: must not be empty"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.in))
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%q: want FieldError, got %v", c.in, err)
			continue
		}
		if field, _, _ := strings.Cut(c.want, ": "); fe.Field != field || !strings.HasPrefix(err.Error(), "config: "+c.want) {
			t.Errorf("%q: error %q, want %q", c.in, err, "config: "+c.want)
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

// TestTrainStream: unset, a trainer derives its stream from its peer id (nil);
// set, the value is kept, 0 included.
func TestTrainStream(t *testing.T) {
	c, err := Parse([]byte("train:\n  steps: 5\n"))
	if err != nil || c.Train.Stream != nil {
		t.Fatalf("unset stream: %v, %v", c.Train.Stream, err)
	}
	c, err = Parse([]byte("train:\n  stream: 0\n"))
	if err != nil || c.Train.Stream == nil || *c.Train.Stream != 0 {
		t.Fatalf("stream 0: %v, %v", c.Train.Stream, err)
	}
}
