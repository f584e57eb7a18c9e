// Command swarmnode trains GPT-style transformers on a swarm of volunteer machines.
//
//	swarmnode local --config FILE   train the whole model in this process (baseline)
//	swarmnode run   --config FILE   join a swarm as a stage server and/or trainer
//	swarmnode export --config FILE --out DIR   the checkpointed model as a HF GPT-2
//	swarmnode sample --model DIR --prompt TEXT  text from an exported model
//	swarmnode admit --peer ID --run RUN   the run owner admits a peer
//	swarmnode revoke --peer ID --run RUN --list FILE   ... and revokes one
//	swarmnode network-key --out FILE   a private-network key for a closed run
//	swarmnode ledger --config FILE --bootstrap MA   who did how much of the run
//
// Exit codes: 0 clean, 1 runtime failure, 2 bad flags or config.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"swarmnode/swarm"
)

// Exit codes shared by every subcommand.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "local":
		return localCommand(args[1:], stdout, stderr)
	case "run":
		return runCommand(args[1:], stdout, stderr)
	case "export":
		return exportCommand(args[1:], stdout, stderr)
	case "sample":
		return sampleCommand(args[1:], stdout, stderr)
	case "prepare":
		return prepareCommand(args[1:], stdout, stderr)
	case "id":
		return idCommand(args[1:], stdout, stderr)
	case "admit":
		return admitCommand(args[1:], stdout, stderr)
	case "revoke":
		return revokeCommand(args[1:], stdout, stderr)
	case "ledger":
		return ledgerCommand(args[1:], stdout, stderr)
	case "network-key":
		return networkKeyCommand(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "swarmnode %s (wire protocol %d)\n", swarm.Release(), swarm.WireVersion)
		return exitOK
	case "help", "-h", "--help":
		usage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "swarmnode: unknown command %q\n", args[0])
		usage(stderr)
		return exitUsage
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: swarmnode <command> [flags]

commands:
  local   train the whole model in one process (the centralized baseline)
  run     join a swarm: serve a pipeline stage and/or feed it training data
  export  write the checkpointed model as a Hugging Face GPT-2 (safetensors)
  sample  generate text from an exported model
  prepare tokenize text files into token shards (llm.c's format) for data.path
  id      print the peer id of an identity key file (created when missing)
  admit   sign a certificate admitting a peer to an admitted run (run owner)
  revoke  add peers to an admitted run's signed revocation list (run owner)
  network-key  write a libp2p private-network key (admission.network_key)
  ledger  collect and verify the swarm's signed work receipts; print each peer's work
  version print the release and the wire protocol version

Run "swarmnode <command> -h" for a command's flags.
`)
}

// setupLogger returns the text logger every command writes progress with.
func setupLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
