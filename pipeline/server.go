package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"swarmnode/codec"
	"swarmnode/config"
	"swarmnode/model"

	"swarmnode/receipt"
	"swarmnode/stages"
	"swarmnode/wire"
)

// ServerOptions configure a stage server.
type ServerOptions struct {
	// Run is the run id; it names the stage protocol.
	Run string
	// Pipeline holds the limits and timeouts.
	Pipeline config.Pipeline
	// Compression sets the codecs of what the server sends: activations downstream,
	// gradients upstream.
	Compression config.Compression
	// MaxBatch caps the sequences of one microbatch (train.microbatch of the run's
	// config): a larger request would make the stage allocate more than its
	// share of memory before the cache limit could see it. 0 means no cap.
	MaxBatch int
	// Slowdown, when above 1, stretches every forward and backward pass to Slowdown
	// times its duration by sleeping after it (outside the compute lock): a slow
	// peer for tests and demos. Throughput measurements include the sleep.
	Slowdown float64
	// Logger receives per-microbatch failures at debug level; nil discards them.
	Logger *slog.Logger
	// OnMicrobatch, if set, is told of every request answered (Completed), every
	// attempt at the next stage that failed and was retried elsewhere (Retried),
	// and every request answered with an error (Failed). It must be cheap and
	// safe for concurrent use.
	OnMicrobatch func(Outcome)
	// Traffic, if set, counts the frames the server writes, upstream and
	// downstream: the node's counter, shown on its status page.
	Traffic *wire.Counter
	// OnReceipt, if set, is given each verified receipt of a commit this
	// server stepped on (signed by the committing trainer, naming it).
	OnReceipt func(receipt.Receipt)
}

// ServerStats are a stage server's counters.
type ServerStats struct {
	// Stage is the stage served.
	Stage int `json:"stage"`
	// Version is the stage's parameter version (optimizer steps applied).
	Version uint64 `json:"version"`
	// Served counts training microbatches answered with a gradient or loss.
	Served int64 `json:"served"`
	// Evals counts forward-only microbatches answered.
	Evals int64 `json:"evals"`
	// Failed counts requests answered with an error.
	Failed int64 `json:"failed"`
	// BadFrames counts requests rejected as malformed, wrongly shaped or non-finite.
	BadFrames int64 `json:"bad_frames"`
	// Busy counts requests turned away at the in-flight or cache limit.
	Busy int64 `json:"busy"`
	// DownstreamCalls and DownstreamFailures count attempts at the next stage.
	DownstreamCalls    int64 `json:"downstream_calls"`
	DownstreamFailures int64 `json:"downstream_failures"`
	// Hedged counts downstream calls that took far longer than usual and were
	// moved to another holder after the slow one gave up (not failures).
	Hedged int64 `json:"hedged"`
	// Cancelled counts requests this server gave up at its upstream's request
	// (the upstream hedged them) before committing anything.
	Cancelled int64 `json:"cancelled"`
	// SharedFrames counts the frames this server and its calls downstream sent
	// through shared memory to peers of its host (pipeline.shared_memory).
	SharedFrames int64 `json:"shared_frames"`
	// Refreshed counts forward passes run again before their backward pass
	// because a step landed in between (pipeline.staleness above 0).
	Refreshed int64 `json:"refreshed"`
	// InFlight is the number of microbatches being handled now.
	InFlight int `json:"in_flight"`
	// Queue is the number waiting for or in computation now.
	Queue int `json:"queue"`
	// CacheBytes is the memory held by cached forward passes now.
	CacheBytes int64 `json:"cache_bytes"`
	// Throughput is the measured speed in tokens per second (moving average).
	Throughput float64 `json:"throughput"`
}

