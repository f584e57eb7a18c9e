package model

import "math"

// Optim is AdamW with its learning-rate schedule: linear warmup, then a cosine
// decay. Its YAML field names are those of the run config's `train:` section,
// which holds it inline.
type Optim struct {
	// Steps is the number of optimizer steps of the run; the cosine reaches MinLR there.
	Steps int `yaml:"steps"`
	// LR is the peak learning rate, reached at the end of warmup.
	LR float32 `yaml:"lr"`
	// MinLR is the learning rate the cosine decay ends at.
	MinLR float32 `yaml:"min_lr"`
	// Warmup is the number of steps of linear learning-rate warmup.
	Warmup int `yaml:"warmup"`
	// WeightDecay is AdamW's decoupled weight decay, applied to matrices only.
	WeightDecay float32 `yaml:"weight_decay"`
	// Beta1 is AdamW's first-moment decay.
	Beta1 float32 `yaml:"beta1"`
	// Beta2 is AdamW's second-moment decay.
	Beta2 float32 `yaml:"beta2"`
	// Eps is added to the root of the second moment in AdamW's denominator.
	Eps float32 `yaml:"eps"`
	// Clip is the gradient-norm clipping threshold per stage; 0 disables clipping.
	Clip float32 `yaml:"clip"`
}

// Validate reports the first problem with the settings as a *FieldError.
func (o Optim) Validate() error {
	switch {
	case o.Steps < 0:
		return fieldErr("steps", "must not be negative, got %d", o.Steps)
	case o.LR <= 0:
		return fieldErr("lr", "must be positive, got %g", o.LR)
	case o.MinLR < 0 || o.MinLR > o.LR:
		return fieldErr("min_lr", "must be in [0, lr], got %g", o.MinLR)
	case o.Warmup < 0:
		return fieldErr("warmup", "must not be negative, got %d", o.Warmup)
	case o.WeightDecay < 0:
		return fieldErr("weight_decay", "must not be negative, got %g", o.WeightDecay)
	case o.Beta1 < 0 || o.Beta1 >= 1:
		return fieldErr("beta1", "must be in [0, 1), got %g", o.Beta1)
	case o.Beta2 < 0 || o.Beta2 >= 1:
		return fieldErr("beta2", "must be in [0, 1), got %g", o.Beta2)
	case o.Eps <= 0:
		return fieldErr("eps", "must be positive, got %g", o.Eps)
	case o.Clip < 0:
		return fieldErr("clip", "must not be negative, got %g", o.Clip)
	}
	return nil
}

// LRAt returns the learning rate of optimizer step `step` (0-based: the first step
// is step 0): linear warmup from LR/Warmup to LR over steps 0..Warmup-1, then a
// cosine from LR down to MinLR reached at step Steps (and held after it).
// With Steps <= 0 the rate stays at LR after warmup.
func (o Optim) LRAt(step int) float32 {
	if step < 0 {
		step = 0
	}
	if step < o.Warmup {
		return o.LR * float32(step+1) / float32(o.Warmup)
	}
	if o.Steps <= 0 {
		return o.LR
	}
	span := o.Steps - o.Warmup
	if span <= 0 {
		return o.MinLR
	}
	p := math.Min(float64(step-o.Warmup)/float64(span), 1)
	return o.MinLR + float32(0.5*(1+math.Cos(math.Pi*p)))*(o.LR-o.MinLR)
}
