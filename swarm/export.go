package swarm

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"swarmnode/checkpoint"
	"swarmnode/config"
	"swarmnode/stages"
)

// Export writes the model of cfg to out in Hugging Face's GPT-2 format
// (checkpoint.Export), from the newest step of which every stage has a valid
// checkpoint in one of dirs (each a checkpoint directory holding stage<k>
// subdirectories: `swarmnode local`'s, or the holders' of a swarm). It
// returns the step exported.
func Export(cfg config.Config, dirs []string, out string, log *slog.Logger) (int, error) {
	chain, err := stages.NewChain(cfg.Model, cfg.Stages, cfg.Train.Seed)
	if err != nil {
		return 0, err
	}
	defer chain.Close()
	ss := chain.Stages()
	fp := checkpoint.Fingerprint(cfg.Model, cfg.Stages)
	for _, step := range candidateSteps(dirs, len(ss)) {
		if err := loadStep(ss, dirs, step, fp, log); err != nil {
			log.Warn("step not exported", "step", step, "err", err.Error())
			continue
		}
		parts := make([]checkpoint.Part, len(ss))
		for k, s := range ss {
			parts[k] = checkpoint.Part{Views: s.Views(), Params: s.Params()}
		}
		meta := map[string]string{"format": "pt", "run": cfg.Run, "step": strconv.Itoa(step), "fingerprint": fp}
		return step, checkpoint.Export(out, cfg.Model, parts, meta)
	}
	return 0, fmt.Errorf("export: no step with a valid checkpoint of all %d stages in %v", len(ss), dirs)
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

// loadStep restores every stage of ss from a valid checkpoint of step found
// in one of dirs.
func loadStep(ss []*stages.Stage, dirs []string, step int, fp string, log *slog.Logger) error {
	for _, s := range ss {
		want := checkpoint.Want{Fingerprint: fp, Stage: s.Index(), Views: s.Views()}
		var lastErr error
		loaded := false
		for _, d := range dirs {
			p := filepath.Join(d, fmt.Sprintf("stage%d", s.Index()), fmt.Sprintf("step-%08d", step))
			if _, err := os.Stat(p); err != nil {
				continue
			}
			st, _, err := checkpoint.Load(p, want)
			if err == nil {
				err = s.Restore(st)
			}
			if err != nil {
				lastErr = err
				log.Warn("checkpoint refused", "checkpoint", p, "err", err.Error())
				continue
			}
			loaded = true
			break
		}
		if !loaded {
			return fmt.Errorf("stage %d: %v", s.Index(), lastErr)
		}
	}
	return nil
}
