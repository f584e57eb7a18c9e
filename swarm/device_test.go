package swarm

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"swarmnode/stages"
)

// TestResolveDevice checks the device choice for every config value with the
// GPU's availability and opening replaced: cuda fails naming the cause, auto falls
// back to the CPU and logs why, cpu never touches the GPU.
func TestResolveDevice(t *testing.T) {
	avail, open := gpuAvailable, gpuOpen
	t.Cleanup(func() { gpuAvailable, gpuOpen = avail, open })
	missing := errors.New("cuda: cannot load libcublas.so.13")
	opened := 0
	gpuOpen = func() (*stages.GPU, error) { opened++; return nil, errors.New("context creation failed") }

	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	check := func(device string, avail error, wantErr string, wantLog string) {
		t.Helper()
		gpuAvailable = func() error { return avail }
		buf.Reset()
		dev, err := resolveDevice(device, log)
		if dev != nil {
			t.Errorf("%s: got a device from a failing open", device)
		}
		if (err == nil) != (wantErr == "") || (err != nil && !strings.Contains(err.Error(), wantErr)) {
			t.Errorf("%s (available: %v): err %v, want %q", device, avail, err, wantErr)
		}
		if !strings.Contains(buf.String(), wantLog) {
			t.Errorf("%s (available: %v): log %q lacks %q", device, avail, buf.String(), wantLog)
		}
	}
	check("cpu", missing, "", "")
	check("", missing, "", "")
	if opened != 0 {
		t.Fatalf("cpu opened the GPU %d times", opened)
	}
	check("tpu", nil, `device "tpu"`, "")
	check("cuda", missing, "device cuda: no usable GPU: cuda: cannot load libcublas.so.13", "")
	check("auto", missing, "", "no usable GPU, computing on the CPU")
	check("cuda", nil, "device cuda: opening GPU 0: context creation failed", "")
	check("auto", nil, "", "did not open, computing on the CPU")
	if err := CheckDevice("cuda"); err != nil { // gpuAvailable reports nil now
		t.Errorf("CheckDevice(cuda) with a usable GPU: %v", err)
	}
}
