package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/model"
	"swarmnode/receipt"
	"swarmnode/stages"
	"swarmnode/wire"
)

// newHost starts a libp2p host on 127.0.0.1 over TCP, closed at cleanup.
func newHost(tb testing.TB) host.Host {
	tb.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	return h
}

// testConfig is a model small enough for CI: 3 stages of one block each.
func testConfig() config.Config {
	cfg := config.Default()
	cfg.Run = "pipeline-test"
	cfg.Model = model.Config{Vocab: 256, DModel: 32, NHead: 2, NLayer: 3, SeqLen: 32}
	cfg.Stages = []int{1, 1, 1}
	cfg.Data.Path = "../examples/gpt/data/tinyshakespeare.txt"
	cfg.Train.Microbatch, cfg.Train.Batch = 4, 8
	cfg.Train.Steps, cfg.Train.Warmup = 200, 20
	cfg.Train.EvalEvery, cfg.Train.EvalBatches = 50, 8
	cfg.Pipeline.HopTimeout = 10 * time.Second
	cfg.Pipeline.InFlight = 4
	return cfg
}

func loadCorpus(tb testing.TB, cfg config.Config) *data.Corpus {
	tb.Helper()
	c, err := data.Load(cfg.Data.Path, cfg.Data.ValFraction, cfg.Model.Vocab)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// chainRun trains the same model in memory, as `swarmnode local` does, and returns
// the final val loss over the trainer's val windows.
func chainRun(tb testing.TB, cfg config.Config, corpus *data.Corpus) (valLoss float64, tokensPerSec float64) {
	tb.Helper()
	chain, err := stages.NewChain(cfg.Model, cfg.Stages, cfg.Train.Seed)
	if err != nil {
		tb.Fatal(err)
	}
	accum, B := cfg.Train.Accumulation(), cfg.Train.Microbatch
	T := min(cfg.Model.SeqLen, corpus.MaxSeqLen(data.Train))
	rng := data.NewRNG(cfg.Train.Seed, 0)
	start := time.Now()
	for range cfg.Train.Steps {
		for range accum {
			tok, tgt := corpus.Batch(data.Train, B, T, rng)
			if _, err := chain.ForwardBackward(tok, tgt, B, T); err != nil {
				tb.Fatal(err)
			}
		}
		chain.Step(cfg.Train.Optim, accum)
	}
	tokensPerSec = float64(cfg.Train.Steps*accum*B*T) / time.Since(start).Seconds()
	vrng := data.NewRNG(cfg.Train.Seed, data.ValStream)
	vT := min(cfg.Model.SeqLen, corpus.MaxSeqLen(data.Val))
	for range cfg.Train.EvalBatches {
		tok, tgt := corpus.Batch(data.Val, B, vT, vrng)
		l, err := chain.Loss(tok, tgt, B, vT)
		if err != nil {
			tb.Fatal(err)
		}
		valLoss += float64(l)
	}
	return valLoss / float64(cfg.Train.EvalBatches), tokensPerSec
}

// testRouter knows the in-process servers directly: it stands in for the DHT and
// load gossip (instantly up to date). Like the DHT until a record expires, it keeps
// listing a holder whose host died; the pipeline must route around it.
type testRouter struct {
	mu      sync.Mutex
	servers map[int][]*Server
	extra   map[int][]Holder // holders that are not Servers (misbehaving peers)
	downs   map[peer.ID]int
	// unmeasured lists holders whose throughput the router does not know yet
	// (as of a peer that just joined): routing gives them an average share.
	unmeasured map[peer.ID]bool
}

func newTestRouter() *testRouter {
	return &testRouter{servers: make(map[int][]*Server), extra: make(map[int][]Holder), downs: make(map[peer.ID]int)}
}

func (r *testRouter) add(s *Server) {
	r.mu.Lock()
	r.servers[s.Stage()] = append(r.servers[s.Stage()], s)
	r.mu.Unlock()
}

func (r *testRouter) Holders(k int) []Holder {
	r.mu.Lock()
	ss := append([]*Server(nil), r.servers[k]...)
	out := append([]Holder(nil), r.extra[k]...)
	r.mu.Unlock()
	for _, s := range ss {
		tp, q := s.Load()
		r.mu.Lock()
		if r.unmeasured[s.host.ID()] {
			tp = 0
		}
		r.mu.Unlock()
		out = append(out, Holder{ID: s.host.ID(), Throughput: tp, Queue: q, Addrs: s.host.Addrs()})
	}
	return out
}

func (r *testRouter) MarkDown(p peer.ID) {
	r.mu.Lock()
	r.downs[p]++
	r.mu.Unlock()
}

// testSwarm is a whole pipeline in one process: holders[k] servers for stage k,
// each on its own host, and a trainer host.
type testSwarm struct {
	cfg      config.Config
	router   *testRouter
	workers  []*Worker   // the first holder's of each stage
	replicas [][]*Worker // every holder's, per stage
	servers  [][]*Server
	trainer  host.Host
	traffic  wire.Counter // frames the servers sent

	mu       sync.Mutex
	receipts map[peer.ID][]receipt.Receipt // what each server kept of its commits
}

// newSwarm starts the servers. Holders of one stage share one Worker: they stand
// for replicas that averaging keeps identical, which is averaging's job, not the
// pipeline's; so the swarm trains one model, comparable with the chain.
// slow maps {stage, holder} to a Slowdown.
func newSwarm(tb testing.TB, cfg config.Config, holders []int, slow map[[2]int]float64) *testSwarm {
	return newSwarmLog(tb, cfg, holders, slow, nil)
}

func newSwarmLog(tb testing.TB, cfg config.Config, holders []int, slow map[[2]int]float64, log *slog.Logger) *testSwarm {
	tb.Helper()
	sw := &testSwarm{cfg: cfg, router: newTestRouter()}
	mem := &memReduce{rounds: map[uint64]*memRound{}}
	for k := range cfg.Stages {
		var row []*Server
		var ws []*Worker
		for i := range max(1, holders[k]) {
			st, err := stages.New(cfg.Model, cfg.Stages, k, cfg.Train.Seed)
			if err != nil {
				tb.Fatal(err)
			}
			w := NewWorker(st, WorkerOptionsFrom(cfg))
			ws = append(ws, w)
			if i >= holders[k] {
				break // a stage with no holder still has a worker for tests to look at
			}
			h := newHost(tb)
			w.opts.Reduce = mem.reducer(w, h.ID())
			so := ServerOptionsFrom(cfg, log)
			so.Slowdown = slow[[2]int{k, i}]
			so.Traffic = &sw.traffic
			so.OnReceipt = func(r receipt.Receipt) {
				sw.mu.Lock()
				defer sw.mu.Unlock()
				if sw.receipts == nil {
					sw.receipts = map[peer.ID][]receipt.Receipt{}
				}
				sw.receipts[h.ID()] = append(sw.receipts[h.ID()], r)
			}
			s, err := NewServer(h, w, sw.router, so)
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { s.Close() })
			sw.router.add(s)
			row = append(row, s)
		}
		sw.servers = append(sw.servers, row)
		sw.workers = append(sw.workers, ws[0])
		sw.replicas = append(sw.replicas, ws)
	}
	sw.trainer = newHost(tb)
	return sw
}

