//go:build unix

package wire

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// openShared opens file in directory dir under shmRoot and removes it, following
// no link on the way: neither dir nor file may be one, so a peer of this host
// cannot point the reader (or its removal) outside shmRoot.
func openShared(dir, file string) (*os.File, error) {
	dfd, err := unix.Open(filepath.Join(shmRoot, dir), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, file, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir + "/" + file, Err: err}
	}
	_ = unix.Unlinkat(dfd, file, 0) // read once: the writer's sweep need not find it
	return os.NewFile(uintptr(fd), filepath.Join(shmRoot, dir, file)), nil
}

// processGone reports whether no process of this PID namespace has pid.
func processGone(pid int) bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) }
