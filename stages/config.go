package stages

import (
	"fmt"
	"math"
)

// ModelConfig is the GPT shape (mirrors config.Model; stages does not import config).
type ModelConfig struct {
	// Vocab is the number of token ids.
	Vocab int
	// DModel is the width of the residual stream.
	DModel int
	// NHead is the number of attention heads; it must divide DModel.
	NHead int
	// NLayer is the number of transformer blocks in the whole model.
	NLayer int
	// SeqLen is the longest sequence (size of the position embedding).
	SeqLen int
}

// Validate reports the first problem with the shape.
func (c ModelConfig) Validate() error {
	switch {
	case c.Vocab <= 0:
		return fmt.Errorf("model: vocab %d must be positive", c.Vocab)
	case c.DModel <= 0:
		return fmt.Errorf("model: d_model %d must be positive", c.DModel)
	case c.NHead <= 0:
		return fmt.Errorf("model: n_head %d must be positive", c.NHead)
	case c.DModel%c.NHead != 0:
		return fmt.Errorf("model: d_model %d is not a multiple of n_head %d", c.DModel, c.NHead)
	case c.NLayer <= 0:
		return fmt.Errorf("model: n_layer %d must be positive", c.NLayer)
	case c.SeqLen <= 0:
		return fmt.Errorf("model: seq_len %d must be positive", c.SeqLen)
	}
	return nil
}

// OptimConfig holds AdamW and learning-rate schedule settings (mirrors config.Train).
type OptimConfig struct {
	// LR is the peak learning rate, reached at the end of warmup.
	LR float32
	// MinLR is the learning rate at the end of the cosine decay.
	MinLR float32
	// Warmup is the number of steps of linear warmup.
	Warmup int
	// Steps is the total number of steps; the cosine reaches MinLR there.
	Steps int
	// WeightDecay is AdamW's decoupled weight decay, applied to matrices only.
	WeightDecay float32
	// Beta1 and Beta2 are Adam's moment decay rates.
	Beta1, Beta2 float32
	// Eps is added to the root of the second moment.
	Eps float32
	// Clip is the maximum global gradient norm per stage; 0 disables clipping.
	Clip float32
}

// LRAt returns the learning rate of optimizer step `step` (0-based: the first step
// is step 0): linear warmup from LR/Warmup to LR over steps 0..Warmup-1, then a
// cosine from LR down to MinLR reached at step Steps (and held after it).
// With Steps <= 0 the rate stays at LR after warmup.
func (o OptimConfig) LRAt(step int) float32 {
	if step < 0 {
		step = 0
	}
	if step < o.Warmup {
		return o.LR * float32(step+1) / float32(o.Warmup)
	}
	if o.Steps <= 0 {
		// No schedule length: hold the peak rate after warmup.
		return o.LR
	}
	span := o.Steps - o.Warmup
	if span <= 0 {
		return o.MinLR
	}
	p := float64(step-o.Warmup) / float64(span)
	if p > 1 {
		p = 1
	}
	coef := 0.5 * (1 + math.Cos(math.Pi*p))
	return o.MinLR + float32(coef)*(o.LR-o.MinLR)
}
