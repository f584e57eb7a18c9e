package config

import "swarmnode/model"

// Data is the training corpus, read as bytes (vocab 256).
type Data struct {
	// Path is the text file to train on, relative to the working directory.
	Path string `yaml:"path"`
	// ValFraction is the share of the file, taken from its end, held out for eval.
	ValFraction float64 `yaml:"val_fraction"`
}

// DefaultData points at the example corpus.
func DefaultData() Data {
	return Data{Path: "examples/gpt/data/tinyshakespeare.txt", ValFraction: 0.1}
}

func (d Data) validate() error {
	if d.Path == "" {
		return fieldErr("data.path", "must not be empty")
	}
	if d.ValFraction <= 0 || d.ValFraction >= 1 {
		return fieldErr("data.val_fraction", "must be in (0, 1), got %g", d.ValFraction)
	}
	return nil
}

// Train holds optimizer, schedule and loop settings.
type Train struct {
	// Microbatch is the number of sequences in one microbatch (one trip through the pipeline).
	Microbatch int `yaml:"microbatch"`
	// Batch is the number of sequences per optimizer step; a multiple of microbatch.
	Batch int `yaml:"batch"`
	// Optim holds the number of steps to train (steps), AdamW's settings and the
	// learning-rate schedule, as fields of this section.
	model.Optim `yaml:",inline"`
	// Seed fixes the initial weights and the order of batches.
	Seed uint64 `yaml:"seed"`
	// EvalEvery is how many steps pass between val-loss evaluations (and log lines).
	EvalEvery int `yaml:"eval_every"`
	// EvalBatches is the number of val microbatches one evaluation averages over.
	EvalBatches int `yaml:"eval_batches"`
}

// DefaultTrain is tuned for the tiny example model.
func DefaultTrain() Train {
	return Train{
		Microbatch: 8, Batch: 16,
		Optim: model.Optim{
			Steps: 1000, LR: 3e-3, MinLR: 3e-4, Warmup: 50, WeightDecay: 0.1,
			Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 1.0,
		},
		Seed: 1, EvalEvery: 100, EvalBatches: 8,
	}
}

// Accumulation is the number of microbatches per optimizer step.
func (t Train) Accumulation() int { return t.Batch / t.Microbatch }

func (t Train) validate() error {
	switch {
	case t.Microbatch < 1:
		return fieldErr("train.microbatch", "must be positive, got %d", t.Microbatch)
	case t.Batch < t.Microbatch || t.Batch%t.Microbatch != 0:
		return fieldErr("train.batch", "%d must be a positive multiple of train.microbatch %d", t.Batch, t.Microbatch)
	}
	if err := t.Optim.Validate(); err != nil {
		return sectionErr("train", err)
	}
	switch {
	case t.EvalEvery < 1:
		return fieldErr("train.eval_every", "must be positive, got %d", t.EvalEvery)
	case t.EvalBatches < 1:
		return fieldErr("train.eval_batches", "must be positive, got %d", t.EvalBatches)
	}
	return nil
}
