package swarm

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a node's Report as Prometheus metrics at scrape time, so
// the metrics never disagree with /api/status. Averaging exports its own
// metrics (swarmnode_averaging_*, labelled by stage) on the same registry.
type collector struct{ n *Node }

var (
	descStep       = prometheus.NewDesc("swarmnode_step", "Optimizer step.", nil, nil)
	descLoss       = prometheus.NewDesc("swarmnode_loss", "Latest training loss.", nil, nil)
	descTPS        = prometheus.NewDesc("swarmnode_tokens_per_sec", "Training throughput in tokens per second.", nil, nil)
	descStage      = prometheus.NewDesc("swarmnode_stage", "Stage served, -1 for none.", nil, nil)
	descHolders    = prometheus.NewDesc("swarmnode_stage_holders", "Live holders of each stage.", []string{"stage"}, nil)
	descThroughput = prometheus.NewDesc("swarmnode_stage_throughput", "Summed throughput of each stage's holders, tokens per second.", []string{"stage"}, nil)
	descPeers      = prometheus.NewDesc("swarmnode_connected_peers", "Connected libp2p peers.", nil, nil)
	descMB         = prometheus.NewDesc("swarmnode_microbatches_total", "Microbatches by outcome.", []string{"outcome"}, nil)
	descErrors     = prometheus.NewDesc("swarmnode_errors_total", "Errors by kind.", []string{"kind"}, nil)
	descWireBytes  = prometheus.NewDesc("swarmnode_wire_bytes_total", "Bytes of pipeline frames sent: as sent (wire) and as they would be uncompressed (raw).", []string{"kind"}, nil)
	descWireFrames = prometheus.NewDesc("swarmnode_wire_frames_total", "Pipeline frames sent.", nil, nil)
	descLookups    = prometheus.NewDesc("swarmnode_dht_lookups_total", "Holder lookups by how the providers were found: the short walk to the stage key's closest peers (near) or the full kad-dht walk (fallback).", []string{"path"}, nil)
	descFollowups  = prometheus.NewDesc("swarmnode_dht_lookup_followups_total", "Extra rounds of short-walk lookups whose first answers disagreed.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStep, descLoss, descTPS, descStage, descHolders, descThroughput,
		descPeers, descMB, descErrors, descWireBytes, descWireFrames, descLookups, descFollowups} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	r := c.n.Report()
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ctr := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	g(descStep, float64(r.Step))
	g(descLoss, r.Loss)
	g(descTPS, r.TokensPerSec)
	g(descStage, float64(r.Stage))
	g(descPeers, float64(r.ConnectedPeers))
	for k, hs := range r.Holders {
		tp := 0.0
		for _, h := range hs {
			tp += h.Throughput
		}
		g(descHolders, float64(len(hs)), strconv.Itoa(k))
		g(descThroughput, tp, strconv.Itoa(k))
	}
	ctr(descMB, float64(r.Microbatches.Completed), "completed")
	ctr(descMB, float64(r.Microbatches.Retried), "retried")
	ctr(descMB, float64(r.Microbatches.Failed), "failed")
	ctr(descMB, float64(r.Microbatches.Replayed), "replayed")
	ctr(descMB, float64(r.Microbatches.TakenBack), "taken_back")
	for kind, v := range r.Errors {
		ctr(descErrors, float64(v), kind)
	}
	ctr(descWireBytes, float64(r.Wire.Bytes), "wire")
	ctr(descWireBytes, float64(r.Wire.RawBytes), "raw")
	ctr(descWireFrames, float64(r.Wire.Frames))
	ls := c.n.dht.LookupStats()
	ctr(descLookups, float64(ls.Near), "near")
	ctr(descLookups, float64(ls.Fallbacks), "fallback")
	ctr(descFollowups, float64(ls.Followups))
}
