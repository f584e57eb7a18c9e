// Command gputrain trains a GPT on one GPU with swarmnode's CUDA backend, split
// into pipeline stages exactly as a swarm splits it: each stage is a cuda.Stage
// whose parameters start from package model's initialisation, as every stage's
// do on the CPU or a GPU, activations and their
// gradients pass between stages through int8 blockwise compression (the wire
// codec, applied on the GPU), and every stage takes its own AdamW step. It prints
// the loss as it falls and the tokens/s.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"swarmnode/config"
	"swarmnode/cuda"
	"swarmnode/data"
	"swarmnode/model"
)

func main() {
	cfgPath := flag.String("config", "bench/gpu/gpt2-small.yaml", "swarmnode config (model, stages, data, train)")
	steps := flag.Int("steps", 0, "optimizer steps (0: the config's)")
	codec := flag.String("codec", "int8", "activation/gradient codec between stages: int8 or fp32")
	prec := flag.String("prec", "bf16", "fp32, tf32 or bf16")
	summary := flag.String("summary", "", "write a JSON summary here")
	flag.Parse()
	if err := run(*cfgPath, *steps, *codec, *prec, *summary); err != nil {
		fmt.Fprintln(os.Stderr, "gputrain:", err)
		os.Exit(1)
	}
}

type stageRun struct {
	s    *cuda.Stage
	pass *cuda.Pass
}

