package averaging

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
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
	msmux "github.com/multiformats/go-multistream"

	"swarmnode/codec"
	"swarmnode/wire"
)

// FetchOptions configures FetchState.
type FetchOptions struct {
	// MaxFloats caps the state a holder may announce. Default 1<<30.
	MaxFloats int
	// Timeout bounds each request (a manifest, or one shard). Default 2 minutes.
	Timeout time.Duration
	// PerHolder is how many shards each holder serves at once; two keep a holder
	// busy across the round trip between shards. Default 2.
	PerHolder int
	// MinStep: holders whose state is older are not used, and each holder asked
	// takes a fresh snapshot rather than serve an older one.
	MinStep int64
}

func (o *FetchOptions) fill() {
	if o.MaxFloats == 0 {
		o.MaxFloats = 1 << 30
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.PerHolder < 1 {
		o.PerHolder = 2
	}
}

// ErrNotServing is FetchState's error when no holder asked serves the stage's
// state protocol: they have announced the stage but not started serving it
// (they are fetching its state themselves), so none holds a trained state.
var ErrNotServing = errors.New("no holder serves the stage's state yet")

// servesState reports whether a holder's error came from a holder that speaks
// the state protocol (it is not a refusal of the protocol itself).
func servesState(err error) bool {
	var ns msmux.ErrNotSupported[protocol.ID]
	return !errors.As(err, &ns)
}

// FetchState downloads the state of key from the holders in from at once: it
// asks each for a manifest, then spreads the shards over every holder whose
// layout matches the first manifest, each holder serving PerHolder shards at a
// time, so that k holders serve the state about k times as fast as one. Every
// shard is checked against the sha256 in its server's manifest; a shard that
// fails the check or the transfer goes to another holder, and a holder that
// failed serves no more. Only holders serving the state of one step are used
// (the step most of them serve, the newest among ties), so the state assembled
// is exactly the one each of them holds; State.Sum names the bytes assembled.
func FetchState(ctx context.Context, h host.Host, run, key string, from []peer.ID, o FetchOptions) (State, error) {
	o.fill()
	if len(from) == 0 {
		return State{}, errors.New("fetch state: no holders")
	}
	f := &fetch{h: h, proto: StateProtocol(run, key), o: o}
	servers := f.manifests(ctx, slices.Compact(slices.Clone(from)))
	if len(servers) == 0 {
		if len(f.errs) > 0 && !slices.ContainsFunc(f.errs, servesState) {
			return State{}, fmt.Errorf("fetch state: %w: %w", ErrNotServing, errors.Join(f.errs...))
		}
		return State{}, fmt.Errorf("fetch state: no manifest: %w", errors.Join(f.errs...))
	}
	f.layout(servers[0])
	f.shards(ctx, servers)
	if missing := f.q.missing(); missing > 0 {
		return State{}, fmt.Errorf("fetch state: %d of %d shards missing: %w", missing, len(f.specs), errors.Join(f.errs...))
	}
	liars, err := f.crossCheck(ctx, servers)
	f.out.Disagreed = liars
	if err != nil {
		return State{Disagreed: liars}, fmt.Errorf("fetch state: %w", err)
	}
	root := sha256.New()
	for _, s := range f.used {
		root.Write(s[:])
	}
	root.Sum(f.out.Sum[:0])
	return f.out, nil
}

// fetch is one FetchState in progress.
type fetch struct {
	h     host.Host
	proto protocol.ID
	o     FetchOptions

	out   State
	specs []shardSpec // the layout of the first manifest, which every server shares
	q     *shardQueue

	mu   sync.Mutex
	used [][32]byte // the sum of each shard fetched (mu)
	src  []peer.ID  // the holder each shard was fetched from (mu)
	errs []error    // why servers failed (mu)
}

// server is one holder serving the state, with its manifest.
type server struct {
	id    peer.ID
	m     manifest
	specs []shardSpec
	sums  [][32]byte
	err   error
}

// manifests asks every holder for a manifest at once and returns the holders
// whose manifest is valid and has the layout of the first valid one.
func (f *fetch) manifests(ctx context.Context, from []peer.ID) []*server {
	all := make([]*server, len(from))
	var wg sync.WaitGroup
	for i, p := range from {
		sv := &server{id: p}
		all[i] = sv
		wg.Go(func() {
			sv.err = f.request(ctx, p, stateReq{Op: "manifest", MinStep: f.o.MinStep}, func(s network.Stream) error {
				if err := readJSON(s, frameManifest, &sv.m); err != nil {
					return err
				}
				sv.specs, sv.sums, sv.err = sv.m.check(f.o.MaxFloats)
				return sv.err
			})
		})
	}
	wg.Wait()
	step := f.commonStep(all)
	var live []*server
	for _, sv := range all {
		if sv.err == nil && sv.m.Step != step {
			sv.err = fmt.Errorf("state at step %d, not %d (at least %d wanted)", sv.m.Step, step, f.o.MinStep)
		}
		if sv.err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s: %w", sv.id.ShortString(), sv.err))
			continue
		}
		if len(live) > 0 && (sv.m.Lens != live[0].m.Lens || sv.m.ShardFloats != live[0].m.ShardFloats) {
			f.errs = append(f.errs, fmt.Errorf("%s: layout %v/%d differs from %v/%d", sv.id.ShortString(), sv.m.Lens, sv.m.ShardFloats, live[0].m.Lens, live[0].m.ShardFloats))
			continue
		}
		live = append(live, sv)
	}
	return live
}

