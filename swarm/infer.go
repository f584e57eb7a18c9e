package swarm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"swarmnode/checkpoint"
	"swarmnode/config"
	"swarmnode/dht"
	"swarmnode/model"
	"swarmnode/sample"
	"swarmnode/stages"
	"swarmnode/wire"
)

// Generation through the swarm, as Petals serves inference: the client opens
// a session at one holder of each stage and sends each new token through
// them in turn; every holder runs its own blocks over a KV cache it keeps for
// the session, so a token costs each stage one position's forward pass and
// each hop d_model floats. A holder serves a session from a snapshot of its
// parameters taken when the session opened, so that training going on beside
// it does not mix versions within one text.

// InferProtocol is the protocol of generation sessions of run: one typed JSON
// frame each way per request (inferRequest, then inferReply).
func InferProtocol(run string) protocol.ID {
	return protocol.ID("/swarmnode/" + run + "/infer/1.0.0")
}

const (
	msgInferRequest byte = 1
	msgInferReply   byte = 2
	// maxInferSessions bounds the sessions a holder keeps (each holds a
	// copy of its parameters and a cache); the idle longest goes first once
	// idle past inferIdle, else a new session is refused as busy.
	maxInferSessions = 16
	inferIdle        = 2 * time.Minute
	// maxInferFrame bounds a request or reply: a whole context of the
	// residual stream as JSON (about 12 bytes per value) fits.
	maxInferFrame = 64 << 20
	inferTimeout  = time.Minute
)

// inferRequest asks a holder to run its blocks on positions Pos,
// Pos+1, … of session Session.
type inferRequest struct {
	// Session is the client's random id; holders key it by the client's peer
	// id too, so no one else can touch it.
	Session string `json:"session"`
	// Stage is the stage the client means to reach.
	Stage int `json:"stage"`
	// Pos is the first input's position: 0 opens the session afresh (a new
	// snapshot, an empty cache); otherwise it must be where the cache ends.
	Pos int `json:"pos"`
	// Tokens are the first stage's input; X, the other stages', is the
	// residual stream of len(positions)·d_model floats.
	Tokens []int32   `json:"tokens,omitempty"`
	X      []float32 `json:"x,omitempty"`
}

// inferReply is a holder's answer.
type inferReply struct {
	// X is the residual stream after the stage's blocks (stages but the
	// last); Logits the last position's logits (the last stage).
	X      []float32 `json:"x,omitempty"`
	Logits []float32 `json:"logits,omitempty"`
	// Version is the parameter version of the session's snapshot.
	Version int64 `json:"version"`
	// Error, if set, says why the request was refused.
	Error string `json:"error,omitempty"`
}

// inferService holds the generation sessions of a stage this node serves.
type inferService struct {
	cfg  config.Config
	k    int
	st   *stages.Stage
	span sample.Span
	log  *slog.Logger
	now  func() time.Time

	// closed is set when the node stops serving the stage.
	closed atomic.Bool

	mu       sync.Mutex
	sessions map[string]*inferSession
}

type inferSession struct {
	mu      sync.Mutex
	m       *sample.Model
	c       *sample.Cache
	version int64
	used    time.Time
}

func newInferService(cfg config.Config, k int, st *stages.Stage, log *slog.Logger) (*inferService, error) {
	p, err := model.Split(cfg.Model, cfg.Stages, k)
	if err != nil {
		return nil, err
	}
	return &inferService{cfg: cfg, k: k, st: st, log: log, now: time.Now, sessions: map[string]*inferSession{},
		span: sample.Span{First: p.First, Blocks: p.Blocks, Embed: p.IsFirst(), Final: p.IsLast()}}, nil
}

// serveInfer answers one generation request on s.
func (r *roles) serveInfer(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(inferTimeout))
	svc := r.infer.Load()
	typ, payload, _, err := wire.ReadTyped(s, nil, maxInferFrame)
	var reply inferReply
	switch {
	case err != nil:
		reply.Error = err.Error()
	case typ != msgInferRequest:
		reply.Error = fmt.Sprintf("infer: message type %d", typ)
	case svc == nil || svc.closed.Load():
		reply.Error = "infer: this peer serves no stage"
	default:
		var req inferRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			reply.Error = "infer: " + err.Error()
			break
		}
		if reply, err = svc.handle(s.Conn().RemotePeer(), req); err != nil {
			reply = inferReply{Error: err.Error()}
		}
	}
	_ = wire.WriteJSON(s, msgInferReply, reply)
}

