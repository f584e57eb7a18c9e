package swarm

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/dht"
)

// Volunteers usually join at once (a script starts them a fraction of a second
// apart), and each sees a holder table that lacks the others. So a joiner
// announces its pick at once, waits autoSettle plus a random jitter of up to
// autoSettle for simultaneous joiners' announcements to arrive, and moves to a
// stage with fewer holders if one appeared, up to autoRechecks times.
const (
	autoSettle   = time.Second
	autoRechecks = 3
	// autoLearnTimeout bounds the wait for the holder table of every stage.
	autoLearnTimeout = 5 * time.Second
	// autoRetry is the pause between two lookups of a stage that failed.
	autoRetry = 200 * time.Millisecond
)

// ChooseStage picks the stage that needs a holder most: the one with the
// fewest holders; rnd breaks ties at random, so that joiners with the same
// picture spread out (nil takes the lowest number). self is left out of the
// count, so a peer can re-run it to reconsider.
func ChooseStage(numStages int, holders map[int][]dht.Holder, self peer.ID, rnd *rand.Rand) int {
	var neediest []int
	fewest := 0
	for k := 0; k < numStages; k++ {
		cnt := others(holders[k], self)
		switch {
		case len(neediest) == 0 || cnt < fewest:
			neediest, fewest = []int{k}, cnt
		case cnt == fewest:
			neediest = append(neediest, k)
		}
	}
	if len(neediest) == 0 {
		return -1 // a run without stages
	}
	if rnd == nil {
		return neediest[0]
	}
	return neediest[rnd.IntN(len(neediest))]
}

// others counts the holders in hs other than self.
func others(hs []dht.Holder, self peer.ID) int {
	n := 0
	for _, h := range hs {
		if h.Peer != self {
			n++
		}
	}
	return n
}

// AutoStage picks the stage this peer serves under node.stage auto and
// announces it. It first looks up the holders of every stage (bounded by
// autoLearnTimeout and ctx; a choice on partial knowledge is logged as a
// warning), picks with ChooseStage, announces the pick at once so that peers
// joining at the same time see it, and re-checks after a settle time:
// if another stage now has fewer holders than the pick without us, it moves
// there before serving.
func (n *Node) AutoStage(ctx context.Context) int {
	rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	if missing := n.learnHolders(ctx); len(missing) > 0 {
		n.log.Warn("choosing a stage on partial knowledge: the holders of some stages could not be looked up", "stages", missing)
	}
	k := ChooseStage(n.opts.NumStages, n.dht.AllHolders(), n.ID(), rnd)
	n.announceStage(k)
	for range autoRechecks {
		settle := autoSettle + rand.N(autoSettle)
		select {
		case <-ctx.Done():
			return k
		case <-time.After(settle):
		}
		hs := n.dht.AllHolders()
		j := ChooseStage(n.opts.NumStages, hs, n.ID(), rnd)
		if others(hs[j], n.ID()) >= others(hs[k], n.ID()) {
			break
		}
		n.log.Info("auto stage: another peer took the same stage; moving to one with fewer holders", "from", k, "to", j)
		k = j
		n.announceStage(k)
	}
	n.log.Info("auto stage", "stage", k, "holders", holderCounts(n.dht.AllHolders(), n.opts.NumStages))
	return k
}

// announceStage announces k as this peer's stage; k is in range, so SetStage
// cannot fail.
func (n *Node) announceStage(k int) {
	if err := n.SetStage(k); err != nil {
		n.log.Warn("auto stage: announce", "stage", k, "err", err)
	}
}

// holderCounts lists how many live holders each stage has.
func holderCounts(hs map[int][]dht.Holder, numStages int) []int {
	out := make([]int, numStages)
	for k := range out {
		out[k] = len(hs[k])
	}
	return out
}

// learnHolders looks up the holders of every stage, retrying failed lookups,
// until each has succeeded once or autoLearnTimeout (or ctx) ends, and returns
// the stages it could not look up. The first peer of a run (no bootstrap
// peers) has nobody to ask and returns at once.
func (n *Node) learnHolders(ctx context.Context) []int {
	if len(n.opts.Bootstrap) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, autoLearnTimeout)
	defer cancel()
	for len(n.host.Network().Peers()) == 0 && pause(ctx, autoRetry) {
	}
	var (
		mu      sync.Mutex
		missing []int
		wg      sync.WaitGroup
	)
	for k := 0; k < n.opts.NumStages; k++ {
		wg.Go(func() {
			for {
				_, err := n.dht.Lookup(ctx, k)
				if err == nil {
					return
				}
				n.log.Debug("auto stage lookup", "stage", k, "err", err)
				if !pause(ctx, autoRetry) {
					mu.Lock()
					missing = append(missing, k)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return missing
}

// pause waits d and reports true, or false if ctx ends first.
func pause(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
