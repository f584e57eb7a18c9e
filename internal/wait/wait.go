// Package wait lets tests wait on an event (a condition that becomes true)
// instead of sleeping a fixed time, which is either too long or, on a loaded
// machine, too short.
package wait

import (
	"testing"
	"time"
)

// poll is how often For checks its condition: often enough that a test waits
// little past the event, rarely enough not to load the machine.
const poll = 20 * time.Millisecond

// For checks cond until it returns nil, and fails t with cond's last error
// once within has passed.
func For(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", within, err)
		}
		time.Sleep(poll)
	}
}