// handle runs req for peer from.
func (s *inferService) handle(from peer.ID, req inferRequest) (inferReply, error) {
	if req.Stage != s.k {
		return inferReply{}, fmt.Errorf("%w: a request for stage %d, this peer serves %d", wire.ErrWrongStage, req.Stage, s.k)
	}
	D, T := s.cfg.Model.DModel, s.cfg.Model.SeqLen
	n := len(req.Tokens)
	if !s.span.Embed {
		if len(req.Tokens) > 0 || len(req.X)%D != 0 {
			return inferReply{}, fmt.Errorf("%w: stage %d takes the residual stream in rows of %d values, got %d values and %d tokens", wire.ErrShape, s.k, D, len(req.X), len(req.Tokens))
		}
		n = len(req.X) / D
		if i := slices.IndexFunc(req.X, func(v float32) bool { return math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) }); i >= 0 {
			return inferReply{}, fmt.Errorf("%w: at value %d", wire.ErrNonFinite, i)
		}
	} else if len(req.X) > 0 {
		return inferReply{}, fmt.Errorf("%w: the first stage takes tokens", wire.ErrShape)
	}
	if n == 0 || req.Pos < 0 || req.Pos+n > T {
		return inferReply{}, fmt.Errorf("%w: %d positions from %d in a context of %d", wire.ErrShape, n, req.Pos, T)
	}
	if len(req.Session) == 0 || len(req.Session) > 64 {
		return inferReply{}, errors.New("infer: a session id of 1 to 64 characters")
	}
	ss, err := s.session(from.String()+"/"+req.Session, req.Pos == 0)
	if err != nil {
		return inferReply{}, err
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.c.Len() != req.Pos {
		return inferReply{}, fmt.Errorf("infer: the session's cache ends at position %d, not %d", ss.c.Len(), req.Pos)
	}
	reply := inferReply{Version: ss.version}
	for i := range n {
		var x []float32
		if s.span.Embed {
			if x, err = ss.m.Embed(req.Tokens[i], req.Pos+i); err != nil {
				return inferReply{}, fmt.Errorf("%w: %v", wire.ErrRange, err)
			}
		} else {
			x = req.X[i*D : (i+1)*D]
		}
		if err := ss.m.Forward(ss.c, x); err != nil {
			return inferReply{}, err
		}
		if s.span.Final {
			if i == n-1 {
				reply.Logits = ss.m.Logits(x)
			}
		} else {
			reply.X = append(reply.X, x...)
		}
	}
	ss.used = s.now()
	return reply, nil
}

// session returns session key, opening it afresh when fresh is set.
func (s *inferService) session(key string, fresh bool) (*inferSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[key]; ss != nil && !fresh {
		return ss, nil
	}
	if !fresh {
		return nil, errors.New("infer: no such session (expired, or this peer restarted): open it again at position 0")
	}
	delete(s.sessions, key)
	if len(s.sessions) >= maxInferSessions {
		oldest := ""
		for k, ss := range s.sessions {
			if oldest == "" || ss.used.Before(s.sessions[oldest].used) {
				oldest = k
			}
		}
		if s.now().Sub(s.sessions[oldest].used) < inferIdle {
			return nil, fmt.Errorf("%w: %d generation sessions open", wire.ErrBusy, len(s.sessions))
		}
		delete(s.sessions, oldest)
	}
	m, version, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	ss := &inferSession{m: m, c: m.NewCache(), version: version, used: s.now()}
	s.sessions[key] = ss
	return ss, nil
}

// snapshot builds the stage's part of the model from a copy of its current
// parameters.
func (s *inferService) snapshot() (*sample.Model, int64, error) {
	if s.cfg.Model.Subspace > 0 {
		return nil, 0, errors.New("infer: a subspace model (model.subspace) is not sampled through the swarm: its stage boundaries project the residual stream")
	}
	var params []float32
	var version int64
	s.st.WithState(func(st *model.State) { params, version = clone(st.Params), int64(st.Step) })
	t, err := checkpoint.PartTensors(checkpoint.Part{Views: s.st.Views(), Params: params})
	if err != nil {
		return nil, 0, err
	}
	m, err := sample.NewPart(checkpoint.HFConfigOf(s.cfg.Model), t, fmt.Sprintf("stage %d", s.k), s.span)
	return m, version, err
}

// SampleLive joins the swarm of cfg through bootstrap as a peer that trains
// nothing and continues prompt by o.Tokens tokens through the stages'
// holders (sample.Generate over a swarm decoder). It returns the new tokens.
func SampleLive(ctx context.Context, cfg config.Config, bootstrap []string, prompt []int32, o sample.Options, log *slog.Logger) ([]int32, error) {
	n, cleanup, err := joinAsClient(ctx, cfg, bootstrap, log)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	d := &swarmDecoder{ctx: ctx, r: newRoles(n, cfg, RunOptions{Logger: log}), picked: make([]peer.ID, len(cfg.Stages)), bad: map[peer.ID]bool{}}
	d.Reset()
	return sample.Generate(d, cfg.Model.SeqLen, prompt, o)
}

