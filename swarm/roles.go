package swarm

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/averaging"
	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/pipeline"
	"swarmnode/stages"
)

// This file composes the pipeline and averaging packages on a Node: the server
// and trainer roles of `swarmnode run`. pipeline/ and averaging/ know nothing of
// each other; here a stage's optimizer steps feed its averager, and a
// rebalancing move fetches the target stage's state through averaging's state
// transfer before pipeline serves it.

// RoleOptions configure the roles a node plays.
type RoleOptions struct {
	// Config is the run config (model, stages, train, pipeline, compression, averaging).
	Config config.Config
	// Slowdown stretches every forward and backward pass of the stage server by
	// this factor (values above 1): a deliberately slow peer for tests and demos.
	Slowdown float64
	// Logger receives progress; nil discards.
	Logger *slog.Logger
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
	state  *averaging.StateServer
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// dhtPeers lists the other live holders of one stage for the averager.
type dhtPeers struct {
	n *Node
	k int
}

func (p dhtPeers) Holders(context.Context) ([]peer.ID, error) { return p.holders(), nil }

// holders lists this peer and the other live holders of the stage.
func (p dhtPeers) holders() []peer.ID {
	hs := p.n.DHT().Holders(p.k)
	ids := make([]peer.ID, 0, len(hs)+1)
	ids = append(ids, p.n.ID())
	for _, h := range hs {
		if h.Peer != p.n.ID() {
			ids = append(ids, h.Peer)
		}
	}
	return ids
}

// startStage builds stage k, loads its current state from the live holders (a
// late joiner or a peer moving stage must not restart from the initial weights),
// and serves it: pipeline server, state server and averager. The caller
// announces the stage afterwards.
func (n *Node) startStage(ctx context.Context, o RoleOptions, k int) (*stageService, error) {
	cfg := o.Config
	log := o.logger()
	dev, err := resolveDevice(cfg.Device, log)
	if err != nil {
		return nil, err
	}
	st, err := newStage(cfg, k, dev, log)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() { // the GPU memory of a stage that never served
		if !ok {
			st.Close()
		}
	}()
	st.SetMaxTokens(cfg.Train.Microbatch * cfg.Model.SeqLen)
	if err := n.loadStageState(ctx, o, st, k); err != nil {
		return nil, err
	}
	wo := pipeline.WorkerOptions{
		Optim: OptimConfig(cfg.Train), StepSamples: cfg.Train.Batch,
		Microbatch: cfg.Train.Microbatch, Staleness: cfg.Pipeline.Staleness,
	}
	// Each holder steps after train.batch sequences of its own; averaging then
	// mixes the holders' copies. Sharing the batch among holders instead
	// (WorkerOptions.Replicas) keeps the learning-rate schedule in step with
	// the trainer but halves each step's batch: on the example config, 1000
	// steps with 2 holders per stage, it reached val loss 2.23-2.24 against
	// 2.13 this way.
	worker := pipeline.NewWorker(st, wo)
	server, err := pipeline.NewServer(n.Host(), worker, pipeline.DHTRouter(n.DHT()), pipeline.ServerOptions{
		Run: cfg.Run, Pipeline: cfg.Pipeline, Compression: cfg.Compression,
		MaxBatch: cfg.Train.Microbatch, Slowdown: o.Slowdown, Logger: log, Traffic: &n.traffic,
	})
	if err != nil {
		return nil, err
	}
	svc := &stageService{k: k, st: st, worker: worker, server: server}
	svc.state, err = averaging.ServeState(n.Host(), cfg.Run, stageKey(k), func() (averaging.State, error) {
		var out averaging.State
		st.WithState(func(s *stages.State) {
			out = averaging.State{Step: int64(s.Step), Params: clone(s.Params), M: clone(s.M), V: clone(s.V)}
		})
		return out, nil
	}, averaging.ServeOptions{})
	if err != nil {
		server.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	svc.cancel = cancel
	if cfg.Averaging.Enabled {
		if err := n.startAveraging(sctx, o, svc, st); err != nil {
			cancel()
			svc.state.Close()
			server.Close()
			return nil, err
		}
	}
	svc.wg.Add(1)
	go func() { // publish this stage's load and counters until the stage stops
		defer svc.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				tp, q := server.Load()
				n.DHT().SetLoad(tp, q)
				n.status.setServer(server.Stats())
				if svc.avg != nil {
					n.status.setAveragingStats(svc.avg.Stats())
				}
			}
		}
	}()
	log.Info("serving stage", "stage", k, "params", st.NumParams(), "version", st.Version(), "device", st.Device())
	ok = true
	return svc, nil
}

