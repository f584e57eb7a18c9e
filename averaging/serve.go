package averaging

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"golang.org/x/time/rate"

	"swarmnode/wire"
)

// ServeOptions configures a StateServer.
type ServeOptions struct {
	// ShardFloats is the shard size. Default DefaultShardFloats.
	ShardFloats int
	// Rate caps the bytes per second this holder serves, all fetchers together,
	// so that serving a newcomer does not starve training; 0 means no cap.
	Rate float64
	// TTL is how long a snapshot stays fetchable after its manifest was served.
	// Default 2 minutes.
	TTL time.Duration
	// MaxSnapshots caps the snapshots kept at once (each is a copy of the state);
	// the oldest goes first. Default 2.
	MaxSnapshots int
	// MaxStreams caps concurrent state streams. Default 16.
	MaxStreams int
	// Reuse serves the newest snapshot to manifest requests while it is younger
	// than this, so that a crowd of newcomers (or a peer asking in a loop) costs
	// one copy of the state, not one each. Default 5 s; negative takes a fresh
	// snapshot every time.
	Reuse time.Duration

	corrupt func(shard int, b []byte) // tests: tamper with served bytes
}

// StateServer serves a holder's state to fetchers.
type StateServer struct {
	h       host.Host
	proto   protocol.ID
	provide func() (State, error)
	o       ServeOptions
	lim     *rate.Limiter
	sem     semaphore

	takeMu sync.Mutex // serializes taking snapshots
	mu     sync.Mutex
	snaps  map[string]*snapshot
}

// snapshot is one copy of the state with its manifest, served until it expires.
type snapshot struct {
	st      State
	m       manifest
	specs   []shardSpec
	expires time.Time
}

// ServeState registers the state-transfer handler of key on h. provide returns a
// copy of the current state, taken under the owner's lock; it is called once per
// manifest request.
func ServeState(h host.Host, run, key string, provide func() (State, error), o ServeOptions) (*StateServer, error) {
	if !validName(run) || !validName(key) {
		return nil, fmt.Errorf("averaging: bad run %q or key %q", run, key)
	}
	if o.ShardFloats == 0 {
		o.ShardFloats = DefaultShardFloats
	}
	if o.TTL == 0 {
		o.TTL = 2 * time.Minute
	}
	if o.MaxSnapshots == 0 {
		o.MaxSnapshots = 2
	}
	if o.MaxStreams == 0 {
		o.MaxStreams = 16
	}
	if o.Reuse == 0 {
		o.Reuse = 5 * time.Second
	}
	if o.ShardFloats < 1 || o.ShardFloats > maxChunkFloats || o.Rate < 0 || o.TTL < 0 || o.MaxSnapshots < 1 || o.MaxStreams < 1 {
		return nil, fmt.Errorf("averaging: bad serve options %+v", o)
	}
	s := &StateServer{
		h: h, proto: StateProtocol(run, key), provide: provide, o: o,
		sem: make(semaphore, o.MaxStreams), snaps: map[string]*snapshot{},
	}
	if o.Rate > 0 {
		s.lim = rate.NewLimiter(rate.Limit(o.Rate), servePiece)
	}
	h.SetStreamHandler(s.proto, s.handle)
	return s, nil
}

// Close removes the handler and drops the snapshots.
func (s *StateServer) Close() error {
	s.h.RemoveStreamHandler(s.proto)
	s.mu.Lock()
	s.snaps = map[string]*snapshot{}
	s.mu.Unlock()
	return nil
}

// servePiece is the size of one shard frame: shards stream in pieces so neither
// side buffers a whole shard.
const servePiece = 1 << 18

// handle answers one request of a fetcher: a manifest of a snapshot, or one of
// the snapshot's shards.
func (s *StateServer) handle(st network.Stream) {
	defer st.Close()
	if !s.sem.tryAcquire() {
		writeErrorf(st, "busy")
		return
	}
	defer s.sem.release()
	_ = st.SetDeadline(time.Now().Add(5 * time.Minute))
	var req stateReq
	if err := readJSON(st, frameStateReq, &req); err != nil {
		st.Reset()
		return
	}
	switch req.Op {
	case "manifest":
		snap, err := s.snapshot(req.MinStep)
		if err != nil {
			writeErrorf(st, "snapshot: %v", err)
			return
		}
		_ = wire.WriteJSON(st, frameManifest, snap.m)
	case "shard":
		s.serveShard(st, req)
	default:
		writeErrorf(st, "unknown op %.20q", req.Op)
	}
}

