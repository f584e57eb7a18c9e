package averaging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/codec"
	"swarmnode/wire"
)

// Audits: a reducer cannot corrupt its shard of the result unnoticed.
//
// A member is also the reducer of one shard, and its result goes to every
// other member as it stands. A lying reducer could send anything: CenteredClip
// bounds what a lying part does, not what a lying reducer does. So, in the
// spirit of BTARD-SGD's re-verification, members audit reducers at random:
//
//  1. Before a round's exchange, each member picks in secret (its own coins)
//     the shards it will audit, each with probability Options.AuditRate, and
//     one chunk of each. It keeps its part of that chunk as it sent it and the
//     result as it received it. The reducer cannot tell which chunks will be
//     audited, so it must keep every chunk it reduced.
//  2. Every reducer keeps, for its last auditKeep rounds, each chunk's parts as
//     they arrived, its own values, and the weights it took.
//  3. After the round the auditor asks the reducer for the chunk's parts and
//     weights (the audit protocol), and checks that
//     - its own part is among them, byte for byte as sent, with its weight;
//     - the reduction of those parts, with the weights capped as every
//       reducer caps them, is the result it received.
//  4. A reducer that fails a check is evicted at once: the evidence is the
//     auditor's own (its part, its result, the reducer's answer over an
//     authenticated stream). One that refuses auditStrikes audits in a row
//     (no record, a malformed answer) is evicted too; one that cannot be
//     reached is not counted, as it may have left.
//
// Every member audits on its own, so a reducer that lies about a chunk whose
// result reaches k honest members is caught with probability at least
// 1 − (1 − AuditRate/chunks)^k per round, and after a few rounds almost surely.
// A reducer may still replace another member's part: the recomputation agrees,
// but that member's own audit sees its part changed. The reducer's own part
// cannot be checked; it is bounded as any member's part is, by the reducer.

// auditKeep is how many rounds a reducer keeps for audits, auditKeepBytes
// how many bytes of parts at most (the newest round is always kept).
// Auditors ask right after their round ends, but a stage's gradient
// all-reduce runs at every step, several a second on a small model: two
// rounds were too few, and honest reducers refused audits of rounds they had
// already dropped.
const (
	auditKeep      = 16
	auditKeepBytes = 256 << 20
)

// auditStrikes is how many audits in a row a reducer may refuse.
const auditStrikes = 3

// auditTolerance is the relative distance between the result a member received
// and the auditor's own reduction of the same parts that is still agreement:
// the same code on another architecture may fuse multiply-adds differently. A
// lie that small moves nothing.
const auditTolerance = 1e-4

// auditReq asks a reducer for what it reduced in chunk Chunk of its shard
// Shard in the round of group Group; From is the auditor's member index.
type auditReq struct {
	Group string `json:"group"`
	Round uint64 `json:"round"`
	Shard int    `json:"shard"`
	Chunk int    `json:"chunk"`
	From  int    `json:"from"`
}

// auditReply lists the parts the reducer reduced in the chunk, by member
// index, its own first, with the weights it took (before BoundWeights). The
// parts follow as chunk frames in the same order: its own in fp32, the others
// in the averaging codec, as they arrived.
type auditReply struct {
	Members []int     `json:"members"`
	Weights []float64 `json:"weights"`
}

// auditTicket is an audit a member chose before the exchange: chunk Chunk of one
// shard, with our part as sent and the result as received.
type auditTicket struct {
	chunk  int
	weight float64 // our part's weight, as the reducer must take it
	part   []byte  // our part's encoded values
	result []byte  // the result's encoded values
}

// pickAudits chooses, with our own coins, the shards of round rr to audit and
// one chunk of each; nil entries are not audited.
func (a *Averager) pickAudits(rr *reduceRound, weight float64) []*auditTicket {
	if a.o.AuditRate <= 0 {
		return nil
	}
	tickets := make([]*auditTicket, len(rr.members))
	for j := range rr.members {
		if j == rr.index || rand.Float64() >= a.o.AuditRate {
			continue
		}
		lo, hi := shardRange(rr.n, len(rr.members), j)
		if hi == lo {
			continue
		}
		chunks := (hi - lo + a.o.ChunkFloats - 1) / a.o.ChunkFloats
		tickets[j] = &auditTicket{chunk: rand.IntN(chunks), weight: weight}
	}
	return tickets
}

