package averaging

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"

	"swarmnode/codec"
	"swarmnode/config"
)

// Peers tells an Averager who holds the same stage. The node adapts its DHT view
// to it; views of different holders may differ slightly (see assign).
type Peers interface {
	// Holders returns the current holders of the averaged stage; it may include or
	// omit the local peer.
	Holders(ctx context.Context) ([]peer.ID, error)
}

// PeerList is a fixed Peers, for tests and static swarms.
type PeerList []peer.ID

// Holders returns the list itself.
func (l PeerList) Holders(context.Context) ([]peer.ID, error) { return l, nil }

// Source is the vector being averaged, owned by the trainer. Training keeps going
// while a round runs: the Averager reads the vector chunk by chunk as it sends it,
// and adds each chunk's average − the values it sent as soon as the average is
// back, so local steps taken meanwhile are kept. Read and Add take the owner's
// lock for one chunk at a time and may be called from several goroutines at once.
type Source interface {
	// Len is the vector's length. Holders average together only when it matches.
	Len() int
	// Samples returns the samples processed since the previous call: the weight of
	// this round's contribution. It is called once per round that formed a group.
	Samples() float64
	// Read copies vec[off:off+len(dst)] into dst.
	Read(off int, dst []float32)
	// Add adds delta to vec[off:off+len(delta)].
	Add(off int, delta []float32)
}

// Options configures an Averager. Zero fields take the defaults of
// config.DefaultAveraging and the constants below.
type Options struct {
	// Run is the run id; it prefixes the protocol ids.
	Run string
	// Key names what is averaged, e.g. "stage-2": only holders with the same Key
	// meet. Letters, digits, '-', '_' and '.'.
	Key string
	// Period is the time between round starts; rounds start at multiples of Period
	// since the Unix epoch, so holders with NTP-synced clocks meet without talking.
	Period time.Duration
	// GroupSize is the most members of one group.
	GroupSize int
	// Matchmaking is how long a leader waits for its members and a member for its
	// leader's confirmation; it also bounds the clock skew that holders tolerate.
	Matchmaking time.Duration
	// Deadline bounds a whole round, matchmaking included.
	Deadline time.Duration
	// StallTimeout is how long a reducer waits for a sender's next chunk (or a
	// sender's reader for the reducer to take a result) before leaving it out.
	// Default Deadline/4.
	StallTimeout time.Duration
	// Codec is the wire codec of parts and results: codec.FP32 (the default),
	// BF16 or Int8 (blocks of int8Block values).
	Codec codec.Kind
	// ChunkFloats is the number of values per chunk; memory in flight is a few
	// chunks per member, whatever the vector size. Default DefaultChunkFloats.
	ChunkFloats int
	// Reducer combines the parts of a chunk. Default CenteredClip.
	Reducer Reducer
	// AuditRate is the chance that this member audits, after a round, the
	// reducer of each other shard whose result it received (see audit.go).
	// When it is above 0 the member also keeps, as a reducer, what it
	// reduced in its last rounds, for others' audits. 0 turns both off.
	AuditRate float64
	// Registerer receives the Prometheus collectors; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives round outcomes at debug level and failures at info level.
	Logger *slog.Logger
	// OnEvict, when set, is told of each member this Averager evicts.
	OnEvict func(p peer.ID, why string)
	// OnGroup, when set, is called once a round's group is confirmed, before any
	// part is sent; the status page uses it to show the current group.
	OnGroup func(round uint64, members []peer.ID)
}

// DefaultChunkFloats is the default chunk size: 512 KiB of fp32. With slotDepth
// (8) chunks queued each way per sender at the reducer and sendDepth chunks
// awaiting their results per reducer at the sender (8 in fp32, 16 in bf16, 30 in
// int8: about 4 MiB of encoded chunks), a member holds at most about
// (16 + sendDepth)·(G−1) chunks of ChunkFloats in flight (36 MiB in fp32, 69 MiB
// in int8, for G = 4), whatever the vector size.
const DefaultChunkFloats = 1 << 17

// OptionsFromConfig maps the averaging config section to Options.
func OptionsFromConfig(run, key string, c config.Averaging) (Options, error) {
	k, err := codec.Parse(c.Codec)
	if err != nil {
		return Options{}, fmt.Errorf("averaging: %w", err)
	}
	red := CenteredClip
	switch c.Reducer {
	case "mean":
		red = Mean
	case "", "centered_clip":
	default:
		return Options{}, fmt.Errorf("averaging: unknown reducer %q", c.Reducer)
	}
	return Options{
		Run: run, Key: key, Period: c.Period, GroupSize: c.GroupSize,
		Matchmaking: c.Matchmaking, Deadline: c.Deadline, StallTimeout: c.StallTimeout, Codec: k, Reducer: red,
		AuditRate: c.AuditRate,
	}, nil
}

