package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/dht"
	"swarmnode/stages"
)

// dhtNode starts a DHT service for h serving stage k (-1: a trainer).
func dhtNode(t *testing.T, ctx context.Context, h host.Host, k int, boot []peer.AddrInfo) *dht.Service {
	t.Helper()
	ps, err := dht.NewPubSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	role := dht.RoleServer
	if k < 0 {
		role = dht.RoleTrainer
	}
	svc, err := dht.New(ctx, h, ps, dht.Self{Stage: k, Role: role}, dht.Options{
		Run: "pipeline-test", NumStages: 3, Bootstrap: boot, RecordTTL: 3 * time.Second,
		GossipEvery: 150 * time.Millisecond, RefreshEvery: 300 * time.Millisecond,
		DownBackoff: 500 * time.Millisecond, OpTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

// TestDHTRouting trains through holders found in the run's DHT, with their load
// gossiped as swarm/ will gossip it, and survives a holder's death.
func TestDHTRouting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 40, 40
	corpus := loadCorpus(t, cfg)

	var servers []*Server
	var svcs []*dht.Service
	var boot []peer.AddrInfo
	for k := range cfg.Stages {
		st, err := stages.New(cfg.Model, cfg.Stages, k, cfg.Train.Seed)
		if err != nil {
			t.Fatal(err)
		}
		w := NewWorker(st, WorkerOptionsFrom(cfg, cfg.Train.Optim))
		for range 2 {
			h := newHost(t)
			svc := dhtNode(t, ctx, h, k, boot)
			if boot == nil {
				boot = []peer.AddrInfo{{ID: h.ID(), Addrs: h.Addrs()}}
			}
			srv, err := NewServer(h, w, DHTRouter(svc), ServerOptionsFrom(cfg, nil))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			go svc.FollowLoad(ctx, 100*time.Millisecond, srv.Load) // what swarm does
			servers, svcs = append(servers, srv), append(svcs, svc)
		}
	}
	th := newHost(t)
	tsvc := dhtNode(t, ctx, th, -1, boot)
	deadline := time.Now().Add(20 * time.Second)
	for k := range cfg.Stages {
		for len(tsvc.Holders(k)) < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("trainer sees %d holders of stage %d", len(tsvc.Holders(k)), k)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	o := TrainerOptionsFrom(cfg, 0, nil)
	o.OnStep = func(r StepReport) {
		if r.Step == 15 {
			go func() { svcs[2].Close(); servers[2].host.Close() }() // a stage 1 holder dies
		}
	}
	tr, err := NewTrainer(th, DHTRouter(tsvc), corpus, o)
	if err != nil {
		t.Fatal(err)
	}
	sum := runTrainer(t, tr, 60*time.Second)
	st := tr.Stats()
	if sum.Step != cfg.Train.Steps || st.Lost != 0 || st.Completed != int64(cfg.Train.Steps*cfg.Train.Accumulation()) {
		t.Fatalf("summary %+v, stats %+v", sum, st)
	}
	// Gossip runs on its own period: give it a few rounds.
	gossiped := false
	for wait := time.Now().Add(5 * time.Second); !gossiped && time.Now().Before(wait); time.Sleep(50 * time.Millisecond) {
		for _, h := range tsvc.Holders(1) {
			gossiped = gossiped || h.Throughput > 0
		}
	}
	if !gossiped {
		t.Error("no stage 1 throughput reached the trainer through gossip")
	}
	t.Logf("val loss %.4f, trainer retries %d", sum.ValLoss, st.Retried)
}