// auditLog is what the reducer of one round kept of its shard for audits.
type auditLog struct {
	id      string
	round   uint64
	members []peer.ID
	index   int
	chunks  []keptChunk // by chunk index; written by the reducer alone, before the log is kept

	mu sync.Mutex // a sender's handler may outlive its round
	// parts[i][c] is member i's part of chunk c, encoded, as it arrived.
	parts [][][]byte
	bytes int // of parts and own values, for auditKeepBytes
}

// keptChunk is one reduced chunk: who took part and with what weight.
type keptChunk struct {
	members []int // ours first
	weights []float64
	own     []float32
}

func newAuditLog(rr *reduceRound, chunks int) *auditLog {
	l := &auditLog{
		id: rr.id, round: rr.round, members: rr.members, index: rr.index,
		parts: make([][][]byte, len(rr.members)), chunks: make([]keptChunk, chunks),
	}
	for i := range l.parts {
		if i != rr.index {
			l.parts[i] = make([][]byte, chunks)
		}
	}
	return l
}

// keepPart keeps member i's encoded part of chunk c.
func (l *auditLog) keepPart(i, c int, enc []byte) {
	enc = bytes.Clone(enc)
	l.mu.Lock()
	l.parts[i][c] = enc
	l.bytes += len(enc)
	l.mu.Unlock()
}

// part returns member i's kept part of chunk c.
func (l *auditLog) part(i, c int) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.parts[i][c]
}

// keepChunk keeps what chunk c's reduction took. Only the reducer writes it.
func (l *auditLog) keepChunk(c int, members []int, weights []float64, own []float32) {
	l.chunks[c] = keptChunk{members: members, weights: slices.Clone(weights), own: slices.Clone(own)}
	l.mu.Lock()
	l.bytes += 4 * len(own)
	l.mu.Unlock()
}

// keepAuditLog keeps a closed round's log, and forgets the oldest beyond auditKeep.
func (a *Averager) keepAuditLog(l *auditLog) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.auditLogs = append(a.auditLogs, l)
	total := 0
	for i := len(a.auditLogs) - 1; i >= 0; i-- {
		l := a.auditLogs[i]
		l.mu.Lock()
		total += l.bytes
		l.mu.Unlock()
		if i < len(a.auditLogs)-1 && (total > auditKeepBytes || len(a.auditLogs)-i > auditKeep) {
			a.auditLogs = slices.Delete(a.auditLogs, 0, i+1)
			break
		}
	}
	a.broadcastLocked()
}

// findAuditLog returns the kept log of group id, waiting while its round is
// still running (an auditor may be done before its reducer is).
func (a *Averager) findAuditLog(ctx context.Context, id string) *auditLog {
	var l *auditLog
	a.waitFor(ctx, func() bool {
		for _, k := range a.auditLogs {
			if k.id == id {
				l = k
				return true
			}
		}
		_, running := a.rounds[id]
		return !running
	})
	return l
}

// handleAudit answers an audit of our shard, the reducer's end of the audit
// protocol: the request, then the reply and the chunk's parts, or an error
// frame saying why not.
func (a *Averager) handleAudit(s network.Stream) {
	if !a.sem.tryAcquire() {
		s.Reset()
		return
	}
	defer a.sem.release()
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(a.o.Deadline))
	var req auditReq
	if err := readJSON(s, frameAuditReq, &req); err != nil {
		s.Reset()
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.o.Deadline)
	defer cancel()
	l := a.findAuditLog(ctx, req.Group)
	from := s.Conn().RemotePeer()
	switch {
	case l == nil:
		writeErrorf(s, "no round of group %.40q kept", req.Group)
		return
	case req.From < 0 || req.From >= len(l.members) || req.From == l.index || l.members[req.From] != from:
		writeErrorf(s, "auditor index %d does not match peer %s", req.From, from.ShortString())
		return
	case req.Shard != l.index || req.Round != l.round || req.Chunk < 0 || req.Chunk >= len(l.chunks):
		writeErrorf(s, "no chunk %d of shard %d round %d here", req.Chunk, req.Shard, req.Round)
		return
	case l.chunks[req.Chunk].own == nil:
		writeErrorf(s, "chunk %d was not reduced", req.Chunk)
		return
	}
	kc := l.chunks[req.Chunk]
	if err := wire.WriteJSON(s, frameAuditReply, auditReply{Members: kc.members, Weights: kc.weights}); err != nil {
		return
	}
	b := &chunkBuf{back: make([]float32, headFloats+len(kc.own))}
	copy(b.vals(len(kc.own)), kc.own)
	f, err := b.frame(codec.FP32, l.index, req.Chunk, len(kc.own), false)
	if err != nil {
		return
	}
	if _, err := s.Write(f); err != nil {
		return
	}
	head := make([]byte, chunkHeads)
	for _, i := range kc.members[1:] {
		enc := l.part(i, req.Chunk)
		putChunkHeads(head, a.o.Codec, l.index, req.Chunk, len(kc.own))
		if _, err := s.Write(append(head, enc...)); err != nil {
			return
		}
	}
}

