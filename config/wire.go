package config

import "time"

// Compression sets the codecs of the wire, in both directions.
type Compression struct {
	// Activations is the codec of forward activations: fp32, bf16 or int8.
	Activations string `yaml:"activations" check:"oneof=fp32|bf16|int8"`
	// Gradients is the codec of the gradients sent back upstream: fp32, bf16 or int8.
	Gradients string `yaml:"gradients" check:"oneof=fp32|bf16|int8"`
	// BlockSize is the number of values sharing one int8 absmax scale.
	BlockSize int `yaml:"block_size" check:"in=[1, 65536]"`
	// Zstd entropy-codes the payload after quantization: on, off or auto (only
	// when the link, not the CPU, is the bottleneck).
	Zstd string `yaml:"zstd" check:"oneof=on|off|auto"`
}

// DefaultCompression sends int8 both ways, without zstd on fast links.
func DefaultCompression() Compression {
	return Compression{Activations: "int8", Gradients: "int8", BlockSize: 64, Zstd: "auto"}
}

func (c Compression) validate() error { return checkFields("compression", c) }

// Pipeline holds stage-server and trainer limits and timeouts.
type Pipeline struct {
	// MaxFrameBytes caps one frame on the wire.
	MaxFrameBytes int `yaml:"max_frame_bytes" check:"min=1024"`
	// HopTimeout bounds one hop's round trip, downstream included.
	HopTimeout time.Duration `yaml:"hop_timeout" check:"positive"`
	// Retries is how many other holders a hop tries before failing upstream.
	Retries int `yaml:"retries" check:"nonneg"`
	// MaxInFlight caps the microbatches a stage server works on at once.
	MaxInFlight int `yaml:"max_in_flight" check:"positive"`
	// CacheBytes caps the memory of cached forward state on a stage server.
	CacheBytes int64 `yaml:"cache_bytes" check:"positive"`
	// InFlight is how many microbatches a trainer keeps in the pipeline; 0
	// (auto) chooses it from the measured round trip and the slowest stage's
	// throughput, within max_in_flight.
	InFlight int `yaml:"in_flight" check:"nonneg"`
	// RebalanceEvery is how often a server checks whether to move stage; 0 disables.
	RebalanceEvery time.Duration `yaml:"rebalance_every" check:"nonneg"`
	// RebalanceRatio: a stage below this share of the mean throughput pulls a peer over.
	RebalanceRatio float64 `yaml:"rebalance_ratio" check:"in=(0, 1)"`
	// Staleness is how many optimizer steps ahead a stage server may run forward
	// passes of new microbatches before the current step's gradients are in. 0 makes
	// every step's microbatches go forward and backward on one parameter version,
	// exactly like `swarmnode local`, at the price of draining the pipeline once per
	// step; 1 or more keeps the pipeline full but computes some gradients with
	// parameters up to that many steps newer than their forward pass.
	Staleness int `yaml:"staleness" check:"in=[0, 64]"`
	// SharedMemory lets a stage server exchange large frames with peers of its own
	// host (a loopback connection) through files in /dev/shm instead of the
	// encrypted stream; a peer that cannot read them is sent to on the stream.
	SharedMemory bool `yaml:"shared_memory"`
}

// DefaultPipeline suits the tiny example on loopback.
func DefaultPipeline() Pipeline {
	return Pipeline{
		MaxFrameBytes: 64 << 20, HopTimeout: 30 * time.Second, Retries: 3,
		MaxInFlight: 8, CacheBytes: 1 << 30, InFlight: 4,
		RebalanceEvery: 30 * time.Second, RebalanceRatio: 0.5, Staleness: 0,
		SharedMemory: true,
	}
}

func (p Pipeline) validate() error { return checkFields("pipeline", p) }
