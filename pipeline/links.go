package pipeline

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/codec"
)

// maxLinks bounds the peers whose zstd policy is kept; past it the cache starts
// over, and a forgotten peer's policy learns its link again.
const maxLinks = 1024

// links holds one zstd policy per peer, since links differ. The zero value never
// compresses. It is safe for concurrent use.
type links struct {
	mode codec.ZstdMode

	mu sync.Mutex
	m  map[peer.ID]*codec.Link
}

// get returns the zstd policy for peer p, or nil when zstd is off.
func (l *links) get(p peer.ID) *codec.Link {
	if l.mode == codec.ZstdOff {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil || len(l.m) > maxLinks {
		l.m = make(map[peer.ID]*codec.Link)
	}
	lk := l.m[p]
	if lk == nil {
		lk = codec.NewLink(l.mode)
		l.m[p] = lk
	}
	return lk
}