// startAveraging runs the background averager of svc's stage.
func (n *Node) startAveraging(ctx context.Context, o RoleOptions, svc *stageService, st *stages.Stage) error {
	cfg := o.Config
	opts, err := averaging.OptionsFromConfig(cfg.Run, stageKey(svc.k), cfg.Averaging)
	if err != nil {
		return err
	}
	opts.Logger = o.logger()
	opts.Registerer = n.Registry()
	n0 := st.NumParams()
	if cfg.Averaging.Optimizer {
		n0 = st.StateLen()
	}
	src := &stageSource{st: st, n: n0, log: o.logger()}
	svc.worker.OnStep(func(si pipeline.StepInfo) { src.addSamples(float64(si.Samples)) })
	avg, err := averaging.New(n.Host(), dhtPeers{n, svc.k}, src, opts)
	if err != nil {
		return err
	}
	svc.avg = avg
	svc.wg.Add(1)
	go func() {
		defer svc.wg.Done()
		if err := avg.Run(ctx); err != nil && ctx.Err() == nil {
			o.logger().Warn("averaging stopped", "stage", svc.k, "err", err)
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

	mu      sync.Mutex
	samples float64
	warned  bool
}

// addSamples records samples trained on since the last round.
func (s *stageSource) addSamples(n float64) {
	s.mu.Lock()
	s.samples += n
	s.mu.Unlock()
}

// Len is the averaged vector's length.
func (s *stageSource) Len() int { return s.n }

// Samples returns the samples recorded since the previous call.
func (s *stageSource) Samples() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.samples
	s.samples = 0
	return w
}

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
	s.mu.Lock()
	first := !s.warned
	s.warned = true
	s.mu.Unlock()
	if first {
		s.log.Warn("averaging: stage state access failed", "err", err.Error())
	}
}

