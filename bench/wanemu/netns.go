package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns add` mounts the namespaces it names.
const netnsDir = "/var/run/netns"

// listNamespaces returns the named namespaces prefix followed by a number.
func listNamespaces(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if _, err := strconv.Atoi(rest); ok && err == nil && rest[0] != '+' && rest[0] != '-' {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// DeleteNamespaces deletes the namespaces prefix followed by a number and
// returns their names.
func DeleteNamespaces(prefix string) ([]string, error) {
	names, err := listNamespaces(prefix)
	if err != nil {
		return nil, err
	}
	return names, deleteNamespaces(names)
}

func deleteNamespaces(names []string) error {
	var errs []error
	for _, n := range names {
		errs = append(errs, ip("netns", "del", n))
	}
	return errors.Join(errs...)
}

func addNamespace(name string) error {
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	return ip("-n", name, "link", "set", "lo", "up")
}

// setupPeer opens the TUN device of peer i inside namespace name, gives it
// the peer's address and brings it up.
func setupPeer(name string, i int) (*os.File, error) {
	var tun *os.File
	if err := inNetns(name, func() (err error) {
		tun, err = openTUN(tunName)
		return err
	}); err != nil {
		return nil, fmt.Errorf("namespace %s: %w", name, err)
	}
	err := ip("-n", name, "addr", "add", Addr(i).String()+"/24", "dev", tunName)
	if err == nil {
		// addrgenmode none: no IPv6 link-local address, so no IPv6 chatter
		err = ip("-n", name, "link", "set", tunName, "addrgenmode", "none", "up", "mtu", strconv.Itoa(mtu))
	}
	if err != nil {
		tun.Close()
		return nil, err
	}
	return tun, nil
}

// openTUN creates the TUN device name (IPv4/IPv6 packets, no header) in the
// calling thread's network namespace. Its file is non-blocking, so Close
// ends a pending Read.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create TUN %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// inNetns runs fn on an OS thread moved into namespace name. Sockets and
// devices fn opens stay in that namespace; the thread, never unlocked, ends
// with its goroutine instead of going back to the pool.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := unix.Open(filepath.Join(netnsDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(ns, unix.CLONE_NEWNET)
		unix.Close(ns)
		if err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// ip runs the ip command with args.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
