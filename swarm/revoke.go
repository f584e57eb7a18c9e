package swarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/admission"
	"swarmnode/checkpoint"
)

// Revocation in an admitted run. The owner signs a list of revoked peers
// (`swarmnode revoke`); a newer list replaces an older one. A node takes the
// newest valid list it knows of from three places:
//   - the file that admission.revocations names, read at start and again
//     every revocationsEvery (the owner updates it; any peer given the file
//     brings it into the swarm);
//   - the run's revocation topic, on which every node of an admitted run
//     publishes its list every revocationsEvery, so a node that joins later
//     hears it within that time;
//   - its own copy in the data dir, so a restart does not forget.
//
// The gate refuses a revoked peer from then on, however long its certificate
// runs, and the node closes its connections to it. A list is the owner's
// word: anyone may relay it, no one can forge or shorten it.

// revocationsEvery is how often a node re-reads its list file and publishes
// its list.
var revocationsEvery = time.Minute

// RevocationsTopic is the gossip topic on which run's revocation lists travel.
func RevocationsTopic(run string) string { return "/swarmnode/" + run + "/revocations/1.0.0" }

// revocationsFile is where a node keeps the newest list it applied.
func revocationsFile(dataDir, run string) string {
	return filepath.Join(dataDir, "revocations-"+run+".json")
}

// followRevocations applies the lists of the data dir and of file (may be
// empty), joins the revocation topic and, until ctx ends, applies newer lists
// heard there or found in file, and publishes ours.
func (n *Node) followRevocations(ctx context.Context, file string) error {
	g := n.gate()
	for _, path := range []string{revocationsFile(n.opts.DataDir, n.opts.Run), file} {
		if path == "" {
			continue
		}
		if r, err := admission.LoadRevocations(path); err == nil {
			n.applyRevocations(r, path)
		} else if !errors.Is(err, os.ErrNotExist) {
			n.log.Warn("revocation list not read", "file", path, "err", err)
		}
	}
	name := RevocationsTopic(n.opts.Run)
	self := n.host.ID()
	err := n.ps.RegisterTopicValidator(name, func(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		r, err := admission.ParseRevocations(m.Data)
		if err != nil || r.Verify(g.adm.Owner, n.opts.Run) != nil {
			return pubsub.ValidationReject
		}
		if from == self {
			return pubsub.ValidationAccept // our own list, republished
		}
		if !g.newer(r) {
			return pubsub.ValidationIgnore // heard already: not worth relaying
		}
		m.ValidatorData = r
		return pubsub.ValidationAccept
	})
	if err != nil {
		return fmt.Errorf("revocation topic: %w", err)
	}
	topic, err := n.ps.Join(name)
	if err != nil {
		return fmt.Errorf("revocation topic: %w", err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		topic.Close()
		return fmt.Errorf("revocation topic: %w", err)
	}
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		defer sub.Cancel()
		for {
			m, err := sub.Next(ctx)
			if err != nil {
				return
			}
			if r, ok := m.ValidatorData.(admission.Revocations); ok {
				n.applyRevocations(r, "gossip from "+m.ReceivedFrom.ShortString())
			}
		}
	}()
	go func() {
		defer n.wg.Done()
		defer topic.Close()
		t := time.NewTicker(revocationsEvery)
		defer t.Stop()
		for {
			if file != "" {
				if r, err := admission.LoadRevocations(file); err == nil {
					n.applyRevocations(r, file)
				}
			}
			if r := g.revocations(); r != nil {
				_ = topic.Publish(ctx, r.Encode())
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// applyRevocations makes r the node's list if it is the owner's and newer
// than the one it has: the gate refuses the revoked from now on, their
// connections are closed, and the list is kept in the data dir.
func (n *Node) applyRevocations(r admission.Revocations, from string) {
	g := n.gate()
	if err := r.Verify(g.adm.Owner, n.opts.Run); err != nil {
		n.log.Warn("revocation list refused", "from", from, "err", err)
		return
	}
	if !g.revoke(r) {
		return
	}
	n.log.Warn("revocation list applied", "from", from, "issued", r.Issued.Format(time.RFC3339), "revoked", len(r.Peers))
	for _, s := range r.Peers {
		if p, err := peer.Decode(s); err == nil && p != n.host.ID() {
			_ = n.host.Network().ClosePeer(p)
		}
	}
	path := revocationsFile(n.opts.DataDir, n.opts.Run)
	if err := checkpoint.WriteFile(path, r.Encode()); err != nil {
		n.log.Warn("revocation list not kept", "file", path, "err", err)
	}
}
