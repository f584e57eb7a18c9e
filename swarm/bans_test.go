package swarm

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/internal/wait"
)

func randomID(t *testing.T) peer.ID {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return id
}

// TestBanListPersists: a ban survives a restart; an unreadable file is
// replaced rather than fatal.
func TestBanListPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bans-test.json")
	log := slog.New(slog.DiscardHandler)
	p, q := randomID(t), randomID(t)
	b := loadBans(path, log)
	b.add(p, "stage-1-grads", "its part was an outlier")
	again := loadBans(path, log)
	if !again.has(p) || again.has(q) || again.list()[p].Key != "stage-1-grads" {
		t.Fatalf("restored bans %v", again.list())
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := loadBans(path, log); len(got.list()) != 0 {
		t.Fatalf("a corrupt file gave bans %v", got.list())
	}
}

// TestBannedHolderNotRouted: a node started with a ban list leaves the
// banned holder out of routing and of the holders its averaging meets, while
// its DHT still lists it.
func TestBannedHolderNotRouted(t *testing.T) {
	a := startTestNode(t, testOptions(t, 1))
	ob := testOptions(t, 1)
	ob.Bootstrap = []string{a.Addrs()[0].String()}
	loadBans(bansFile(ob.DataDir, ob.Run), slog.New(slog.DiscardHandler)).add(a.ID(), "stage-1", "test")
	b := startTestNode(t, ob)
	wait.For(t, 5*time.Second, func() error {
		for _, h := range b.DHT().Holders(1) {
			if h.Peer == a.ID() {
				return nil
			}
		}
		return os.ErrNotExist
	})
	for _, h := range (dhtRouter{b}).Holders(1) {
		if h.ID == a.ID() {
			t.Error("the banned holder is routed to")
		}
	}
	if hs := b.otherHolders(1); len(hs) != 0 {
		t.Errorf("averaging would meet %v", hs)
	}
}
