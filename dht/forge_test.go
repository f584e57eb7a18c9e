package dht

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"swarmnode/internal/wait"
)

// rawRPC sends one kad-dht message to p on the run's protocol, the way a
// hostile peer would, skipping all local validation, and returns the reply.
func rawRPC(ctx context.Context, from host.Host, p peer.ID, run string, m *pb.Message) (*pb.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := from.NewStream(ctx, p, ProtocolPrefix(run)+"/kad/1.0.0")
	if err != nil {
		return nil, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := msgio.NewVarintWriter(s).WriteMsg(b); err != nil {
		return nil, err
	}
	reply, err := msgio.NewVarintReaderSize(s, network.MessageSizeMax).ReadMsg()
	if err != nil {
		return nil, err
	}
	var out pb.Message
	if err := proto.Unmarshal(reply, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func rawPut(ctx context.Context, from host.Host, to peer.ID, key string, val []byte) error {
	m := pb.NewMessage(pb.Message_PUT_VALUE, []byte(key), 0)
	m.Record = record.MakePutRecord(key, val)
	_, err := rawRPC(ctx, from, to, "test", m)
	return err
}

func rawGet(ctx context.Context, from host.Host, to peer.ID, key string) ([]byte, error) {
	reply, err := rawRPC(ctx, from, to, "test", pb.NewMessage(pb.Message_GET_VALUE, []byte(key), 0))
	if err != nil {
		return nil, err
	}
	if reply.Record == nil {
		return nil, nil
	}
	return reply.Record.Value, nil
}

// TestForgedRecordsRejectedByNetwork puts forged, tampered and expired records
// straight onto a remote DHT server, past the sender's own validator: the
// server must refuse to store each, and the DHT must keep serving the real one.
func TestForgedRecordsRejectedByNetwork(t *testing.T) {
	ctx := t.Context()
	nodes := startSwarm(t, ctx, 3, testOpts(1), func(int) int { return 0 })
	attacker, target, victim := nodes[1], nodes[0], nodes[2]
	wait.For(t, 3*time.Second, func() error { return sees(target, nodes) })

	attackerKey := attacker.h.Peerstore().PrivKey(attacker.h.ID())
	victimKey := victim.h.Peerstore().PrivKey(victim.h.ID())
	now := time.Now()
	victimRec := goodRecord(victim.h.ID(), now)
	victimRec.Run = "test"
	victimRec.Seq = uint64(now.Add(time.Hour).UnixNano()) // would win any Select
	victimRec.Stage = 0

	forged := sealRaw(t, victimRec, attackerKey) // claims to be victim, signed by attacker
	realSigned := sealRaw(t, victimRec, victimKey)
	tampered := append([]byte(nil), realSigned...)
	tampered[len(tampered)/2] ^= 0x01
	expired := victimRec
	expired.Expires = now.Add(-MaxClockSkew - time.Second).UnixMilli()
	expiredSigned := sealRaw(t, expired, victimKey)
	attackerRec := goodRecord(attacker.h.ID(), now)
	attackerRec.Run = "test"
	attackerRec.Seq = victimRec.Seq
	ownUnderVictimKey := sealRaw(t, attackerRec, attackerKey)

	key := PeerKey("test", victim.h.ID())
	for name, val := range map[string][]byte{
		"forged signer": forged, "tampered": tampered, "expired": expiredSigned,
		"attacker's own record under victim's key": ownUnderVictimKey, "garbage": []byte("junk"),
	} {
		if err := rawPut(ctx, attacker.h, target.h.ID(), key, val); err == nil {
			t.Errorf("%s: target accepted the PUT", name)
		}
		got, err := rawGet(ctx, attacker.h, target.h.ID(), key)
		if err != nil {
			t.Fatalf("%s: GET after PUT: %v", name, err)
		}
		if got != nil {
			if rec, err := Open(got, time.Now()); err != nil || rec.Seq == victimRec.Seq {
				t.Errorf("%s: target serves the forged value (%v)", name, err)
			}
		}
	}
	// Control: the same raw path stores a genuine record, so the rejections
	// above are the validator's doing, not a broken test client.
	if err := rawPut(ctx, victim.h, target.h.ID(), key, realSigned); err != nil {
		t.Fatalf("genuine record refused: %v", err)
	}
	got, err := rawGet(ctx, attacker.h, target.h.ID(), key)
	if err != nil || got == nil {
		t.Fatalf("genuine record not served: %v", err)
	}
	if rec, err := Open(got, time.Now()); err != nil || rec.Seq != victimRec.Seq {
		t.Fatalf("served record %+v, %v", rec, err)
	}
	// The attacker's DHT client refuses to even send a forged record.
	if err := attacker.s.Kad().PutValue(ctx, key, forged); err == nil {
		t.Error("kad PutValue sent a forged record")
	}
	// And a lookup through the DHT yields only verified records.
	rec, err := target.s.FetchRecord(ctx, victim.h.ID())
	if err != nil || rec.Peer != victim.h.ID() {
		t.Fatalf("FetchRecord = %+v, %v", rec, err)
	}
}

// rejections counts, by the peer it came from, the gossip messages a node's
// GossipSub rejected: the event that a malformed message arrived and was
// refused, where the mere absence of its effect could also mean it never came.
type rejections struct {
	mu sync.Mutex
	n  map[peer.ID]int
}

// Trace implements pubsub.EventTracer.
func (r *rejections) Trace(evt *pubsubpb.TraceEvent) {
	if evt.GetType() != pubsubpb.TraceEvent_REJECT_MESSAGE {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[peer.ID(evt.GetRejectMessage().GetReceivedFrom())]++
}

func (r *rejections) from(p peer.ID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[p]
}

// TestForgedGossipIgnored: a peer without our validator publishes load
// messages straight onto the topic. Its well-formed message, the positive
// control over the same path, lists the attacker itself (GossipSub's strict
// signing binds each message to its real author), nobody else. Then its
// malformed messages are rejected, every one, and list nobody; and they cost
// it its score: below GraylistThreshold, its next well-formed message is
// dropped too.
func TestForgedGossipIgnored(t *testing.T) {
	ctx := t.Context()
	rej := &rejections{n: make(map[peer.ID]int)}
	th := newTestHost(t)
	var scoreMu sync.Mutex
	scores := map[peer.ID]float64{}
	inspect := func(s map[peer.ID]float64) {
		scoreMu.Lock()
		defer scoreMu.Unlock()
		maps.Copy(scores, s)
	}
	tps, err := pubsub.NewGossipSub(ctx, th, append(pubsubOptions("test"), pubsub.WithEventTracer(rej), pubsub.WithPeerScoreInspect(inspect, 100*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	target := startService(t, ctx, th, tps, testOpts(3), Self{Stage: 0, Role: RoleServer}, nil)
	other := startNode(t, ctx, testOpts(3), Self{Stage: 0, Role: RoleServer, Throughput: 100}, []peer.AddrInfo{addrInfo(th)})
	wait.For(t, 3*time.Second, func() error { return sees(target, []*tnode{target, other}) })
	ah, topic := joinAsAttacker(t, ctx, target)

	big := uint64(time.Now().Add(time.Hour).UnixNano())
	good := fmt.Sprintf(`{"stage":1,"role":"server","throughput":7,"seq":%d}`, big)
	if err := topic.Publish(ctx, []byte(good)); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 2*time.Second, func() error {
		hs := target.s.Holders(1)
		if len(hs) != 1 || hs[0].Peer != ah.ID() || hs[0].Throughput != 7 {
			return fmt.Errorf("holders of stage 1: %+v", hs)
		}
		return nil
	})

	bad := []string{
		`junk`,
		fmt.Sprintf(`{"stage":-5,"role":"server","seq":%d}`, big+1),
		fmt.Sprintf(`{"stage":2,"role":"server","throughput":-1,"seq":%d}`, big+2),
		fmt.Sprintf(`{"stage":2,"role":"trainer","seq":%d}`, big+3),
	}
	for _, m := range bad {
		time.Sleep(MinLoadInterval) // not the rate limit's doing
		if err := topic.Publish(ctx, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	// Three rejections (−10 each, squared: −90) graylist the attacker, so its
	// fourth message is dropped before validation.
	wait.For(t, 3*time.Second, func() error {
		if n := rej.from(ah.ID()); n < 3 {
			return fmt.Errorf("target rejected %d of the %d malformed messages", n, len(bad))
		}
		return nil
	})
	wait.For(t, 3*time.Second, func() error {
		scoreMu.Lock()
		defer scoreMu.Unlock()
		if s := scores[ah.ID()]; s >= GraylistThreshold {
			return fmt.Errorf("the attacker's score %.1f, not below %d", s, GraylistThreshold)
		}
		return nil
	})
	if hs := target.s.Holders(2); len(hs) != 0 {
		t.Fatalf("malformed gossip made stage 2 holders: %+v", hs)
	}
	late := fmt.Sprintf(`{"stage":2,"role":"server","throughput":7,"seq":%d}`, big+10)
	if err := topic.Publish(ctx, []byte(late)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if hs := target.s.Holders(2); len(hs) != 0 {
		t.Fatalf("a graylisted peer's message was taken: holders of stage 2 %+v", hs)
	}
}

// joinAsAttacker starts a host with a bare GossipSub (none of our
// validation) on the run's topic, connected to n, and returns once n counts
// it as a peer of the topic, so what it publishes reaches n.
func joinAsAttacker(t *testing.T, ctx context.Context, n *tnode) (host.Host, *pubsub.Topic) {
	t.Helper()
	ah := newTestHost(t)
	t.Cleanup(func() { ah.Close() })
	aps, err := NewPubSub(ctx, ah, "test")
	if err != nil {
		t.Fatal(err)
	}
	topic, err := aps.Join(GossipTopic("test"))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Cancel)
	if err := ah.Connect(ctx, addrInfo(n.h)); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 3*time.Second, func() error {
		if slices.Contains(n.ps.ListPeers(GossipTopic("test")), ah.ID()) {
			return nil
		}
		return errors.New("attacker not yet a topic peer")
	})
	return ah, topic
}

// TestLoadRateLimit: an author's load messages faster than MinLoadInterval are
// ignored (not forwarded, not applied); a leave message always passes.
func TestLoadRateLimit(t *testing.T) {
	ctx := t.Context()
	n := startNode(t, ctx, testOpts(1), Self{Stage: 0, Role: RoleServer}, nil)
	_, author := newKey(t)
	msg := func(data string) *pubsub.Message {
		return &pubsub.Message{Message: &pubsubpb.Message{From: []byte(author), Data: []byte(data)}}
	}
	load := `{"stage":0,"role":"server","seq":5}`
	if r := n.s.validateLoadMsg(ctx, author, msg(load)); r != pubsub.ValidationAccept {
		t.Fatalf("first message: %v", r)
	}
	if r := n.s.validateLoadMsg(ctx, author, msg(load)); r != pubsub.ValidationIgnore {
		t.Fatalf("message right after: %v, want ignore", r)
	}
	if r := n.s.validateLoadMsg(ctx, author, msg(`{"stage":0,"role":"server","seq":6,"leaving":true}`)); r != pubsub.ValidationAccept {
		t.Fatalf("leave message: %v", r)
	}
	if r := n.s.validateLoadMsg(ctx, author, msg(`junk`)); r != pubsub.ValidationReject {
		t.Fatalf("junk: %v, want reject", r)
	}
	time.Sleep(MinLoadInterval)
	if r := n.s.validateLoadMsg(ctx, author, msg(load)); r != pubsub.ValidationAccept {
		t.Fatalf("message after the interval: %v", r)
	}
}