// Server serves one pipeline stage on the run's stage protocol.
type Server struct {
	host  host.Host
	w     *Worker
	k, n  int
	model model.Config
	opts  ServerOptions
	log   *slog.Logger
	down  *caller // nil on the last stage
	grad  wire.Encoding
	links links // zstd policy per upstream answered
	// tensors is the format the stage is asked for its output and its input
	// gradient in (see stages.Wire): the int8 wire layout when both codecs are
	// int8, so that a stage on a GPU quantizes and dequantizes on the device.
	tensors stages.Wire

	ctx    context.Context
	cancel context.CancelFunc
	shm    *wire.Shm // nil: every frame goes on the stream
	mu     sync.Mutex
	closed bool
	active map[network.Stream]struct{} // reset on Close, so that no handler waits on a peer
	wg     sync.WaitGroup

	slots     chan struct{} // microbatches being computed
	readers   chan struct{} // streams open, bounding request buffers to readers x frame cap
	cacheUsed atomic.Int64
	queue     atomic.Int32

	speedMu sync.Mutex
	speed   float64

	served, evals, failed, bad, busy, cancelled atomic.Int64
}

// NewServer starts serving w's stage on h, routing to the next stage through r.
func NewServer(h host.Host, w *Worker, r Router, o ServerOptions) (*Server, error) {
	act, err := codec.Parse(o.Compression.Activations)
	if err != nil {
		return nil, fmt.Errorf("pipeline: compression.activations: %w", err)
	}
	grad, err := codec.Parse(o.Compression.Gradients)
	if err != nil {
		return nil, fmt.Errorf("pipeline: compression.gradients: %w", err)
	}
	zm, err := codec.ParseZstd(o.Compression.Zstd)
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	if o.Pipeline.MaxInFlight < 1 || o.Pipeline.HopTimeout <= 0 || o.Pipeline.MaxFrameBytes < wire.HeaderSize {
		return nil, fmt.Errorf("pipeline: invalid pipeline limits %+v", o.Pipeline)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st := w.Stage()
	s := &Server{
		host: h, w: w, k: st.Index(), n: st.Count(), model: st.Model(), opts: o, log: log,
		grad:    wire.Encoding{Codec: grad, Block: o.Compression.BlockSize},
		links:   links{mode: zm},
		active:  make(map[network.Stream]struct{}),
		slots:   make(chan struct{}, o.Pipeline.MaxInFlight),
		readers: make(chan struct{}, 2*o.Pipeline.MaxInFlight),
	}
	if act == codec.Int8 && grad == codec.Int8 {
		s.tensors.Int8Block = o.Compression.BlockSize
	}
	if o.Pipeline.SharedMemory {
		var err error
		if s.shm, err = wire.NewShm(); err != nil {
			log.Info("frames to peers of this host go on the stream", "err", err)
		}
	}
	if !st.IsLast() {
		bo := newBackoff(100*time.Millisecond, 30*time.Second)
		s.down = &caller{
			host: h, proto: Protocol(o.Run), router: r, bo: bo,
			picker: newPicker(r, bo, h.ID(), rand.Uint64(), log),
			stages: s.n, width: s.model.Width(), allTokens: s.model.Subspace > 0, maxFrame: o.Pipeline.MaxFrameBytes,
			hopTimeout: o.Pipeline.HopTimeout, retries: o.Pipeline.Retries,
			enc: wire.Encoding{Codec: act, Block: o.Compression.BlockSize}, links: links{mode: zm},
			traffic: o.Traffic, log: log, shm: s.shm,
			receive: func(a stages.Arrived) (stages.Tensor, error) { return st.Receive(a, s.tensors) },
		}
	}
	if s.down != nil && o.OnMicrobatch != nil {
		s.down.onRetry = func() { o.OnMicrobatch(Retried) }
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	h.SetStreamHandler(Protocol(o.Run), s.handle)
	h.SetStreamHandler(CommitProtocol(o.Run), s.handleCommit)
	return s, nil
}

// Stage returns the index of the stage served.
func (s *Server) Stage() int { return s.k }

// Worker returns the worker computing the stage.
func (s *Server) Worker() *Worker { return s.w }

// Load returns what the node gossips: throughput in tokens per second and the
// number of microbatches waiting for or in computation.
func (s *Server) Load() (throughput float64, queue int) {
	s.speedMu.Lock()
	defer s.speedMu.Unlock()
	return s.speed, int(s.queue.Load())
}

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	tp, q := s.Load()
	st := ServerStats{
		Stage: s.k, Version: s.w.Stage().Version(),
		Served: s.served.Load(), Evals: s.evals.Load(), Failed: s.failed.Load(),
		BadFrames: s.bad.Load(), Busy: s.busy.Load(), Cancelled: s.cancelled.Load(), Refreshed: s.w.refreshed.Load(),
		SharedFrames: s.shm.Frames(),
		InFlight:     len(s.slots), Queue: q, CacheBytes: s.cacheUsed.Load(), Throughput: tp,
	}
	if s.down != nil {
		st.DownstreamCalls, st.DownstreamFailures = s.down.attempts.Load(), s.down.failures.Load()
		st.Hedged = s.down.hedges.Load()
	}
	return st
}

// Close stops serving: it removes the protocol handler, cancels the microbatches
// in progress and waits for their handlers to return. It leaves the host open.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	active := make([]network.Stream, 0, len(s.active))
	for str := range s.active {
		active = append(active, str)
	}
	s.mu.Unlock()
	s.host.RemoveStreamHandler(Protocol(s.opts.Run))
	s.host.RemoveStreamHandler(CommitProtocol(s.opts.Run))
	s.cancel()
	// Upstreams see a reset at once and retry elsewhere; handlers stop waiting.
	for _, str := range active {
		_ = str.Reset()
	}
	s.wg.Wait()
	return s.shm.Close()
}