// errAuditRefused wraps the reasons an audit's answer was unusable.
var errAuditRefused = errors.New("audit refused")

// errAuditFailed wraps the reasons a reducer failed an audit.
var errAuditFailed = errors.New("audit failed")

// audit runs the audit of ticket tk against reducer j of round rr and acts on
// the verdict.
func (a *Averager) audit(ctx context.Context, rr *reduceRound, j int, tk *auditTicket) {
	p := rr.members[j]
	err := a.checkReducer(ctx, rr, j, tk)
	switch {
	case err == nil:
		a.mu.Lock()
		a.stats.Audits++
		delete(a.refusals, p)
		a.mu.Unlock()
	case errors.Is(err, errAuditFailed):
		a.evict(p, fmt.Sprintf("it failed an audit of round %d: %v", rr.round, err))
	case a.h.Network().Connectedness(p) != network.Connected:
		// Not reached, or the stream broke as it left: nothing to hold
		// against it.
		a.o.Logger.Debug("averaging audit not answered", "key", a.o.Key, "round", rr.round, "reducer", p.ShortString(), "err", err)
	default:
		// Still connected, yet no usable answer (an error frame, a malformed
		// or missing reply, a reset, a hang): a liar could not dodge audits
		// by breaking their streams.
		a.mu.Lock()
		a.refusals[p]++
		n := a.refusals[p]
		a.mu.Unlock()
		a.o.Logger.Info("averaging audit refused", "key", a.o.Key, "round", rr.round, "reducer", p.ShortString(), "err", err)
		if n >= auditStrikes {
			a.evict(p, fmt.Sprintf("it answered none of %d audits in a row, the last of round %d: %v", n, rr.round, err))
		}
	}
}

