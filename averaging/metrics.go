package averaging

import "github.com/prometheus/client_golang/prometheus"

// avgMetrics are the Prometheus collectors of one Averager, labelled with its key.
type avgMetrics struct {
	rounds, skipped, failures prometheus.Counter
	groupSize, averaged       prometheus.Gauge
	roundSeconds              prometheus.Histogram
}

// newMetrics creates the collectors of key's Averager and registers them with
// reg, when there is one.
func newMetrics(reg prometheus.Registerer, key string) (*avgMetrics, error) {
	l := prometheus.Labels{"key": key}
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "swarmnode", Subsystem: "averaging", Name: name, Help: help, ConstLabels: l}
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts(opts(name, help)))
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts(opts(name, help)))
	}
	m := &avgMetrics{
		rounds:    counter("rounds_total", "Averaging rounds that formed a group."),
		skipped:   counter("skipped_total", "Averaging rounds skipped for want of a group."),
		failures:  counter("failures_total", "Averaging rounds in which a member or a shard failed."),
		groupSize: gauge("last_group_size", "Members of the last group formed."),
		averaged:  gauge("last_averaged_fraction", "Fraction of the vector that the last round averaged."),
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
