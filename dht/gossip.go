package dht

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

// MaxLoadSize bounds a load gossip message.
const MaxLoadSize = 512

// Load is a load gossip message: the JSON data of a GossipSub message on
// GossipTopic, signed by its author through GossipSub's strict signing.
type Load struct {
	// Stage is the stage the author serves.
	Stage int `json:"stage"`
	// Role is server, trainer or both.
	Role string `json:"role"`
	// Throughput is the author's measured speed in tokens per second.
	Throughput float64 `json:"throughput"`
	// Queue is the number of microbatches waiting at the author.
	Queue int `json:"queue"`
	// Seq orders the author's messages and records (one counter for both).
	Seq uint64 `json:"seq"`
	// Leaving says the author is shutting down: drop it from routing now.
	Leaving bool `json:"leaving,omitempty"`
}

// EncodeLoad encodes a load message.
func EncodeLoad(l Load) ([]byte, error) { return json.Marshal(l) }

// DecodeLoad parses and checks a load message.
func DecodeLoad(b []byte) (Load, error) {
	if len(b) > MaxLoadSize {
		return Load{}, fmt.Errorf("load message: %d bytes, more than %d", len(b), MaxLoadSize)
	}
	var l Load
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return Load{}, fmt.Errorf("load message: %w", err)
	}
	if dec.More() {
		return Load{}, errors.New("load message: trailing data")
	}
	if l.Stage < 0 || l.Stage >= MaxStages {
		return Load{}, fmt.Errorf("load message: stage %d out of range [0, %d)", l.Stage, MaxStages)
	}
	switch l.Role {
	case RoleServer, RoleBoth:
	default:
		return Load{}, fmt.Errorf("load message: role %q does not serve a stage", l.Role)
	}
	if math.IsNaN(l.Throughput) || math.IsInf(l.Throughput, 0) || l.Throughput < 0 {
		return Load{}, fmt.Errorf("load message: throughput %v: want a finite number >= 0", l.Throughput)
	}
	if l.Queue < 0 {
		return Load{}, fmt.Errorf("load message: negative queue %d", l.Queue)
	}
	return l, nil
}
