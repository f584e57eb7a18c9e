package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"swarmnode/receipt"
	"swarmnode/wire"
)

// The commit protocol makes a swarm step like one model on one GPU. When all
// the microbatches of a trainer's step are back, every holder of every stage
// has accumulated its share of the step's gradients. The trainer then asks
// each holder what it accumulated (prepare), works out which microbatch was
// counted twice at a stage (an answer lost after a backward pass, and the
// microbatch retried elsewhere) and which not at all (a holder killed with
// its gradients), sends the missing ones through the pipeline again, and
// finally asks every holder to step (commit): each takes back its extra
// copies, all-reduces its gradients with the other holders of its stage
// (weighted by microbatches) and applies the optimizer step, so the holders of
// a stage stay one model and every microbatch counts exactly once.
//
// Messages are typed frames (package wire) with JSON payloads, one request and
// one answer per stream.
const (
	msgPrepare byte = 1 // {"trainer": tag, "ids": [...], "stage": k} -> accounting
	msgCommit  byte = 2 // commitMsg -> stepReply
	msgError   byte = 3 // {"error": "..."}
)

// maxCommitFrame bounds a commit protocol frame: ids and peer lists only.
const maxCommitFrame = 1 << 20

// CommitProtocol is the commit protocol id of run.
func CommitProtocol(run string) protocol.ID {
	return protocol.ID("/swarmnode/" + run + "/commit/1.0.0")
}

type prepareMsg struct {
	Trainer uint32   `json:"trainer"`
	IDs     []uint64 `json:"ids"`
	// Stage is the stage the trainer asks about; a holder serving another
	// (moved since the trainer's view was made) refuses. Absent from an
	// older trainer.
	Stage *int `json:"stage,omitempty"`
}

type stepReply struct {
	Version  uint64  `json:"version"`
	Micro    int     `json:"micro"`
	Samples  int     `json:"samples"`
	Averaged bool    `json:"averaged"`
	GradNorm float32 `json:"grad_norm"`
	// Group lists the members whose gradients went into the step's mean;
	// Complete says every part of theirs arrived.
	Group    []string `json:"group"`
	Complete bool     `json:"complete"`
	// Evicted lists the holders this one evicted from the stage's all-reduce.
	Evicted []string `json:"evicted,omitempty"`
}

type errorMsg struct {
	Error string `json:"error"`
}

// handleCommit serves one prepare or commit request.
func (s *Server) handleCommit(str network.Stream) {
	if !s.track(str) {
		_ = str.Reset()
		return
	}
	defer s.untrack(str)
	_ = str.SetDeadline(time.Now().Add(s.opts.Pipeline.HopTimeout))
	typ, payload, _, err := wire.ReadTyped(str, nil, maxCommitFrame)
	if err != nil {
		_ = str.Reset()
		return
	}
	reply, rtyp, err := s.commitRequest(typ, payload, str.Conn().RemotePeer())
	if err != nil {
		s.log.Info("commit request refused", "stage", s.k, "from", shortID(str.Conn().RemotePeer()), "err", err)
		_ = wire.WriteJSON(str, msgError, errorMsg{Error: err.Error()})
		_ = str.Close()
		return
	}
	if err := wire.WriteJSON(str, rtyp, reply); err != nil {
		_ = str.Reset()
		return
	}
	_ = str.Close()
}