// handle serves one microbatch: one stream, one request, one answer.
func (s *Server) handle(str network.Stream) {
	if !s.track(str) {
		_ = str.Reset()
		return
	}
	defer s.untrack(str)
	select {
	case s.readers <- struct{}{}:
		defer func() { <-s.readers }()
	default:
		// Far over capacity: refuse without reading (or buffering) the request.
		s.busy.Add(1)
		_ = str.Reset()
		return
	}
	s.serve(str)
}

// track counts str among the streams Close resets and waits for, unless the
// server is closed.
func (s *Server) track(str network.Stream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	s.active[str] = struct{}{}
	return true
}

func (s *Server) untrack(str network.Stream) {
	s.mu.Lock()
	delete(s.active, str)
	s.mu.Unlock()
	s.wg.Done()
}

// serve reads the request on str, computes it within its budget and answers.
func (s *Server) serve(str network.Stream) {
	start := time.Now()
	conn := wire.NewConn(str, s.opts.Pipeline.MaxFrameBytes, s.opts.Traffic)
	if s.shm != nil && sameHost(str.Conn()) {
		conn.AcceptShared()
	}
	req, err := s.readRequest(conn, start.Add(s.opts.Pipeline.HopTimeout))
	if err != nil {
		s.bad.Add(1)
		s.report(Failed)
		s.log.Debug("rejected request", "stage", s.k, "from", shortID(str.Conn().RemotePeer()), "err", err)
		// The read deadline may be what failed: give the answer its own.
		s.answerError(conn, str, 0, err, time.Now().Add(s.opts.Pipeline.HopTimeout))
		return
	}
	// The upstream's budget, but never more than this stage and those below may
	// take: a request cannot hold the server's resources longer than that.
	budget := s.opts.Pipeline.HopTimeout * time.Duration(s.n-s.k)
	if req.budget > 0 {
		budget = min(budget, req.budget)
	}
	// Answer a little before the upstream gives up, so that it hears why.
	deadline := start.Add(budget - budget/20 - 20*time.Millisecond)
	answerBy := deadline.Add(budget / 20)
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	// The upstream closing its side asks this hop to give up (it is hedging);
	// resetting the stream makes it give up whatever it was doing.
	soft, giveUp := context.WithCancel(ctx)
	defer giveUp()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		watchUpstream(str, answerBy, giveUp, cancel)
	}()
	defer func() {
		_ = str.SetReadDeadline(time.Now())
		<-watched
	}()

	if s.w.CatchingUp() {
		// Its parameters are not the stage's yet: a pass here would be
		// computed on another model. Busy sends the microbatch elsewhere.
		s.busy.Add(1)
		s.answerError(conn, str, req.id, fmt.Errorf("%w: catching up with the stage's other holders", wire.ErrBusy), deadline)
		return
	}
	select {
	case s.slots <- struct{}{}:
	default:
		s.busy.Add(1)
		s.report(Failed)
		s.answerError(conn, str, req.id, fmt.Errorf("%w: %d microbatches in flight", wire.ErrBusy, cap(s.slots)), deadline)
		return
	}
	ans, err := s.compute(ctx, soft, req)
	<-s.slots
	if err != nil {
		s.refuse(conn, str, req, err, answerBy)
		return
	}
	s.answer(conn, str, req, ans, answerBy)
}

