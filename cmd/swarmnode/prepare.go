package main

import (
	"flag"
	"fmt"
	"io"

	"swarmnode/data"
)

// prepareCommand runs `swarmnode prepare`: text files tokenized into token
// shards in llm.c's format, train and val, for data.path.
func prepareCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("prepare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tokenizer := fs.String("tokenizer", "bytes", "bytes (one token per byte, vocab 256); gpt2 is not built yet")
	out := fs.String("out", "", "directory to write the shards into (required)")
	var in []string
	fs.Var(&listFlag{list: &in}, "in", "text file to tokenize (repeatable; also the arguments after the flags)")
	val := fs.Float64("val-fraction", 0.1, "share of the tokens, from the end, written as val shards")
	per := fs.Int("shard-tokens", 100_000_000, "most tokens a shard holds")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	in = append(in, fs.Args()...)
	switch {
	case *tokenizer != "bytes":
		fmt.Fprintf(stderr, "swarmnode prepare: --tokenizer %q: only bytes is built yet (llm.c's own scripts write GPT-2 shards that data.path reads)\n", *tokenizer)
		return exitUsage
	case *out == "" || len(in) == 0:
		fmt.Fprintln(stderr, "swarmnode prepare: --out DIR and at least one --in FILE are required")
		return exitUsage
	}
	paths, err := data.PrepareBytes(in, *out, *val, *per)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode prepare: %v\n", err)
		return exitRuntime
	}
	for _, p := range paths {
		fmt.Fprintln(stdout, p)
	}
	return exitOK
}
