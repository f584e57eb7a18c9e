package averaging

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"golang.org/x/time/rate"

	"swarmnode/codec"
	"swarmnode/wire"
)

// State is what a holder hands a newcomer to its stage: parameters and optimizer
// state, in the stage's flat layout.
type State struct {
	// Step is the serving holder's optimizer step count.
	Step int64
	// Params are the stage's parameters.
	Params []float32
	// M and V are AdamW's moments, of len(Params) or empty.
	M, V []float32
	// Sum is the sha256 over the sha256 of every shard in order: for a state from
	// one holder it equals that holder's manifest root.
	Sum [32]byte
	// From counts the shards each holder served.
	From map[peer.ID]int
}

func (s *State) segments() [3][]float32 { return [3][]float32{s.Params, s.M, s.V} }

// StateProtocol is the state-transfer protocol id of key in run.
func StateProtocol(run, key string) protocol.ID {
	return protocol.ID(ProtocolPrefix(run, key) + "/state/1.0.0")
}

// DefaultShardFloats is the state-transfer shard size: 4 MiB of fp32.
const DefaultShardFloats = 1 << 20

// stateReq is a fetcher's request: a manifest of a fresh snapshot, or one shard
// of a snapshot whose manifest it holds.
type stateReq struct {
	Op    string `json:"op"` // "manifest" or "shard"
	Snap  string `json:"snap,omitempty"`
	Index int    `json:"index,omitempty"`
}

// manifest describes one snapshot: the segment lengths (params, m, v), the shard
// size, the sha256 of each shard and the root over them.
type manifest struct {
	Snap        string   `json:"snap"`
	Step        int64    `json:"step"`
	Lens        [3]int   `json:"lens"`
	ShardFloats int      `json:"shard_floats"`
	Sums        []string `json:"sums"` // hex sha256 of each shard's little-endian bytes
	Root        string   `json:"root"` // hex sha256 of the concatenated raw shard sums
}

// shardSpec locates shard i: segment, offset, length. Shards never straddle two
// segments.
type shardSpec struct{ seg, off, n int }

func shardSpecs(lens [3]int, per int) []shardSpec {
	var out []shardSpec
	for s, l := range lens {
		for off := 0; off < l; off += per {
			out = append(out, shardSpec{s, off, min(per, l-off)})
		}
	}
	return out
}

// check validates a manifest from the network and returns its shards and sums.
func (m *manifest) check(maxFloats int) ([]shardSpec, [][32]byte, error) {
	if m.ShardFloats < 1 || m.ShardFloats > maxChunkFloats {
		return nil, nil, fmt.Errorf("manifest: shard of %d floats", m.ShardFloats)
	}
	total := 0
	for _, l := range m.Lens {
		if l < 0 || l > maxFloats {
			return nil, nil, fmt.Errorf("manifest: segment of %d floats (limit %d)", l, maxFloats)
		}
		total += l
	}
	if total > maxFloats {
		return nil, nil, fmt.Errorf("manifest: %d floats (limit %d)", total, maxFloats)
	}
	if m.Lens[1] != 0 && m.Lens[1] != m.Lens[0] || m.Lens[2] != m.Lens[1] {
		return nil, nil, fmt.Errorf("manifest: moments of %d and %d floats for %d params", m.Lens[1], m.Lens[2], m.Lens[0])
	}
	specs := shardSpecs(m.Lens, m.ShardFloats)
	if len(m.Sums) != len(specs) {
		return nil, nil, fmt.Errorf("manifest: %d sums for %d shards", len(m.Sums), len(specs))
	}
	sums := make([][32]byte, len(specs))
	root := sha256.New()
	for i, s := range m.Sums {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 32 {
			return nil, nil, fmt.Errorf("manifest: sum %d is not a sha256", i)
		}
		copy(sums[i][:], b)
		root.Write(b)
	}
	if hex.EncodeToString(root.Sum(nil)) != m.Root {
		return nil, nil, errors.New("manifest: root does not match its shard sums")
	}
	return specs, sums, nil
}

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
	fail := func(format string, args ...any) {
		_ = wire.WriteTyped(st, frameError, fmt.Appendf(nil, format, args...))
	}
	switch req.Op {
	case "manifest":
		snap, err := s.snapshot()
		if err != nil {
			fail("snapshot: %v", err)
			return
		}
		_ = wire.WriteJSON(st, frameManifest, snap.m)
	case "shard":
		s.mu.Lock()
		snap := s.snaps[req.Snap]
		s.mu.Unlock()
		if snap == nil {
			fail("unknown or expired snapshot %.40q", req.Snap)
			return
		}
		if req.Index < 0 || req.Index >= len(snap.specs) {
			fail("no shard %d", req.Index)
			return
		}
		sp := snap.specs[req.Index]
		vals := snap.st.segments()[sp.seg][sp.off : sp.off+sp.n]
		buf := make([]byte, 0, servePiece)
		for lo := 0; lo < len(vals); lo += servePiece / 4 {
			part := vals[lo:min(lo+servePiece/4, len(vals))]
			buf = buf[:0]
			for _, v := range part {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			}
			if s.o.corrupt != nil {
				s.o.corrupt(req.Index, buf)
			}
			if s.lim != nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				err := s.lim.WaitN(ctx, len(buf))
				cancel()
				if err != nil {
					st.Reset()
					return
				}
			}
			if err := wire.WriteTyped(st, frameShard, buf); err != nil {
				st.Reset()
				return
			}
		}
	default:
		fail("unknown op %.20q", req.Op)
	}
}

