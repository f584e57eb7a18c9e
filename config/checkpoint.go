package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// Checkpoint sets when a stage holder, and `swarmnode local`, write their
// stage's state to disk (package checkpoint) and how many they keep.
type Checkpoint struct {
	// Dir holds the checkpoints, one directory per stage; empty means
	// <node.data_dir>/checkpoints.
	Dir string `yaml:"dir"`
	// Every is the number of optimizer steps between checkpoints; 0 writes
	// none on a step count.
	Every int `yaml:"every" check:"nonneg"`
	// Interval is the most time between checkpoints; 0 writes none on a clock.
	Interval time.Duration `yaml:"interval" check:"nonneg"`
	// Keep is how many of a stage's newest checkpoints stay on disk; 0 keeps
	// all.
	Keep int `yaml:"keep" check:"nonneg"`
}

// DefaultCheckpoint writes a checkpoint every 500 steps or 10 minutes,
// whichever comes first, and at the end of training, and keeps the last 3.
func DefaultCheckpoint() Checkpoint {
	return Checkpoint{Every: 500, Interval: 10 * time.Minute, Keep: 3}
}

func (c Checkpoint) validate() error { return checkFields("checkpoint", c) }

// CheckpointDir is where the run's checkpoints go: checkpoint.dir, or
// <node.data_dir>/checkpoints.
func (c *Config) CheckpointDir() string {
	if c.Checkpoint.Dir != "" {
		return c.Checkpoint.Dir
	}
	return filepath.Join(c.Node.DataDir, "checkpoints")
}

// StageDir is the directory of stage k's checkpoints under the run's config.
func (c *Config) StageDir(k int) string {
	return filepath.Join(c.CheckpointDir(), fmt.Sprintf("stage%d", k))
}
