package pipeline

import (
	"context"
	"testing"
	"time"

	"swarmnode/wire"
)

// TestCommitProtocolRefusesBadRequests: garbage, an unknown message type, a
// commit that does not name the holder and an oversized frame get an error
// or a reset, the holder does not step, and it goes on serving.
func TestCommitProtocolRefusesBadRequests(t *testing.T) {
	cfg := exactConfig()
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	srv := sw.servers[1][0]
	to := Holder{ID: srv.host.ID(), Addrs: srv.host.Addrs()}
	c := &caller{host: sw.trainer}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var r stepReply
	for _, bad := range []struct {
		typ byte
		msg any
	}{
		{msgCommit, "not an object"},
		{9, map[string]int{"x": 1}},
		{msgCommit, commitMsg{Round: 1, Members: []string{sw.trainer.ID().String()}}},
		{msgCommit, commitMsg{Round: 1, Members: []string{"garbage"}}},
		{msgCommit, commitMsg{Round: 1, Members: []string{srv.host.ID().String()}, Undo: make([]uint64, maxUndo+1)}},
		{msgCommit, commitMsg{Round: 1, Members: []string{srv.host.ID().String()}, Steps: -1}},
	} {
		if err := ask(ctx, c, cfg.Run, to, bad.typ, bad.msg, &r); err == nil {
			t.Errorf("request %T of type %d was answered %+v", bad.msg, bad.typ, r)
		}
	}
	// A frame over the cap is refused before it is read.
	str, err := sw.trainer.NewStream(ctx, srv.host.ID(), CommitProtocol(cfg.Run))
	if err != nil {
		t.Fatal(err)
	}
	_ = wire.WriteTyped(str, msgCommit, make([]byte, maxCommitFrame+1))
	_ = str.Close()
	if v := srv.Worker().Stage().Version(); v != 0 {
		t.Fatalf("bad requests made the holder step to version %d", v)
	}
	tr := sw.newTrainer(t, loadCorpus(t, cfg), TrainerOptions{})
	runTrainer(t, tr, 60*time.Second)
	checkStepped(t, cfg, tr.Stats())
}