func (s *Server) commitRequest(typ byte, payload []byte, from peer.ID) (any, byte, error) {
	switch typ {
	case msgPrepare:
		var m prepareMsg
		if err := json.Unmarshal(payload, &m); err != nil {
			return nil, 0, fmt.Errorf("prepare: %w", err)
		}
		if m.Stage != nil && *m.Stage != s.k {
			return nil, 0, fmt.Errorf("%w: prepare for stage %d, this peer serves %d", wire.ErrWrongStage, *m.Stage, s.k)
		}
		return s.w.account(m.Trainer, m.IDs), msgPrepare, nil
	case msgCommit:
		r, undo, raw, err := parseCommit(payload, s.host.ID())
		if err != nil {
			return nil, 0, err
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.opts.Pipeline.HopTimeout)
		defer cancel()
		info, err := s.w.Commit(ctx, r, undo)
		if err != nil {
			s.log.Warn("step taken with a copy not taken back", "stage", s.k, "err", err)
		}
		reply := stepReply{Version: info.Version, Micro: info.Micro, Samples: info.Samples, Averaged: info.Averaged, GradNorm: info.GradNorm, Complete: info.Complete}
		for _, p := range info.Group {
			reply.Group = append(reply.Group, p.String())
		}
		for _, p := range info.Evicted {
			reply.Evicted = append(reply.Evicted, p.String())
		}
		if raw != nil && s.opts.OnReceipt != nil {
			if rc, err := checkReceipt(raw, s.opts.Run, from, s.k, r); err != nil {
				s.log.Info("commit receipt refused", "stage", s.k, "from", shortID(from), "err", err)
			} else {
				s.opts.OnReceipt(rc)
			}
		}
		return reply, msgCommit, nil
	}
	return nil, 0, fmt.Errorf("%w: commit protocol message type %d", wire.ErrUnexpect, typ)
}

// maxCommitMembers bounds a commit's member list (the averaging protocol's
// largest group) and maxUndo the copies one commit takes back.
const (
	maxCommitMembers = 64
	maxUndo          = 4096
	maxSteps         = 1 << 40
)

// parseCommit decodes a commit request to self: the round and the copies to
// take back. It refuses a request that does not name self among the members.
func parseCommit(payload []byte, self peer.ID) (Round, []uint64, json.RawMessage, error) {
	r, undo, m, err := parseCommitMsg(payload, self)
	return r, undo, m.Receipt, err
}

func parseCommitMsg(payload []byte, self peer.ID) (Round, []uint64, commitMsg, error) {
	var m commitMsg
	if err := json.Unmarshal(payload, &m); err != nil {
		return Round{}, nil, m, fmt.Errorf("commit: %w", err)
	}
	if len(m.Members) > maxCommitMembers || len(m.Undo) > maxUndo {
		return Round{}, nil, m, fmt.Errorf("commit: %d members and %d copies to take back, over the limits of %d and %d", len(m.Members), len(m.Undo), maxCommitMembers, maxUndo)
	}
	if m.Steps < 0 || m.Steps > maxSteps {
		return Round{}, nil, m, fmt.Errorf("commit: schedule horizon %d steps out of [0, %d]", m.Steps, maxSteps)
	}
	r := Round{ID: m.Round, Next: m.Next, Steps: m.Steps}
	if m.Weights != nil {
		if len(m.Weights) != len(m.Members) {
			return Round{}, nil, m, fmt.Errorf("commit: %d weights for %d members", len(m.Weights), len(m.Members))
		}
		for _, w := range m.Weights {
			if w < 0 || w > maxUndo {
				return Round{}, nil, m, fmt.Errorf("commit: weight %d out of [0, %d]", w, maxUndo)
			}
			r.Weights = append(r.Weights, float64(w))
		}
	}
	for _, id := range m.Members {
		p, err := peer.Decode(id)
		if err != nil {
			return Round{}, nil, m, fmt.Errorf("commit: member %q: %w", id, err)
		}
		r.Members = append(r.Members, p)
	}
	if !slices.Contains(r.Members, self) {
		return Round{}, nil, m, errors.New("commit: this holder is not among the members")
	}
	return r, m.Undo, m, nil
}

