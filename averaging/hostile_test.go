package averaging

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/wire"
)

// TestMismatchedMemberLeftOut: a holder whose vector has another length is
// refused by the leader and skips; the others average without it.
func TestMismatchedMemberLeftOut(t *testing.T) {
	o := Options{ChunkFloats: 100, Deadline: 6 * time.Second, Matchmaking: time.Second}
	ms, _ := newRandGroup(t, 10, 500, equal(3), o)
	odd := follower(ms, 2)
	ms[odd].src.vec = ms[odd].src.vec[:499]
	res, errs := roundAll(ms, 2)
	if !errors.Is(errs[odd], ErrSkipped) || !strings.Contains(errs[odd].Error(), "length") {
		t.Fatalf("odd member: %v, want skipped for its length", errs[odd])
	}
	for i := range ms {
		if i != odd && (errs[i] != nil || len(res[i].Members) != 2) {
			t.Fatalf("member %d: %v %+v", i, errs[i], res[i])
		}
	}
	waitNoGoroutines(t)
}

// TestForgedSender: a peer that claims another member's place in a group, or
// sends garbage, gets an error frame or a reset, and the round is untouched.
func TestForgedSender(t *testing.T) {
	hs := []host.Host{newHost(t, nil), newHost(t, nil), newHost(t, nil)}
	connectAll(t, hs)
	a, err := New(hs[0], ids(hs), &vecSource{vec: make([]float32, 10)}, Options{Run: "test", Key: "k", Matchmaking: 200 * time.Millisecond, Deadline: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rr := &reduceRound{id: "g1", round: 1, deadline: time.Now().Add(10 * time.Second),
		members: []peer.ID{hs[0].ID(), hs[1].ID()}, index: 0, n: 10, slots: make([]*slot, 2)}
	rr.slots[1] = newSlot(ctx)
	defer rr.slots[1].drop()
	a.mu.Lock()
	a.rounds[rr.id] = rr
	a.mu.Unlock()

	send := func(from host.Host, raw []byte) string {
		s, err := from.NewStream(ctx, hs[0].ID(), a.reduceProto)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := s.Write(raw); err != nil {
			return "write: " + err.Error()
		}
		typ, payload, _, err := wire.ReadTyped(s, nil, maxControl)
		if err != nil {
			return "read: " + err.Error()
		}
		if typ != frameError {
			t.Fatalf("frame type %d, want an error", typ)
		}
		return string(payload)
	}
	frame := func(h partHeader) []byte {
		var b bytes.Buffer
		_ = wire.WriteJSON(&b, frameHeader, h)
		return b.Bytes()
	}
	// hs[2] is not in the group but claims member 1's place.
	if got := send(hs[2], frame(partHeader{Group: "g1", Round: 1, From: 1, Shard: 0, Weight: 1, Len: 10})); !strings.Contains(got, "does not match") {
		t.Errorf("forged sender: %q", got)
	}
	// The real member 1 with a wrong shape, then a NaN weight.
	if got := send(hs[1], frame(partHeader{Group: "g1", Round: 1, From: 1, Shard: 0, Weight: 1, Len: 11})); !strings.Contains(got, "len") {
		t.Errorf("wrong length: %q", got)
	}
	if got := send(hs[1], frame(partHeader{Group: "g1", Round: 1, From: 1, Shard: 0, Weight: -1, Len: 10})); !strings.Contains(got, "weight") {
		t.Errorf("negative weight: %q", got)
	}
	// Garbage instead of a header: the stream is reset.
	if got := send(hs[2], []byte{3, 0, 0, 0, frameHeader, '{', 'x'}); !strings.HasPrefix(got, "read:") {
		t.Errorf("garbage header answered %q", got)
	}
	// An unknown group, after waiting one matchmaking window.
	if got := send(hs[1], frame(partHeader{Group: "nope", Round: 1, From: 1, Len: 10})); !strings.Contains(got, "no round") {
		t.Errorf("unknown group: %q", got)
	}
	a.mu.Lock()
	attached := rr.slots[1].attached
	delete(a.rounds, rr.id)
	a.mu.Unlock()
	if attached {
		t.Error("a rejected stream claimed the slot")
	}
	waitNoGoroutines(t)
}

// TestReducerFails: a member whose reduction fails halfway leaves the rest of its
// shard at every member's local value; the chunks it did reduce and every other
// shard are averaged.
func TestReducerFails(t *testing.T) {
	const n, cf = 8000, 500
	w := []float64{1, 2, 2, 2}
	ms, vecs := newRandGroup(t, 12, n, w, Options{ChunkFloats: cf, Deadline: 6 * time.Second, Matchmaking: time.Second})
	const bad = 1
	calls := 0
	ms[bad].avg.o.Reducer = func(parts [][]float32, ws []float64, out []float32, outlier []bool) error {
		if calls++; calls > 2 {
			return errors.New("robust aggregator gave up")
		}
		return Mean(parts, ws, out, outlier)
	}
	res, errs := roundAll(ms, 4)
	want := weightedMean(vecs, w)
	for i, m := range ms {
		if errs[i] != nil {
			t.Fatalf("member %d: %v", i, errs[i])
		}
		// The bad reducer averaged its first two chunks.
		lo, hi := shardRange(n, 4, ms[bad].indexOf(res[i]))
		checkMeanBut(t, i, m.src.vec, vecs[i], want, lo+2*cf, hi)
		if st := m.avg.Stats(); st.Failures != 1 {
			t.Errorf("member %d stats %+v", i, st)
		}
	}
	waitNoGoroutines(t)
}