// refuse answers req with the error that computing it ended in.
func (s *Server) refuse(conn *wire.Conn, str network.Stream, req *serverRequest, err error, deadline time.Time) {
	if errors.Is(err, errCancelled) {
		s.cancelled.Add(1)
	} else {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %v", wire.ErrTimeout, err)
		}
		s.failed.Add(1)
		s.report(Failed)
		s.log.Debug("microbatch failed", "stage", s.k, "id", req.id, "err", err)
	}
	s.answerError(conn, str, req.id, err, deadline)
}

// answer sends req's answer upstream: the loss alone in evaluation and from
// stage 0, else the gradient of the stage's input.
func (s *Server) answer(conn *wire.Conn, str network.Stream, req *serverRequest, ans answer, deadline time.Time) {
	var err error
	if req.eval || s.k == 0 {
		err = conn.WriteResult(req.id, s.k, flags(req.eval), ans.loss, deadline)
	} else {
		h := wire.Header{Kind: wire.Gradient, ID: req.id, Stage: s.k, B: req.b, T: req.t, D: s.model.Width(), Loss: ans.loss}
		enc := s.grad
		enc.Link = s.links.get(str.Conn().RemotePeer())
		if req.shared {
			conn.ShareVia(s.shm)
		}
		err = writeTensor(conn, h, ans.grad, enc, deadline)
	}
	if err != nil {
		s.failed.Add(1)
		s.report(Failed)
		s.log.Debug("answer failed", "stage", s.k, "id", req.id, "err", err)
		_ = str.Reset()
		return
	}
	if req.eval {
		s.evals.Add(1)
	} else {
		s.served.Add(1)
	}
	s.report(Completed)
	_ = str.Close()
}

func (s *Server) report(o Outcome) {
	if s.opts.OnMicrobatch != nil {
		s.opts.OnMicrobatch(o)
	}
}

func flags(eval bool) uint8 {
	if eval {
		return wire.FlagEval
	}
	return 0
}

func (s *Server) answerError(conn *wire.Conn, str network.Stream, id uint64, err error, deadline time.Time) {
	if werr := conn.WriteError(id, s.k, err, deadline); werr != nil {
		_ = str.Reset()
		return
	}
	_ = str.Close()
}

// sameHost reports whether c joins two peers of one host: a TCP connection
// between loopback addresses. Only such peers may share /dev/shm.
func sameHost(c network.Conn) bool {
	return manet.IsIPLoopback(c.LocalMultiaddr()) && manet.IsIPLoopback(c.RemoteMultiaddr()) && isTCP(c.RemoteMultiaddr())
}

// isTCP reports whether a is a TCP address.
func isTCP(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_TCP)
	return err == nil
}

// serverRequest is a request as a server received it.
type serverRequest struct {
	request
	budget time.Duration
	// shared: its input came through shared memory, so the answer may too.
	shared bool
}

