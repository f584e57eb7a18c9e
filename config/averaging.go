package config

import "time"

// Averaging sets the background averaging of parameters among holders of a
// stage, and the group settings the commit's gradient all-reduce shares.
type Averaging struct {
	// Enabled turns background parameter averaging on. It is off by default:
	// holders that commit every step together are one model already, and a
	// round, which reads the parameters chunk by chunk while the stage steps,
	// mixes versions and pulls lockstep replicas apart.
	Enabled bool `yaml:"enabled"`
	// Period is the time between rounds.
	Period time.Duration `yaml:"period" check:"positive"`
	// GroupSize is the most members in one averaging group.
	GroupSize int `yaml:"group_size" check:"min=2"`
	// Matchmaking is how long a holder waits to form a group before skipping the round.
	Matchmaking time.Duration `yaml:"matchmaking" check:"positive"`
	// Deadline bounds a whole round; a round always ends by it.
	Deadline time.Duration `yaml:"deadline" check:"positive"`
	// Codec is the wire codec of averaged parts: fp32, bf16 or int8.
	Codec string `yaml:"codec" check:"oneof=fp32|bf16|int8"`
	// Optimizer averages AdamW's moments too when true; otherwise each keeps its own.
	Optimizer bool `yaml:"optimizer"`
	// StallTimeout is how long a reducer waits for a member's next chunk before
	// leaving that member out of its shard; a reducer silent for twice as long is
	// left out by the members. Less than the deadline; 0 (the default) means a
	// quarter of the deadline.
	StallTimeout time.Duration `yaml:"stall_timeout"`
	// Reducer combines the holders' parts, in background averaging and in the
	// commit's gradient all-reduce: centered_clip (robust: a holder sending
	// garbage moves the result a bounded distance and is evicted) or mean (the
	// plain weighted mean, for a swarm whose holders are all trusted).
	Reducer string `yaml:"reducer" check:"oneof=centered_clip|mean"`
	// AuditRate is the chance that a holder, after a round, re-checks the
	// reduction of each other shard it received (one chunk of it, chosen in
	// secret); a reducer caught lying is evicted. Above 0, every holder also
	// keeps what it reduced in its last 16 rounds for others' audits (at most
	// 256 MiB of parts). 0 turns audits off.
	AuditRate float64 `yaml:"audit_rate" check:"in=[0, 1]"`
}

// DefaultAveraging leaves background averaging off; switched on, it averages
// every 10 s in groups of up to 4.
func DefaultAveraging() Averaging {
	return Averaging{
		Enabled: false, Period: 10 * time.Second, GroupSize: 4,
		Matchmaking: 2 * time.Second, Deadline: 10 * time.Second,
		Codec: "fp32", Optimizer: false, Reducer: "centered_clip", AuditRate: 0.1,
	}
}

func (a Averaging) validate() error {
	if err := checkFields("averaging", a); err != nil {
		return err
	}
	if a.Matchmaking >= a.Deadline {
		return fieldErr("averaging.matchmaking", "%s must be shorter than the deadline %s", a.Matchmaking, a.Deadline)
	}
	if a.StallTimeout < 0 || a.StallTimeout >= a.Deadline {
		return fieldErr("averaging.stall_timeout", "must be in [0, deadline %s), got %s", a.Deadline, a.StallTimeout)
	}
	return nil
}
