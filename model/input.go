package model

import (
	"errors"
	"fmt"
	"math"
)

// Input is one microbatch of B sequences of T tokens (T <= SeqLen) for one stage.
type Input struct {
	B, T int
	// Tokens are the B·T token ids in [0, Vocab): on the first stage, and on
	// every stage of a subspace model (which rebuilds the fixed embedding).
	Tokens []int32
	// X are the B·T·Width input activations; every stage but the first.
	X []float32
	// Targets are the B·T next-token ids; last stage only.
	Targets []int32
	// XWire, on a GPU stage, may replace X: the activations as they arrived in
	// the pipeline's int8 wire layout with blocks of Block values, dequantized on
	// the device (so they cross the PCIe bus compressed).
	XWire []byte
	Block int
	// OutBlock > 0, on a GPU stage that is not the last, asks for the output
	// quantized on the device into the int8 wire layout with blocks of OutBlock
	// values instead of float32 activations.
	OutBlock int
}

// Check validates the input for part p of the model cfg: the shape, the number
// and range of token ids and targets, and the number of activations and that
// they are finite. The contents of XWire are the backend's to check.
func (in Input) Check(cfg Config, p Part) error {
	if in.B <= 0 || in.T <= 0 {
		return fmt.Errorf("batch shape B=%d T=%d must be positive", in.B, in.T)
	}
	if in.T > cfg.SeqLen {
		return fmt.Errorf("sequence length T=%d exceeds seq_len %d", in.T, cfg.SeqLen)
	}
	n := in.B * in.T
	switch {
	case p.IsFirst():
		if len(in.X) != 0 || in.XWire != nil {
			return errors.New("first stage takes tokens, got activations")
		}
		if err := checkIDs(in.Tokens, n, cfg.Vocab, "token"); err != nil {
			return err
		}
	case in.XWire != nil:
		if len(in.X) != 0 {
			return errors.New("input has both X and XWire")
		}
		if cfg.Subspace > 0 {
			return errors.New("a subspace model takes its input as float32 coordinates, got the int8 wire layout")
		}
	default:
		if len(in.X) != n*cfg.Width() {
			return fmt.Errorf("got %d activations, want B·T·%d = %d", len(in.X), cfg.Width(), n*cfg.Width())
		}
		if err := CheckFinite(in.X, "input activation"); err != nil {
			return err
		}
	}
	if cfg.Subspace > 0 && !p.IsFirst() {
		if err := checkIDs(in.Tokens, n, cfg.Vocab, "token"); err != nil {
			return err
		}
	}
	if in.OutBlock < 0 {
		return fmt.Errorf("output block size %d", in.OutBlock)
	}
	if p.IsLast() {
		return checkIDs(in.Targets, n, cfg.Vocab, "target")
	}
	return nil
}

// checkIDs checks that ids holds n values in [0, vocab).
func checkIDs(ids []int32, n, vocab int, what string) error {
	if len(ids) != n {
		return fmt.Errorf("got %d %ss, want B·T = %d", len(ids), what, n)
	}
	for i, t := range ids {
		if t < 0 || int(t) >= vocab {
			return fmt.Errorf("%s %d at position %d outside [0, %d)", what, t, i, vocab)
		}
	}
	return nil
}

// CheckFinite returns an error naming the first NaN or infinite value of x.
func CheckFinite(x []float32, what string) error {
	for i, v := range x {
		// All exponent bits set: NaN or ±Inf. A bit test is several times faster
		// than math.IsNaN and IsInf on large tensors.
		if math.Float32bits(v)&0x7f800000 == 0x7f800000 {
			return fmt.Errorf("%s %d is %v", what, i, v)
		}
	}
	return nil
}

// State is a stage's optimizer state, in the layout of its parameters: what
// averaging and state transfer exchange.
type State struct {
	// Params are the parameters.
	Params []float32
	// M and V are AdamW's first and second moments.
	M, V []float32
	// Step is the number of optimizer steps applied (the stage's version).
	Step int
}
