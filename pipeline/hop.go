package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"

	"swarmnode/codec"
	"swarmnode/stages"
	"swarmnode/wire"
)

// Protocol is the stage protocol id of run.
func Protocol(run string) protocol.ID { return protocol.ID("/swarmnode/" + run + "/stage/1.0.0") }

// Outcome is what became of a microbatch, as counted on the status page.
type Outcome int

// The outcomes reported through OnMicrobatch hooks.
const (
	// Completed: a trainer's microbatch trained, or a server's request answered.
	Completed Outcome = iota
	// Retried: an attempt at a holder failed and the microbatch went elsewhere
	// (or, at a trainer, started over).
	Retried
	// Failed: a server answered a request with an error, or a trainer gave up on
	// a microbatch (only when stopped).
	Failed
)

// String names the outcome as the status page does.
func (o Outcome) String() string {
	switch o {
	case Completed:
		return "completed"
	case Retried:
		return "retried"
	}
	return "failed"
}

// request is one microbatch as sent to a holder of stage `stage`.
type request struct {
	id      uint64
	stage   int
	eval    bool
	b, t    int
	tokens  []int32       // stage 0, and every stage of a subspace model
	x       stages.Tensor // other stages: as the sending stage made it
	targets []int32
}

// answer is what a hop returns: the microbatch loss and, in training and past
// stage 0, the gradient of the input activations.
type answer struct {
	loss float32
	grad stages.Tensor // as the calling stage's Receive took it
}

// caller sends requests to holders of one stage and retries on other holders.
type caller struct {
	host   host.Host
	proto  protocol.ID
	router Router
	picker *picker
	bo     *backoff

	stages int // number of stages in the pipeline
	// width is the number of values per token of the activations and
	// gradients that cross a boundary (model.Config.Width); allTokens sends the
	// token ids to every stage (a subspace model's stages need them).
	width      int
	allTokens  bool
	maxFrame   int
	hopTimeout time.Duration
	retries    int
	enc        wire.Encoding // codec and block of the tensors this caller sends
	// receive takes a gradient answer in the form the calling stage reads
	// (its stages.Stage.Receive). Nil for a trainer: it calls stage 0, which
	// answers with the loss alone.
	receive func(stages.Arrived) (stages.Tensor, error)
	links   links         // zstd policy per holder called
	traffic *wire.Counter // the node's frame counter; nil: none
	log     *slog.Logger
	onRetry func() // after each failed attempt; nil: none

	lat latencies // of recent training calls that succeeded

	// shm carries large frames to holders on this host (nil: none); noShm
	// holds the holders that could not read them.
	shm   *wire.Shm
	noShm sync.Map

	attempts, failures, hedges atomic.Int64
}

// hopLimit bounds one attempt at stage k: every stage from k down may take one
// hop timeout.
func (c *caller) hopLimit(k int) time.Duration {
	return c.hopTimeout * time.Duration(max(1, c.stages-k))
}

// send delivers req to some holder of its stage, trying up to retries other
// holders after a failure, until ctx ends. A failure that is this side's own fault
// (a tensor it cannot encode) is not retried.
//
// A training call that takes far longer than this stage's calls usually do is
// hedged: the holder is asked to give up (see once), and if it does, req goes to
// another holder without counting as a failure. When soft closes, the upstream
// has asked this hop to give up: the holder in progress is asked the same, and if
// it agrees send returns errCancelled.
func (c *caller) send(ctx context.Context, req *request, soft <-chan struct{}) (answer, error) {
	avoid := make(map[peer.ID]bool)
	var last error
	hedged := 0
	for attempt := 0; attempt <= c.retries; attempt++ {
		if closed(soft) {
			return answer{}, errCancelled
		}
		h, err := c.picker.pick(ctx, req.stage, avoid)
		if err != nil {
			if last == nil {
				last = fmt.Errorf("no holder of stage %d: %w", req.stage, err)
			}
			break
		}
		c.attempts.Add(1)
		start := time.Now()
		var after time.Duration
		if !req.eval && hedged < maxHedges {
			after = c.lat.hedgeAfter()
		}
		ans, asked, err := c.try(ctx, h, req, soft, after, func() bool { return c.picker.other(req.stage, h.ID, avoid) })
		if err == nil {
			c.bo.up(h.ID)
			if !req.eval {
				c.lat.add(time.Since(start))
			}
			return ans, nil
		}
		var re *wire.RemoteError
		if asked && errors.As(err, &re) {
			// The holder gave up as asked: it kept no state of req.
			if closed(soft) {
				return answer{}, errCancelled
			}
			c.hedges.Add(1)
			if c.onRetry != nil {
				c.onRetry()
			}
			c.log.Debug("hedged", "stage", req.stage, "holder", shortID(h.ID), "id", req.id, "after", time.Since(start))
			avoid[h.ID] = true
			hedged++
			attempt-- // slowness is not a failure: keep the retries for those
			continue
		}
		if errors.As(err, &re) && re.Code == wire.CodeShared {
			// It cannot read this host's shared memory: the stream, at once.
			// Frames sent beside the first before its refusal came back are
			// refused too; none of them is a failure.
			if _, refused := c.noShm.LoadOrStore(h.ID, true); !refused {
				c.log.Info("a holder on this host cannot read shared memory; sending on the stream", "holder", shortID(h.ID))
			}
			attempt--
			continue
		}
		c.failures.Add(1)
		if c.onRetry != nil {
			c.onRetry()
		}
		c.log.Debug("hop failed", "stage", req.stage, "holder", shortID(h.ID), "id", req.id, "after", time.Since(start), "err", err)
		last = fmt.Errorf("stage %d holder %s: %w", req.stage, shortID(h.ID), err)
		avoid[h.ID] = true
		if errors.Is(err, errLocal) {
			return answer{}, last
		}
		c.noteFailure(h.ID, err)
		if ctx.Err() != nil {
			break
		}
	}
	return answer{}, fmt.Errorf("%w: %v", wire.ErrDownstream, last)
}

