package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/admission"
	"swarmnode/swarm"
)

// idCommand runs `swarmnode id`: the peer id of an identity key file,
// created when missing, so that a volunteer can ask the run owner for a
// certificate before joining.
func idCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("id", flag.ContinueOnError)
	fs.SetOutput(stderr)
	identity := fs.String("identity", filepath.Join(".swarmnode", "identity.key"), "identity key file (created when missing)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "swarmnode id: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	key, err := swarm.LoadIdentity(*identity)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode id: %v\n", err)
		return exitRuntime
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode id: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintln(stdout, id)
	return exitOK
}

// admitCommand runs `swarmnode admit`: the run owner signs a certificate
// admitting one peer id to an admitted run.
func admitCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("admit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	identity := fs.String("identity", filepath.Join(".swarmnode", "identity.key"), "the run owner's identity key file (its peer id is admission.owner)")
	run := fs.String("run", "", "run id (the config's run)")
	who := fs.String("peer", "", "peer id to admit (`swarmnode id` on that peer)")
	roles := fs.String("roles", "server,trainer", "what the peer may do: server, trainer or both, comma-separated")
	valid := fs.Duration("valid", 30*24*time.Hour, "how long the certificate is good for")
	out := fs.String("out", "", "certificate file to write (default: stdout)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	p, perr := peer.Decode(*who)
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "swarmnode admit: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	case *run == "":
		fmt.Fprintln(stderr, "swarmnode admit: --run is required")
		return exitUsage
	case perr != nil:
		fmt.Fprintf(stderr, "swarmnode admit: --peer %q: %v\n", *who, perr)
		return exitUsage
	case *valid <= 0:
		fmt.Fprintln(stderr, "swarmnode admit: --valid must be positive")
		return exitUsage
	}
	key, err := swarm.LoadIdentity(*identity)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode admit: %v\n", err)
		return exitRuntime
	}
	c, err := admission.Sign(key, *run, p, strings.Split(*roles, ","), time.Now().Add(*valid))
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode admit: %v\n", err)
		return exitUsage
	}
	b := append(c.Encode(), '\n')
	if *out == "" {
		_, _ = stdout.Write(b)
		return exitOK
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		fmt.Fprintf(stderr, "swarmnode admit: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintf(stderr, "admitted %s to run %q as %s until %s (owner %s)\n", p, *run, *roles, c.Expires.Format(time.RFC3339), c.Owner)
	return exitOK
}

// revokeCommand runs `swarmnode revoke`: the run owner adds peers to the
// run's signed revocation list file (created when missing) and re-signs it,
// issued now, so that it replaces every older list in the swarm.
func revokeCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("revoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	identity := fs.String("identity", filepath.Join(".swarmnode", "identity.key"), "the run owner's identity key file")
	run := fs.String("run", "", "run id (the config's run)")
	who := fs.String("peer", "", "peer ids to revoke, comma-separated")
	list := fs.String("list", "", "the revocation list file to update (admission.revocations)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	var peers []peer.ID
	for _, s := range strings.Split(*who, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := peer.Decode(s)
		if err != nil {
			fmt.Fprintf(stderr, "swarmnode revoke: --peer %q: %v\n", s, err)
			return exitUsage
		}
		peers = append(peers, p)
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "swarmnode revoke: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	case *run == "" || *list == "":
		fmt.Fprintln(stderr, "swarmnode revoke: --run and --list are required")
		return exitUsage
	case len(peers) == 0:
		fmt.Fprintln(stderr, "swarmnode revoke: --peer names no peer")
		return exitUsage
	}
	key, err := swarm.LoadIdentity(*identity)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode revoke: %v\n", err)
		return exitRuntime
	}
	owner, _ := peer.IDFromPrivateKey(key)
	if old, err := admission.LoadRevocations(*list); err == nil {
		if err := old.Verify(owner, *run); err != nil {
			fmt.Fprintf(stderr, "swarmnode revoke: %s: %v\n", *list, err)
			return exitRuntime
		}
		for _, s := range old.Peers {
			if p, err := peer.Decode(s); err == nil {
				peers = append(peers, p)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "swarmnode revoke: %v\n", err)
		return exitRuntime
	}
	r, err := admission.SignRevocations(key, *run, peers, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode revoke: %v\n", err)
		return exitRuntime
	}
	tmp := *list + ".tmp"
	if err := os.WriteFile(tmp, append(r.Encode(), '\n'), 0o644); err != nil {
		fmt.Fprintf(stderr, "swarmnode revoke: %v\n", err)
		return exitRuntime
	}
	if err := os.Rename(tmp, *list); err != nil {
		fmt.Fprintf(stderr, "swarmnode revoke: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "%s revokes %d peers of run %q, issued %s\n", *list, len(r.Peers), *run, r.Issued.Format(time.RFC3339))
	return exitOK
}

// networkKeyCommand runs `swarmnode network-key`: a fresh libp2p
// private-network key file for admission.network_key.
func networkKeyCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("network-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "key file to write (refused if it exists)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 || *out == "" {
		fmt.Fprintln(stderr, "swarmnode network-key: usage: swarmnode network-key --out FILE")
		return exitUsage
	}
	b, err := swarm.NewNetworkKey()
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode network-key: %v\n", err)
		return exitRuntime
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode network-key: %v\n", err)
		return exitRuntime
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode network-key: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "wrote a private-network key to %s: give it to every peer of the run as admission.network_key\n", *out)
	return exitOK
}