func (o *Options) fill() error {
	d := config.DefaultAveraging()
	if o.Period == 0 {
		o.Period = d.Period
	}
	if o.GroupSize == 0 {
		o.GroupSize = d.GroupSize
	}
	if o.Matchmaking == 0 {
		o.Matchmaking = d.Matchmaking
	}
	if o.Deadline == 0 {
		o.Deadline = d.Deadline
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = o.Deadline / 4
	}
	if o.Codec == 0 {
		o.Codec = codec.FP32
	}
	if o.ChunkFloats == 0 {
		o.ChunkFloats = DefaultChunkFloats
	}
	if o.Reducer == nil {
		o.Reducer = CenteredClip
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case !validName(o.Run):
		return fmt.Errorf("averaging: run %q: use letters, digits, '-', '_' or '.'", o.Run)
	case !validName(o.Key):
		return fmt.Errorf("averaging: key %q: use letters, digits, '-', '_' or '.'", o.Key)
	case o.Period < 0 || o.Matchmaking < 0 || o.Deadline < 0 || o.StallTimeout < 0:
		return errors.New("averaging: negative duration")
	case o.GroupSize < 2 || o.GroupSize > 64:
		return fmt.Errorf("averaging: group size %d not in [2, 64]", o.GroupSize)
	case o.Matchmaking >= o.Deadline:
		return fmt.Errorf("averaging: matchmaking %s must be shorter than the deadline %s", o.Matchmaking, o.Deadline)
	case !o.Codec.Float():
		return fmt.Errorf("averaging: codec %d", o.Codec)
	case !(o.AuditRate >= 0 && o.AuditRate <= 1):
		return fmt.Errorf("averaging: audit rate %v not in [0, 1]", o.AuditRate)
	case o.ChunkFloats < 1 || o.ChunkFloats > maxChunkFloats:
		return fmt.Errorf("averaging: chunk of %d floats not in [1, %d]", o.ChunkFloats, maxChunkFloats)
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return false
		}
	}
	return true
}

// ProtocolPrefix is the prefix of the averaging protocol ids of key in run.
func ProtocolPrefix(run, key string) string { return "/swarmnode/" + run + "/avg/" + key }

// Stats summarizes an Averager's rounds for the status page.
type Stats struct {
	// Rounds counts rounds that formed a group and ran the all-reduce.
	Rounds uint64 `json:"rounds"`
	// Skipped counts rounds without a group (no holder to meet, or no
	// confirmation within the matchmaking window): training went on unaveraged.
	Skipped uint64 `json:"skipped"`
	// Failures counts rounds in which a member or a shard failed: some values kept
	// their local value or left a member out.
	Failures uint64 `json:"failures"`
	// LastGroupSize is the size of the last group formed.
	LastGroupSize int `json:"last_group_size"`
	// LastRoundMS is the wall time of the last round that formed a group.
	LastRoundMS int64 `json:"last_round_ms"`
	// LastRound is the number of the last round attempted.
	LastRound uint64 `json:"last_round"`
	// LastSkip says why the last skipped round was skipped.
	LastSkip string `json:"last_skip,omitempty"`
	// Evicted counts members this holder evicted (see Averager.Evicted).
	Evicted int `json:"evicted"`
	// Audits counts the audits of other members' reductions that passed.
	Audits uint64 `json:"audits"`
}

// Averager averages a Source with the other holders of its Key, round after round.
type Averager struct {
	h     host.Host
	peers Peers
	src   Source
	o     Options
	rk    func(round uint64) [32]byte
	m     *avgMetrics

	joinProto, reduceProto, auditProto protocol.ID

	ctx    context.Context // ends with Close; bounds every handler
	cancel context.CancelFunc

	mu      sync.Mutex
	lobbies map[uint64]*lobby
	rounds  map[string]*reduceRound
	changed chan struct{} // closed and replaced whenever lobbies or rounds gain an entry
	stats   Stats
	pending float64 // weight of snapshots whose round applied nothing
	evicted map[peer.ID]string
	strikes map[peer.ID]int // rounds in a row a sender was an outlier

	auditLogs []*auditLog     // our last rounds as a reducer, for audits
	refusals  map[peer.ID]int // audits in a row a reducer did not answer
	audits    sync.WaitGroup  // audits running

	sem      semaphore // bounds concurrent join and reduce handlers
	pool     sync.Pool // chunk buffers (*[]float32 of ChunkFloats)
	payloads sync.Pool // *payload

	notifee *network.NotifyBundle

	chunks sync.Pool // *chunkBuf of ChunkFloats

	roundMu sync.Mutex // one round at a time
}

