package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"swarmnode/swarm"
)

// TestDeviceFlag checks --device on `local` and `run`: a bad value is a usage
// error, cuda without a GPU exits 1 naming what is missing (config or flag),
// --device overrides the config, and auto falls back to the CPU and says so.
func TestDeviceFlag(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	body := `run: dev
model: {vocab: 256, d_model: 32, n_head: 2, n_layer: 2, seq_len: 16}
stages: [1, 1]
data: {path: examples/gpt/data/tinyshakespeare.txt}
train: {microbatch: 2, batch: 2, steps: 2, warmup: 1, eval_every: 2, eval_batches: 1}
checkpoint: {dir: ` + filepath.Join(dir, "ck") + `}
`
	cpuCfg := filepath.Join(dir, "cpu.yaml")
	writeFile(t, cpuCfg, body)
	cudaCfg := filepath.Join(dir, "cuda.yaml")
	writeFile(t, cudaCfg, body+"device: cuda\n")

	exit := func(args ...string) (int, string) {
		cmd := exec.Command(bin, args...)
		cmd.Dir = repoRoot(t)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return 0, string(out)
	}
	for _, c := range []string{"local", "run"} {
		if code, out := exit(c, "--config", cpuCfg, "--device", "tpu"); code != 2 || !strings.Contains(out, `--device "tpu"`) {
			t.Errorf("%s --device tpu: exit %d, want 2 naming the flag:\n%s", c, code, out)
		}
	}
	if swarm.CheckDevice("cuda") == nil {
		t.Log("a GPU is usable here: the no-GPU cases are not checked")
	} else {
		for _, args := range [][]string{
			{"local", "--config", cpuCfg, "--device", "cuda"},
			{"local", "--config", cudaCfg},
			{"run", "--config", cpuCfg, "--device", "cuda", "--status", "off", "--listen", "/ip4/127.0.0.1/tcp/0"},
		} {
			code, out := exit(args...)
			if code != 1 || !strings.Contains(out, "device cuda: no usable GPU") || !strings.Contains(out, "libcuda") {
				t.Errorf("%v: exit %d, want 1 with a message naming the missing library:\n%s", args, code, out)
			}
		}
		code, out := exit("local", "--config", cudaCfg, "--device", "auto")
		if code != 0 || !strings.Contains(out, "computing on the CPU") || !strings.Contains(out, "device=cpu") {
			t.Errorf("local --device auto without a GPU: exit %d, want 0 on the CPU:\n%s", code, out)
		}
	}
	if code, out := exit("local", "--config", cudaCfg, "--device", "cpu"); code != 0 || !strings.Contains(out, "device=cpu") {
		t.Errorf("local --device cpu over config device cuda: exit %d, want 0 on the CPU:\n%s", code, out)
	}
}
