package model

import "fmt"

// Config is the GPT's shape. Its YAML field names are the run config's `model:`
// section.
type Config struct {
	// Vocab is the vocabulary size (256 for the byte tokenizer).
	Vocab int `yaml:"vocab"`
	// DModel is the embedding width, the width of the residual stream.
	DModel int `yaml:"d_model"`
	// NHead is the number of attention heads; it must divide d_model.
	NHead int `yaml:"n_head"`
	// NLayer is the number of transformer blocks in the whole model.
	NLayer int `yaml:"n_layer"`
	// SeqLen is the context length T (also the size of the position embedding).
	SeqLen int `yaml:"seq_len"`
	// Subspace, when positive, projects the residual stream at every stage
	// boundary onto a fixed embedding of the tokens plus a fixed subspace of
	// this rank, so that activations and their gradients cross a boundary as
	// Subspace values per token instead of DModel (see subspace.go). 0, the
	// default, sends the full width.
	Subspace int `yaml:"subspace"`
}

// Width is the number of values per token that cross a stage boundary: the
// subspace rank, or DModel.
func (c Config) Width() int {
	if c.Subspace > 0 {
		return c.Subspace
	}
	return c.DModel
}

// FieldError is a validation error naming the offending field by its YAML name
// (the run config prefixes its section, as in "model.n_head").
type FieldError struct {
	Field string
	Msg   string
}

// Error names the field and says what is wrong with it.
func (e *FieldError) Error() string { return fmt.Sprintf("model: %s: %s", e.Field, e.Msg) }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Validate reports the first problem with the shape as a *FieldError.
func (c Config) Validate() error {
	switch {
	case c.Vocab < 2:
		return fieldErr("vocab", "must be at least 2, got %d", c.Vocab)
	case c.DModel < 1:
		return fieldErr("d_model", "must be positive, got %d", c.DModel)
	case c.NHead < 1:
		return fieldErr("n_head", "must be positive, got %d", c.NHead)
	case c.DModel%c.NHead != 0:
		return fieldErr("n_head", "%d does not divide d_model %d", c.NHead, c.DModel)
	case c.NLayer < 1:
		return fieldErr("n_layer", "must be positive, got %d", c.NLayer)
	case c.SeqLen < 1:
		return fieldErr("seq_len", "must be positive, got %d", c.SeqLen)
	case c.Subspace < 0 || c.Subspace > c.DModel:
		return fieldErr("subspace", "must be in [0, d_model %d], got %d", c.DModel, c.Subspace)
	}
	return nil
}