// semaphore bounds the stream handlers running at once. A handler that finds no
// room turns its stream away at once: a flood of streams must not queue up
// goroutines.
type semaphore chan struct{}

func (s semaphore) tryAcquire() bool {
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s semaphore) release() { <-s }

// New creates an Averager for src on h and registers its stream handlers. Close
// removes them.
func New(h host.Host, peers Peers, src Source, o Options) (*Averager, error) {
	if err := o.fill(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Averager{
		h: h, peers: peers, src: src, o: o,
		joinProto:   protocol.ID(ProtocolPrefix(o.Run, o.Key) + "/join/1.0.0"),
		reduceProto: protocol.ID(ProtocolPrefix(o.Run, o.Key) + "/reduce/1.0.0"),
		auditProto:  protocol.ID(ProtocolPrefix(o.Run, o.Key) + "/audit/1.0.0"),
		ctx:         ctx, cancel: cancel,
		lobbies:  map[uint64]*lobby{},
		rounds:   map[string]*reduceRound{},
		evicted:  map[peer.ID]string{},
		strikes:  map[peer.ID]int{},
		refusals: map[peer.ID]int{},
		changed:  make(chan struct{}),
		sem:      make(semaphore, 8*o.GroupSize),
	}
	a.rk = func(r uint64) [32]byte { return roundKey(o.Run, o.Key, r) }
	m, err := newMetrics(o.Registerer, o.Key)
	if err != nil {
		cancel()
		return nil, err
	}
	a.m = m
	a.notifee = &network.NotifyBundle{
		DisconnectedF: func(_ network.Network, c network.Conn) { go a.peerGone(c.RemotePeer()) },
	}
	h.Network().Notify(a.notifee)
	h.SetStreamHandler(a.joinProto, a.handleJoin)
	h.SetStreamHandler(a.reduceProto, a.handleReduce)
	h.SetStreamHandler(a.auditProto, a.handleAudit)
	return a, nil
}

// Close removes the stream handlers and ends every handler still running.
// Collectors stay registered.
func (a *Averager) Close() error {
	a.h.RemoveStreamHandler(a.joinProto)
	a.h.RemoveStreamHandler(a.reduceProto)
	a.h.RemoveStreamHandler(a.auditProto)
	a.h.Network().StopNotify(a.notifee)
	a.cancel()
	a.audits.Wait()
	a.m.unregister(a.o.Registerer)
	return nil
}

// Stats returns a copy of the round counters.
func (a *Averager) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

// Run starts a round at every multiple of Period until ctx ends. A round never
// outlives its deadline, so a slow round only delays the next one to the next
// multiple of Period.
func (a *Averager) Run(ctx context.Context) error {
	p := int64(a.o.Period)
	for {
		r := uint64(time.Now().UnixNano()/p + 1)
		t := time.NewTimer(time.Until(time.Unix(0, int64(r)*p)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		res, err := a.Round(ctx, r)
		switch {
		case errors.Is(err, ErrSkipped):
			a.o.Logger.Debug("averaging round skipped", "key", a.o.Key, "round", r, "reason", err)
		case err != nil:
			a.o.Logger.Info("averaging round failed", "key", a.o.Key, "round", r, "err", err)
		default:
			a.o.Logger.Debug("averaging round", "key", a.o.Key, "round", r, "group", len(res.Members),
				"took", res.Took, "dropped", res.Dropped, "averaged", res.Averaged)
		}
	}
}

// ErrSkipped is wrapped by Round's error when no group formed.
var ErrSkipped = errors.New("averaging: round skipped")

// Result describes one round that formed a group.
type Result struct {
	// Round is the round number.
	Round uint64
	// Members is the group, in shard order: member i reduced shard i.
	Members []peer.ID
	// Index is the local member's position in Members.
	Index int
	// Averaged is the fraction of the vector that received an average.
	Averaged float64
	// Dropped counts parts and results that did not arrive: senders left out of a
	// shard plus shards whose result did not come back.
	Dropped int
	// Took is the round's wall time, matchmaking included.
	Took time.Duration
	// Phases splits Took into matchmaking and exchange (parts out, results back
	// and added to the source).
	Phases Phases
}

// Phases is the wall time of each part of a round.
type Phases struct {
	Match, Exchange time.Duration
}

// Round runs round r now: matchmaking, then the all-reduce. It returns
// by Deadline whatever its peers do. Every holder must call it with the same r at
// about the same time (Run does so from the clock); tests call it directly.
func (a *Averager) Round(ctx context.Context, r uint64) (Result, error) {
	return a.roundAmong(ctx, r, a.peers, nil)
}

// RoundAmong runs round r now among holders (which may include the local peer)
// instead of those Peers returns: the holders of a stage that step together
// use the list that whoever asked them to step gave every one of them, so that
// their views agree and the leader waits for no one else. weights, when not
// nil, are the holders' weights as that caller attests them (weights[i] for
// holders[i]: e.g. the microbatches a trainer counted at each), and replace
// each member's own claim; all members must be given the same.
func (a *Averager) RoundAmong(ctx context.Context, r uint64, holders []peer.ID, weights []float64) (Result, error) {
	var attested map[peer.ID]float64
	if weights != nil {
		if len(weights) != len(holders) {
			return Result{}, fmt.Errorf("%w: %d weights for %d holders", ErrSkipped, len(weights), len(holders))
		}
		attested = make(map[peer.ID]float64, len(holders))
		for i, h := range holders {
			if !(weights[i] >= 0) || math.IsInf(weights[i], 0) {
				return Result{}, fmt.Errorf("%w: weight %v of %s", ErrSkipped, weights[i], h.ShortString())
			}
			attested[h] = weights[i]
		}
	}
	return a.roundAmong(ctx, r, PeerList(holders), attested)
}

func (a *Averager) roundAmong(ctx context.Context, r uint64, peers Peers, attested map[peer.ID]float64) (Result, error) {
	a.roundMu.Lock()
	defer a.roundMu.Unlock()
	start := time.Now()
	ctx, cancel := context.WithDeadline(ctx, start.Add(a.o.Deadline))
	defer cancel()
	res, err := a.round(ctx, r, start, peers, attested)
	res.Took = time.Since(start)
	a.record(r, res, err)
	return res, err
}

func (a *Averager) record(r uint64, res Result, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stats.LastRound = r
	if errors.Is(err, ErrSkipped) {
		a.stats.Skipped++
		a.stats.LastSkip = err.Error()
		a.m.skipped.Inc()
		return
	}
	a.stats.Rounds++
	a.stats.LastGroupSize = len(res.Members)
	a.stats.LastRoundMS = res.Took.Milliseconds()
	a.m.rounds.Inc()
	a.m.groupSize.Set(float64(len(res.Members)))
	a.m.roundSeconds.Observe(res.Took.Seconds())
	a.m.averaged.Set(res.Averaged)
	if err != nil || res.Dropped > 0 {
		a.stats.Failures++
		a.m.failures.Inc()
	}
}

func (a *Averager) round(ctx context.Context, r uint64, start time.Time, peers Peers, attested map[peer.ID]float64) (Result, error) {
	n := a.src.Len()
	if n < 1 {
		return Result{}, fmt.Errorf("%w: empty vector", ErrSkipped)
	}
	mctx, mcancel := context.WithDeadline(ctx, start.Add(a.o.Matchmaking))
	holders, err := peers.Holders(mctx)
	mcancel()
	if err != nil {
		return Result{}, fmt.Errorf("%w: holders: %v", ErrSkipped, err)
	}
	holders = a.notEvicted(holders)
	rk := a.rk(r)
	view := assign(rk, holders, a.h.ID(), a.o.GroupSize)
	if len(view) < 2 {
		return Result{}, fmt.Errorf("%w: no other holder", ErrSkipped)
	}
	var members []peer.ID
	if view[0] == a.h.ID() {
		defer a.dropLobby(r)
		members, err = a.lead(ctx, r, start.Add(a.o.Matchmaking), holders, view, n)
	} else {
		members, err = a.join(ctx, r, start.Add(a.o.Matchmaking), view[0], n)
	}
	if err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrSkipped, err)
	}
	matched := time.Now()
	res, err := a.allReduce(ctx, r, rk, members, n, attested)
	res.Phases.Match = matched.Sub(start)
	return res, err
}
