// Package config loads and validates a swarmnode run config: one YAML file that
// drives both `swarmnode local` and every peer of a swarm.
//
// Parsing is strict: an unknown or mistyped field is an error that names the field
// and its line. Every field has a default (see Default) and a doc comment; the
// README's config reference mirrors these comments.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"gopkg.in/yaml.v3"

	"swarmnode/model"
)

// Config is a whole run config. Each section's type, defaults and validation
// live in the file of its topic: train.go (data and train), node.go, wire.go
// (compression and pipeline) and averaging.go; the model section and the
// optimizer fields of the train section are package model's types (model.go
// names their errors), so the file decodes into the very values the stages
// compute with.
type Config struct {
	// Run is the run id: peers of one swarm share it; it prefixes every protocol id.
	Run string `yaml:"run"`
	// Model is the GPT's shape.
	Model model.Config `yaml:"model"`
	// Stages lists the number of transformer layers in each pipeline stage; it must
	// sum to model.n_layer. The first stage also owns the embeddings, the last the
	// final LayerNorm, the LM head and the loss.
	Stages []int `yaml:"stages"`
	// Data is the training corpus.
	Data Data `yaml:"data"`
	// Train holds the optimizer and schedule settings.
	Train Train `yaml:"train"`
	// Node holds the libp2p peer settings used by `swarmnode run`.
	Node Node `yaml:"node"`
	// Compression sets how activations and gradients travel on the wire.
	Compression Compression `yaml:"compression"`
	// Pipeline holds the stage servers' and trainers' routing and limits.
	Pipeline Pipeline `yaml:"pipeline"`
	// Averaging sets the background parameter averaging among holders of a stage.
	Averaging Averaging `yaml:"averaging"`
	// Checkpoint sets when stages are written to disk and how many are kept.
	Checkpoint Checkpoint `yaml:"checkpoint"`
	// Admission says who may take part in the run: anyone, or the peers the
	// run owner certified.
	Admission Admission `yaml:"admission"`
	// Device picks where stages compute: cpu, cuda or auto.
	Device string `yaml:"device" check:"oneof=cpu|cuda|auto"`
}

// Default returns a config with every field at its documented default.
func Default() Config {
	return Config{
		Run:         "swarmnode",
		Model:       DefaultModel(),
		Stages:      []int{2, 2},
		Data:        DefaultData(),
		Train:       DefaultTrain(),
		Node:        DefaultNode(),
		Compression: DefaultCompression(),
		Pipeline:    DefaultPipeline(),
		Averaging:   DefaultAveraging(),
		Checkpoint:  DefaultCheckpoint(),
		Admission:   DefaultAdmission(),
		Device:      "cpu",
	}
}

// FieldError is a config error that names the offending field.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return fmt.Sprintf("config: %s: %s", e.Field, e.Msg) }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Load reads, parses and validates the config file at path.
func Load(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return Parse(raw)
}

// Parse parses YAML over the defaults and validates the result. Fields absent from
// the YAML keep their defaults; unknown fields are errors naming field and line.
func Parse(raw []byte) (Config, error) {
	cfg := Default()
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	// io.EOF means an empty file: all defaults.
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks every section and the relations between them, and returns
// the first error: a FieldError naming the field.
func (c *Config) Validate() error {
	for _, check := range []func() error{
		c.validateRun, c.validateModel, c.validateStages, c.Data.validate, c.Train.validate,
		func() error { return c.Node.validate(len(c.Stages)) },
		c.Compression.validate, c.Pipeline.validate, c.Averaging.validate, c.Checkpoint.validate, c.Admission.validate,
		func() error { return checkFields("", *c) }, // device
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) validateRun() error {
	if c.Run == "" {
		return fieldErr("run", "must not be empty")
	}
	for _, r := range c.Run {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fieldErr("run", "%q: use letters, digits, '-', '_' or '.' (it becomes part of protocol ids)", c.Run)
		}
	}
	return nil
}

func (c *Config) validateModel() error { return sectionErr("model", c.Model.Validate()) }

// validateStages checks that the stages split the model's layers.
func (c *Config) validateStages() error {
	if len(c.Stages) == 0 {
		return fieldErr("stages", "needs at least one stage")
	}
	sum := 0
	for i, n := range c.Stages {
		if n < 0 {
			return fieldErr(fmt.Sprintf("stages[%d]", i), "negative layer count %d", n)
		}
		sum += n
	}
	if sum != c.Model.NLayer {
		return fieldErr("stages", "layers per stage %v sum to %d, but model.n_layer is %d", c.Stages, sum, c.Model.NLayer)
	}
	return nil
}