// ask sends one commit protocol request to p and decodes its answer into out.
func ask(ctx context.Context, c *caller, run string, p Holder, typ byte, msg, out any) error {
	str, err := c.openOn(ctx, p, CommitProtocol(run))
	if err != nil {
		return err
	}
	defer str.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = str.SetDeadline(d)
	}
	if err := wire.WriteJSON(str, typ, msg); err != nil {
		_ = str.Reset()
		return err
	}
	if err := str.CloseWrite(); err != nil {
		_ = str.Reset()
		return err
	}
	rtyp, payload, _, err := wire.ReadTyped(str, nil, maxCommitFrame)
	if err != nil {
		_ = str.Reset()
		return err
	}
	switch rtyp {
	case typ:
		return json.Unmarshal(payload, out)
	case msgError:
		var e errorMsg
		_ = json.Unmarshal(payload, &e)
		return &refusedError{from: shortID(p.ID), msg: e.Error}
	}
	return fmt.Errorf("%w: answer of type %d to %d", wire.ErrUnexpect, rtyp, typ)
}

// refusedError is a commit protocol request a holder answered with an error:
// it is alive.
type refusedError struct{ from, msg string }

func (e *refusedError) Error() string { return e.from + ": " + e.msg }

// stageView is what the holders of one stage that answered a prepare hold.
type stageView struct {
	holders []Holder
	acc     []accounting
}

// next is the version the stage steps to: the most common version among the
// holders that answered (the highest of equally common ones), plus one.
func (v stageView) next() uint64 {
	count := make(map[uint64]int)
	var best uint64
	for _, a := range v.acc {
		count[a.Version]++
		if n, m := count[a.Version], count[best]; n > m || (n == m && a.Version > best) {
			best = a.Version
		}
	}
	return best + 1
}

// commitState is the trainer's side of committing one step.
type commitState struct {
	t     *Trainer
	step  int
	ids   []uint64 // the step's microbatches
	later []uint64 // later steps' microbatches in flight
	// newest is the newest id among ids and later. The trainer's loop goes on
	// while the commit runs, so a holder may report microbatches issued since:
	// their ids are newer (ids only grow), and they belong to later steps.
	newest uint64
	views  []stageView    // per stage
	undo   [][][]uint64   // per stage, per holder answering: copies to take back
	kept   [][][]uint64   // per stage, per holder answering: the copies that count
	miss   map[uint64]int // microbatch -> stages that lack it
}