// loadStageState replaces st's initial weights with the state of the live
// holders of stage k, fetched in shards from all of them at once. With no
// holder to ask, the stage starts from its seeded initial weights.
func (n *Node) loadStageState(ctx context.Context, o RoleOptions, st *stages.Stage, k int) error {
	var from []peer.ID
	for _, h := range n.DHT().Holders(k) {
		if h.Peer != n.ID() {
			from = append(from, h.Peer)
		}
	}
	if len(from) == 0 {
		return nil
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	state, err := averaging.FetchState(fctx, n.Host(), o.Config.Run, stageKey(k), from, averaging.FetchOptions{MaxFloats: st.StateLen()})
	if err != nil {
		// The swarm must not stall on a broken holder: start fresh, averaging
		// pulls the copy towards its peers.
		o.logger().Warn("state transfer failed; starting from initial weights", "stage", k, "err", err)
		n.status.IncError("state_transfer")
		return nil
	}
	var loadErr error
	st.WithState(func(s *stages.State) {
		if len(state.Params) != len(s.Params) || (len(state.M) != 0 && len(state.M) != len(s.M)) || (len(state.V) != 0 && len(state.V) != len(s.V)) {
			loadErr = fmt.Errorf("stage %d state from %v has %d params, want %d", k, from, len(state.Params), len(s.Params))
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
	o.logger().Info("loaded stage state", "stage", k, "step", state.Step, "holders", len(state.From))
	return nil
}

// close stops serving the stage and waits for its goroutines.
func (s *stageService) close() {
	s.cancel()
	s.server.Close()
	s.state.Close()
	if s.avg != nil {
		s.avg.Close()
	}
	s.wg.Wait()
	s.st.Close()
}

// Serve serves stage k until ctx ends, moving to another stage when the
// rebalancer finds the pipeline unbalanced. It announces the stage it serves.
func (n *Node) Serve(ctx context.Context, o RoleOptions, k int) error {
	svc, err := n.startStage(ctx, o, k)
	if err != nil {
		return fmt.Errorf("serve stage %d: %w", k, err)
	}
	if err := n.SetStage(k); err != nil {
		svc.close()
		return err
	}
	var mu sync.Mutex // guards svc against the rebalancer's moves
	defer func() {
		mu.Lock()
		svc.close()
		mu.Unlock()
	}()
	cfg := o.Config
	if cfg.Pipeline.RebalanceEvery <= 0 || len(cfg.Stages) < 2 {
		<-ctx.Done()
		return nil
	}
	rb := &pipeline.Rebalancer{
		Router: pipeline.DHTRouter(n.DHT()), Stages: len(cfg.Stages), Self: n.ID(),
		Ratio: cfg.Pipeline.RebalanceRatio, Cooldown: 3 * cfg.Pipeline.RebalanceEvery,
		Settle: 2*cfg.Pipeline.RebalanceEvery + 2*cfg.Node.GossipEvery,
	}
	current := func() int { mu.Lock(); defer mu.Unlock(); return svc.k }
	move := func(ctx context.Context, to int) error {
		o.logger().Info("rebalancing", "from", current(), "to", to, "holders", holderSummary(n, len(cfg.Stages)))
		next, err := n.startStage(ctx, o, to)
		if err != nil {
			n.status.IncError("rebalance")
			return err
		}
		if err := n.SetStage(to); err != nil {
			next.close()
			return err
		}
		mu.Lock()
		old := svc
		svc = next
		mu.Unlock()
		old.close()
		return nil
	}
	if err := rb.Run(ctx, cfg.Pipeline.RebalanceEvery, current, move); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// Train feeds the run's data through the swarm for Train.Steps steps (or until
// ctx ends) and returns the summary. Progress goes to the status page.
func (n *Node) Train(ctx context.Context, o RoleOptions) (pipeline.Summary, error) {
	cfg := o.Config
	corpus, err := data.Load(cfg.Data.Path, cfg.Data.ValFraction)
	if err != nil {
		return pipeline.Summary{}, err
	}
	// Each trainer draws its own batch stream, so that several trainers of one
	// run do not feed the same sequences.
	h := fnv.New64a()
	h.Write([]byte(n.ID()))
	tr, err := pipeline.NewTrainer(n.Host(), pipeline.DHTRouter(n.DHT()), corpus, pipeline.TrainerOptions{
		Run: cfg.Run, Model: cfg.Model, Stages: len(cfg.Stages), Train: cfg.Train,
		Pipeline: cfg.Pipeline, Stream: h.Sum64(), Logger: o.logger(), Traffic: &n.traffic,
		OnStep: func(r pipeline.StepReport) {
			n.status.SetTraining(int64(r.Step), r.Loss, r.TokensPerSec)
		},
		OnEval: func(r pipeline.EvalReport) {
			n.status.AddHistory(HistoryPoint{Step: int64(r.Step), Loss: r.Loss, ValLoss: r.ValLoss})
		},
	})
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
				n.status.setTrainer(tr.Stats())
			}
		}
	}()
	sum, err := tr.Run(ctx)
	close(done)
	n.status.setTrainer(tr.Stats())
	return sum, err
}

func (o RoleOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
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
	s.trainer = MicrobatchCounts{Completed: uint64(st.Completed), Retried: uint64(st.Retried), Failed: uint64(st.Lost)}
}

// setAveragingStats mirrors the averager's counters.
func (s *Status) setAveragingStats(a averaging.Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.avg = AveragingStats{
		Rounds: a.Rounds, LastGroupSize: a.LastGroupSize,
		LastRoundMS: float64(a.LastRoundMS), Failures: a.Failures, Skipped: a.Skipped,
	}
}
