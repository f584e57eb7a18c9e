package config

import "time"

// Compression sets the codecs of the wire, in both directions.
type Compression struct {
	// Activations is the codec of forward activations: fp32, bf16 or int8.
	Activations string `yaml:"activations"`
	// Gradients is the codec of the gradients sent back upstream: fp32, bf16 or int8.
	Gradients string `yaml:"gradients"`
	// BlockSize is the number of values sharing one int8 absmax scale.
	BlockSize int `yaml:"block_size"`
	// Zstd entropy-codes the payload after quantization: on, off or auto (only
	// when the link, not the CPU, is the bottleneck).
	Zstd string `yaml:"zstd"`
}

// DefaultCompression sends int8 both ways, without zstd on fast links.
func DefaultCompression() Compression {
	return Compression{Activations: "int8", Gradients: "int8", BlockSize: 64, Zstd: "auto"}
}

func validCodec(s string) bool { return s == "fp32" || s == "bf16" || s == "int8" }

func (c Compression) validate() error {
	if !validCodec(c.Activations) {
		return fieldErr("compression.activations", "%q: want fp32, bf16 or int8", c.Activations)
	}
	if !validCodec(c.Gradients) {
		return fieldErr("compression.gradients", "%q: want fp32, bf16 or int8", c.Gradients)
	}
	if c.BlockSize < 1 || c.BlockSize > 1<<16 {
		return fieldErr("compression.block_size", "must be in [1, 65536], got %d", c.BlockSize)
	}
	switch c.Zstd {
	case "on", "off", "auto":
	default:
		return fieldErr("compression.zstd", "%q: want on, off or auto", c.Zstd)
	}
	return nil
}

// Pipeline holds stage-server and trainer limits and timeouts.
type Pipeline struct {
	// MaxFrameBytes caps one frame on the wire.
	MaxFrameBytes int `yaml:"max_frame_bytes"`
	// HopTimeout bounds one hop's round trip, downstream included.
	HopTimeout time.Duration `yaml:"hop_timeout"`
	// Retries is how many other holders a hop tries before failing upstream.
	Retries int `yaml:"retries"`
	// MaxInFlight caps the microbatches a stage server works on at once.
	MaxInFlight int `yaml:"max_in_flight"`
	// CacheBytes caps the memory of cached forward state on a stage server.
	CacheBytes int64 `yaml:"cache_bytes"`
	// InFlight is how many microbatches a trainer keeps in the pipeline.
	InFlight int `yaml:"in_flight"`
	// RebalanceEvery is how often a server checks whether to move stage; 0 disables.
	RebalanceEvery time.Duration `yaml:"rebalance_every"`
	// RebalanceRatio: a stage below this share of the mean throughput pulls a peer over.
	RebalanceRatio float64 `yaml:"rebalance_ratio"`
	// Staleness is how many optimizer steps ahead a stage server may run forward
	// passes of new microbatches before the current step's gradients are in. 0 makes
	// every step's microbatches go forward and backward on one parameter version,
	// exactly like `swarmnode local`, at the price of draining the pipeline once per
	// step; 1 or more keeps the pipeline full but computes some gradients with
	// parameters up to that many steps newer than their forward pass.
	Staleness int `yaml:"staleness"`
}

// DefaultPipeline suits the tiny example on loopback.
func DefaultPipeline() Pipeline {
	return Pipeline{
		MaxFrameBytes: 64 << 20, HopTimeout: 30 * time.Second, Retries: 3,
		MaxInFlight: 8, CacheBytes: 1 << 30, InFlight: 4,
		RebalanceEvery: 30 * time.Second, RebalanceRatio: 0.5, Staleness: 0,
	}
}

func (p Pipeline) validate() error {
	switch {
	case p.MaxFrameBytes < 1024:
		return fieldErr("pipeline.max_frame_bytes", "must be at least 1024, got %d", p.MaxFrameBytes)
	case p.HopTimeout <= 0:
		return fieldErr("pipeline.hop_timeout", "must be positive, got %s", p.HopTimeout)
	case p.Retries < 0:
		return fieldErr("pipeline.retries", "must not be negative, got %d", p.Retries)
	case p.MaxInFlight < 1:
		return fieldErr("pipeline.max_in_flight", "must be positive, got %d", p.MaxInFlight)
	case p.CacheBytes < 1:
		return fieldErr("pipeline.cache_bytes", "must be positive, got %d", p.CacheBytes)
	case p.InFlight < 1:
		return fieldErr("pipeline.in_flight", "must be positive, got %d", p.InFlight)
	case p.RebalanceEvery < 0:
		return fieldErr("pipeline.rebalance_every", "must not be negative, got %s", p.RebalanceEvery)
	case p.RebalanceRatio <= 0 || p.RebalanceRatio >= 1:
		return fieldErr("pipeline.rebalance_ratio", "must be in (0, 1), got %g", p.RebalanceRatio)
	case p.Staleness < 0 || p.Staleness > 64:
		return fieldErr("pipeline.staleness", "must be in [0, 64], got %d", p.Staleness)
	}
	return nil
}
