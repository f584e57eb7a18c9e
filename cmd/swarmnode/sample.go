package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"swarmnode/cuda"
	"swarmnode/sample"
	"swarmnode/swarm"
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
	cfgPath := fs.String("config", "", "with --bootstrap: the run's config file")
	var boot []string
	fs.Var(&listFlag{list: &boot}, "bootstrap", "generate through a live swarm's holders instead of --model, joined through this peer (repeatable; full multiaddr with /p2p/<id>)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "swarmnode sample: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	case (*dir == "") == (len(boot) == 0):
		fmt.Fprintln(stderr, "swarmnode sample: one of --model DIR or --bootstrap MA (with --config FILE) is required")
		return exitUsage
	case len(boot) > 0 && *device != "cpu":
		fmt.Fprintln(stderr, "swarmnode sample: --device is for --model; through a swarm each holder computes where it trains")
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
	if len(boot) > 0 {
		return sampleLive(*cfgPath, boot, *prompt, o, stdout, stderr)
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

// sampleLive runs `swarmnode sample --bootstrap`: generation through the
// stages' holders of a live swarm, each running its blocks over its own KV
// cache.
func sampleLive(cfgPath string, boot []string, prompt string, o sample.Options, stdout, stderr io.Writer) int {
	cfg, code := loadConfig(cfgPath, stderr)
	if code != exitOK {
		return code
	}
	encode, decode, err := sample.TokenizerFor(cfg.Model.Vocab)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode sample: %v\n", err)
		return exitRuntime
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, err := swarm.SampleLive(ctx, cfg, boot, encode(prompt), o, setupLogger(stderr))
	fmt.Fprintf(stdout, "%s%s\n", prompt, decode(out))
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode sample: %v\n", err)
		return exitRuntime
	}
	return exitOK
}
