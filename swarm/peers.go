package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"swarmnode/checkpoint"
)

// A node remembers the peers of its run it last knew, in its data dir, and
// dials them at start beside the bootstrap peers: a bootstrap peer that died
// for good does not keep a restarted node out of the swarm. What it keeps:
// the holders it lists (addresses from their signed records) and the peers it
// is connected to, at most maxRemembered, written every rememberEvery and at
// Close.

// maxRemembered bounds the peers a node keeps; rememberEvery is how often it
// writes them.
const (
	maxRemembered = 32
	rememberEvery = 30 * time.Second
)

// rememberedPeer is one line of the peers file.
type rememberedPeer struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

// peersFile is where a node of run keeps the peers it knew.
func peersFile(dataDir, run string) string { return filepath.Join(dataDir, "peers-"+run+".json") }

// loadPeers reads the peers a node of run knew when it last ran, without
// self; a missing or unreadable file is no peers.
func loadPeers(path string, self peer.ID) []peer.AddrInfo {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var list []rememberedPeer
	if json.Unmarshal(b, &list) != nil {
		return nil
	}
	var out []peer.AddrInfo
	for _, rp := range list[:min(len(list), maxRemembered)] {
		id, err := peer.Decode(rp.ID)
		if err != nil || id == self {
			continue
		}
		ai := peer.AddrInfo{ID: id}
		for _, s := range rp.Addrs {
			if a, err := ma.NewMultiaddr(s); err == nil {
				ai.Addrs = append(ai.Addrs, a)
			}
		}
		if len(ai.Addrs) > 0 {
			out = append(out, ai)
		}
	}
	return out
}

// idOf is the peer id of key; "" if it has none.
func idOf(key crypto.PrivKey) peer.ID {
	id, _ := peer.IDFromPrivateKey(key)
	return id
}

// withRemembered adds the remembered peers not already among boot.
func withRemembered(boot, remembered []peer.AddrInfo) []peer.AddrInfo {
	out := slices.Clone(boot)
	for _, ai := range remembered {
		if !slices.ContainsFunc(out, func(b peer.AddrInfo) bool { return b.ID == ai.ID }) {
			out = append(out, ai)
		}
	}
	return out
}

// knownPeers lists the holders this node lists, then the peers it is
// connected to, with their addresses, at most maxRemembered.
func (n *Node) knownPeers() []rememberedPeer {
	var out []rememberedPeer
	seen := map[peer.ID]bool{n.host.ID(): true}
	add := func(id peer.ID, addrs []ma.Multiaddr) {
		if seen[id] || len(addrs) == 0 || len(out) >= maxRemembered || n.bans.has(id) {
			return
		}
		seen[id] = true
		rp := rememberedPeer{ID: id.String()}
		for _, a := range addrs {
			rp.Addrs = append(rp.Addrs, a.String())
		}
		out = append(out, rp)
	}
	for _, hs := range n.dht.AllHolders() {
		for _, h := range hs {
			add(h.Peer, h.Addrs)
		}
	}
	for _, id := range n.host.Network().Peers() {
		add(id, n.host.Peerstore().Addrs(id))
	}
	return out
}

// savePeers writes the peers this node knows to its data dir; it keeps the
// previous file when it knows none (a node cut off keeps its memory).
func (n *Node) savePeers() error {
	list := n.knownPeers()
	if len(list) == 0 {
		return nil
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	return checkpoint.WriteFile(peersFile(n.opts.DataDir, n.opts.Run), b)
}

// rememberPeers writes the known peers every rememberEvery until ctx ends.
func (n *Node) rememberPeers(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(rememberEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := n.savePeers(); err != nil && !errors.Is(err, context.Canceled) {
				n.log.Debug("remembering peers", "err", err)
			}
		}
	}
}
