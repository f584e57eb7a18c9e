package averaging

import "github.com/prometheus/client_golang/prometheus"

// avgMetrics are the Prometheus collectors of one Averager, labelled with its key.
type avgMetrics struct {
	rounds, skipped, failures prometheus.Counter
	groupSize, averaged       prometheus.Gauge
	roundSeconds              prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, key string) (*avgMetrics, error) {
	l := prometheus.Labels{"key": key}
	m := &avgMetrics{
		rounds: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "swarmnode", Subsystem: "averaging", Name: "rounds_total", ConstLabels: l,
			Help: "Averaging rounds that formed a group.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "swarmnode", Subsystem: "averaging", Name: "skipped_total", ConstLabels: l,
			Help: "Averaging rounds skipped for want of a group.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "swarmnode", Subsystem: "averaging", Name: "failures_total", ConstLabels: l,
			Help: "Averaging rounds in which a member or a shard failed.",
		}),
		groupSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "swarmnode", Subsystem: "averaging", Name: "last_group_size", ConstLabels: l,
			Help: "Members of the last group formed.",
		}),
		averaged: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "swarmnode", Subsystem: "averaging", Name: "last_averaged_fraction", ConstLabels: l,
			Help: "Fraction of the vector that the last round averaged.",
		}),
		roundSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "swarmnode", Subsystem: "averaging", Name: "round_seconds", ConstLabels: l,
			Help:    "Wall time of rounds that formed a group.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
	}
	if reg != nil {
		for _, c := range m.collectors() {
			if err := reg.Register(c); err != nil {
				m.unregister(reg)
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *avgMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.rounds, m.skipped, m.failures, m.groupSize, m.averaged, m.roundSeconds}
}

// unregister removes the collectors, so that a later Averager of the same key
// (a peer moving back to a stage it served before) can register its own.
func (m *avgMetrics) unregister(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}
