package config

// Model is the GPT-2-style model shape.
type Model struct {
	// Vocab is the vocabulary size (256 for the byte tokenizer).
	Vocab int `yaml:"vocab"`
	// DModel is the embedding width.
	DModel int `yaml:"d_model"`
	// NHead is the number of attention heads; it must divide d_model.
	NHead int `yaml:"n_head"`
	// NLayer is the number of transformer blocks.
	NLayer int `yaml:"n_layer"`
	// SeqLen is the context length T (also the size of the position embedding).
	SeqLen int `yaml:"seq_len"`
}

// DefaultModel is a tiny model that trains in minutes on two CPU cores.
func DefaultModel() Model {
	return Model{Vocab: 256, DModel: 64, NHead: 4, NLayer: 4, SeqLen: 64}
}

func (m Model) validate() error {
	switch {
	case m.Vocab < 2:
		return fieldErr("model.vocab", "must be at least 2, got %d", m.Vocab)
	case m.DModel < 1:
		return fieldErr("model.d_model", "must be positive, got %d", m.DModel)
	case m.NHead < 1:
		return fieldErr("model.n_head", "must be positive, got %d", m.NHead)
	case m.DModel%m.NHead != 0:
		return fieldErr("model.n_head", "%d does not divide d_model %d", m.NHead, m.DModel)
	case m.NLayer < 1:
		return fieldErr("model.n_layer", "must be positive, got %d", m.NLayer)
	case m.SeqLen < 1:
		return fieldErr("model.seq_len", "must be positive, got %d", m.SeqLen)
	}
	return nil
}