// prepare asks every holder of every stage what it accumulated, in parallel.
func (cs *commitState) prepare(ctx context.Context) {
	t := cs.t
	cs.views = make([]stageView, t.opts.Stages)
	var wg sync.WaitGroup
	var mu sync.Mutex
	now := time.Now()
	ids := append(slices.Clip(cs.ids), cs.later...)
	for k := range t.opts.Stages {
		msg := prepareMsg{Trainer: t.tag(), IDs: ids, Stage: &k}
		holders := t.call.router.Holders(k)
		recovered := map[peer.ID]bool{}
		if rl, ok := t.call.router.(RecoveredLister); ok {
			for _, h := range rl.Recovered(k) {
				if !slices.ContainsFunc(holders, func(o Holder) bool { return o.ID == h.ID }) {
					holders = append(holders, h)
					recovered[h.ID] = true
				}
			}
		}
		for _, h := range holders {
			if t.call.bo.hasFailed(h.ID, now) && !recovered[h.ID] {
				continue // failed lately: its share is sent again if need be
			}
			if t.call.picker.isShunned(h.ID) {
				continue // evicted by its stage: it trains nothing, and would hold the commit up
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				var a accounting
				if err := ask(ctx, t.call, t.opts.Run, h, msgPrepare, msg, &a); err != nil {
					t.log.Debug("prepare failed", "stage", k, "holder", shortID(h.ID), "err", err)
					var re *refusedError
					if !errors.As(err, &re) { // one that refused (moved to another stage) is alive
						t.call.bo.down(h.ID, time.Now())
						t.call.router.MarkDown(h.ID)
					}
					return
				}
				mu.Lock()
				cs.views[k].holders = append(cs.views[k].holders, h)
				cs.views[k].acc = append(cs.views[k].acc, a)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
}

// resolve works out, from the holders' answers, the copies to take back at
// each holder and the microbatches some stage lacks.
func (cs *commitState) resolve() {
	want := make(map[uint64]bool, len(cs.ids)+len(cs.later))
	for _, id := range cs.ids {
		want[id] = true
	}
	for _, id := range cs.later {
		want[id] = true
	}
	cs.undo = make([][][]uint64, len(cs.views))
	cs.kept = make([][][]uint64, len(cs.views))
	cs.miss = make(map[uint64]int)
	for k, v := range cs.views {
		cs.undo[k] = make([][]uint64, len(v.holders))
		cs.kept[k] = make([][]uint64, len(v.holders))
		counted := make(map[uint64]int)
		for _, a := range v.acc {
			for _, id := range a.Done {
				counted[id] = 1
			}
		}
		for i, a := range v.acc {
			for _, id := range a.Pending {
				// One copy of each of the step's (or a later step's)
				// microbatches counts; any other copy, or a microbatch of no
				// step in progress (an attempt this trainer gave up on that
				// finished late), goes.
				if (want[id] || id > cs.newest) && counted[id] == 0 {
					counted[id] = 1
					cs.kept[k][i] = append(cs.kept[k][i], id)
					continue
				}
				cs.undo[k][i] = append(cs.undo[k][i], id)
			}
		}
		for _, id := range cs.ids {
			if counted[id] == 0 {
				cs.miss[id]++
			}
		}
	}
}

// commit asks every holder that answered the prepare to step. It returns the
// sequences each stage stepped on, and the microbatches of the step that a
// stage lost in the commit: those counted at a holder that did not answer its
// commit (killed or frozen since its prepare) and whose gradients went into no
// other holder's all-reduce. The caller sends them again with the next step.
func (cs *commitState) commit(ctx context.Context) (samples []int, lost []uint64) {
	t := cs.t
	samples = make([]int, len(cs.views))
	replies := make([][]*stepReply, len(cs.views))
	receipts := make([]json.RawMessage, len(cs.views))
	for k := range cs.views {
		receipts[k] = cs.receipt(k)
	}
	var wg sync.WaitGroup
	for k, v := range cs.views {
		members, weights := cs.members(k)
		round, next := cs.round(k), v.next()
		replies[k] = make([]*stepReply, len(v.holders))
		for i, h := range v.holders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var r stepReply
				msg := commitMsg{Round: round, Members: members, Weights: weights, Undo: cs.undo[k][i], Next: next, Steps: t.opts.Train.Steps, Receipt: receipts[k]}
				if err := ask(ctx, t.call, t.opts.Run, h, msgCommit, msg, &r); err != nil {
					t.log.Info("commit failed", "stage", k, "holder", shortID(h.ID), "step", cs.step, "err", err)
					return
				}
				replies[k][i] = &r
			}()
		}
	}
	wg.Wait()
	for k, v := range cs.views {
		t.shunEvicted(k, len(v.holders), replies[k])
	}
	inStep := make(map[uint64]bool, len(cs.ids))
	for _, id := range cs.ids {
		inStep[id] = true
	}
	for k, v := range cs.views {
		for i, h := range v.holders {
			if r := replies[k][i]; r != nil {
				samples[k] += r.Samples
				continue
			}
			if included(replies[k], h.ID.String()) {
				samples[k] += len(cs.kept[k][i]) * t.opts.Train.Microbatch
				continue
			}
			for _, id := range cs.kept[k][i] {
				if inStep[id] { // a later step's microbatch is checked at its own commit
					lost = append(lost, id)
				}
			}
		}
	}
	return samples, lost
}

// receipt signs the step's receipt for stage k with the trainer's key: the
// holders stepping and the microbatches counted at each. Nil when the host
// has no private key.
func (cs *commitState) receipt(k int) json.RawMessage {
	t := cs.t
	key := t.call.host.Peerstore().PrivKey(t.call.host.ID())
	if key == nil {
		return nil
	}
	members, weights := cs.members(k)
	r, err := receipt.Sign(key, receipt.Receipt{
		Run: t.opts.Run, Step: cs.step, Stage: k, Members: members, Microbatches: weights,
		TokensPerMicrobatch: t.opts.Train.Microbatch * t.opts.Model.SeqLen, Issued: time.Now(),
	})
	if err != nil {
		t.log.Info("receipt not signed", "stage", k, "step", cs.step, "err", err)
		return nil
	}
	return r.Encode()
}

// checkReceipt checks a commit's receipt: signed by the trainer that sent
// the commit (from), for this run and stage, naming the commit's members
// with the microbatches the commit attests.
func checkReceipt(raw json.RawMessage, run string, from peer.ID, stage int, r Round) (receipt.Receipt, error) {
	rc, err := receipt.Parse(raw)
	if err != nil {
		return rc, err
	}
	if err := rc.Verify(run); err != nil {
		return rc, err
	}
	switch {
	case rc.Trainer != from.String():
		return rc, fmt.Errorf("receipt signed by %s, sent by %s", rc.Trainer, from)
	case rc.Stage != stage:
		return rc, fmt.Errorf("receipt of stage %d sent to stage %d", rc.Stage, stage)
	case len(rc.Members) != len(r.Members) || len(r.Weights) != len(r.Members):
		return rc, fmt.Errorf("receipt names %d members, the commit %d with %d weights", len(rc.Members), len(r.Members), len(r.Weights))
	}
	for i, m := range r.Members {
		if rc.Members[i] != m.String() || float64(rc.Microbatches[i]) != r.Weights[i] {
			return rc, fmt.Errorf("receipt member %d: %s with %d microbatches, the commit %s with %v", i, rc.Members[i], rc.Microbatches[i], m, r.Weights[i])
		}
	}
	return rc, nil
}

// members lists stage k's holders of this step in peer-id order, with the
// microbatches each keeps once its extra copies are taken back.
func (cs *commitState) members(k int) ([]string, []int) {
	v := cs.views[k]
	order := make([]int, len(v.holders))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(v.holders[a].ID.String(), v.holders[b].ID.String()) })
	members, weights := make([]string, len(order)), make([]int, len(order))
	for j, i := range order {
		members[j], weights[j] = v.holders[i].ID.String(), len(cs.kept[k][i])
	}
	return members, weights
}