// noteFailure backs off from holder p after a failed attempt, as far as the
// failure says it is down.
func (c *caller) noteFailure(p peer.ID, err error) {
	var re *wire.RemoteError
	switch {
	case errors.As(err, &re) && re.Code == wire.CodeDownstream:
		// It is alive; the stage below it failed. Another holder may route elsewhere.
	case errors.As(err, &re) && re.Code == wire.CodeWrongStage:
		// It is alive and serves another stage now (the rebalancer
		// moved it): the DHT lists it there soon. Hiding it would hide
		// it at its new stage too, where the trainer would then not
		// commit the work other holders still send it.
	case errors.As(err, &re) && re.Code == wire.CodeBusy:
		c.bo.busy(p, time.Now())
	default:
		c.bo.down(p, time.Now())
		c.router.MarkDown(p)
	}
}

// maxHedges bounds the hedges of one microbatch at one hop.
const maxHedges = 2

// errCancelled answers a request whose upstream asked this hop to give up before
// it had committed anything. It travels as "busy": try another holder.
var errCancelled = fmt.Errorf("%w: cancelled at the upstream's request", wire.ErrBusy)

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// errLocal marks failures that retrying elsewhere cannot fix.
var errLocal = errors.New("local failure")

// once makes one attempt at holder h, never asking it to give up.
func (c *caller) once(ctx context.Context, h Holder, req *request) (answer, error) {
	ans, _, err := c.try(ctx, h, req, nil, 0, nil)
	return ans, err
}

// try makes one attempt at holder h. It asks h to give up (by closing its side
// of the stream; h answers with an error if nothing of req is committed yet, else
// it answers as usual) when soft closes, or when hedgeAfter (if positive) has
// passed and canHedge says another holder could take over; asked reports
// whether it did.
func (c *caller) try(ctx context.Context, h Holder, req *request, soft <-chan struct{}, hedgeAfter time.Duration, canHedge func() bool) (ans answer, asked bool, err error) {
	deadline := time.Now().Add(c.hopLimit(req.stage))
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	concurrent := c.picker.begin(h.ID)
	defer c.picker.end(h.ID)
	start := time.Now()

	s, err := c.open(ctx, h)
	if err != nil {
		return ans, false, err
	}
	ok := false
	// Reads and writes wait on deadlines, not on ctx: a cancelled call (the peer
	// is shutting down or moving stage) resets the stream to stop them at once.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer func() {
		stop()
		if ok {
			_ = s.Close()
		} else {
			_ = s.Reset()
		}
	}()
	conn := wire.NewConn(s, c.maxFrame, c.traffic)
	if _, refused := c.noShm.Load(h.ID); c.shm != nil && !refused && sameHost(s.Conn()) {
		conn.ShareVia(c.shm)
		conn.AcceptShared()
	}
	if err := c.sendRequest(conn, h.ID, req, deadline); err != nil {
		// The holder may have refused the request before reading all of it
		// (and closed the stream): its error frame says why.
		var re *wire.RemoteError
		if _, rerr := conn.Read(time.Now().Add(200 * time.Millisecond)); errors.As(rerr, &re) {
			return ans, false, rerr
		}
		return ans, false, err
	}
	var askedFlag atomic.Bool
	watchDone, watchStop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watchDone)
		c.askToGiveUp(s, soft, hedgeAfter, canHedge, watchStop, &askedFlag)
	}()
	f, err := conn.Read(deadline)
	close(watchStop)
	<-watchDone
	asked = askedFlag.Load()
	if err != nil {
		return ans, asked, fmt.Errorf("read answer: %w", err)
	}
	ans, err = c.readAnswer(f, req)
	ok = err == nil
	if ok && f.Kind == wire.Gradient {
		c.picker.observeLink(h.ID, f.PayloadLen, f.B*f.T, f.Transfer)
		c.picker.observeService(h.ID, f.B*f.T, concurrent, time.Since(start))
	}
	return ans, asked, err
}

