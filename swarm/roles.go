package swarm

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/averaging"
	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/model"
	"swarmnode/pipeline"
	"swarmnode/receipt"
	"swarmnode/stages"
)

// This file composes the pipeline and averaging packages on a Node: the server
// and trainer roles of `swarmnode run`. pipeline/ and averaging/ know nothing of
// each other; here a stage's commits all-reduce its gradients through an
// averager of their own (gradsync.go) and feed the background parameter
// averager, and a rebalancing move fetches the target stage's state through
// averaging's state transfer before pipeline serves it. The holders of a stage
// step together at every trainer's commit (docs/sync.md).

// roles plays the server and trainer roles on a node under one run config.
type roles struct {
	n   *Node
	cfg config.Config
	// slowdown stretches every pass of the stage server (RunOptions.Slowdown).
	slowdown float64
	// fresh ignores the peer's own checkpoints (RunOptions.Fresh); initFrom
	// is RunOptions.InitFrom.
	fresh    bool
	initFrom string
	log      *slog.Logger
	// lie, set by tests only, corrupts the gradients this holder sends to
	// its stage's all-reduce (an adversary).
	lie func(vals []float32)
	// infer is the generation service of the stage served now (nil when
	// none); serveInfer answers through it.
	infer atomic.Pointer[inferService]
}

func newRoles(n *Node, cfg config.Config, o RunOptions) *roles {
	if n.opts.DataDir != "" {
		cfg.Node.DataDir = n.opts.DataDir // checkpoints go beside the node's identity
	}
	return &roles{n: n, cfg: cfg, slowdown: o.Slowdown, fresh: o.Fresh, initFrom: o.InitFrom, log: o.logger()}
}

// stageKey names the averaging and state-transfer protocols of stage k.
func stageKey(k int) string { return fmt.Sprintf("stage-%d", k) }