// snapshot takes a fresh copy of the state and its manifest, evicting expired and
// surplus snapshots.
func (s *StateServer) snapshot() (*snapshot, error) {
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
		if newest != nil && time.Until(newest.expires) > s.o.TTL-s.o.Reuse {
			return newest, nil
		}
	}
	st, err := s.provide()
	if err != nil {
		return nil, err
	}
	var idb [12]byte
	_, _ = rand.Read(idb[:])
	snap := &snapshot{st: st, expires: time.Now().Add(s.o.TTL)}
	snap.m = manifest{
		Snap: hex.EncodeToString(idb[:]), Step: st.Step,
		Lens: [3]int{len(st.Params), len(st.M), len(st.V)}, ShardFloats: s.o.ShardFloats,
	}
	snap.specs = shardSpecs(snap.m.Lens, s.o.ShardFloats)
	root := sha256.New()
	buf := make([]byte, 0, servePiece)
	for _, sp := range snap.specs {
		h := sha256.New()
		vals := st.segments()[sp.seg][sp.off : sp.off+sp.n]
		for lo := 0; lo < len(vals); lo += servePiece / 4 {
			buf = buf[:0]
			for _, v := range vals[lo:min(lo+servePiece/4, len(vals))] {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			}
			h.Write(buf)
		}
		sum := h.Sum(nil)
		root.Write(sum)
		snap.m.Sums = append(snap.m.Sums, hex.EncodeToString(sum))
	}
	snap.m.Root = hex.EncodeToString(root.Sum(nil))

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
	return snap, nil
}

// FetchOptions configures FetchState.
type FetchOptions struct {
	// MaxFloats caps the state a holder may announce. Default 1<<30.
	MaxFloats int
	// Timeout bounds each request (a manifest, or one shard). Default 2 minutes.
	Timeout time.Duration
	// PerHolder is how many shards each holder serves at once; two keep a holder
	// busy across the round trip between shards. Default 2.
	PerHolder int
}

// FetchState downloads the state of key from the holders in from at once: it
// asks each for a manifest, then spreads the shards over every holder whose
// layout matches the first manifest, each holder serving one shard at a time, so
// that k holders serve the state about k times as fast as one. Every shard is
// checked against the sha256 in its server's manifest; a shard that fails the
// check or the transfer goes to another holder, and a holder that failed serves
// no more. Holders of one stage are kept close by averaging, so a state assembled
// from several of them is as good as any one's; State.Sum names exactly which
// bytes were assembled.
func FetchState(ctx context.Context, h host.Host, run, key string, from []peer.ID, o FetchOptions) (State, error) {
	if o.MaxFloats == 0 {
		o.MaxFloats = 1 << 30
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.PerHolder < 1 {
		o.PerHolder = 2
	}
	if len(from) == 0 {
		return State{}, errors.New("fetch state: no holders")
	}
	proto := StateProtocol(run, key)
	from = slices.Compact(slices.Clone(from))

	type server struct {
		id    peer.ID
		m     manifest
		specs []shardSpec
		sums  [][32]byte
		err   error
	}
	servers := make([]*server, len(from))
	var wg sync.WaitGroup
	for i, p := range from {
		servers[i] = &server{id: p}
		wg.Go(func() {
			sv := servers[i]
			sv.err = request(ctx, h, p, proto, o.Timeout, stateReq{Op: "manifest"}, func(s network.Stream) error {
				if err := readJSON(s, frameManifest, &sv.m); err != nil {
					return err
				}
				sv.specs, sv.sums, sv.err = sv.m.check(o.MaxFloats)
				return sv.err
			})
		})
	}
	wg.Wait()
	var live []*server
	var errs []error
	for _, sv := range servers {
		if sv.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", sv.id.ShortString(), sv.err))
			continue
		}
		if len(live) > 0 && (sv.m.Lens != live[0].m.Lens || sv.m.ShardFloats != live[0].m.ShardFloats) {
			errs = append(errs, fmt.Errorf("%s: layout %v/%d differs from %v/%d", sv.id.ShortString(), sv.m.Lens, sv.m.ShardFloats, live[0].m.Lens, live[0].m.ShardFloats))
			continue
		}
		live = append(live, sv)
	}
	if len(live) == 0 {
		return State{}, fmt.Errorf("fetch state: no manifest: %w", errors.Join(errs...))
	}
	first := live[0]
	out := State{Step: first.m.Step, From: map[peer.ID]int{}}
	out.Params = make([]float32, first.m.Lens[0])
	out.M = make([]float32, first.m.Lens[1])
	out.V = make([]float32, first.m.Lens[2])
	segs := out.segments()
	specs := first.specs
	used := make([][32]byte, len(specs))

	q := newShardQueue(len(specs))
	var emu sync.Mutex
	for _, sv := range live {
		var failed atomic.Bool
		for range o.PerHolder {
			wg.Go(func() {
				for !failed.Load() {
					i, ok := q.next(ctx, sv.id)
					if !ok {
						return
					}
					if failed.Load() {
						q.fail(i, sv.id)
						return
					}
					sp := specs[i]
					err := request(ctx, h, sv.id, proto, o.Timeout, stateReq{Op: "shard", Snap: sv.m.Snap, Index: i}, func(s network.Stream) error {
						return readShard(s, segs[sp.seg][sp.off:sp.off+sp.n], sv.sums[i])
					})
					if err != nil {
						emu.Lock()
						errs = append(errs, fmt.Errorf("%s shard %d: %w", sv.id.ShortString(), i, err))
						emu.Unlock()
						failed.Store(true) // a holder that failed once serves no more
						q.fail(i, sv.id)
						return
					}
					emu.Lock()
					used[i] = sv.sums[i]
					out.From[sv.id]++
					emu.Unlock()
					q.done(i)
				}
			})
		}
	}
	wg.Wait()
	if missing := q.missing(); missing > 0 {
		return State{}, fmt.Errorf("fetch state: %d of %d shards missing: %w", missing, len(specs), errors.Join(errs...))
	}
	root := sha256.New()
	for _, s := range used {
		root.Write(s[:])
	}
	root.Sum(out.Sum[:0])
	return out, nil
}

