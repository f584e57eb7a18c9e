package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"swarmnode/checkpoint"
	"swarmnode/config"
	"swarmnode/model"
	"swarmnode/stages"
)

// checkpointer writes a stage's checkpoints on the config's schedule
// (checkpoint.every steps, checkpoint.interval) into its directory.
type checkpointer struct {
	cfg   config.Config
	fp    string
	last  time.Time
	saved int // the step of the last checkpoint written or resumed from
	// resumedLoss is the training loss of the checkpoint resumed from.
	resumedLoss float64
	log         *slog.Logger
}

// enabled reports whether the config asks for checkpoints at all.
func (c *checkpointer) enabled() bool {
	return c.cfg.Checkpoint.Every > 0 || c.cfg.Checkpoint.Interval > 0
}

func newCheckpointer(cfg config.Config, log *slog.Logger) *checkpointer {
	return &checkpointer{cfg: cfg, fp: checkpoint.Fingerprint(cfg.Model, cfg.Stages), last: time.Now(), log: log}
}

// due reports whether step is one to checkpoint at: checkpoint.every steps
// after the last one written (a stage server sees its version only now and
// then), or checkpoint.interval after it.
func (c *checkpointer) due(step int) bool {
	ck := c.cfg.Checkpoint
	return (ck.Every > 0 && step >= c.saved+ck.Every) || (ck.Interval > 0 && time.Since(c.last) >= ck.Interval)
}

