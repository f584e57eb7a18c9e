//go:build !unix

package swarm

import "os"

// lockIdentity is a no-op where flock is not available.
func lockIdentity(path string) (*os.File, error) { return nil, nil }
