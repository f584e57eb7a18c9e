package swarm

import (
	"log/slog"
	"strings"

	"swarmnode/checkpoint"
	"swarmnode/config"
	"swarmnode/model"
	"swarmnode/sample"
	"swarmnode/stages"
)

// `swarmnode local` shows what the model has learnt: at each evaluation it
// logs a short greedy continuation of a newline (or of <|endoftext|>) from
// the chain's current weights, generated on the CPU. Only models small enough
// to run token by token on the CPU in a moment are sampled.

// sampleMaxParams bounds the models sampled at evaluations.
const sampleMaxParams = 20_000_000

// sampleTokens is the length of an evaluation's sample.
const sampleTokens = 80

// samplable reports whether cfg's model is sampled at evaluations: a GPT-2
// (no subspace) with a tokenizer, small enough.
func samplable(cfg config.Config) bool {
	if cfg.Model.Subspace > 0 {
		return false
	}
	if _, _, err := sample.TokenizerFor(cfg.Model.Vocab); err != nil {
		return false
	}
	lays, err := stageLayouts(cfg)
	if err != nil {
		return false
	}
	n := 0
	for _, lay := range lays {
		n += lay.Size
	}
	return n <= sampleMaxParams
}

// logSample logs a sample of the chain's current model at step, if the model
// is samplable.
func logSample(cfg config.Config, chain *stages.Chain, step int, log *slog.Logger) {
	if !samplable(cfg) {
		return
	}
	var parts []checkpoint.Part
	for _, s := range chain.Stages() {
		parts = append(parts, checkpoint.Part{Views: s.Views(), Params: s.Params()})
	}
	text, err := generateFrom(cfg.Model, parts)
	if err != nil {
		log.Info("no sample at this evaluation", "step", step, "err", err.Error())
		return
	}
	log.Info("sample", "step", step, "text", text)
}

// generateFrom continues a newline, or <|endoftext|> for GPT-2's BPE,
// greedily with the model given by its stages' parameters.
func generateFrom(cfg model.Config, parts []checkpoint.Part) (string, error) {
	hc, tensors, err := checkpoint.HFTensors(cfg, parts)
	if err != nil {
		return "", err
	}
	byName := make(map[string]checkpoint.Tensor, len(tensors))
	for _, t := range tensors {
		byName[t.Name] = t
	}
	m, err := sample.New(hc, byName, "the model")
	if err != nil {
		return "", err
	}
	encode, decode, err := sample.TokenizerFor(m.Vocab)
	if err != nil {
		return "", err
	}
	prompt := encode("\n")
	if m.Vocab != 256 {
		prompt = []int32{int32(m.Vocab - 1)} // <|endoftext|>
	}
	out, err := m.Generate(prompt, sample.Options{Tokens: sampleTokens})
	if err != nil {
		return "", err
	}
	return strings.ToValidUTF8(string(decode(out)), "?"), nil
}