// shunEvicted stops routing to a holder that most of stage k's n holders
// report having evicted from their all-reduce: its gradients count for
// nothing there, so the microbatches sent to it would be lost. One holder's
// word is not enough: a liar could name honest holders.
func (t *Trainer) shunEvicted(k, n int, replies []*stepReply) {
	votes := map[string]int{}
	for _, r := range replies {
		if r == nil {
			continue
		}
		for _, e := range slices.Compact(slices.Sorted(slices.Values(r.Evicted))) {
			votes[e]++
		}
	}
	for e, v := range votes {
		p, err := peer.Decode(e)
		if err != nil || 2*v <= n {
			continue
		}
		if t.call.picker.shun(p) {
			t.log.Warn("a holder evicted by most of its stage: no longer routed to", "stage", k, "holder", shortID(p), "votes", v, "holders", n)
		}
	}
}

// included reports whether the all-reduce of some holder that answered its
// commit took in every part of member's gradients.
func included(replies []*stepReply, member string) bool {
	for _, r := range replies {
		if r != nil && r.Complete && slices.Contains(r.Group, member) {
			return true
		}
	}
	return false
}

// round names stage k's all-reduce of this step: distinct per trainer, stage
// and step.
func (cs *commitState) round(k int) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%d/%d", cs.t.tag(), k, cs.step)
	return h.Sum64()
}

// prepareTimeout bounds a prepare: a live holder answers it from memory at
// once, so waiting a whole hop timeout for a frozen one would stall the step.
func prepareTimeout(hop time.Duration) time.Duration { return max(500*time.Millisecond, hop/4) }

// maxReplays bounds the rounds of sending lost microbatches again before a
// step commits without them.
const maxReplays = 5

// commitDrain is how long a commit already sent may go on after the trainer
// is told to stop; well within the 5 s a peer has to leave the run.
const commitDrain = 2 * time.Second

