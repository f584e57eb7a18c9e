package pipeline

import (
	"math"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/model"
	"swarmnode/stages"
	"swarmnode/wire"
)

// FuzzServerRequest feeds arbitrary bytes to a stage server's request parser, for
// a first and a middle stage, and a middle stage of a subspace model (which
// takes 3 coordinates per token and the token ids): no panic, and whatever it
// accepts is what the stage can compute on: shapes within the run's limits, ids
// in the vocabulary, finite activations.
func FuzzServerRequest(f *testing.F) {
	B, T, D, K := 2, 4, 8, 3
	f.Add(cat(floatsFrame(1, B, T, D, ramp(B*T*D)), intsFrame(wire.Targets, 1, B, T, tokens(B*T, 5))))
	f.Add(cat(intsFrame(wire.Tokens, 0, B, T, tokens(B*T, 7)), intsFrame(wire.Targets, 0, B, T, tokens(B*T, 5))))
	f.Add(cat(floatsFrame(1, 9, T, D, ramp(9*T*D)), intsFrame(wire.Targets, 1, 9, T, tokens(9*T, 5))))
	f.Add(cat(floatsFrame(1, B, T, K, ramp(B*T*K)), intsFrame(wire.Tokens, 1, B, T, tokens(B*T, 7)), intsFrame(wire.Targets, 1, B, T, tokens(B*T, 5))))
	f.Add(floatsFrame(1, B, T, D, ramp(B*T*D))[:60])
	mc := model.Config{Vocab: 64, DModel: D, NHead: 2, NLayer: 2, SeqLen: 16}
	sub := mc
	sub.Subspace = K
	var servers []*Server // a stage decides in what form it takes its input
	for _, c := range []struct {
		cfg model.Config
		k   int
	}{{mc, 0}, {mc, 1}, {sub, 1}} {
		st, err := stages.New(c.cfg, []int{1, 1}, c.k, 1)
		if err != nil {
			f.Fatal(err)
		}
		w := NewWorker(st, WorkerOptions{})
		servers = append(servers, &Server{k: c.k, n: 2, model: c.cfg, w: w, opts: ServerOptions{MaxBatch: 4}})
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, s := range servers {
			recv := sent(b)
			r, err := s.readRequest(wire.NewConn(recv, 1<<16, nil), time.Time{})
			_ = recv.Close() // ends the sender of what was not read
			if err != nil {
				continue
			}
			k, mc := s.k, s.model
			if r.b < 1 || r.b > 4 || r.t < 1 || r.t > mc.SeqLen || len(r.targets) != r.b*r.t {
				t.Fatalf("stage %d accepted shape %dx%d with %d targets", k, r.b, r.t, len(r.targets))
			}
			for _, v := range append(append([]int32(nil), r.tokens...), r.targets...) {
				if v < 0 || int(v) >= mc.Vocab {
					t.Fatalf("accepted id %d", v)
				}
			}
			wantTokens := k == 0 || mc.Subspace > 0
			if wantTokens && len(r.tokens) != r.b*r.t || k == 1 && len(r.x.F) != r.b*r.t*mc.Width() {
				t.Fatalf("stage %d (subspace %d) accepted %d tokens, %d activations for %dx%d", k, mc.Subspace, len(r.tokens), len(r.x.F), r.b, r.t)
			}
			for _, v := range r.x.F {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					t.Fatalf("accepted %g", v)
				}
			}
		}
	})
}

// sent is the receiving end of a stream on which b was sent and closed.
func sent(b []byte) net.Conn {
	recv, send := net.Pipe()
	go func() {
		_, _ = send.Write(b)
		_ = send.Close()
	}()
	return recv
}

// FuzzCommitRequest feeds arbitrary bytes to the commit protocol's parser: no
// panic, and what it accepts names this holder among at most maxCommitMembers
// members and asks to take back at most maxUndo copies.
func FuzzCommitRequest(f *testing.F) {
	self, err := peer.Decode("12D3KooWBUttzGRLQCoNPUWYYKKsXhyjzYr8Yadoq5JLAT2GBKG5")
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"round":7,"members":["12D3KooWBUttzGRLQCoNPUWYYKKsXhyjzYr8Yadoq5JLAT2GBKG5"],"undo":[1,2],"next":3}`))
	f.Add([]byte(`{"round":7,"members":["x"],"undo":null}`))
	f.Add([]byte(`{"members":[]}`))
	f.Add([]byte(`{"round":7,"members":["12D3KooWBUttzGRLQCoNPUWYYKKsXhyjzYr8Yadoq5JLAT2GBKG5"],"weights":[3]}`))
	f.Add([]byte(`{"round":7,"members":["12D3KooWBUttzGRLQCoNPUWYYKKsXhyjzYr8Yadoq5JLAT2GBKG5"],"weights":[3,4]}`))
	f.Add([]byte(`{"round":7,"members":["12D3KooWBUttzGRLQCoNPUWYYKKsXhyjzYr8Yadoq5JLAT2GBKG5"],"weights":[-1]}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, undo, _, err := parseCommit(b, self)
		if err != nil {
			return
		}
		if !slices.Contains(r.Members, self) || len(r.Members) > maxCommitMembers || len(undo) > maxUndo {
			t.Fatalf("accepted %q as %+v, undo %d", b, r, len(undo))
		}
		if r.Weights != nil && len(r.Weights) != len(r.Members) {
			t.Fatalf("accepted %d weights for %d members: %q", len(r.Weights), len(r.Members), b)
		}
		for _, w := range r.Weights {
			if w < 0 || w > maxUndo {
				t.Fatalf("accepted weight %v: %q", w, b)
			}
		}
	})
}