// joinAsClient starts a node of cfg's swarm with a throw-away identity and
// data dir, in the trainer role (it serves no stage), and returns it with
// what stops it.
func joinAsClient(ctx context.Context, cfg config.Config, bootstrap []string, log *slog.Logger) (*Node, func(), error) {
	dir, err := os.MkdirTemp("", "swarmnode-client-")
	if err != nil {
		return nil, nil, err
	}
	opts := OptionsFromConfig(cfg)
	opts.Bootstrap, opts.DataDir, opts.Identity, opts.StatusAddr, opts.Role = bootstrap, dir, "", "off", dht.RoleTrainer
	opts.Listen, opts.Logger = []string{"/ip4/0.0.0.0/tcp/0"}, log
	if opts.Admission, err = AdmissionFromConfig(cfg.Admission); err == nil {
		opts.NetworkKey, err = NetworkKeyFromConfig(cfg.Admission)
	}
	var n *Node
	if err == nil {
		n, err = New(ctx, opts)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return n, func() { n.Close(); os.RemoveAll(dir) }, nil
}

// swarmDecoder is a sample.Decoder whose model is the swarm's: one session
// at a holder of each stage. A holder that fails is left for another of its
// stage, and the context so far is sent again through a new session.
type swarmDecoder struct {
	ctx     context.Context
	r       *roles
	picked  []peer.ID        // the session's holder of each stage
	bad     map[peer.ID]bool // holders that failed this client
	session string
	hist    []int32 // the tokens in the session's caches
}

// inferAttempts bounds how many times one token is tried, each time with a
// failed holder replaced.
const inferAttempts = 4

func (d *swarmDecoder) Len() int { return len(d.hist) }

func (d *swarmDecoder) Reset() {
	var b [16]byte
	_, _ = rand.Read(b[:])
	d.session, d.hist = hex.EncodeToString(b[:]), nil
}

func (d *swarmDecoder) Next(tok int32) ([]float32, error) {
	toks, pos := []int32{tok}, len(d.hist)
	var last error
	for range inferAttempts {
		logits, k, err := d.run(toks, pos)
		if err == nil {
			d.hist = append(d.hist, tok)
			return logits, nil
		}
		if d.ctx.Err() != nil {
			return nil, d.ctx.Err()
		}
		last = fmt.Errorf("stage %d holder %s: %w", k, d.picked[k].ShortString(), err)
		d.r.log.Info("a generation hop failed; going on through another holder", "stage", k, "holder", d.picked[k].ShortString(), "err", err)
		d.bad[d.picked[k]] = true
		d.picked[k] = ""
		// A new session everywhere, fed the whole context again.
		hist := d.hist
		d.Reset()
		d.hist = hist
		toks, pos = append(slices.Clone(hist), tok), 0
	}
	return nil, last
}

// run sends toks, at positions pos…, through every stage and returns the
// last position's logits, or the stage that failed.
func (d *swarmDecoder) run(toks []int32, pos int) ([]float32, int, error) {
	var x []float32
	for k := range d.picked {
		if d.picked[k] == "" {
			p, err := d.pick(k)
			if err != nil {
				return nil, k, err
			}
			d.picked[k] = p
		}
		req := inferRequest{Session: d.session, Stage: k, Pos: pos, X: x}
		if k == 0 {
			req.X, req.Tokens = nil, toks
		}
		reply, err := d.ask(d.picked[k], req)
		if err != nil {
			return nil, k, err
		}
		if k == len(d.picked)-1 {
			if len(reply.Logits) != d.r.cfg.Model.Vocab {
				return nil, k, fmt.Errorf("%d logits, want %d", len(reply.Logits), d.r.cfg.Model.Vocab)
			}
			return reply.Logits, k, nil
		}
		if len(reply.X) != len(toks)*d.r.cfg.Model.DModel {
			return nil, k, fmt.Errorf("%d values of the residual stream for %d positions", len(reply.X), len(toks))
		}
		x = reply.X
	}
	return nil, 0, errors.New("infer: no stages")
}

// pick chooses a holder of stage k that has not failed this client.
func (d *swarmDecoder) pick(k int) (peer.ID, error) {
	holders := slices.DeleteFunc(d.r.knownHolders(d.ctx, k), func(p peer.ID) bool { return d.bad[p] })
	if len(holders) == 0 {
		return "", fmt.Errorf("stage %d has no holder in the swarm that has not failed", k)
	}
	return holders[mrand.IntN(len(holders))], nil
}

// ask sends req to p and reads its reply.
func (d *swarmDecoder) ask(p peer.ID, req inferRequest) (inferReply, error) {
	ctx, cancel := context.WithTimeout(d.ctx, inferTimeout)
	defer cancel()
	s, err := d.r.n.Host().NewStream(ctx, p, InferProtocol(d.r.cfg.Run))
	if err != nil {
		return inferReply{}, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := wire.WriteJSON(s, msgInferRequest, req); err != nil {
		_ = s.Reset()
		return inferReply{}, err
	}
	typ, payload, _, err := wire.ReadTyped(s, nil, maxInferFrame)
	if err != nil {
		return inferReply{}, err
	}
	var reply inferReply
	if typ != msgInferReply {
		return inferReply{}, fmt.Errorf("reply of message type %d", typ)
	}
	if err := json.Unmarshal(payload, &reply); err != nil {
		return inferReply{}, err
	}
	if reply.Error != "" {
		return inferReply{}, errors.New(reply.Error)
	}
	return reply, nil
}
