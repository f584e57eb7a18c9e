package codec

import (
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
)

// goldenPath holds int8 messages this codec makes for a fixed input. The CUDA
// backend's tests (cuda/wire_test.go) check that the GPU writes and reads the
// same layout against this file, so the two packages agree on the wire without
// importing each other.
const goldenPath = "../cuda/testdata/int8_wire.golden"

// GoldenInput is the fixed input of the golden messages (mirrored in the cuda tests).
func goldenInput() []float32 {
	x := make([]float32, 300)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.37)) * 3
	}
	for i := 64; i < 128; i++ {
		x[i] = 0 // an all-zero block: scale 0
	}
	return x
}

// TestInt8WireGolden checks the int8 layout against the golden messages;
// SWARMNODE_UPDATE_GOLDEN=1 rewrites them.
func TestInt8WireGolden(t *testing.T) {
	var b strings.Builder
	for _, bs := range []int{64, 7} {
		msg, err := Format{Kind: Int8, Block: bs}.Append(nil, goldenInput())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%d %s\n", bs, hex.EncodeToString(msg))
	}
	if os.Getenv("SWARMNODE_UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(goldenPath, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != b.String() {
		t.Fatalf("int8 messages differ from %s: the wire layout changed (the GPU writes the old one)", goldenPath)
	}
}
