package swarm

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/checkpoint"
	"swarmnode/config"
	"swarmnode/model"
	"swarmnode/sample"
	"swarmnode/stages"
	"swarmnode/wire"
)

// inferStages serves a 3-stage model's generation sessions, one service per
// stage, and returns them with the whole model exported and loaded.
func inferStages(t testing.TB) ([]*inferService, *sample.Model, config.Config) {
	t.Helper()
	cfg := config.Default()
	cfg.Model = model.Config{Vocab: 30, DModel: 16, NHead: 2, NLayer: 3, SeqLen: 8}
	cfg.Stages = []int{1, 1, 1}
	var svcs []*inferService
	var parts []checkpoint.Part
	for k := range cfg.Stages {
		st, err := stages.New(cfg.Model, cfg.Stages, k, 5)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		svc, err := newInferService(cfg, k, st, nil)
		if err != nil {
			t.Fatal(err)
		}
		svcs = append(svcs, svc)
		parts = append(parts, checkpoint.Part{Views: st.Views(), Params: st.Params()})
	}
	dir := t.TempDir()
	if err := checkpoint.Export(dir, cfg.Model, parts, nil); err != nil {
		t.Fatal(err)
	}
	whole, err := sample.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return svcs, whole, cfg
}

// TestInferSessionsChainLikeTheModel: requests through the three stages'
// services, a prompt at once and then a token at a time, give the whole
// model's logits bit for bit.
func TestInferSessionsChainLikeTheModel(t *testing.T) {
	svcs, whole, _ := inferStages(t)
	client := peer.ID("client")
	through := func(toks []int32, pos int) []float32 {
		t.Helper()
		var x []float32
		for k, s := range svcs {
			req := inferRequest{Session: "s1", Stage: k, Pos: pos, X: x}
			if k == 0 {
				req.X, req.Tokens = nil, toks
			}
			r, err := s.handle(client, req)
			if err != nil {
				t.Fatalf("stage %d: %v", k, err)
			}
			x = r.X
			if k == len(svcs)-1 {
				return r.Logits
			}
		}
		return nil
	}
	c := whole.NewCache()
	toks := []int32{3, 1, 4, 1, 5, 9}
	var want []float32
	for _, tok := range toks[:4] {
		want, _ = whole.Next(c, tok)
	}
	if got := through(toks[:4], 0); !slices.Equal(got, want) {
		t.Fatal("the prompt's logits through the stages differ from the model's")
	}
	for i, tok := range toks[4:] {
		want, _ = whole.Next(c, tok)
		if got := through([]int32{tok}, 4+i); !slices.Equal(got, want) {
			t.Fatalf("position %d: logits through the stages differ from the model's", 4+i)
		}
	}
}

// TestInferRefusesBadRequests: a wrong stage, a wrong shape, NaN, a token
// outside the vocabulary, a position past the context or not where the
// cache ends, another peer's session: each refused with its reason, and the
// session goes on afterwards.
func TestInferRefusesBadRequests(t *testing.T) {
	svcs, _, cfg := inferStages(t)
	D := cfg.Model.DModel
	a, b := peer.ID("a"), peer.ID("b")
	if _, err := svcs[0].handle(a, inferRequest{Session: "s", Stage: 0, Tokens: []int32{1, 2}}); err != nil {
		t.Fatal(err)
	}
	nan := make([]float32, D)
	nan[3] = float32(math.NaN())
	for _, c := range []struct {
		name string
		svc  int
		from peer.ID
		req  inferRequest
		want error
	}{
		{"wrong stage", 1, a, inferRequest{Session: "s", Stage: 0, Pos: 0, X: make([]float32, D)}, wire.ErrWrongStage},
		{"ragged stream", 1, a, inferRequest{Session: "s", Stage: 1, X: make([]float32, D+1)}, wire.ErrShape},
		{"tokens to a middle stage", 1, a, inferRequest{Session: "s", Stage: 1, Tokens: []int32{1}}, wire.ErrShape},
		{"NaN", 1, a, inferRequest{Session: "s", Stage: 1, X: nan}, wire.ErrNonFinite},
		{"token outside the vocabulary", 0, a, inferRequest{Session: "s2", Stage: 0, Tokens: []int32{30}}, wire.ErrRange},
		{"past the context", 0, a, inferRequest{Session: "s", Stage: 0, Pos: 2, Tokens: make([]int32, 7)}, wire.ErrShape},
		{"not where the cache ends", 0, a, inferRequest{Session: "s", Stage: 0, Pos: 1, Tokens: []int32{1}}, nil},
		{"another peer's session", 0, b, inferRequest{Session: "s", Stage: 0, Pos: 2, Tokens: []int32{1}}, nil},
		{"no session id", 0, a, inferRequest{Stage: 0, Tokens: []int32{1}}, nil},
	} {
		_, err := svcs[c.svc].handle(c.from, c.req)
		if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := svcs[0].handle(a, inferRequest{Session: "s", Stage: 0, Pos: 2, Tokens: []int32{7}}); err != nil {
		t.Fatalf("the session after bad requests: %v", err)
	}
}

// TestInferSessionLimit: a holder keeps at most maxInferSessions; past them
// a new one is refused as busy until the idle longest has been idle for
// inferIdle, then it takes that one's place.
func TestInferSessionLimit(t *testing.T) {
	svcs, _, _ := inferStages(t)
	s := svcs[0]
	now := time.Unix(1000, 0)
	s.now = func() time.Time { return now }
	open := func(id string) error {
		_, err := s.handle(peer.ID("p"), inferRequest{Session: id, Stage: 0, Tokens: []int32{1}})
		return err
	}
	for i := range maxInferSessions {
		if err := open(string(rune('a' + i))); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Second)
	}
	if err := open("late"); !errors.Is(err, wire.ErrBusy) {
		t.Fatalf("session %d: %v, want busy", maxInferSessions+1, err)
	}
	now = now.Add(inferIdle)
	if err := open("late"); err != nil {
		t.Fatalf("after the oldest idled: %v", err)
	}
	if _, err := s.handle(peer.ID("p"), inferRequest{Session: "a", Stage: 0, Pos: 1, Tokens: []int32{1}}); err == nil {
		t.Fatal("the evicted session went on")
	}
}

// FuzzInferRequest: any request a peer sends is answered or refused by the
// first and a middle stage, never a panic.
func FuzzInferRequest(f *testing.F) {
	f.Add([]byte(`{"session":"s","stage":0,"pos":0,"tokens":[1,2,3]}`))
	f.Add([]byte(`{"session":"s","stage":1,"pos":0,"x":[0.5,1e30,-2]}`))
	f.Add([]byte(`{"session":"s","stage":0,"pos":-1,"tokens":[-5]}`))
	f.Add([]byte(`{"session":"","stage":1,"pos":7,"x":[]}`))
	svcs, _, _ := inferStages(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req inferRequest
		if json.Unmarshal(raw, &req) != nil {
			return
		}
		for _, s := range svcs[:2] {
			_, _ = s.handle(peer.ID("fuzz"), req)
		}
	})
}