func (s *Server) readRequest(conn *wire.Conn, deadline time.Time) (*serverRequest, error) {
	f, err := conn.Read(deadline)
	if err != nil {
		var re *wire.RemoteError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("%w: error frame as a request", wire.ErrUnexpect)
		}
		return nil, err
	}
	if f.Stage != s.k {
		return nil, fmt.Errorf("%w: request for stage %d, this peer serves %d", wire.ErrWrongStage, f.Stage, s.k)
	}
	if s.opts.MaxBatch > 0 && f.B > s.opts.MaxBatch {
		return nil, fmt.Errorf("%w: microbatch of %d sequences, this run's cap is %d", wire.ErrShape, f.B, s.opts.MaxBatch)
	}
	r := &serverRequest{request: request{id: f.ID, stage: s.k, eval: f.Eval(), b: f.B, t: f.T}, budget: f.Budget, shared: f.Shared()}
	if s.k == 0 {
		if err := f.Expect(wire.Tokens, 0, 0, 1, s.model.SeqLen); err != nil {
			return nil, err
		}
		if r.tokens, err = f.Ints(nil, s.model.Vocab); err != nil {
			return nil, err
		}
	} else {
		if err := f.Expect(wire.Activations, 0, 0, s.model.Width(), s.model.SeqLen); err != nil {
			return nil, err
		}
		if r.x, err = s.w.Stage().Receive(arrived{f}, s.tensors); err != nil {
			return nil, err
		}
		if s.model.Subspace > 0 {
			if r.tokens, err = s.readIDs(conn, r, wire.Tokens, deadline); err != nil {
				return nil, err
			}
		}
	}
	if r.targets, err = s.readIDs(conn, r, wire.Targets, deadline); err != nil {
		return nil, err
	}
	return r, nil
}

// readIDs reads the frame of ids of kind (wire.Targets; wire.Tokens after a
// subspace model's activations, whose stages rebuild the fixed embedding from
// them) that belongs to request r.
func (s *Server) readIDs(conn *wire.Conn, r *serverRequest, kind wire.Kind, deadline time.Time) ([]int32, error) {
	f, err := conn.Read(deadline)
	if err != nil {
		return nil, err
	}
	if err := f.Expect(kind, r.b, r.t, 1, 0); err != nil {
		return nil, err
	}
	if f.ID != r.id || f.Eval() != r.eval || f.Stage != s.k {
		return nil, fmt.Errorf("%w: %v of microbatch %x (eval %v) after input of %x (eval %v)", wire.ErrUnexpect, kind, f.ID, f.Eval(), r.id, r.eval)
	}
	return f.Ints(nil, s.model.Vocab)
}

// watchUpstream waits for the upstream to close its side of str (giveUp: a
// hedge) or reset it (cancel), until deadline. The upstream sends nothing after
// its request, so any byte read means it is out of step.
func watchUpstream(str network.Stream, deadline time.Time, giveUp, cancel context.CancelFunc) {
	_ = str.SetReadDeadline(deadline)
	var b [1]byte
	_, err := str.Read(b[:])
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(err, io.EOF):
		giveUp()
	case errors.As(err, &ne) && ne.Timeout():
		// The handler is done, or its deadline is.
	default:
		cancel()
	}
}

// compute runs the stage forward, the rest of the pipeline below it, and the
// stage backward. When soft ends before ctx (the upstream asked this hop to give
// up), compute returns errCancelled if it has committed nothing yet: no backward
// pass has run here or below. Once the downstream has answered (or, on the last
// stage, the backward pass is about to run) it carries on.
func (s *Server) compute(ctx, soft context.Context, req *serverRequest) (answer, error) {
	p, fd, err := s.forward(ctx, soft, req)
	if err != nil {
		return answer{}, err
	}
	ans, err := s.complete(ctx, soft, req, p, fd)
	if err != nil || req.eval {
		// A pass that ends without its backward gives its buffers back. (After
		// a backward that consumed the pass, Release does nothing.)
		p.Release()
	}
	return ans, err
}

// cancelled reports whether the upstream asked this hop to give up (soft ended
// while ctx goes on).
func cancelled(ctx, soft context.Context) bool { return ctx.Err() == nil && soft.Err() != nil }

