package swarm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/averaging"
)

// A node keeps the peers its averaging evicted (CenteredClip's persistent
// outliers, senders of non-finite values) in a ban list in its data dir, so
// that a restart does not let a liar back in: banned peers are left out of
// routing and holder lists, and every averager of the node refuses them.

// Ban is one banned peer.
type Ban struct {
	// Reason is the eviction's reason; Key the averaging key that evicted it.
	Reason string `json:"reason"`
	Key    string `json:"key"`
	// Time is when it was banned.
	Time time.Time `json:"time"`
}

// maxBans bounds the ban list: past it the oldest ban goes.
const maxBans = 4096

// banList is the node's persisted ban list.
type banList struct {
	path string
	log  *slog.Logger

	mu sync.Mutex
	m  map[peer.ID]Ban
}

// loadBans reads the ban list at path; a missing file is an empty list, and
// an unreadable one is logged and replaced.
func loadBans(path string, log *slog.Logger) *banList {
	b := &banList{path: path, log: log, m: map[peer.ID]Ban{}}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return b
	}
	var stored map[string]Ban
	if err == nil {
		err = json.Unmarshal(raw, &stored)
	}
	if err != nil {
		log.Warn("ban list unreadable: starting with none", "file", path, "err", err.Error())
		return b
	}
	for s, ban := range stored {
		if p, err := peer.Decode(s); err == nil {
			b.m[p] = ban
		}
	}
	return b
}

// add bans p and writes the list.
func (b *banList) add(p peer.ID, key, why string) {
	b.mu.Lock()
	if _, ok := b.m[p]; ok {
		b.mu.Unlock()
		return
	}
	if len(b.m) >= maxBans {
		var oldest peer.ID
		for q, ban := range b.m {
			if oldest == "" || ban.Time.Before(b.m[oldest].Time) {
				oldest = q
			}
		}
		delete(b.m, oldest)
	}
	b.m[p] = Ban{Reason: why, Key: key, Time: time.Now().UTC()}
	err := b.saveLocked()
	b.mu.Unlock()
	if err != nil {
		b.log.Warn("ban list not saved", "file", b.path, "err", err.Error())
	}
}

// saveLocked writes the list crash-safely: a temporary file, then a rename.
func (b *banList) saveLocked() error {
	out := make(map[string]Ban, len(b.m))
	for p, ban := range b.m {
		out[p.String()] = ban
	}
	raw, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return err
	}
	tmp := b.path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, b.path)
}

// has reports whether p is banned.
func (b *banList) has(p peer.ID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.m[p]
	return ok
}

// list is a copy of the bans.
func (b *banList) list() map[peer.ID]Ban {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.m)
}

// guard makes avg refuse the banned peers and ban those it evicts.
func (b *banList) guard(avg *averaging.Averager) {
	for p, ban := range b.list() {
		avg.Evict(p, fmt.Sprintf("banned at %s: %s", ban.Time.Format(time.RFC3339), ban.Reason))
	}
}

// bansFile is where a node of run keeps its ban list.
func bansFile(dataDir, run string) string { return filepath.Join(dataDir, "bans-"+run+".json") }

// banDisagreeing bans the holders whose copy of a fetched state the majority
// of holders did not vouch for.
func (r *roles) banDisagreeing(st averaging.State) {
	for _, p := range st.Disagreed {
		r.log.Warn("a holder served a state its peers do not vouch for: banned", "peer", p.ShortString())
		r.n.bans.add(p, "state", "served a state the majority of the stage's holders did not vouch for")
	}
}
