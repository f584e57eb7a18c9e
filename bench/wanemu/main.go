// Command wanemu emulates a wide-area network between the peers of a local
// swarm, for benchmarks: every peer gets its own network namespace, and every
// link between two peers a rate and a one-way delay.
//
// Why in userspace: the kernel of the dev machine has network namespaces, veth
// and tc's tbf/htb, but no netem, so tc cannot delay packets (and there is no
// iptables). Instead each namespace <prefix>N gets a TUN device with the address
// 10.77.0.N+1/24, and this one process holds every TUN: it reads each IPv4
// packet a peer sends, and writes it into the destination peer's TUN after the
// link's one-way delay, at most at the link's rate (a token bucket per directed
// link i→j, the sender's uplink, with a bounded queue that drops like a router).
//
//	wanemu -peers 6 -rate 25mbit -delay 40ms -prefix swn
//	ip netns exec swn3 CMD    # CMD runs as peer 3, reaching peer j at 10.77.0.j+1
//
// With -split K, SIGUSR1 partitions the network (peers 0…K-1 cannot reach
// K…N-1: their packets are dropped) and SIGUSR2 heals it, for partition tests.
//
// It prints "ready" once every namespace is up and packets flow, routes until
// SIGINT or SIGTERM, then deletes its namespaces and prints each link's
// counters to stderr. It never touches the root namespace's interfaces or
// routes. `wanemu -cleanup -prefix swn` deletes namespaces swnN left behind by
// a process that was killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command: it parses args, then cleans up or emulates until a
// signal. It returns the exit status: 0, 1 for an error, 2 for bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wanemu", flag.ContinueOnError)
	fs.SetOutput(stderr)
	peers := fs.Int("peers", 2, "number of peers (namespaces <prefix>0 … <prefix>N-1), at most 253")
	rate := fs.String("rate", "off", `each directed link's rate: e.g. 25mbit, 500kbit, 1gbit; "off" or 0 for unshaped`)
	delay := fs.Duration("delay", 0, "each link's one-way delay, e.g. 40ms")
	prefix := fs.String("prefix", "swn", "namespace name prefix")
	queue := fs.Int("queue", 0, "bytes a link queues before dropping (default: 1 s at the rate, at least 256 kB)")
	cleanup := fs.Bool("cleanup", false, "only delete namespaces <prefix>N, then exit")
	split := fs.Int("split", 0, "partition point: SIGUSR1 cuts peers [0,split) off from the rest, SIGUSR2 heals (0: no partition)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cleanup {
		names, err := DeleteNamespaces(*prefix)
		for _, n := range names {
			fmt.Fprintf(stderr, "wanemu: deleted namespace %s\n", n)
		}
		if err != nil {
			fmt.Fprintf(stderr, "wanemu: %v\n", err)
			return 1
		}
		return 0
	}
	bits, err := ParseRate(*rate)
	if err != nil {
		fmt.Fprintf(stderr, "wanemu: -rate: %v\n", err)
		return 2
	}
	cfg := Config{Peers: *peers, Rate: bits, Delay: *delay, Prefix: *prefix, Queue: *queue, Split: *split, Cut: new(atomic.Bool)}
	if err := cfg.check(); err != nil {
		fmt.Fprintf(stderr, "wanemu: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.Split > 0 {
		sig := make(chan os.Signal, 4)
		signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
		defer signal.Stop(sig)
		go func() {
			for s := range sig {
				cfg.Cut.Store(s == syscall.SIGUSR1)
				if s == syscall.SIGUSR1 {
					fmt.Fprintf(stdout, "cut: peers 0-%d | %d-%d\n", cfg.Split-1, cfg.Split, cfg.Peers-1)
				} else {
					fmt.Fprintln(stdout, "healed")
				}
			}
		}()
	}
	stats, err := Run(ctx, cfg, func() { fmt.Fprintln(stdout, "ready") })
	if err == nil || len(stats.Links) > 0 {
		stats.Print(stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "wanemu: %v\n", err)
		return 1
	}
	return 0
}