// save writes a checkpoint of each stage, with the trainer's data position
// and last loss.
func (c *checkpointer) save(ss []*stages.Stage, dataPos int64, loss float64) error {
	start := time.Now()
	var step int
	for _, s := range ss {
		st, err := s.Snapshot()
		if err != nil {
			return err
		}
		step = st.Step
		meta := checkpoint.Meta{Step: st.Step, Stage: s.Index(), Stages: s.Count(), Fingerprint: c.fp, DataPosition: dataPos, Loss: loss}
		if _, err := checkpoint.Save(c.cfg.StageDir(s.Index()), s.Views(), st, meta, c.cfg.Checkpoint.Keep); err != nil {
			return err
		}
	}
	c.last, c.saved = time.Now(), step
	c.log.Info("checkpoint", "step", step, "stages", len(ss), "dir", c.cfg.CheckpointDir(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// resume restores every stage of ss from the newest step that each of them
// has a valid checkpoint of, and returns that checkpoint's meta (of stage 0).
// Checkpoints passed over are logged with the reason. It returns
// checkpoint.ErrNone when no step is complete across the stages.
func (c *checkpointer) resume(ss []*stages.Stage) (checkpoint.Meta, error) {
	paths, err := checkpoint.List(c.cfg.StageDir(0))
	if err != nil {
		return checkpoint.Meta{}, err
	}
	for _, p := range paths {
		meta, err := c.restoreStep(ss, filepath.Base(p))
		if err == nil {
			return meta, nil
		}
		c.log.Warn("checkpoint refused", "checkpoint", p, "err", err.Error())
	}
	return checkpoint.Meta{}, checkpoint.ErrNone
}

// restoreStep loads the checkpoint named name (step-N) of every stage, and
// restores the stages only when all of them load.
func (c *checkpointer) restoreStep(ss []*stages.Stage, name string) (checkpoint.Meta, error) {
	var metas []checkpoint.Meta
	var states []model.State
	for _, s := range ss {
		want := checkpoint.Want{Fingerprint: c.fp, Stage: s.Index(), Views: s.Views()}
		st, meta, err := checkpoint.Load(filepath.Join(c.cfg.StageDir(s.Index()), name), want)
		if err != nil {
			return checkpoint.Meta{}, err
		}
		if m := metas; len(m) > 0 && (meta.Step != m[0].Step || meta.DataPosition != m[0].DataPosition) {
			return checkpoint.Meta{}, fmt.Errorf("stages' checkpoints %s disagree: step %d at data position %d against %d at %d", name, meta.Step, meta.DataPosition, m[0].Step, m[0].DataPosition)
		}
		metas, states = append(metas, meta), append(states, st)
	}
	for i, s := range ss {
		if err := s.Restore(states[i]); err != nil {
			return checkpoint.Meta{}, err
		}
	}
	c.saved, c.resumedLoss = metas[0].Step, metas[0].Loss
	return metas[0], nil
}

// isNone reports whether err says there was no checkpoint to resume from.
func isNone(err error) bool { return errors.Is(err, checkpoint.ErrNone) }

// initFrom sets stage s's parameters to those of the model directory dir in
// Hugging Face's GPT-2 format (checkpoint.InitFromHF).
func initFrom(s *stages.Stage, cfg config.Config, dir string, log *slog.Logger) error {
	var err error
	s.WithState(func(st *model.State) { err = checkpoint.InitFromHF(dir, cfg.Model, s.Views(), st.Params) })
	if err != nil {
		return fmt.Errorf("stage %d: %w", s.Index(), err)
	}
	log.Info("initialised from a model", "stage", s.Index(), "dir", dir)
	return s.DeviceErr()
}

// restoreOwn restores st from the newest valid checkpoint of stage k in this
// peer's checkpoint directory, unless the peer runs fresh, and returns its
// step; -1 when it restored none.
func (r *roles) restoreOwn(st *stages.Stage, k int) int {
	if r.fresh {
		return -1
	}
	ck := newCheckpointer(r.cfg, r.log)
	want := checkpoint.Want{Fingerprint: ck.fp, Stage: k, Views: st.Views()}
	state, meta, path, err := checkpoint.Latest(r.cfg.StageDir(k), want, func(p string, err error) {
		r.log.Warn("checkpoint refused", "checkpoint", p, "err", err.Error())
	})
	if err != nil {
		if !isNone(err) {
			r.log.Warn("reading checkpoints", "stage", k, "err", err.Error())
		}
		return -1
	}
	if err := st.Restore(state); err != nil {
		r.log.Warn("checkpoint not restored", "checkpoint", path, "err", err.Error())
		return -1
	}
	r.log.Info("restored checkpoint", "stage", k, "step", meta.Step, "checkpoint", path)
	return meta.Step
}

// checkpointLoop writes svc's stage's checkpoints on the config's schedule
// while it serves, and a last one when it stops (ctx ends: a shutdown, or a
// move to another stage), each only when the stage stepped since the last.
func (r *roles) checkpointLoop(ctx context.Context, svc *stageService) {
	defer svc.wg.Done()
	ck := newCheckpointer(r.cfg, r.log)
	if !ck.enabled() {
		return
	}
	ck.saved = int(svc.st.Version())
	save := func() {
		v := int(svc.st.Version())
		if v == ck.saved || svc.worker.CatchingUp() {
			return // nothing new, or a state behind the stage's
		}
		if err := ck.save([]*stages.Stage{svc.st}, 0, 0); err != nil {
			r.n.status.IncError("checkpoint")
			r.log.Warn("checkpoint", "stage", svc.k, "err", err.Error())
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			save()
			return
		case <-tick.C:
			if ck.due(int(svc.st.Version())) {
				save()
			}
		}
	}
}

// trainerState is what a trainer keeps on disk to resume a run: the steps it
// committed and the training microbatches it drew from its stream.
type trainerState struct {
	Step         int     `json:"step"`
	DataPosition int64   `json:"data_position"`
	Loss         float64 `json:"loss"`
	Stream       uint64  `json:"stream"`
	Fingerprint  string  `json:"fingerprint"`
}

// trainerStatePath is where a trainer's state goes under the run's config.
func trainerStatePath(cfg config.Config) string {
	return filepath.Join(cfg.CheckpointDir(), "trainer.json")
}

// loadTrainerState reads the trainer's state, nil when there is none or it is
// of another model, stream or schedule (the reason is logged).
func loadTrainerState(cfg config.Config, stream uint64, log *slog.Logger) *trainerState {
	path := trainerStatePath(cfg)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var ts trainerState
	if err == nil {
		err = json.Unmarshal(b, &ts)
	}
	switch {
	case err != nil:
	case ts.Fingerprint != checkpoint.Fingerprint(cfg.Model, cfg.Stages):
		err = errors.New("of another model or split")
	case ts.Stream != stream:
		err = fmt.Errorf("of data stream %d, this trainer's is %d", ts.Stream, stream)
	case ts.Step < 0 || ts.Step > cfg.Train.Steps || ts.DataPosition < 0:
		err = fmt.Errorf("at step %d of train.steps %d, data position %d", ts.Step, cfg.Train.Steps, ts.DataPosition)
	}
	if err != nil {
		log.Warn("trainer state refused: starting the run's steps over", "file", path, "err", err.Error())
		return nil
	}
	return &ts
}

// saveTrainerState writes the trainer's state crash-safe.
func saveTrainerState(cfg config.Config, ts trainerState) error {
	ts.Fingerprint = checkpoint.Fingerprint(cfg.Model, cfg.Stages)
	b, err := json.MarshalIndent(ts, "", "  ")
	if err != nil {
		return err
	}
	return checkpoint.WriteFile(trainerStatePath(cfg), b)
}