// checkReducer asks reducer j for the parts of the audited chunk and checks
// them and the result we received. It returns nil when the reducer passed, an
// error wrapping errAuditFailed when it lied, and another error when it gave
// no usable answer.
func (a *Averager) checkReducer(ctx context.Context, rr *reduceRound, j int, tk *auditTicket) error {
	s, err := a.h.NewStream(ctx, rr.members[j], a.auditProto)
	if err != nil {
		return err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	if err := wire.WriteJSON(s, frameAuditReq, auditReq{Group: rr.id, Round: rr.round, Shard: j, Chunk: tk.chunk, From: rr.index}); err != nil {
		return err
	}
	var rep auditReply
	if err := readJSON(s, frameAuditReply, &rep); err != nil {
		return err
	}
	var ch chunk
	for c := range rr.shardChunks(j, a.o.ChunkFloats) {
		if c.index == tk.chunk {
			ch = c
		}
	}
	mine, err := checkMembers(rep, rr, j)
	if err != nil {
		return err
	}
	parts := make([][]float32, len(rep.Members))
	for k, i := range rep.Members {
		kind := a.o.Codec
		if k == 0 {
			kind = codec.FP32 // the reducer's own values
		}
		parts[k] = make([]float32, ch.n)
		enc, err := readPart(s, kind, j, tk.chunk, parts[k])
		if err != nil {
			return err
		}
		if i == rr.index && !bytes.Equal(enc, tk.part) {
			return fmt.Errorf("%w: chunk %d: the part it reduced as ours is not the part we sent", errAuditFailed, tk.chunk)
		}
	}
	if rep.Weights[mine] != tk.weight {
		return fmt.Errorf("%w: chunk %d: it took our part with weight %v, we sent %v", errAuditFailed, tk.chunk, rep.Weights[mine], tk.weight)
	}
	ws := slices.Clone(rep.Weights)
	for k, i := range rep.Members {
		ws[k] = rr.weightOf(i, ws[k])
	}
	if rr.attested == nil {
		BoundWeights(ws)
	}
	out := make([]float32, ch.n)
	if err := reduceWeighted(a.o.Reducer, parts, ws, out, make([]bool, len(parts))); err != nil {
		return fmt.Errorf("%w: chunk %d: our reduction of its parts failed: %v", errAuditRefused, tk.chunk, err)
	}
	return matchResult(a.o.Codec, out, tk)
}

// checkMembers checks an audit reply's list of parts: the reducer's own
// first, each member at most once, ours among them (we received the chunk's
// result, so our part was reduced). It returns our position in it.
func checkMembers(rep auditReply, rr *reduceRound, j int) (int, error) {
	g := len(rr.members)
	if len(rep.Members) == 0 || len(rep.Members) > g || len(rep.Weights) != len(rep.Members) || rep.Members[0] != j {
		return 0, fmt.Errorf("%w: malformed list of %d parts and %d weights", errAuditRefused, len(rep.Members), len(rep.Weights))
	}
	seen := make([]bool, g)
	for k, i := range rep.Members {
		if i < 0 || i >= g || seen[i] || !(rep.Weights[k] >= 0) || math.IsInf(rep.Weights[k], 0) {
			return 0, fmt.Errorf("%w: malformed part %d (member %d, weight %v)", errAuditRefused, k, i, rep.Weights[k])
		}
		seen[i] = true
	}
	mine := slices.Index(rep.Members, rr.index)
	if mine < 0 {
		return 0, fmt.Errorf("%w: it sent us a result without our part in it", errAuditFailed)
	}
	return mine, nil
}

// matchResult checks the result we received against our own reduction out,
// encoded as the reducer encodes a result.
func matchResult(k codec.Kind, out []float32, tk *auditTicket) error {
	f := wireFormat(k)
	want, err := f.AppendRounded(nil, out)
	if err != nil {
		return fmt.Errorf("%w: chunk %d: our reduction of its parts: %v", errAuditRefused, tk.chunk, err)
	}
	if bytes.Equal(want, tk.result) {
		return nil
	}
	got := make([]float32, len(out))
	if err := f.Decode(got, tk.result); err != nil {
		return fmt.Errorf("%w: chunk %d: %v", errAuditFailed, tk.chunk, err)
	}
	var d, w float64
	for i := range got {
		e := float64(got[i]) - float64(out[i])
		d += e * e
		w += float64(out[i]) * float64(out[i])
	}
	if math.Sqrt(d) <= auditTolerance*math.Sqrt(w)+1e-30 {
		return nil
	}
	return fmt.Errorf("%w: chunk %d: the result it sent is %.3g from the reduction of its own parts (norm %.3g)",
		errAuditFailed, tk.chunk, math.Sqrt(d), math.Sqrt(w))
}

// readPart reads one chunk frame of len(out) values in codec k, returns its
// encoded values and decodes them into out.
func readPart(s network.Stream, k codec.Kind, shard, index int, out []float32) ([]byte, error) {
	if err := readChunkHead(s, k, shard, index, len(out)); err != nil {
		return nil, err
	}
	enc, err := wire.ReadPayload(s, nil, wireFormat(k).Len(len(out)))
	if err != nil {
		return nil, err
	}
	if err := wireFormat(k).Decode(out, enc); err != nil {
		return nil, fmt.Errorf("%w: part of chunk %d: %v", errAuditRefused, index, err)
	}
	return enc, nil
}

// encoded returns the encoded values of a chunk readChunk just read: in fp32
// the bytes of vals it read straight into them, otherwise its payload buffer.
func encoded(k codec.Kind, vals []float32, payload []byte) []byte {
	if view, ok := codec.FP32View(vals); ok && k == codec.FP32 {
		return view
	}
	return payload
}
