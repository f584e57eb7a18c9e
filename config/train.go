package config

import "swarmnode/model"

// Data is the training corpus: a text file read as bytes (vocab 256), or
// token shards in llm.c's format.
type Data struct {
	// Path is the text file to train on, relative to the working directory; or,
	// ending in .bin or holding a glob (*, ?, [), the token shards: those with
	// "val" in their name are the val split, the others train (package data).
	Path string `yaml:"path" check:"nonempty"`
	// ValFraction is the share of a text file, taken from its end, held out for
	// eval (shards are split by name instead).
	ValFraction float64 `yaml:"val_fraction" check:"in=(0, 1)"`
}

// DefaultData points at the example corpus.
func DefaultData() Data {
	return Data{Path: "examples/gpt/data/tinyshakespeare.txt", ValFraction: 0.1}
}

func (d Data) validate() error { return checkFields("data", d) }

// Train holds optimizer, schedule and loop settings.
type Train struct {
	// Microbatch is the number of sequences in one microbatch (one trip through the pipeline).
	Microbatch int `yaml:"microbatch" check:"positive"`
	// Batch is the number of sequences per optimizer step; a multiple of microbatch.
	Batch int `yaml:"batch"`
	// Optim holds the number of steps to train (steps), AdamW's settings and the
	// learning-rate schedule, as fields of this section; package model validates them.
	model.Optim `yaml:",inline"`
	// Seed fixes the initial weights and the order of batches.
	Seed uint64 `yaml:"seed"`
	// EvalEvery is how many steps pass between val-loss evaluations (and log lines).
	EvalEvery int `yaml:"eval_every" check:"positive"`
	// EvalBatches is the number of val microbatches one evaluation averages over.
	EvalBatches int `yaml:"eval_batches" check:"positive"`
	// Stream picks a trainer's batch stream. Unset, each trainer draws its own
	// (from its peer id), so that several trainers do not feed the same
	// sequences; 0 draws the batches `swarmnode local` draws (to compare a
	// swarm with it on the same data). Stream 1 is the val stream.
	Stream *uint64 `yaml:"stream"`
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

// valStream is data.ValStream (config may not import data): the stream the
// val batches are drawn from.
const valStream = 1

// Accumulation is the number of microbatches per optimizer step.
func (t Train) Accumulation() int { return t.Batch / t.Microbatch }

func (t Train) validate() error {
	if err := checkFields("train", t); err != nil {
		return err
	}
	if t.Batch < t.Microbatch || t.Batch%t.Microbatch != 0 {
		return fieldErr("train.batch", "%d must be a positive multiple of train.microbatch %d", t.Batch, t.Microbatch)
	}
	if t.Stream != nil && *t.Stream == valStream {
		return fieldErr("train.stream", "%d is the val stream; pick another", *t.Stream)
	}
	return sectionErr("train", t.Optim.Validate())
}
