package swarm

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"swarmnode/internal/wait"
	"swarmnode/model"
)

// TestRejoiningHolderLoadsPeersState: a holder of stage 0 leaves mid-run and a
// new peer takes its place while the other holder goes on training. The first
// holder starts from initial weights (it is alone), the newcomer must start
// from the trained state of its peer, never from the seed weights.
func TestRejoiningHolderLoadsPeersState(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a swarm for several seconds")
	}
	cfg := rolesTestConfig(t)
	cfg.Pipeline.RebalanceEvery = 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var firstLog, joinLog syncBuffer

	first := startRoleNode(t, ctx, cfg, nil)
	boot := []string{first.Addrs()[0].String()}
	last := startRoleNode(t, ctx, cfg, boot)
	leaver := startRoleNode(t, ctx, cfg, boot)
	trainer := startRoleNode(t, ctx, cfg, boot)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	serveRole(ctx, t, &wg, newRoles(first, cfg, RunOptions{Logger: slog.New(slog.NewTextHandler(&firstLog, nil))}), 0)
	serveRole(ctx, t, &wg, newRoles(last, cfg, RunOptions{}), 1)
	lctx, leave := context.WithCancel(ctx)
	serveRole(lctx, t, &wg, newRoles(leaver, cfg, RunOptions{}), 0)
	trainRole(ctx, t, &wg, trainer, cfg)
	trained := func(steps int64) func() error {
		return func() error {
			if s := trainer.Status().Snapshot().Training.Step; s < steps {
				return errors.New("trainer at step " + strconv.FormatInt(s, 10))
			}
			return nil
		}
	}
	wait.For(t, 60*time.Second, trained(5))
	leave()
	leaver.Close()

	joiner := startRoleNode(t, ctx, cfg, boot)
	serveRole(ctx, t, &wg, newRoles(joiner, cfg, RunOptions{Logger: slog.New(slog.NewTextHandler(&joinLog, &slog.HandlerOptions{Level: slog.LevelDebug}))}), 0)
	loaded := regexp.MustCompile(`msg="loaded stage state" stage=0 step=(\d+)`)
	wait.For(t, 40*time.Second, func() error {
		m := loaded.FindStringSubmatch(joinLog.String())
		if m == nil {
			return errors.New("the joiner has not loaded stage 0's state:\n" + joinLog.String())
		}
		if step, _ := strconv.Atoi(m[1]); step < 1 {
			return errors.New("the joiner loaded step " + m[1] + ", want its peer's trained state")
		}
		return nil
	})
	if !regexp.MustCompile(`no other holder of the stage: starting from initial weights" stage=0`).MatchString(firstLog.String()) {
		t.Fatalf("the first holder did not say it starts the stage:\n%s", firstLog.String())
	}
	wait.For(t, 60*time.Second, trained(trainer.Status().Snapshot().Training.Step+3))
}

// TestHolderOutOfStepReloads: a holder of stage 0 falls behind its twin (its
// version set back mid-run, as after missed commits); at the next commit it
// finds itself out of step and reloads the stage's state from its twin.
func TestHolderOutOfStepReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a swarm for several seconds")
	}
	cfg := rolesTestConfig(t)
	cfg.Pipeline.RebalanceEvery = 0
	cfg.Train.Steps = 1 << 20 // until the test ends
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var behindLog syncBuffer
	loaded := regexp.MustCompile(`msg="loaded stage state" stage=0`)

	first := startRoleNode(t, ctx, cfg, nil)
	boot := []string{first.Addrs()[0].String()}
	last := startRoleNode(t, ctx, cfg, boot)
	twin := startRoleNode(t, ctx, cfg, boot)
	trainer := startRoleNode(t, ctx, cfg, boot)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	serveRole(ctx, t, &wg, newRoles(first, cfg, RunOptions{}), 0)
	serveRole(ctx, t, &wg, newRoles(last, cfg, RunOptions{}), 1)
	tr := newRoles(twin, cfg, RunOptions{Logger: slog.New(slog.NewTextHandler(&behindLog, nil))})
	svc, err := tr.startStage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.close()
	if err := twin.SetStage(0); err != nil {
		t.Fatal(err)
	}
	trainRole(ctx, t, &wg, trainer, cfg)
	wait.For(t, 60*time.Second, func() error {
		if v := svc.st.Version(); v < 5 {
			return errors.New("the twin is at version " + strconv.FormatUint(v, 10))
		}
		return nil
	})
	loads := len(loaded.FindAllString(behindLog.String(), -1))
	svc.st.WithState(func(s *model.State) { s.Step = 0 })
	wait.For(t, 40*time.Second, func() error {
		if n := len(loaded.FindAllString(behindLog.String(), -1)); n <= loads {
			return errors.New("the holder set back has not reloaded the stage:\n" + behindLog.String())
		}
		if v := svc.st.Version(); v < 5 {
			return errors.New("the holder set back is at version " + strconv.FormatUint(v, 10))
		}
		return nil
	})
	if !regexp.MustCompile(`msg="out of step with the stage's other holders`).MatchString(behindLog.String()) {
		t.Fatalf("the holder did not say why it reloaded:\n%s", behindLog.String())
	}
	wait.For(t, 40*time.Second, func() error {
		if !regexp.MustCompile(`msg="caught up with the stage's other holders" stage=0 loaded=\d+ replayed=\d+`).MatchString(behindLog.String()) {
			return errors.New("the holder set back has not caught up:\n" + behindLog.String())
		}
		return nil
	})
}
