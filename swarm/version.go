package swarm

import (
	"context"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
)

// WireVersion is the version of everything swarmnode peers say to each other:
// the stage, commit, averaging and DHT protocols and their frames. Peers of
// other wire versions cannot train together; each announces its own (libp2p
// identify's agent version, "swarmnode/<release> wire/<n>") and a node drops
// a swarmnode peer of another, saying which both speak, rather than
// mis-decode its frames.
const WireVersion = 1

// Version is swarmnode's release number.
const Version = "0.14.0"

// Release is the binary's release: Version, with the VCS revision it was
// built from when the build recorded one ("+dirty" for local changes).
func Release() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Version
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return Version
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "+dirty"
	}
	return Version + "-" + rev
}

// agentVersion is what a node announces of itself.
func agentVersion() string {
	return fmt.Sprintf("swarmnode/%s wire/%d", Release(), WireVersion)
}

// wireOf returns the wire version a swarmnode agent version announces, and
// whether the agent is a swarmnode at all.
func wireOf(agent string) (int, bool) {
	rest, ok := strings.CutPrefix(agent, "swarmnode/")
	if !ok {
		return 0, false
	}
	i := strings.LastIndex(rest, " wire/")
	if i < 0 {
		return 0, true // a swarmnode of before wire versions: not ours
	}
	n, err := strconv.Atoi(rest[i+len(" wire/"):])
	if err != nil {
		return 0, true
	}
	return n, true
}

// watchWireVersions drops every swarmnode peer that identifies with another
// wire version, logging once per peer what both speak.
func (n *Node) watchWireVersions(ctx context.Context) error {
	var warned sync.Map
	return n.onEvents(ctx, new(event.EvtPeerIdentificationCompleted), func(e any) {
		ev := e.(event.EvtPeerIdentificationCompleted)
		if wire, ours := wireOf(ev.AgentVersion); ours && wire != WireVersion {
			n.refuse(ev.Peer, ev.AgentVersion, wire, &warned)
		}
	})
}

// refuse closes the connections to p, a swarmnode of another wire version.
func (n *Node) refuse(p peer.ID, agent string, wire int, warned *sync.Map) {
	n.status.IncError("wire_version")
	if _, seen := warned.LoadOrStore(p, true); !seen {
		n.log.Warn("peer refused: another wire protocol version", "peer", p.String(),
			"its", fmt.Sprintf("wire %d (%s)", wire, agent), "ours", fmt.Sprintf("wire %d (%s)", WireVersion, agentVersion()))
	}
	_ = n.host.Network().ClosePeer(p)
}