// forward runs the stage forward; fd is how long that took (Slowdown included).
func (s *Server) forward(ctx, soft context.Context, req *serverRequest) (p *stages.Pass, fd time.Duration, err error) {
	in := model.Input{B: req.b, T: req.t, Tokens: req.tokens}
	if s.k == s.n-1 {
		in.Targets = req.targets
	}
	if cancelled(ctx, soft) {
		return nil, 0, errCancelled
	}
	s.queue.Add(1)
	p, fd, err = s.w.forward(in, req.x, s.tensors)
	s.queue.Add(-1)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", wire.ErrShape, err)
	}
	return p, fd + s.slow(soft, fd), nil
}

// complete takes the forward pass p of req through the rest of the pipeline
// and, in training, back through the stage. The caller releases p on an error.
func (s *Server) complete(ctx, soft context.Context, req *serverRequest, p *stages.Pass, fd time.Duration) (answer, error) {
	if cancelled(ctx, soft) {
		return answer{}, errCancelled
	}
	size := p.Bytes()
	if s.cacheUsed.Add(size) > s.opts.Pipeline.CacheBytes {
		s.cacheUsed.Add(-size)
		s.busy.Add(1)
		return answer{}, fmt.Errorf("%w: forward cache over %d bytes", wire.ErrBusy, s.opts.Pipeline.CacheBytes)
	}
	defer s.cacheUsed.Add(-size)

	ans := answer{loss: p.Loss}
	var dout stages.Tensor // the gradient of p's output (none on the last stage)
	if s.down != nil {
		down, err := s.callDown(ctx, soft, req, p, fd)
		if err != nil {
			return answer{}, err
		}
		ans.loss, dout = down.loss, down.grad
	}
	if req.eval {
		return ans, nil
	}
	if err := ctx.Err(); err != nil {
		return answer{}, err
	}
	if s.down == nil && cancelled(ctx, soft) {
		return answer{}, errCancelled
	}
	var err error
	ans.grad, err = s.backward(ctx, req, p, fd, dout)
	return ans, err
}

// callDown sends p's output on to the next stage, keeping time to run the
// backward pass and answer after it answers.
func (s *Server) callDown(ctx, soft context.Context, req *serverRequest, p *stages.Pass, fd time.Duration) (answer, error) {
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-2*fd-10*time.Millisecond))
		defer cancel()
	}
	next := &request{id: req.id, stage: s.k + 1, eval: req.eval, b: req.b, t: req.t, x: p.Output(), tokens: req.tokens, targets: req.targets}
	return s.down.send(ctx, next, soft.Done())
}

// backward runs the stage backward with the gradient of its output and folds
// the forward and backward time into the measured speed.
func (s *Server) backward(ctx context.Context, req *serverRequest, p *stages.Pass, fd time.Duration, dout stages.Tensor) (stages.Tensor, error) {
	s.queue.Add(1)
	e := entry{id: req.id, in: model.Input{B: req.b, T: req.t, Tokens: req.tokens}, x: req.x}
	if s.k == s.n-1 {
		e.in.Targets = req.targets
	}
	dx, bd, err := s.w.backward(p, dout, s.tensors, e)
	s.queue.Add(-1)
	if err != nil {
		return stages.Tensor{}, fmt.Errorf("%w: %v", wire.ErrShape, err)
	}
	bd += s.slow(ctx, bd)
	s.observe(req.b*req.t, fd+bd)
	return dx, nil
}

// slow sleeps (Slowdown-1)·d and returns how long it slept.
func (s *Server) slow(ctx context.Context, d time.Duration) time.Duration {
	if s.opts.Slowdown <= 1 {
		return 0
	}
	extra := time.Duration(float64(d) * (s.opts.Slowdown - 1))
	t := time.NewTimer(extra)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return extra
}

// observe folds one microbatch's compute speed into the moving average. It is the
// speed of the stage's own work, not its share of traffic, so a holder that gets
// little traffic is not mistaken for a slow one.
func (s *Server) observe(tokens int, d time.Duration) {
	if d <= 0 {
		return
	}
	v := float64(tokens) / d.Seconds()
	s.speedMu.Lock()
	if s.speed == 0 {
		s.speed = v
	} else {
		s.speed += 0.1 * (v - s.speed)
	}
	s.speedMu.Unlock()
}
