package dht

import (
	"testing"
	"time"
)

func TestTableMergesBySeq(t *testing.T) {
	_, id := newKey(t)
	now := time.Now()
	tab := newTable(10 * time.Second)
	rec := goodRecord(id, now)
	rec.Run, rec.Stage, rec.Seq = "r1", 1, 10
	tab.observeRecord(rec, now)
	if hs := tab.holders(1, now); len(hs) != 1 || hs[0].Throughput != rec.Throughput {
		t.Fatalf("after record: %+v", hs)
	}
	// Newer gossip moves the peer to stage 2 with new load.
	tab.observeLoad(id, Load{Stage: 2, Role: RoleServer, Throughput: 5, Queue: 1, Seq: 11}, now)
	if len(tab.holders(1, now)) != 0 || len(tab.holders(2, now)) != 1 {
		t.Fatalf("gossip with a newer seq did not move the peer: %v", tab.all(now))
	}
	// An older record (a stale DHT copy) does not move it back.
	old := rec
	old.Seq = 9
	tab.observeRecord(old, now)
	// A record with seq 10 < 11 keeps the stage from gossip.
	tab.observeRecord(rec, now)
	if hs := tab.holders(2, now); len(hs) != 1 || hs[0].Throughput != 5 {
		t.Fatalf("stale record overrode newer gossip: %v", tab.all(now))
	}
	// Replayed gossip (same seq) changes nothing.
	tab.observeLoad(id, Load{Stage: 0, Role: RoleServer, Seq: 11}, now)
	if len(tab.holders(0, now)) != 0 {
		t.Fatal("replayed gossip accepted")
	}
}

func TestTableExpiry(t *testing.T) {
	_, id := newKey(t)
	now := time.Now()
	tab := newTable(2 * time.Second)
	tab.observeLoad(id, Load{Stage: 0, Role: RoleServer, Seq: 1}, now)
	if len(tab.holders(0, now.Add(1900*time.Millisecond))) != 1 {
		t.Fatal("dropped before the TTL")
	}
	if len(tab.holders(0, now.Add(2*time.Second))) != 0 {
		t.Fatal("still listed at the TTL")
	}
	tab.prune(now.Add(3 * time.Second))
	if len(tab.m) != 0 {
		t.Fatal("expired entry not pruned")
	}
}

func TestTableMarkDownAndLeave(t *testing.T) {
	_, id := newKey(t)
	now := time.Now()
	tab := newTable(time.Minute)
	tab.observeLoad(id, Load{Stage: 0, Role: RoleServer, Seq: 1}, now)
	tab.markDown(id, now, time.Second)
	if len(tab.holders(0, now)) != 0 || len(tab.recovered(0, now)) != 0 {
		t.Fatal("marked-down peer listed, or listed as recovered before it spoke again")
	}
	// Fresh gossip during the backoff does not bring it back early...
	tab.observeLoad(id, Load{Stage: 0, Role: RoleServer, Seq: 2}, now.Add(500*time.Millisecond))
	if len(tab.holders(0, now.Add(500*time.Millisecond))) != 0 {
		t.Fatal("back before its backoff")
	}
	// ...though it is listed as recovered (a trainer's prepare asks it).
	if r := tab.recovered(0, now.Add(500*time.Millisecond)); len(r) != 1 || r[0].Peer != id {
		t.Fatalf("recovered %v after it spoke again", r)
	}
	// ...but it returns after it.
	if len(tab.holders(0, now.Add(time.Second))) != 1 {
		t.Fatal("not back after its backoff")
	}
	// A leave message hides it until it speaks with a newer seq (a restart).
	tab.observeLoad(id, Load{Stage: 0, Role: RoleServer, Seq: 3, Leaving: true}, now.Add(2*time.Second))
	if len(tab.holders(0, now.Add(2*time.Second))) != 0 {
		t.Fatal("listed after leaving")
	}
	tab.observeLoad(id, Load{Stage: 0, Role: RoleServer, Seq: 4}, now.Add(3*time.Second))
	if len(tab.holders(0, now.Add(3*time.Second))) != 1 {
		t.Fatal("not back after restarting")
	}
	if h, ok := tab.fresh(id, now); ok && h.Stage != -1 {
		t.Fatal("gossip-only entry reported as having a fresh record")
	}
}