// commitStep commits step (numbered from 1) of the trainer once the answers
// of its microbatches, jobs, are all back: prepare, replay what a stage lost,
// then commit. later are the microbatches of later steps already sent (with
// pipeline.staleness above 0): what a holder accumulated of them counts now.
// It returns when every holder that answered has stepped or failed to, or with
// ctx's error, and with the microbatches a stage lost in the commit itself, to
// go with the next step.
func (t *Trainer) commitStep(ctx context.Context, step int, jobs, later []*job) (owed []*job, err error) {
	cs := &commitState{t: t, step: step}
	byID := make(map[uint64]*job, len(jobs))
	for _, j := range jobs {
		cs.ids = append(cs.ids, j.req.id)
		byID[j.req.id] = j
	}
	for _, j := range later {
		cs.later = append(cs.later, j.req.id)
	}
	for _, id := range cs.ids {
		cs.newest = max(cs.newest, id)
	}
	for _, id := range cs.later {
		cs.newest = max(cs.newest, id)
	}
	for round := 0; ; round++ {
		pctx, cancel := context.WithTimeout(ctx, prepareTimeout(t.opts.Pipeline.HopTimeout))
		cs.prepare(pctx)
		cancel()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if k := cs.emptyStage(); k >= 0 {
			if round%20 == 0 { // every 10 s: a stage behind a partition may stay empty for minutes
				t.log.Info("no holder of a stage answered; waiting to commit", "stage", k, "step", step, "waited", time.Duration(round)*500*time.Millisecond)
			}
			if err := sleep(ctx, 500*time.Millisecond); err != nil {
				return nil, err
			}
			continue
		}
		cs.resolve()
		if len(cs.miss) > 0 && round < maxReplays {
			t.log.Info("a stage lost microbatches of the step; sending them again", "step", step, "microbatches", len(cs.miss))
			if err := t.replay(ctx, cs.miss, byID); err != nil {
				return nil, err
			}
			continue
		}
		if len(cs.miss) > 0 {
			t.log.Warn("committing a step without microbatches a stage lost", "step", step, "microbatches", len(cs.miss))
		}
		for _, per := range cs.undo {
			for _, u := range per {
				t.takenBack.Add(int64(len(u)))
			}
		}
		// Once commits go out, holders step: a commit cut off by the
		// trainer's stop would leave some stages a step ahead of the count it
		// keeps, and a restarted trainer would do that step there twice. So
		// the commit outlives ctx, for commitDrain at most.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.opts.Pipeline.HopTimeout)
		stopDrain := context.AfterFunc(ctx, func() { time.AfterFunc(commitDrain, cancel) })
		samples, lost := cs.commit(cctx)
		stopDrain()
		cancel()
		owed = owed[:0]
		for _, id := range lost {
			owed = append(owed, byID[id])
		}
		if len(owed) > 0 {
			t.log.Info("a holder went down with its share of the step; sending it with the next step", "step", step, "microbatches", len(owed))
		}
		t.mu.Lock()
		if len(t.stats.Stepped) < len(samples) {
			t.stats.Stepped = append(t.stats.Stepped, make([]int64, len(samples)-len(t.stats.Stepped))...)
		}
		for k, n := range samples {
			t.stats.Stepped[k] += int64(n)
		}
		t.mu.Unlock()
		return owed, nil
	}
}

// emptyStage returns a stage no holder of which answered the prepare, or -1.
func (cs *commitState) emptyStage() int {
	for k, v := range cs.views {
		if len(v.holders) == 0 {
			return k
		}
	}
	return -1
}

// replay sends the microbatches in miss through the pipeline again, at once.
func (t *Trainer) replay(ctx context.Context, miss map[uint64]int, byID map[uint64]*job) error {
	errs := make(chan error, len(miss))
	for id := range miss {
		j := byID[id]
		t.replayed.Add(1)
		go func() {
			_, err := t.runMicro(ctx, j)
			errs <- err
		}()
	}
	var first error
	for range miss {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