func (sw *testSwarm) newTrainer(tb testing.TB, corpus *data.Corpus, o TrainerOptions) *Trainer {
	tb.Helper()
	o.Run, o.Model, o.Stages, o.Train, o.Pipeline = sw.cfg.Run, sw.cfg.Model, len(sw.cfg.Stages), sw.cfg.Train, sw.cfg.Pipeline
	if o.Logger == nil && testing.Verbose() {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	tr, err := NewTrainer(sw.trainer, sw.router, corpus, o)
	if err != nil {
		tb.Fatal(err)
	}
	return tr
}

func runTrainer(tb testing.TB, tr *Trainer, timeout time.Duration) Summary {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	sum, err := tr.Run(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	if ctx.Err() != nil {
		tb.Fatalf("training did not finish in %s: %+v", timeout, tr.Stats())
	}
	return sum
}

// memReduce all-reduces the gradients of the workers of one process, so that
// the replicas of a stage in a test swarm step together as the swarm's do
// through package averaging (whose own tests cover the network).
type memReduce struct {
	mu     sync.Mutex
	rounds map[uint64]*memRound
}

type memRound struct {
	want    int
	arrived []peer.ID
	closed  bool // a member gave up waiting: the group is who arrived by then
	sum     []float64
	micro   int
	ready   chan struct{}
}

// reducer returns the Reduce of w, served by peer self: it waits up to two
// seconds for every member, then leaves the summed gradients of the members
// that arrived over their summed microbatches in w's gradients, as the
// averaging protocol's leader goes on with the members that joined.
func (m *memReduce) reducer(w *Worker, self peer.ID) func(context.Context, Round) (Reduced, error) {
	return func(ctx context.Context, r Round) (Reduced, error) {
		st := w.Stage()
		g := make([]float32, st.NumParams())
		if err := st.ReadGrads(0, g); err != nil {
			return Reduced{}, err
		}
		m.mu.Lock()
		rd := m.rounds[r.ID]
		if rd == nil {
			rd = &memRound{want: len(r.Members), sum: make([]float64, len(g)), ready: make(chan struct{})}
			m.rounds[r.ID] = rd
		}
		if rd.closed {
			m.mu.Unlock()
			return Reduced{}, errors.New("the group went on without this member")
		}
		for i, v := range g {
			rd.sum[i] += float64(v)
		}
		rd.micro += r.Micro
		if rd.arrived = append(rd.arrived, self); len(rd.arrived) == rd.want {
			rd.closed = true
			close(rd.ready)
		}
		m.mu.Unlock()
		select {
		case <-rd.ready:
		case <-time.After(time.Second):
			m.mu.Lock()
			if !rd.closed {
				rd.closed = true
				close(rd.ready)
			}
			m.mu.Unlock()
		case <-ctx.Done():
			return Reduced{}, ctx.Err()
		}
		m.mu.Lock()
		group := slices.Clone(rd.arrived)
		m.mu.Unlock()
		inv := 1 / float64(max(1, rd.micro))
		for i := range g {
			g[i] = float32(rd.sum[i]*inv) - g[i]
		}
		return Reduced{Averaged: true, Group: group, Complete: true}, st.AddGrads(0, g)
	}
}