// commonStep picks the step of the state to assemble among the valid
// manifests at MinStep or later: the one most holders serve, the newest among
// ties. Shards of one step only make a state that exists on some holder, which
// a holder catching up needs to replay its records onto.
func (f *fetch) commonStep(all []*server) int64 {
	count := map[int64]int{}
	best := int64(-1)
	for _, sv := range all {
		if sv.err != nil || sv.m.Step < f.o.MinStep {
			continue
		}
		count[sv.m.Step]++
		if n, m := count[sv.m.Step], count[best]; n > m || (n == m && sv.m.Step > best) {
			best = sv.m.Step
		}
	}
	return best
}

// layout sizes the state and the shard queue after the first server's manifest.
func (f *fetch) layout(first *server) {
	f.out = State{Step: first.m.Step, From: map[peer.ID]int{}}
	f.out.Params = make([]float32, first.m.Lens[0])
	f.out.M = make([]float32, first.m.Lens[1])
	f.out.V = make([]float32, first.m.Lens[2])
	f.specs = first.specs
	f.used = make([][32]byte, len(f.specs))
	f.src = make([]peer.ID, len(f.specs))
	f.q = newShardQueue(len(f.specs))
}

// shards fetches every shard, each server serving PerHolder at a time, until the
// queue is empty or no server is left that has not failed the shards left.
func (f *fetch) shards(ctx context.Context, servers []*server) {
	var wg sync.WaitGroup
	for _, sv := range servers {
		var failed atomic.Bool // a holder that failed once serves no more
		for range f.o.PerHolder {
			wg.Go(func() { f.serveFrom(ctx, sv, &failed) })
		}
	}
	wg.Wait()
}

// serveFrom fetches shards from sv one at a time until the queue has none left
// for it or sv fails; a failed shard goes back to the queue for another server.
func (f *fetch) serveFrom(ctx context.Context, sv *server, failed *atomic.Bool) {
	segs := f.out.segments()
	for !failed.Load() {
		i, ok := f.q.next(ctx, sv.id)
		if !ok {
			return
		}
		if failed.Load() {
			f.q.fail(i, sv.id)
			return
		}
		err := f.request(ctx, sv.id, stateReq{Op: "shard", Snap: sv.m.Snap, Index: i}, func(s network.Stream) error {
			return readShard(s, f.specs[i].of(segs), sv.sums[i])
		})
		f.mu.Lock()
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s shard %d: %w", sv.id.ShortString(), i, err))
		} else {
			f.used[i], f.src[i] = sv.sums[i], sv.id
			f.out.From[sv.id]++
		}
		f.mu.Unlock()
		if err != nil {
			failed.Store(true)
			f.q.fail(i, sv.id)
			return
		}
		f.q.done(i)
	}
}

// request opens a state stream to holder p, sends req and lets read consume the
// answer, all within Timeout.
func (f *fetch) request(ctx context.Context, p peer.ID, req stateReq, read func(network.Stream) error) error {
	ctx, cancel := context.WithTimeout(ctx, f.o.Timeout)
	defer cancel()
	s, err := f.h.NewStream(ctx, p, f.proto)
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
