//go:build unix

package swarm

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockIdentity takes an exclusive advisory lock on the identity key file for
// the node's lifetime: two processes with one identity (say, two peers
// started in one directory with the default data dir) would announce the same
// peer id with different addresses and break each other's connections.
func lockIdentity(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("identity %s is in use by another swarmnode process; give each peer its own --data-dir or --identity", path)
		}
		return nil, fmt.Errorf("identity %s: lock: %w", path, err)
	}
	return f, nil
}
