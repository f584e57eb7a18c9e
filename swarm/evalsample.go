package swarm

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/averaging"
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

// A swarm trainer holds no weights: at an evaluation it downloads every
// stage's current parameters from their holders (state transfer, as export
// does) and samples from them on the CPU. The download and the generation run
// beside training, never on the trainer's goroutine, and at most one at a
// time: an evaluation that comes while the previous sample is still being
// made is skipped. A stopped or hung holder costs the sample, not the step.

// sampleFetchTimeout bounds each request of a sample's state download.
const sampleFetchTimeout = 20 * time.Second

// evalSampler makes the samples of a swarm trainer's evaluations.
type evalSampler struct {
	r       *roles
	ctx     context.Context
	cancel  context.CancelFunc
	busy    atomic.Bool
	wg      sync.WaitGroup
	enabled bool
}

// newEvalSampler returns the sampler of r's trainer; its samples stop with
// ctx or stop.
func newEvalSampler(ctx context.Context, r *roles) *evalSampler {
	ctx, cancel := context.WithCancel(ctx)
	return &evalSampler{r: r, ctx: ctx, cancel: cancel, enabled: samplable(r.cfg)}
}

// evaluated starts a sample of the model at step unless one is being made.
func (s *evalSampler) evaluated(step int) {
	if !s.enabled || !s.busy.CompareAndSwap(false, true) {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.busy.Store(false)
		text, err := s.sample(s.ctx, step)
		if err != nil {
			if s.ctx.Err() == nil {
				s.r.log.Info("no sample at this evaluation", "step", step, "err", err.Error())
			}
			return
		}
		s.r.n.status.SetSample(Sample{Step: int64(step), Text: text})
		s.r.log.Info("sample", "step", step, "text", text)
	}()
}

// sample downloads the model of step (holders may be a commit ahead or
// behind the trainer) and continues a newline with it.
func (s *evalSampler) sample(ctx context.Context, step int) (string, error) {
	holders := func(_ context.Context, k int) []peer.ID { return s.r.n.otherHolders(k) }
	parts, _, err := s.r.fetchModel(ctx, holders, averaging.FetchOptions{Timeout: sampleFetchTimeout, MinStep: int64(max(step-2, 0))})
	if err != nil {
		return "", err
	}
	return generateFrom(s.r.cfg.Model, parts)
}

// stop abandons the sample being made, if any, and returns once it is gone:
// a trainer whose training ended does not wait for a hung holder.
func (s *evalSampler) stop() {
	s.cancel()
	s.wg.Wait()
}
