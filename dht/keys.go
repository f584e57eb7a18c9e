package dht

import (
	"crypto/sha256"
	"fmt"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mh "github.com/multiformats/go-multihash"
)

// Namespace is the record namespace of our DHT values. go-libp2p-record splits
// a key "/a/b/c" into namespace "a" and path "b/c", so every key of ours,
// "/swarmnode/<run>/peer/<peer-id>", is validated by the validator registered
// under "swarmnode"; that validator then checks the run and peer parts itself.
const Namespace = "swarmnode"

// ProtocolPrefix is the kad-dht protocol prefix of a run: the DHT speaks
// "/swarmnode/<run>/kad/1.0.0", so peers of different runs never share a table.
func ProtocolPrefix(run string) protocol.ID {
	return protocol.ID("/" + Namespace + "/" + run)
}

// StageKeyString is the string whose sha256 names stage k of a run.
func StageKeyString(run string, stage int) string {
	return fmt.Sprintf("swarmnode/%s/stage/%d", run, stage)
}

// StageCID is the CIDv1 (raw codec, sha2-256 multihash) of StageKeyString: the
// key holders of the stage provide and lookups search for.
func StageCID(run string, stage int) cid.Cid {
	sum := sha256.Sum256([]byte(StageKeyString(run, stage)))
	h, err := mh.Encode(sum[:], mh.SHA2_256)
	if err != nil {
		// mh.Encode only fails for an unknown code or a wrong digest length,
		// both fixed here.
		panic(fmt.Sprintf("dht: encoding sha256 multihash: %v", err))
	}
	return cid.NewCidV1(cid.Raw, h)
}

// PeerKey is the DHT key of a peer's info record in a run.
func PeerKey(run string, id peer.ID) string {
	return "/" + Namespace + "/" + run + "/peer/" + id.String()
}

// ParsePeerKey splits a PeerKey into its run and peer id.
func ParsePeerKey(key string) (run string, id peer.ID, err error) {
	rest, ok := strings.CutPrefix(key, "/"+Namespace+"/")
	if !ok {
		return "", "", fmt.Errorf("key %q: not under /%s/", key, Namespace)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] != "peer" {
		return "", "", fmt.Errorf("key %q: want /%s/<run>/peer/<peer-id>", key, Namespace)
	}
	id, err = peer.Decode(parts[2])
	if err != nil {
		return "", "", fmt.Errorf("key %q: peer id: %w", key, err)
	}
	return parts[0], id, nil
}

// GossipTopic is the GossipSub topic on which a run's holders gossip their load.
func GossipTopic(run string) string {
	return "/" + Namespace + "/" + run + "/load/1"
}
