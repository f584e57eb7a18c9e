package averaging

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/wire"
)

// joinMsg asks a round's leader for a place in its group.
type joinMsg struct {
	Round uint64 `json:"round"`
	Len   int    `json:"len"`   // vector length: holders of different shapes never meet
	Codec string `json:"codec"` // the wire codec the member will send
	Chunk int    `json:"chunk"` // values per chunk
}

// groupMsg is the leader's confirmation: the group, in shard order.
type groupMsg struct {
	Round   uint64   `json:"round"`
	ID      string   `json:"id"`
	Members []string `json:"members"`
}

// lobby collects the joins of one round at its leader.
type lobby struct {
	round   uint64
	n       int
	holders map[peer.ID]bool // every holder the leader sees
	want    map[peer.ID]bool // the leader's own view of its group, leader excluded
	joined  []peer.ID
	closed  bool
	full    chan struct{} // closed once every wanted member joined or the group is full
	done    chan struct{} // closed once members is final
	members []peer.ID     // the confirmed group; nil when the round was abandoned
	id      string
}

// broadcastLocked wakes every handler waiting for a lobby or a round. a.mu held.
func (a *Averager) broadcastLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// waitFor waits until find (called with a.mu held) reports true, or ctx ends.
func (a *Averager) waitFor(ctx context.Context, find func() bool) bool {
	for {
		a.mu.Lock()
		ok := find()
		ch := a.changed
		a.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// awaitEntry returns the entry of key in m, one of a's maps guarded by a.mu,
// waiting for it at most one matchmaking window; nil if it does not appear.
func awaitEntry[K comparable, V any](ctx context.Context, a *Averager, m map[K]*V, key K) *V {
	wctx, cancel := context.WithTimeout(ctx, a.o.Matchmaking)
	defer cancel()
	var v *V
	a.waitFor(wctx, func() bool { v = m[key]; return v != nil })
	return v
}

// lead opens round r's lobby, waits until its group has joined or the window
// closes, and confirms the group to every member that joined.
func (a *Averager) lead(ctx context.Context, r uint64, window time.Time, holders, view []peer.ID, n int) ([]peer.ID, error) {
	l := &lobby{
		round: r, n: n,
		holders: map[peer.ID]bool{},
		want:    map[peer.ID]bool{},
		full:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	for _, p := range holders {
		l.holders[p] = true
	}
	for _, p := range view[1:] {
		l.want[p] = true
	}
	a.mu.Lock()
	if _, dup := a.lobbies[r]; dup {
		a.mu.Unlock()
		return nil, fmt.Errorf("round %d already running", r)
	}
	a.lobbies[r] = l
	a.broadcastLocked()
	a.mu.Unlock()

	t := time.NewTimer(time.Until(window))
	select {
	case <-l.full:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()

	a.mu.Lock()
	defer a.mu.Unlock()
	l.closed = true
	defer close(l.done)
	if len(l.joined) == 0 {
		return nil, errors.New("no member joined")
	}
	members := append([]peer.ID{a.h.ID()}, l.joined...)
	sortByScore(a.rk(r), members)
	l.members = members
	l.id = groupID(a.rk(r), members)
	return members, nil
}

// dropLobby forgets round r's lobby once the round is over, so that late joiners
// meanwhile hear "closed" at once instead of waiting.
func (a *Averager) dropLobby(r uint64) {
	a.mu.Lock()
	delete(a.lobbies, r)
	a.mu.Unlock()
}

// handleJoin serves a member's join at the round's leader:
//
//  1. it reads the join, and refuses a member whose codec or chunk size differs;
//  2. it waits for the round's lobby one matchmaking window at most (the member's
//     clock may run a little ahead);
//  3. it enters the member in the lobby, or refuses it (enter says why);
//  4. once lead has settled the group, confirm answers with it.
func (a *Averager) handleJoin(s network.Stream) {
	defer s.Close()
	if !a.sem.tryAcquire() {
		s.Reset()
		return
	}
	defer a.sem.release()
	limit := time.Now().Add(2*a.o.Matchmaking + time.Second)
	_ = s.SetDeadline(limit)
	ctx, cancel := context.WithDeadline(a.ctx, limit)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()

	var m joinMsg
	if err := readJSON(s, frameJoin, &m); err != nil {
		s.Reset()
		return
	}
	if m.Codec != a.o.Codec.String() || m.Chunk != a.o.ChunkFloats {
		writeErrorf(s, "codec %s/%d, leader uses %s/%d", m.Codec, m.Chunk, a.o.Codec, a.o.ChunkFloats)
		return
	}
	l := awaitEntry(ctx, a, a.lobbies, m.Round)
	if l == nil {
		writeErrorf(s, "not leading round %d", m.Round)
		return
	}
	from := s.Conn().RemotePeer()
	if why := a.enter(l, from, m.Len); why != "" {
		writeErrorf(s, "%s", why)
		return
	}
	select {
	case <-l.done:
		a.confirm(s, l, from)
	case <-ctx.Done():
	}
}

// enter admits member from, with a vector of n values, to lobby l, or says why
// not. The member that completes the group closes the lobby.
func (a *Averager) enter(l *lobby, from peer.ID, n int) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case l.closed:
		return "lobby closed"
	case !l.holders[from]:
		return "not a holder in the leader's view"
	case n != l.n:
		return fmt.Sprintf("vector length %d, leader has %d", n, l.n)
	case slices.Contains(l.joined, from):
		return "joined twice"
	case len(l.joined)+1 >= a.o.GroupSize:
		return "group full"
	}
	l.joined = append(l.joined, from)
	if l.complete(a.o.GroupSize) {
		close(l.full)
		l.closed = true // no one else gets in after the group completed
	}
	return ""
}

// complete reports whether the group is full or every member of the leader's
// own view has joined. a.mu held.
func (l *lobby) complete(groupSize int) bool {
	if len(l.joined)+1 >= groupSize {
		return true
	}
	for p := range l.want {
		if !slices.Contains(l.joined, p) {
			return false
		}
	}
	return true
}

// confirm answers member from once lead has settled lobby l: the group in round
// order, or the reason it is not in it.
func (a *Averager) confirm(s network.Stream, l *lobby, from peer.ID) {
	if l.members == nil || !slices.Contains(l.members, from) {
		writeErrorf(s, "round %d abandoned", l.round)
		return
	}
	g := groupMsg{Round: l.round, ID: l.id}
	for _, p := range l.members {
		g.Members = append(g.Members, p.String())
	}
	_ = wire.WriteJSON(s, frameGroup, g)
	_ = s.CloseWrite()
	// Wait for the member's close so the reply is not cut by our Close; bounded by
	// the stream deadline.
	var b [1]byte
	_, _ = s.Read(b[:])
}

// join asks leader for a place in round r's group and returns the confirmed group.
func (a *Averager) join(ctx context.Context, r uint64, window time.Time, leader peer.ID, n int) ([]peer.ID, error) {
	// The leader answers when its window closes; allow it a little past ours.
	grace := min(a.o.Matchmaking/2, time.Second)
	jctx, cancel := context.WithDeadline(ctx, window.Add(grace))
	defer cancel()
	s, err := a.h.NewStream(network.WithAllowLimitedConn(jctx, "avg"), leader, a.joinProto)
	if err != nil {
		return nil, fmt.Errorf("join leader %s: %w", leader.ShortString(), err)
	}
	defer s.Close()
	dl, _ := jctx.Deadline()
	_ = s.SetDeadline(dl)
	stop := context.AfterFunc(jctx, func() { s.Reset() })
	defer stop()
	if err := wire.WriteJSON(s, frameJoin, joinMsg{Round: r, Len: n, Codec: a.o.Codec.String(), Chunk: a.o.ChunkFloats}); err != nil {
		return nil, fmt.Errorf("join leader %s: %w", leader.ShortString(), err)
	}
	var g groupMsg
	if err := readJSON(s, frameGroup, &g); err != nil {
		return nil, fmt.Errorf("join leader %s: %w", leader.ShortString(), err)
	}
	members, err := a.checkGroup(r, g, leader)
	if err != nil {
		return nil, fmt.Errorf("leader %s: %w", leader.ShortString(), err)
	}
	return members, nil
}

// checkGroup validates a leader's confirmation.
func (a *Averager) checkGroup(r uint64, g groupMsg, leader peer.ID) ([]peer.ID, error) {
	if g.Round != r {
		return nil, fmt.Errorf("group for round %d, want %d", g.Round, r)
	}
	if len(g.Members) < 2 || len(g.Members) > a.o.GroupSize {
		return nil, fmt.Errorf("group of %d members (limit %d)", len(g.Members), a.o.GroupSize)
	}
	members := make([]peer.ID, len(g.Members))
	for i, s := range g.Members {
		id, err := peer.Decode(s)
		if err != nil {
			return nil, fmt.Errorf("group member %d: %w", i, err)
		}
		members[i] = id
	}
	sorted := slices.Clone(members)
	sortByScore(a.rk(r), sorted)
	if !slices.Equal(sorted, members) || len(slices.Compact(slices.Clone(sorted))) != len(sorted) {
		return nil, errors.New("group not in round order or with duplicates")
	}
	if !slices.Contains(members, a.h.ID()) || !slices.Contains(members, leader) {
		return nil, errors.New("group lacks us or the leader")
	}
	if g.ID != groupID(a.rk(r), members) {
		return nil, errors.New("group id does not match its members")
	}
	return members, nil
}
