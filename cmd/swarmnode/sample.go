package main

import (
	"flag"
	"fmt"
	"io"

	"swarmnode/cuda"
	"swarmnode/sample"
)

// decoderOn returns a decoder of m on device (cpu or cuda) and what frees it.
func decoderOn(device string, m *sample.Model) (sample.Decoder, func(), error) {
	if device == "cpu" {
		return m.Decoder(), func() {}, nil
	}
	if err := cuda.Available(); err != nil {
		return nil, nil, fmt.Errorf("--device cuda: %w", err)
	}
	dev, err := cuda.Open(0)
	if err != nil {
		return nil, nil, fmt.Errorf("--device cuda: %w", err)
	}
	g, err := sample.NewGPUDecoder(dev, m)
	if err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("--device cuda: %w", err)
	}
	return g, func() { g.Close(); dev.Close() }, nil
}

// sampleCommand runs `swarmnode sample`: text generated from an exported
// model (Hugging Face GPT-2 format) with a KV cache, on the CPU or the GPU.
func sampleCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sample", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("model", "", "model directory: model.safetensors and config.json (swarmnode export's)")
	prompt := fs.String("prompt", "\n", "text to continue")
	var o sample.Options
	fs.IntVar(&o.Tokens, "tokens", 200, "tokens to generate")
	fs.Float64Var(&o.Temperature, "temperature", 0.8, "divides the logits; 0 picks the most likely token")
	fs.IntVar(&o.TopK, "top-k", 40, "draw among the K most likely tokens; 0: all")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the draws")
	device := fs.String("device", "cpu", "where to compute: cpu, or cuda (GPU 0)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "swarmnode sample: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	case *dir == "":
		fmt.Fprintln(stderr, "swarmnode sample: --model DIR is required")
		return exitUsage
	case *device != "cpu" && *device != "cuda":
		fmt.Fprintf(stderr, "swarmnode sample: --device %q: cpu or cuda\n", *device)
		return exitUsage
	case o.Tokens < 0 || o.Temperature < 0 || o.TopK < 0:
		fmt.Fprintln(stderr, "swarmnode sample: --tokens, --temperature and --top-k must not be negative")
		return exitUsage
	case *prompt == "":
		fmt.Fprintln(stderr, "swarmnode sample: --prompt must not be empty")
		return exitUsage
	}
	m, err := sample.Load(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode sample: %v\n", err)
		return exitRuntime
	}
	encode, decode, err := sample.TokenizerFor(m.Vocab)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode sample: %v\n", err)
		return exitRuntime
	}
	dec, closeDec, err := decoderOn(*device, m)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode sample: %v\n", err)
		return exitRuntime
	}
	defer closeDec()
	out, err := sample.Generate(dec, m.Positions, encode(*prompt), o)
	fmt.Fprintf(stdout, "%s%s\n", *prompt, decode(out))
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode sample: %v\n", err)
		return exitRuntime
	}
	return exitOK
}