// serveShard streams shard req.Index of snapshot req.Snap in pieces, no faster
// than Rate allows.
func (s *StateServer) serveShard(st network.Stream, req stateReq) {
	s.mu.Lock()
	snap := s.snaps[req.Snap]
	s.mu.Unlock()
	if snap == nil {
		writeErrorf(st, "unknown or expired snapshot %.40q", req.Snap)
		return
	}
	if req.Index < 0 || req.Index >= len(snap.specs) {
		writeErrorf(st, "no shard %d", req.Index)
		return
	}
	vals := snap.specs[req.Index].of(snap.st.segments())
	err := forPieces(make([]byte, 0, servePiece), vals, func(piece []byte) error {
		if s.o.corrupt != nil {
			s.o.corrupt(req.Index, piece)
		}
		if err := s.throttle(len(piece)); err != nil {
			return err
		}
		return wire.WriteTyped(st, frameShard, piece)
	})
	if err != nil {
		st.Reset()
	}
}

// throttle waits, a minute at most, until Rate allows n more bytes.
func (s *StateServer) throttle(n int) error {
	if s.lim == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return s.lim.WaitN(ctx, n)
}

// snapshot returns the snapshot to serve a manifest from: the newest one while
// it is younger than Reuse, else a fresh one.
func (s *StateServer) snapshot(minStep int64) (*snapshot, error) {
	s.takeMu.Lock() // concurrent requests wait for one snapshot rather than take several
	defer s.takeMu.Unlock()
	if s.o.Reuse > 0 {
		s.mu.Lock()
		var newest *snapshot
		for _, o := range s.snaps {
			if newest == nil || o.expires.After(newest.expires) {
				newest = o
			}
		}
		s.mu.Unlock()
		if newest != nil && time.Until(newest.expires) > s.o.TTL-s.o.Reuse && newest.m.Step >= minStep {
			return newest, nil
		}
	}
	st, err := s.provide()
	if err != nil {
		return nil, err
	}
	snap := newSnapshot(st, s.o.ShardFloats, time.Now().Add(s.o.TTL))
	s.keep(snap)
	return snap, nil
}

// newSnapshot cuts st into shards of shardFloats and sums them into its manifest.
func newSnapshot(st State, shardFloats int, expires time.Time) *snapshot {
	var idb [12]byte
	_, _ = rand.Read(idb[:])
	snap := &snapshot{st: st, expires: expires}
	snap.m = manifest{
		Snap: hex.EncodeToString(idb[:]), Step: st.Step,
		Lens: [3]int{len(st.Params), len(st.M), len(st.V)}, ShardFloats: shardFloats,
	}
	snap.specs = shardSpecs(snap.m.Lens, shardFloats)
	root := sha256.New()
	buf := make([]byte, 0, servePiece)
	for _, sp := range snap.specs {
		h := sha256.New()
		_ = forPieces(buf, sp.of(st.segments()), func(piece []byte) error {
			h.Write(piece)
			return nil
		})
		sum := h.Sum(nil)
		root.Write(sum)
		snap.m.Sums = append(snap.m.Sums, hex.EncodeToString(sum))
	}
	snap.m.Root = hex.EncodeToString(root.Sum(nil))
	return snap
}

// keep adds snap to the snapshots served, after evicting the expired ones and,
// beyond MaxSnapshots, the oldest.
func (s *StateServer) keep(snap *snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for id, o := range s.snaps {
		if now.After(o.expires) {
			delete(s.snaps, id)
		}
	}
	for len(s.snaps) >= s.o.MaxSnapshots {
		var oldest string
		for id, o := range s.snaps {
			if oldest == "" || o.expires.Before(s.snaps[oldest].expires) {
				oldest = id
			}
		}
		delete(s.snaps, oldest)
	}
	s.snaps[snap.m.Snap] = snap
}
