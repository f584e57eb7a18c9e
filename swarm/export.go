package swarm

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/averaging"
	"swarmnode/checkpoint"
	"swarmnode/config"
	"swarmnode/model"
)

// Export writes the model of cfg to out in Hugging Face's GPT-2 format
// (checkpoint.Export), from the newest step of which every stage has a valid
// checkpoint in one of dirs (each a checkpoint directory holding stage<k>
// subdirectories: `swarmnode local`'s, or the holders' of a swarm). It
// returns the step exported.
func Export(cfg config.Config, dirs []string, out string, log *slog.Logger) (int, error) {
	lays, err := stageLayouts(cfg)
	if err != nil {
		return 0, err
	}
	fp := checkpoint.Fingerprint(cfg.Model, cfg.Stages)
	for _, step := range candidateSteps(dirs, len(lays)) {
		parts, err := loadStep(lays, dirs, step, fp, log)
		if err != nil {
			log.Warn("step not exported", "step", step, "err", err.Error())
			continue
		}
		meta := map[string]string{"format": "pt", "run": cfg.Run, "step": strconv.Itoa(step), "fingerprint": fp}
		return step, checkpoint.Export(out, cfg.Model, parts, meta)
	}
	return 0, fmt.Errorf("export: no step with a valid checkpoint of all %d stages in %v", len(lays), dirs)
}

// stageLayouts lays out every stage of cfg's split.
func stageLayouts(cfg config.Config) ([]*model.Layout, error) {
	lays := make([]*model.Layout, len(cfg.Stages))
	for k := range cfg.Stages {
		p, err := model.Split(cfg.Model, cfg.Stages, k)
		if err != nil {
			return nil, err
		}
		lays[k] = model.NewLayout(cfg.Model, p)
	}
	return lays, nil
}

// candidateSteps returns the steps that every stage has a checkpoint
// directory of in one of dirs, newest first.
func candidateSteps(dirs []string, stages int) []int {
	count := map[int]int{}
	for k := range stages {
		have := map[int]bool{}
		for _, d := range dirs {
			paths, _ := checkpoint.List(filepath.Join(d, fmt.Sprintf("stage%d", k)))
			for _, p := range paths {
				n, err := strconv.Atoi(filepath.Base(p)[len("step-"):])
				if err == nil {
					have[n] = true
				}
			}
		}
		for n := range have {
			count[n]++
		}
	}
	var steps []int
	for n, c := range count {
		if c == stages {
			steps = append(steps, n)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(steps)))
	return steps
}

// loadStep reads every stage's parameters, laid out by lays, from a valid
// checkpoint of step found in one of dirs.
func loadStep(lays []*model.Layout, dirs []string, step int, fp string, log *slog.Logger) ([]checkpoint.Part, error) {
	parts := make([]checkpoint.Part, len(lays))
	for k, lay := range lays {
		want := checkpoint.Want{Fingerprint: fp, Stage: k, Views: lay.Views}
		var lastErr error
		for _, d := range dirs {
			p := filepath.Join(d, fmt.Sprintf("stage%d", k), fmt.Sprintf("step-%08d", step))
			if _, err := os.Stat(p); err != nil {
				continue
			}
			st, _, err := checkpoint.Load(p, want)
			if err != nil {
				lastErr = err
				log.Warn("checkpoint refused", "checkpoint", p, "err", err.Error())
				continue
			}
			parts[k] = checkpoint.Part{Views: lay.Views, Params: st.Params}
			break
		}
		if parts[k].Params == nil {
			return nil, fmt.Errorf("stage %d: %v", k, lastErr)
		}
	}
	return parts, nil
}

// ExportLive joins the swarm of cfg through bootstrap as a trainer-role peer
// that trains nothing, downloads each stage's current state from its holders
// (state transfer, as a joining holder does) and writes the model to out as
// Export does. Stages step independently of the download, so their steps may
// differ by the commits in flight; it returns each stage's step.
func ExportLive(ctx context.Context, cfg config.Config, bootstrap []string, out string, log *slog.Logger) ([]int, error) {
	n, cleanup, err := joinAsClient(ctx, cfg, bootstrap, log)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	r := newRoles(n, cfg, RunOptions{Logger: log})
	parts, steps, err := r.fetchModel(ctx, r.knownHolders, averaging.FetchOptions{Timeout: 2 * time.Minute})
	if err != nil {
		return nil, err
	}
	meta := map[string]string{"format": "pt", "run": cfg.Run, "steps": fmt.Sprint(steps)}
	return steps, checkpoint.Export(out, cfg.Model, parts, meta)
}

// fetchModel downloads every stage's current parameters from the holders
// holders gives (state transfer), each stage within o.Timeout, and returns
// them with each stage's step.
func (r *roles) fetchModel(ctx context.Context, holders func(context.Context, int) []peer.ID, o averaging.FetchOptions) ([]checkpoint.Part, []int, error) {
	cfg := r.cfg
	lays, err := stageLayouts(cfg)
	if err != nil {
		return nil, nil, err
	}
	steps := make([]int, len(lays))
	parts := make([]checkpoint.Part, len(lays))
	for k, lay := range lays {
		from := holders(ctx, k)
		if len(from) == 0 {
			return nil, nil, fmt.Errorf("stage %d has no holder in the swarm", k)
		}
		fctx, cancel := context.WithTimeout(ctx, o.Timeout)
		o.MaxFloats = 3 * lay.Size
		state, err := averaging.FetchState(fctx, r.n.Host(), cfg.Run, stageKey(k), from, o)
		cancel()
		// A trainer or an exporter does not ban a holder whose copy the
		// others do not vouch for: an honest replica may have drifted (an
		// all-reduce that failed in part), and the holders of the stage
		// before it would still route to it, while this trainer would no
		// longer commit it, losing the work it does. The holders of the
		// stage decide that (catch-up and joins ban; averaging evicts).
		for _, p := range state.Disagreed {
			r.log.Info("a holder's copy of the state is not the majority's", "stage", k, "peer", p.ShortString())
		}
		if err != nil {
			return nil, nil, fmt.Errorf("stage %d: %w", k, err)
		}
		if len(state.Params) != lay.Size {
			return nil, nil, fmt.Errorf("stage %d: %d parameters from its holders, want %d", k, len(state.Params), lay.Size)
		}
		steps[k] = int(state.Step)
		parts[k] = checkpoint.Part{Views: lay.Views, Params: state.Params}
		r.log.Debug("stage state downloaded", "stage", k, "step", state.Step, "holders", len(state.From))
	}
	return parts, steps, nil
}
