//go:build !unix

package wire

import "os"

// openShared: shared payloads exist only where there is /dev/shm (NewShm
// fails elsewhere), so there is nothing to open.
func openShared(dir, file string) (*os.File, error) { return nil, ErrNoShm }

// processGone: there are no shared directories to clean up.
func processGone(int) bool { return false }