// open opens a stream to holder h on the stage protocol.
func (c *caller) open(ctx context.Context, h Holder) (network.Stream, error) {
	return c.openOn(ctx, h, c.proto)
}

// openOn opens a stream to holder h on protocol proto, dialing the addresses
// the router gave for it when the peerstore has none.
func (c *caller) openOn(ctx context.Context, h Holder, proto protocol.ID) (network.Stream, error) {
	if len(h.Addrs) > 0 && len(c.host.Peerstore().Addrs(h.ID)) == 0 {
		c.host.Peerstore().AddAddrs(h.ID, h.Addrs, peerstore.TempAddrTTL)
	}
	s, err := c.host.NewStream(ctx, h.ID, proto)
	switch {
	case errors.Is(err, swarm.ErrSwarmClosed):
		// This peer's own host is shutting down: no other holder can help.
		return nil, fmt.Errorf("%w: %w", errLocal, err)
	case err != nil:
		return nil, fmt.Errorf("open stream: %w", err)
	}
	return s, nil
}

// sendRequest writes req to holder to: its input (tokens, or activations) and
// its targets, with the time left until deadline as its budget.
func (c *caller) sendRequest(conn *wire.Conn, to peer.ID, req *request, deadline time.Time) error {
	hdr := wire.Header{ID: req.id, Stage: req.stage, B: req.b, T: req.t, Budget: time.Until(deadline)}
	if req.eval {
		hdr.Flags = wire.FlagEval
	}
	var err error
	if req.stage == 0 {
		hdr.Kind, hdr.D = wire.Tokens, 1
		err = conn.WriteInts(hdr, req.tokens, deadline)
	} else {
		hdr.Kind, hdr.D = wire.Activations, c.width
		enc := c.enc
		enc.Link = c.links.get(to)
		err = writeTensor(conn, hdr, req.x, enc, deadline)
		if err == nil && c.allTokens {
			hdr.Kind, hdr.D = wire.Tokens, 1
			err = conn.WriteInts(hdr, req.tokens, deadline)
		}
	}
	if err != nil {
		if errors.Is(err, codec.ErrNonFinite) || errors.Is(err, wire.ErrOversize) || errors.Is(err, wire.ErrShape) {
			return fmt.Errorf("%w: %w", errLocal, err)
		}
		return fmt.Errorf("send input: %w", err)
	}
	hdr.Kind, hdr.D = wire.Targets, 1
	if err := conn.WriteInts(hdr, req.targets, deadline); err != nil {
		return fmt.Errorf("send targets: %w", err)
	}
	return nil
}

// readAnswer checks that f answers req and takes its loss and, in training
// past stage 0, its gradient.
func (c *caller) readAnswer(f *wire.Frame, req *request) (answer, error) {
	if f.ID != req.id || f.Stage != req.stage {
		return answer{}, fmt.Errorf("%w: answer for microbatch %x from stage %d, sent %x to stage %d", wire.ErrUnexpect, f.ID, f.Stage, req.id, req.stage)
	}
	ans := answer{loss: f.Loss}
	if req.eval || req.stage == 0 {
		if f.Kind != wire.Result {
			return ans, fmt.Errorf("%w: got %v, want result", wire.ErrUnexpect, f.Kind)
		}
		return ans, nil
	}
	if err := f.Expect(wire.Gradient, req.b, req.t, c.width, 0); err != nil {
		return ans, err
	}
	var err error
	ans.grad, err = c.receive(arrived{f})
	return ans, err
}

// askToGiveUp half-closes s when soft closes, or after hedgeAfter if canHedge
// then agrees, unless stop closes first.
func (c *caller) askToGiveUp(s network.Stream, soft <-chan struct{}, hedgeAfter time.Duration, canHedge func() bool, stop <-chan struct{}, asked *atomic.Bool) {
	var timer <-chan time.Time
	if hedgeAfter > 0 {
		t := time.NewTimer(hedgeAfter)
		defer t.Stop()
		timer = t.C
	}
	for {
		select {
		case <-stop:
			return
		case <-soft:
		case <-timer:
			if !canHedge() {
				timer = nil
				continue
			}
		}
		asked.Store(true)
		_ = s.CloseWrite()
		return
	}
}

func shortID(p peer.ID) string {
	s := p.String()
	if len(s) > 8 {
		return s[len(s)-8:]
	}
	return s
}
