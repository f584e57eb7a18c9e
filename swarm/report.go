package swarm

import (
	"runtime"
	"time"

	"swarmnode/wire"
)

// HolderReport is one holder of a stage as /api/status shows it.
type HolderReport struct {
	// PeerID is the holder's peer id.
	PeerID string `json:"peer_id"`
	// Role is server or both.
	Role string `json:"role"`
	// Throughput is its last reported speed, tokens per second.
	Throughput float64 `json:"throughput"`
	// Queue is its last reported number of waiting microbatches.
	Queue int `json:"queue"`
	// LastSeen is when a record or gossip message of the holder last arrived.
	LastSeen time.Time `json:"last_seen"`
	// Self marks this node.
	Self bool `json:"self,omitempty"`
}

// Report is the /api/status document.
type Report struct {
	// PeerID is this peer's id.
	PeerID string `json:"peer_id"`
	// Addrs are its full multiaddrs, ending in /p2p/<id>.
	Addrs []string `json:"addrs"`
	// Reachability is AutoNAT's verdict: public, private or unknown.
	Reachability string `json:"reachability"`
	// Run is the run id.
	Run string `json:"run"`
	// Role is server, trainer or both.
	Role string `json:"role"`
	// Stage is the stage served, -1 for none.
	Stage int `json:"stage"`
	// Holders maps every stage of the run to its live holders.
	Holders map[int][]HolderReport `json:"holders"`
	// ConnectedPeers counts the libp2p peers connected now.
	ConnectedPeers int `json:"connected_peers"`
	// Step, Loss and TokensPerSec are the latest training progress.
	Step         int64   `json:"step"`
	Loss         float64 `json:"loss"`
	TokensPerSec float64 `json:"tokens_per_sec"`
	// History is the loss curve.
	History []HistoryPoint `json:"history"`
	// Sample is the latest sample of the model (trainers of a samplable
	// model only; absent until the first evaluation's sample is made).
	Sample *Sample `json:"sample,omitempty"`
	// Microbatches, Averaging and Errors are the counters of Status.
	Microbatches MicrobatchCounts `json:"microbatches"`
	// Stepped counts, per stage, the sequences the stage's holders stepped on
	// at this trainer's commits (trainers only): train.batch per step when
	// every microbatch counted exactly once.
	Stepped []int64 `json:"stepped"`
	// InFlight is how many microbatches this trainer keeps in the pipeline
	// (pipeline.in_flight, or its choice in auto mode; trainers only).
	InFlight  int               `json:"in_flight,omitempty"`
	Averaging AveragingStats    `json:"averaging"`
	Errors    map[string]uint64 `json:"errors"`
	// Wire counts the pipeline frames this node sent: bytes on the wire and
	// what they would have taken uncompressed.
	Wire wire.Traffic `json:"wire"`
	// Goroutines is the number of goroutines of this process now (a leak
	// shows as growth: bench/soak samples it).
	Goroutines int `json:"goroutines"`
	// Time is when the report was made.
	Time time.Time `json:"time"`
}

// Report assembles the node's current status.
func (n *Node) Report() Report {
	self := n.dht.Self()
	c := n.status.Snapshot()
	r := Report{
		PeerID: n.ID().String(), Reachability: reachabilityName(n.Reachability()),
		Run: n.opts.Run, Role: self.Role, Stage: self.Stage,
		Holders:        make(map[int][]HolderReport, n.opts.NumStages),
		ConnectedPeers: len(n.host.Network().Peers()),
		Step:           c.Training.Step, Loss: c.Training.Loss, TokensPerSec: c.Training.TokensPerSec,
		History: c.History, Sample: c.Sample, Microbatches: c.Microbatches, Stepped: c.Stepped, InFlight: c.InFlight, Averaging: c.Averaging, Errors: c.Errors,
		Wire:       n.traffic.Sent(),
		Goroutines: runtime.NumGoroutine(),
		Time:       time.Now().UTC(),
	}
	if r.Stepped == nil {
		r.Stepped = []int64{}
	}
	if r.History == nil {
		r.History = []HistoryPoint{}
	}
	for _, a := range n.Addrs() {
		r.Addrs = append(r.Addrs, a.String())
	}
	if r.Addrs == nil {
		r.Addrs = []string{}
	}
	for k := 0; k < n.opts.NumStages; k++ {
		r.Holders[k] = []HolderReport{}
	}
	for k, hs := range n.dht.AllHolders() {
		if k >= n.opts.NumStages {
			continue // a peer of another shape of run: not ours to show
		}
		for _, h := range hs {
			r.Holders[k] = append(r.Holders[k], HolderReport{
				PeerID: h.Peer.String(), Role: h.Role, Throughput: h.Throughput, Queue: h.Queue,
				LastSeen: h.LastSeen.UTC(), Self: h.Peer == n.ID(),
			})
		}
	}
	return r
}