// stageService is everything serving one stage takes: the math, its pipeline
// server, its averager and its state server.
type stageService struct {
	k      int
	st     *stages.Stage
	worker *pipeline.Worker
	server *pipeline.Server
	avg    *averaging.Averager // nil when averaging is off
	src    *stageSource        // the averager's source; nil when averaging is off
	grads  *gradSync

	// resyncing is set while the stage reloads its holders' state after it
	// missed a commit; lastResync is when it last did.
	resyncing  atomic.Bool
	lastResync atomic.Int64
	state      *averaging.StateServer
	infer      *inferService
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// startStage builds stage k with the live holders' state and serves it. The
// caller announces the stage afterwards.
func (r *roles) startStage(ctx context.Context, k int) (*stageService, error) {
	st, err := r.buildStage(ctx, k)
	if err != nil {
		return nil, err
	}
	svc, err := r.serveStage(ctx, k, st)
	if err != nil {
		st.Close() // the GPU memory of a stage that never served
		return nil, err
	}
	return svc, nil
}

// buildStage builds stage k on the configured device and loads its current
// state from the live holders: a late joiner or a peer moving stage must not
// restart from the initial weights.
func (r *roles) buildStage(ctx context.Context, k int) (*stages.Stage, error) {
	dev, err := resolveDevice(r.cfg.Device, r.log)
	if err != nil {
		return nil, err
	}
	st, err := newStage(r.cfg, k, dev, r.log)
	if err != nil {
		return nil, err
	}
	st.SetMaxTokens(r.cfg.Train.Microbatch * r.cfg.Model.SeqLen)
	if err := r.loadStageState(ctx, st, k); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// serveStage serves the built stage st as stage k: pipeline server, state
// server and averager, until svc.close.
func (r *roles) serveStage(ctx context.Context, k int, st *stages.Stage) (*stageService, error) {
	cfg := r.cfg
	grads, err := newGradSync(r.n, cfg, k, st, r.log)
	if err != nil {
		return nil, err
	}
	if r.lie != nil {
		grads.src.lie = &gradLiar{corrupt: r.lie}
	}
	wo := pipeline.WorkerOptionsFrom(cfg)
	wo.Reduce, wo.Logger, wo.CatchUp = grads.reduce, r.log, true
	worker := pipeline.NewWorker(st, wo)
	so := pipeline.ServerOptionsFrom(cfg, r.log)
	so.Slowdown = r.slowdown
	so.Traffic = &r.n.traffic
	so.OnReceipt = func(rc receipt.Receipt) {
		if err := r.n.ledger.add(rc); err != nil {
			r.n.status.IncError("ledger")
			r.log.Warn("receipt not kept", "err", err)
		}
	}
	server, err := pipeline.NewServer(r.n.Host(), worker, dhtRouter{r.n}, so)
	if err != nil {
		grads.close()
		return nil, err
	}
	svc := &stageService{k: k, st: st, worker: worker, server: server, grads: grads}
	svc.state, err = averaging.ServeState(r.n.Host(), cfg.Run, stageKey(k), func() (averaging.State, error) {
		if worker.CatchingUp() {
			// Its state is steps behind the stage's: a joiner must not
			// start from it. It serves again once it has caught up.
			return averaging.State{}, errors.New("catching up with the stage's other holders")
		}
		var out averaging.State
		st.WithState(func(s *model.State) {
			out = averaging.State{Step: int64(s.Step), Params: clone(s.Params), M: clone(s.M), V: clone(s.V)}
		})
		return out, nil
	}, averaging.ServeOptions{})
	if err != nil {
		server.Close()
		grads.close()
		return nil, err
	}
	if svc.infer, err = newInferService(cfg, k, st, r.log); err != nil {
		svc.state.Close()
		server.Close()
		grads.close()
		return nil, err
	}
	r.infer.Store(svc.infer)
	r.n.Host().SetStreamHandler(InferProtocol(cfg.Run), r.serveInfer)
	sctx, cancel := context.WithCancel(ctx)
	svc.cancel = cancel
	worker.OnStep(func(si pipeline.StepInfo) {
		if svc.src != nil {
			svc.src.samples.Add(int64(si.Samples))
		}
		if si.OutOfStep {
			r.resync(sctx, svc)
		}
	})
	if cfg.Averaging.Enabled {
		if err := r.startAveraging(sctx, svc); err != nil {
			svc.infer.closed.Store(true)
			cancel()
			svc.state.Close()
			server.Close()
			grads.close()
			return nil, err
		}
	}
	svc.wg.Add(2)
	go r.publish(sctx, svc)
	go r.checkpointLoop(sctx, svc)
	r.log.Info("serving stage", "stage", k, "params", st.NumParams(), "version", st.Version(), "device", st.Device())
	return svc, nil
}

// publish gossips the stage server's load and mirrors its counters on the
// status page every second until ctx ends.
func (r *roles) publish(ctx context.Context, svc *stageService) {
	defer svc.wg.Done()
	r.n.DHT().FollowLoad(ctx, time.Second, func() (float64, int) {
		r.n.status.setServer(svc.server.Stats())
		if svc.avg != nil {
			r.n.status.setAveragingStats(svc.avg.Stats(), svc.grads.avg.Stats())
		}
		return svc.server.Load()
	})
}

// startAveraging runs the background averager of svc's stage.
func (r *roles) startAveraging(ctx context.Context, svc *stageService) error {
	cfg := r.cfg
	opts, err := averaging.OptionsFromConfig(cfg.Run, stageKey(svc.k), cfg.Averaging)
	if err != nil {
		return err
	}
	opts.Logger = r.log
	opts.Registerer = r.n.Registry()
	n0 := svc.st.NumParams()
	if cfg.Averaging.Optimizer {
		n0 = svc.st.StateLen()
	}
	src := &stageSource{st: svc.st, n: n0, log: r.log}
	opts.OnEvict = func(p peer.ID, why string) { r.n.bans.add(p, opts.Key, why) }
	avg, err := averaging.New(r.n.Host(), dhtPeers{r.n, svc.k}, src, opts)
	if err != nil {
		return err
	}
	r.n.bans.guard(avg)
	svc.avg, svc.src = avg, src
	svc.wg.Add(1)
	go func() {
		defer svc.wg.Done()
		if err := avg.Run(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("averaging stopped", "stage", svc.k, "err", err)
		}
	}()
	return nil
}

// stageSource is the averaging.Source of a stage: its parameters, or Params|M|V
// when the optimizer state is averaged too, read and corrected chunk by chunk
// through the stage's ranged accessors (ranged copies on the CPU, device
// transfers on a GPU).
type stageSource struct {
	st  *stages.Stage
	n   int
	log *slog.Logger

	samples atomic.Int64 // trained on since the last round
	warned  atomic.Bool
}

// Len is the averaged vector's length.
func (s *stageSource) Len() int { return s.n }

// Samples returns the samples recorded since the previous call.
func (s *stageSource) Samples() float64 { return float64(s.samples.Swap(0)) }

// Read copies vec[off:off+len(dst)].
func (s *stageSource) Read(off int, dst []float32) {
	if err := s.st.ReadState(off, dst); err != nil {
		clear(dst) // a device failure: send zeros rather than stale memory
		s.warn(err)
	}
}

// Add adds delta to vec[off:off+len(delta)].
func (s *stageSource) Add(off int, delta []float32) {
	if err := s.st.AddState(off, delta); err != nil {
		s.warn(err)
	}
}

// warn logs the first failure of a ranged access (off-range requests cannot
// happen; a GPU fault can, and repeats for every chunk).
func (s *stageSource) warn(err error) {
	if s.warned.CompareAndSwap(false, true) {
		s.log.Warn("averaging: stage state access failed", "err", err.Error())
	}
}

// loadStageState loads stage k's current parameters and optimizer state from
// its other holders into st. It first looks the holders up in the DHT, so that
// a restarted peer does not mistake an empty table for an empty stage. With no
// other holder st keeps its initial weights: the stage starts here. When the
// holders serve their state but every download fails, it refuses (an error)
// rather than serve initial weights beside a trained stage.
func (r *roles) loadStageState(ctx context.Context, st *stages.Stage, k int) error {
	var lastErr error
	own := r.restoreOwn(st, k)
	for attempt := 1; attempt <= stateAttempts; attempt++ {
		from := r.knownHolders(ctx, k)
		if len(from) == 0 {
			if own < 0 {
				return r.startFromScratch(st, k, "no other holder of the stage")
			}
			return nil
		}
		fo := averaging.FetchOptions{MaxFloats: st.StateLen()}
		if own >= 0 {
			fo.MinStep = int64(own) + 1 // only a newer state than the checkpoint's
		}
		fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		state, err := averaging.FetchState(fctx, r.n.Host(), r.cfg.Run, stageKey(k), from, fo)
		r.banDisagreeing(state)
		cancel()
		if err == nil {
			return r.applyState(st, k, state)
		}
		lastErr = err
		r.n.status.IncError("state_transfer")
		r.log.Warn("state transfer failed", "stage", k, "attempt", attempt, "holders", len(from), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * time.Second):
		}
	}
	if own >= 0 {
		r.log.Info("no newer state from the stage's holders: going on from this peer's checkpoint", "stage", k, "step", own, "err", lastErr)
		return nil
	}
	if errors.Is(lastErr, averaging.ErrNotServing) {
		// They announced the stage but serve nothing yet: joiners of a new
		// stage, with no trained state to give either.
		return r.startFromScratch(st, k, "the stage's other holders serve no state yet")
	}
	return fmt.Errorf("stage %d: no state from its holders after %d attempts; refusing to serve initial weights: %w", k, stateAttempts, lastErr)
}

// startFromScratch starts stage k with no state from anyone: from the model
// of --init-from, or the seed's weights.
func (r *roles) startFromScratch(st *stages.Stage, k int, why string) error {
	if r.initFrom != "" {
		return initFrom(st, r.cfg, r.initFrom, r.log)
	}
	r.log.Info(why+": starting from initial weights", "stage", k)
	return nil
}

// stateAttempts is how many times a joiner looks up its stage's holders and
// tries to download their state before it refuses to serve.
const stateAttempts = 3

// knownHolders returns the other holders of stage k as the swarm knows them:
// a peer that has just (re)started knows none until its DHT has peers, so it
// waits for its routing table to fill (when it has peers to join through),
// looks the stage up, and when that finds nobody, listens to the load gossip
// for two periods before it concludes that the stage has no holder. What it
// decides on partial knowledge it says in the log. All is bounded by
// holderLookupWait.
func (r *roles) knownHolders(ctx context.Context, k int) []peer.ID {
	lctx, cancel := context.WithTimeout(ctx, holderLookupWait)
	defer cancel()
	if !r.awaitPeers(lctx) {
		from := r.n.otherHolders(k)
		if len(r.n.opts.Bootstrap) > 0 {
			r.log.Warn("no DHT peers yet: deciding on the holders known so far", "stage", k, "known", len(from))
		}
		return from
	}
	if _, err := r.n.DHT().Lookup(lctx, k); err != nil {
		r.log.Warn("holder lookup failed: deciding on the holders known so far", "stage", k, "err", err)
	}
	heard := time.NewTimer(2 * r.cfg.Node.GossipEvery)
	defer heard.Stop()
	for {
		if from := r.n.otherHolders(k); len(from) > 0 {
			return from
		}
		select {
		case <-lctx.Done():
			return nil
		case <-heard.C:
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// awaitPeers waits until the DHT's routing table has a peer, and reports
// whether it has one. A node without bootstrap peers does not wait: it is
// the first of its swarm, or others join through it.
func (r *roles) awaitPeers(ctx context.Context) bool {
	rt := r.n.DHT().Kad().RoutingTable()
	for rt.Size() == 0 {
		if len(r.n.opts.Bootstrap) == 0 {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return true
}

// holderLookupWait bounds how long a joiner waits to learn its stage's holders
// before it decides on what it knows.
const holderLookupWait = 10 * time.Second

// applyState copies a downloaded state into st.
func (r *roles) applyState(st *stages.Stage, k int, state averaging.State) error {
	var loadErr error
	st.WithState(func(s *model.State) {
		if len(state.Params) != len(s.Params) || (len(state.M) != 0 && len(state.M) != len(s.M)) || (len(state.V) != 0 && len(state.V) != len(s.V)) {
			loadErr = fmt.Errorf("stage %d state from %v has %d params, want %d", k, state.From, len(state.Params), len(s.Params))
			return
		}
		copy(s.Params, state.Params)
		copy(s.M, state.M)
		copy(s.V, state.V)
		s.Step = int(state.Step)
	})
	if loadErr != nil {
		return loadErr
	}
	r.log.Info("loaded stage state", "stage", k, "step", state.Step, "holders", len(state.From))
	return nil
}

// resyncEvery bounds how often a holder reloads its stage's state after missing
// commits: a download takes a while, and the stage goes on stepping meanwhile.
const resyncEvery = 10 * time.Second

// resync brings svc's stage up to the version of its other holders in the
// background, after a commit found it at another version than theirs (it
// joined while they stepped, missed a step frozen, or was left out of a
// prepare). The worker records the steps the stage takes from then on; resync
// downloads a state at least as new as the first of them and has the worker
// replay the rest onto it, so the holder lands exactly where the others stand
// however long the download took. Background averaging would only pull it back
// slowly.
func (r *roles) resync(ctx context.Context, svc *stageService) {
	if time.Since(time.Unix(0, svc.lastResync.Load())) < resyncEvery || !svc.resyncing.CompareAndSwap(false, true) {
		return
	}
	svc.wg.Add(1)
	go func() {
		defer svc.wg.Done()
		defer svc.resyncing.Store(false)
		defer svc.lastResync.Store(time.Now().UnixNano())
		if err := r.catchUp(ctx, svc); err != nil && ctx.Err() == nil {
			r.log.Warn("catching up with the stage's other holders failed; trying again at a later commit", "stage", svc.k, "err", err)
		}
	}()
}

// catchUp downloads the stage's state from its other holders and has the
// worker replay the steps taken since onto it.
func (r *roles) catchUp(ctx context.Context, svc *stageService) error {
	from := r.n.otherHolders(svc.k)
	since, recording := svc.worker.CatchUpFrom()
	r.log.Info("out of step with the stage's other holders: loading their state", "stage", svc.k, "version", svc.st.Version(), "holders", len(from), "from_version", since)
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	state, err := averaging.FetchState(fctx, r.n.Host(), r.cfg.Run, stageKey(svc.k), from, averaging.FetchOptions{MaxFloats: svc.st.StateLen(), MinStep: int64(since)})
	r.banDisagreeing(state)
	if err != nil {
		svc.worker.AbandonCatchUp()
		return err
	}
	if !recording {
		return r.applyState(svc.st, svc.k, state)
	}
	replayed, err := svc.worker.CatchUp(func() (uint64, error) {
		return uint64(state.Step), r.applyState(svc.st, svc.k, state)
	})
	if err != nil {
		return err
	}
	r.log.Info("caught up with the stage's other holders", "stage", svc.k, "loaded", state.Step, "replayed", replayed, "version", svc.st.Version())
	return nil
}

// close stops serving the stage and waits for its goroutines.
func (s *stageService) close() {
	s.infer.closed.Store(true)
	s.cancel()
	s.server.Close()
	s.grads.close()
	s.state.Close()
	if s.avg != nil {
		s.avg.Close()
	}
	s.wg.Wait()
	s.st.Close()
}

// serve serves stage k until ctx ends, moving to another stage when the
// rebalancer finds the pipeline unbalanced. It announces the stage it serves.
func (r *roles) serve(ctx context.Context, k int) error {
	svc, err := r.startStage(ctx, k)
	if err != nil {
		return fmt.Errorf("serve stage %d: %w", k, err)
	}
	if err := r.n.SetStage(k); err != nil {
		svc.close()
		return err
	}
	// The rebalancer calls current and move on its own goroutine, one at a
	// time; svc changes only there, to nil after a move that lost the stage.
	defer func() {
		if svc != nil {
			svc.close()
		}
	}()
	cfg := r.cfg
	if cfg.Pipeline.RebalanceEvery <= 0 || len(cfg.Stages) < 2 {
		<-ctx.Done()
		return nil
	}
	// A stage with no holder is filled after one gossip round, and 1 s at
	// least (Rescue): long enough for a move to reach every peer, short enough
	// to unstall the pipeline within seconds.
	rb := &pipeline.Rebalancer{
		Router: dhtRouter{r.n}, Stages: len(cfg.Stages), Self: r.n.ID(),
		Ratio: cfg.Pipeline.RebalanceRatio, Cooldown: 3 * cfg.Pipeline.RebalanceEvery,
		Settle: rebalanceSettle(cfg), Rescue: max(cfg.Node.GossipEvery, time.Second),
		// Once the run has trained, a stage that lost every holder waits
		// this long before one is moved there from initial weights: a
		// partition's far side must not lose its state on the heal.
		Trained: func() bool { return svc != nil && svc.st.Version() > 0 }, LostGrace: lostStageGrace(cfg),
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var lost error // a move that left the node without a stage
	current := func() int {
		if svc == nil {
			return -1 // no stage: the rebalancer stays
		}
		return svc.k
	}
	move := func(ctx context.Context, to int) error {
		next, err := r.move(ctx, svc, to)
		switch {
		case errors.Is(err, errStageLost):
			svc, lost = next, err
			stop()
		case err == nil:
			svc = next
		}
		return err
	}
	err = rb.Run(rctx, cfg.Pipeline.RebalanceEvery, current, move)
	if lost != nil {
		return lost
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// errStageLost marks a move that stopped the old stage but could not serve
// the new one.
var errStageLost = errors.New("rebalancing left no stage to serve")

// move moves the node from the stage svc serves to stage to, and returns the
// new stage's service. The target stage is built and its state fetched from
// its holders while the old stage still serves; only then does the old
// server stop, before the new one starts: both answer the run's one stage
// protocol, and closing a server removes the protocol's handler, whoever set
// it. A failure before the old server stops leaves it serving; one after is
// errStageLost, with the new stage's service if it started.
func (r *roles) move(ctx context.Context, svc *stageService, to int) (*stageService, error) {
	r.log.Info("rebalancing", "from", svc.k, "to", to, "holders", holderSummary(r.n, len(r.cfg.Stages)))
	st, err := r.buildStage(ctx, to)
	if err != nil {
		r.n.status.IncError("rebalance")
		return nil, err
	}
	svc.close()
	next, err := r.serveStage(ctx, to, st)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("%w: stage %d: %v", errStageLost, to, err)
	}
	if err := r.n.SetStage(to); err != nil {
		return next, fmt.Errorf("%w: stage %d: %v", errStageLost, to, err)
	}
	return next, nil
}

// lostStageGrace is how long a stage of a trained run may have no live
// holder before a holder of another stage is moved there from initial
// weights (pipeline.Rebalancer.LostGrace): 2 minutes, or two record TTLs.
func lostStageGrace(cfg config.Config) time.Duration {
	return max(2*time.Minute, 2*cfg.Node.RecordTTL)
}

// rebalanceSettle is how long the holders of every stage must stay the same
// before a rebalancing move (pipeline.Rebalancer.Settle): two checks, and two
// gossip rounds for a move to reach every peer.
func rebalanceSettle(cfg config.Config) time.Duration {
	return 2*cfg.Pipeline.RebalanceEvery + 2*cfg.Node.GossipEvery
}

// train feeds the run's data through the swarm for train.steps steps (or until
// ctx ends) and returns the summary. Progress goes to the status page.
func (r *roles) train(ctx context.Context) (pipeline.Summary, error) {
	cfg := r.cfg
	corpus, err := data.Load(cfg.Data.Path, cfg.Data.ValFraction, cfg.Model.Vocab)
	if err != nil {
		return pipeline.Summary{}, err
	}
	defer corpus.Close()
	status := r.n.status
	opts := pipeline.TrainerOptionsFrom(cfg, r.log)
	// Each trainer draws its own batch stream, so that several trainers of one
	// run do not feed the same sequences.
	h := fnv.New64a()
	h.Write([]byte(r.n.ID()))
	opts.Stream = h.Sum64()
	if cfg.Train.Stream != nil {
		opts.Stream = *cfg.Train.Stream
	}
	opts.Traffic = &r.n.traffic
	ck := newCheckpointer(cfg, r.log)
	if !r.fresh {
		if ts := loadTrainerState(cfg, opts.Stream, r.log); ts != nil {
			opts.StartStep, opts.DataPosition, ck.saved = ts.Step, ts.DataPosition, ts.Step
			r.log.Info("resumed the run's steps", "step", ts.Step, "loss", ts.Loss, "data_position", ts.DataPosition)
		}
	}
	saveState := func(step int, loss float64) {
		ts := trainerState{Step: step, DataPosition: int64(step * cfg.Train.Accumulation()), Loss: loss, Stream: opts.Stream}
		if err := saveTrainerState(cfg, ts); err != nil {
			status.IncError("checkpoint")
			r.log.Warn("trainer state", "err", err.Error())
		}
		ck.last, ck.saved = time.Now(), step
	}
	opts.OnStep = func(s pipeline.StepReport) {
		status.SetTraining(int64(s.Step), s.Loss, s.TokensPerSec)
		if ck.enabled() && ck.due(s.Step) {
			saveState(s.Step, s.Loss)
		}
	}
	sampler := newEvalSampler(ctx, r)
	defer sampler.stop()
	opts.OnEval = func(e pipeline.EvalReport) {
		status.AddHistory(HistoryPoint{Step: int64(e.Step), Loss: e.Loss, ValLoss: e.ValLoss})
		sampler.evaluated(e.Step)
	}
	tr, err := pipeline.NewTrainer(r.n.Host(), dhtRouter{r.n}, corpus, opts)
	if err != nil {
		return pipeline.Summary{}, err
	}
	done := make(chan struct{})
	go func() { // mirror the trainer's microbatch counters on the status page
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				status.setTrainer(tr.Stats())
			}
		}
	}()
	sum, err := tr.Run(ctx)
	close(done)
	status.setTrainer(tr.Stats())
	if ck.enabled() && sum.Step > ck.saved {
		saveState(sum.Step, sum.Loss)
	}
	return sum, err
}

// holderSummary describes every stage's holders and their throughput for logs.
func holderSummary(n *Node, stages int) string {
	var b strings.Builder
	for k := range stages {
		fmt.Fprintf(&b, "[%d:", k)
		for _, h := range n.DHT().Holders(k) {
			fmt.Fprintf(&b, " %s=%.0f", h.Peer.ShortString(), h.Throughput)
		}
		b.WriteString("]")
	}
	return b.String()
}

func clone(s []float32) []float32 { return append([]float32(nil), s...) }

// setServer mirrors a stage server's counters: each microbatch it answered is
// completed, each downstream failure or hedge a partial retry, each error
// answer failed.
func (s *Status) setServer(st pipeline.ServerStats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.server = MicrobatchCounts{Completed: uint64(st.Served), Retried: uint64(st.DownstreamFailures + st.Hedged), Failed: uint64(st.Failed)}
	s.errors["bad_frame"] = uint64(st.BadFrames)
	s.errors["busy"] = uint64(st.Busy)
	s.errors["hedged"] = uint64(st.Hedged)
	s.errors["cancelled"] = uint64(st.Cancelled)
}

// setTrainer mirrors a trainer's microbatch counters.
func (s *Status) setTrainer(st pipeline.TrainerStats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// The trainer retries every failed attempt; a microbatch is failed only
	// when it was given up on (Lost: the run was stopped mid-way).
	s.trainer = MicrobatchCounts{
		Completed: uint64(st.Completed), Retried: uint64(st.Retried), Failed: uint64(st.Lost),
		Replayed: uint64(st.Replayed), TakenBack: uint64(st.TakenBack),
	}
	s.stepped = st.Stepped
	s.inFlight = st.InFlight
}

// setAveragingStats mirrors the background averager's counters, with the
// members evicted and the audits passed in it and in the gradient all-reduce
// (grad).
func (s *Status) setAveragingStats(a, grad averaging.Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.avg = AveragingStats{
		Rounds: a.Rounds, LastGroupSize: a.LastGroupSize,
		LastRoundMS: float64(a.LastRoundMS), Failures: a.Failures, Skipped: a.Skipped,
		Evicted: a.Evicted + grad.Evicted, Audits: a.Audits + grad.Audits,
	}
}