// request opens a state stream to p, sends req and lets read consume the answer.
func request(ctx context.Context, h host.Host, p peer.ID, proto protocol.ID, timeout time.Duration, req stateReq, read func(network.Stream) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s, err := h.NewStream(ctx, p, proto)
	if err != nil {
		return err
	}
	defer s.Close()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	if err := wire.WriteJSON(s, frameStateReq, req); err != nil {
		s.Reset()
		return err
	}
	if err := read(s); err != nil {
		s.Reset()
		return err
	}
	return nil
}

// readShard reads one shard into dst in pieces and checks its sha256.
func readShard(r io.Reader, dst []float32, want [32]byte) error {
	h := sha256.New()
	var buf []byte
	got := 0
	for got < len(dst) {
		typ, payload, b, err := wire.ReadTyped(r, buf, 1+servePiece)
		buf = b
		if err != nil {
			return err
		}
		if err := shardPiece(typ, payload, dst[got:], h); err != nil {
			return err
		}
		got += len(payload) / 4
	}
	var sum [32]byte
	h.Sum(sum[:0])
	if !bytes.Equal(sum[:], want[:]) {
		return errors.New("checksum mismatch: shard corrupted in transfer or by its server")
	}
	return codec.CheckFinite(dst)
}

// shardPiece checks one shard frame and decodes it into dst.
func shardPiece(typ byte, payload []byte, dst []float32, h hash.Hash) error {
	if typ == frameError {
		return remoteErr(payload)
	}
	if typ != frameShard {
		return fmt.Errorf("frame type %d, want shard", typ)
	}
	if len(payload)%4 != 0 || len(payload) == 0 || len(payload)/4 > len(dst) {
		return fmt.Errorf("shard piece of %d bytes with %d values left", len(payload), len(dst))
	}
	h.Write(payload)
	for k := range len(payload) / 4 {
		dst[k] = math.Float32frombits(binary.LittleEndian.Uint32(payload[4*k:]))
	}
	return nil
}

// shardQueue hands shards to servers; a failed shard goes back for another server.
type shardQueue struct {
	mu       sync.Mutex
	pending  []int
	tried    map[int]map[peer.ID]bool
	inflight int
	left     int
	changed  chan struct{}
}

func newShardQueue(n int) *shardQueue {
	q := &shardQueue{tried: map[int]map[peer.ID]bool{}, left: n, changed: make(chan struct{})}
	for i := range n {
		q.pending = append(q.pending, i)
	}
	return q
}

// next returns a shard p has not tried, waiting while others are in flight (they
// may fail back to the queue); false when there is nothing left for p.
func (q *shardQueue) next(ctx context.Context, p peer.ID) (int, bool) {
	for {
		q.mu.Lock()
		for k, i := range q.pending {
			if !q.tried[i][p] {
				q.pending = slices.Delete(q.pending, k, k+1)
				q.inflight++
				q.mu.Unlock()
				return i, true
			}
		}
		ch, wait := q.changed, q.inflight > 0
		q.mu.Unlock()
		if !wait {
			return 0, false
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, false
		}
	}
}

func (q *shardQueue) wake() {
	close(q.changed)
	q.changed = make(chan struct{})
}

func (q *shardQueue) done(int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.inflight--
	q.left--
	q.wake()
}

func (q *shardQueue) fail(i int, p peer.ID) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.tried[i] == nil {
		q.tried[i] = map[peer.ID]bool{}
	}
	q.tried[i][p] = true
	q.pending = append(q.pending, i)
	q.inflight--
	q.wake()
}

func (q *shardQueue) missing() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.left
}
