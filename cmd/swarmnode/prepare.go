package main

import (
	"flag"
	"fmt"
	"io"

	"swarmnode/data"
	"swarmnode/tokenizer"
)

// prepareCommand runs `swarmnode prepare`: text files tokenized into token
// shards in llm.c's format, train and val, for data.path.
func prepareCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("prepare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tokName := fs.String("tokenizer", "bytes", "bytes (one token per byte, vocab 256) or gpt2 (GPT-2's BPE, vocab 50257; <|endoftext|> before each file)")
	out := fs.String("out", "", "directory to write the shards into (required)")
	var in []string
	fs.Var(&listFlag{list: &in}, "in", "text file to tokenize (repeatable; also the arguments after the flags)")
	val := fs.Float64("val-fraction", 0.1, "share of the tokens, from the end, written as val shards")
	per := fs.Int("shard-tokens", 100_000_000, "most tokens a shard holds")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	in = append(in, fs.Args()...)
	if *out == "" || len(in) == 0 {
		fmt.Fprintln(stderr, "swarmnode prepare: --out DIR and at least one --in FILE are required")
		return exitUsage
	}
	var paths []string
	var err error
	switch *tokName {
	case "bytes":
		paths, err = data.PrepareBytes(in, *out, *val, *per)
	case "gpt2":
		var tok *tokenizer.BPE
		if tok, err = tokenizer.GPT2(); err == nil {
			paths, err = data.Prepare(in, *out, "gpt2", *val, *per, func(b []byte) []uint16 {
				ids := append([]int32{tokenizer.EndOfText}, tok.Encode(string(b))...)
				out := make([]uint16, len(ids))
				for i, id := range ids {
					out[i] = uint16(id)
				}
				return out
			})
		}
	default:
		fmt.Fprintf(stderr, "swarmnode prepare: --tokenizer %q: want bytes or gpt2\n", *tokName)
		return exitUsage
	}
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode prepare: %v\n", err)
		return exitRuntime
	}
	for _, p := range paths {
		fmt.Fprintln(stdout, p)
	}
	return exitOK
}
