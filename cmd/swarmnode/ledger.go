package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"swarmnode/config"
	"swarmnode/swarm"
)

// ledgerCommand runs `swarmnode ledger`: it joins a live swarm, collects the
// receipts every holder kept, checks their signatures and prints the work
// they credit to each peer; --out writes the same as JSON.
func ledgerCommand(args []string, stdout, stderr io.Writer) int {
	var out, summary string
	var boot []string
	cfg, code := parseFlags("ledger", args, stderr, &summary, func(fs *flag.FlagSet, _ *config.Config) {
		fs.Var(&listFlag{list: &boot}, "bootstrap", "a peer of the swarm to join through (repeatable; full multiaddr with /p2p/<id>; required)")
		fs.StringVar(&out, "out", "", "also write the tally as JSON to this file")
	})
	if code != exitOK {
		return code
	}
	if len(boot) == 0 {
		fmt.Fprintln(stderr, "swarmnode ledger: --bootstrap is required")
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	audit, err := swarm.CollectLedger(ctx, cfg, boot, setupLogger(stderr))
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode ledger: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "%d receipts from %d holders (%d unreachable, %d lines that did not verify)\n",
		audit.Receipts, audit.Holders, audit.Unreachable, audit.Invalid)
	peers := make([]string, 0, len(audit.Peers))
	for p := range audit.Peers {
		peers = append(peers, p)
	}
	sort.Slice(peers, func(i, j int) bool { return audit.Peers[peers[i]].Tokens > audit.Peers[peers[j]].Tokens })
	fmt.Fprintf(stdout, "%-52s %8s %12s %14s %12s\n", "peer", "steps", "microbatches", "tokens", "TFLOPs")
	for _, p := range peers {
		w := audit.Peers[p]
		fmt.Fprintf(stdout, "%-52s %8d %12d %14d %12.4g\n", p, w.Steps, w.Microbatches, w.Tokens, w.FLOPs/1e12)
	}
	if out != "" {
		b, _ := json.MarshalIndent(audit, "", "  ")
		if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "swarmnode ledger: %v\n", err)
			return exitRuntime
		}
	}
	return exitOK
}