func run(cfgPath string, steps int, codec, precName string, summaryPath string) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	if steps <= 0 {
		steps = cfg.Train.Steps
	}
	prec, ok := map[string]cuda.Precision{"fp32": cuda.FP32, "tf32": cuda.TF32, "bf16": cuda.BF16Mixed}[precName]
	if !ok {
		return fmt.Errorf("unknown precision %q", precName)
	}
	if codec != "int8" && codec != "fp32" {
		return fmt.Errorf("unknown codec %q", codec)
	}
	corpus, err := data.Load(cfg.Data.Path, cfg.Data.ValFraction, cfg.Model.Vocab)
	if err != nil {
		return err
	}
	m := cfg.Model
	B, T, accum := cfg.Train.Microbatch, m.SeqLen, cfg.Train.Accumulation()
	N, C := B*T, m.DModel
	d, err := cuda.Open(0)
	if err != nil {
		return err
	}
	defer d.Close()
	info := d.Info()
	fmt.Printf("device %s; model d=%d heads=%d layers=%d T=%d vocab=%d; stages %v; microbatch %d x %d, %d per step; %s, %s between stages\n",
		info.Name, m.DModel, m.NHead, m.NLayer, m.SeqLen, m.Vocab, cfg.Stages, B, T, accum, precName, codec)

	// Stage k holds the part of the model a swarm's stage k holds, initialised as
	// a swarm initialises it.
	var runs []stageRun
	for k := range cfg.Stages {
		part, err := model.Split(m, cfg.Stages, k)
		if err != nil {
			return err
		}
		g, err := cuda.NewStage(d, cuda.StageConfig{Model: m, Part: part, Precision: prec})
		if err != nil {
			return err
		}
		defer g.Close()
		params := make([]float32, g.NumParams())
		g.Layout().Init(params, cfg.Train.Seed)
		if err := g.SetParams(params); err != nil {
			return err
		}
		p, err := g.NewPass(B, T)
		if err != nil {
			return err
		}
		runs = append(runs, stageRun{s: g, pass: p})
	}
	var wire, grad cuda.Buf
	const bs = 64
	err = d.Do(func(c *cuda.Ctx) error {
		var err error
		if wire, err = c.Alloc(cuda.U8, cuda.WireLen(N*C, bs)); err != nil {
			return err
		}
		grad, err = c.Alloc(cuda.F32, N*C)
		return err
	})
	if err != nil {
		return err
	}
	// hop moves activations (or gradients) from one stage to the next as they would
	// travel: int8 blockwise on the wire, decoded on the receiving side.
	hop := func(c *cuda.Ctx, dst, src cuda.Buf) error {
		if codec == "fp32" {
			return c.Copy(dst, src)
		}
		if err := c.QuantizeInt8Wire(wire, src, bs); err != nil {
			return err
		}
		return c.DequantizeInt8Wire(dst, wire, bs)
	}
	opt := cfg.Train.Optim
	opt.Steps = steps
	rng := data.NewRNG(cfg.Train.Seed, 0)
	last := len(runs) - 1
	// microbatch runs one microbatch forward (and backward when train is set) through all stages.
	microbatch := func(split data.Split, train bool) (float32, error) {
		tokens, targets := corpus.Batch(split, B, T, rng)
		var loss float32
		err := d.Do(func(c *cuda.Ctx) error {
			if err := c.UploadI32(runs[0].pass.Tokens(), tokens); err != nil {
				return err
			}
			if err := c.UploadI32(runs[last].pass.Targets(), targets); err != nil {
				return err
			}
			for k, r := range runs {
				if k > 0 {
					if err := hop(c, r.pass.Input().Slice(0, N*C), runs[k-1].pass.Output()); err != nil {
						return err
					}
				}
				if err := r.s.ForwardOn(c, r.pass); err != nil {
					return err
				}
			}
			var err error
			if loss, err = runs[last].s.LossOn(c, runs[last].pass); err != nil || !train {
				return err
			}
			for k := last; k >= 0; k-- {
				r := runs[k]
				if err := r.s.BackwardOn(c, r.pass, grad); err != nil {
					return err
				}
				if k > 0 {
					if err := hop(c, grad, r.s.GradInput(B, T)); err != nil {
						return err
					}
				}
			}
			return c.Sync()
		})
		return loss, err
	}
	type point struct {
		Step      int     `json:"step"`
		Loss      float64 `json:"loss"`
		ValLoss   float64 `json:"val_loss,omitempty"`
		TokPerSec float64 `json:"tokens_per_s"`
	}
	var curve []point
	var firstLoss, lastLoss float64
	tokensPerStep := float64(N * accum)
	start := time.Now()
	var trainTime time.Duration
	for step := 0; step < steps; step++ {
		t0 := time.Now()
		var sum float64
		for i := 0; i < accum; i++ {
			l, err := microbatch(data.Train, true)
			if err != nil {
				return fmt.Errorf("step %d: %w", step, err)
			}
			sum += float64(l)
		}
		var norms []string
		for _, r := range runs {
			gn, err := r.s.Step(opt, accum)
			if err != nil {
				return err
			}
			norms = append(norms, strconv.FormatFloat(float64(gn), 'f', 2, 32))
		}
		dt := time.Since(t0)
		if step > 0 { // the first step includes kernel compilation
			trainTime += dt
		}
		loss := sum / float64(accum)
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return fmt.Errorf("step %d: loss is %v", step, loss)
		}
		if step == 0 {
			firstLoss = loss
		}
		lastLoss = loss
		if step%cfg.Train.EvalEvery == 0 || step == steps-1 {
			var val float64
			for i := 0; i < cfg.Train.EvalBatches; i++ {
				l, err := microbatch(data.Val, false)
				if err != nil {
					return err
				}
				val += float64(l) / float64(cfg.Train.EvalBatches)
			}
			tps := tokensPerStep / dt.Seconds()
			curve = append(curve, point{Step: step, Loss: loss, ValLoss: val, TokPerSec: tps})
			fmt.Printf("step %5d  loss %.4f  val %.4f  grad norms [%s]  %.0f tokens/s\n", step, loss, val, strings.Join(norms, " "), tps)
		}
	}
	tps := tokensPerStep * float64(steps-1) / trainTime.Seconds()
	fmt.Printf("trained %d steps in %.1f s: loss %.3f -> %.3f, %.0f tokens/s (steps after the first, %d tokens each)\n",
		steps, time.Since(start).Seconds(), firstLoss, lastLoss, tps, int(tokensPerStep))
	if summaryPath != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": info.Name, "model": m, "stages": cfg.Stages, "precision": precName,
			"codec": codec, "steps": steps, "first_loss": firstLoss, "last_loss": lastLoss, "tokens_per_s": tps, "curve": curve}, "", "  ")
		if err := os.WriteFile(summaryPath, b, 0o644); err != nil {
			return err
		}
	}
	if !(lastLoss < firstLoss-1) {
		return fmt.Errorf("the loss did not fall: %.3f -> %.3f", firstLoss, lastLoss)
	}
	return nil
}
