package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// swarmnodeOut runs the binary with args and returns its trimmed stdout.
func swarmnodeOut(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		t.Fatalf("swarmnode %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

// TestAdmittedSwarm is the admission flow as a run owner and volunteers do
// it: each volunteer prints its peer id (`swarmnode id`), the owner signs a
// certificate for it (`swarmnode admit`), and everyone starts `swarmnode run`
// with the admitted config and its certificate. The swarm trains. An outsider
// with the run id and the bootstrap address, serving stage 1 in an open-mode
// config, is never listed as a holder and serves nothing.
func TestAdmittedSwarm(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 6 processes")
	}
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	owner := swarmnodeOut(t, bin, "id", "--identity", filepath.Join(dir, "owner.key"))
	peers := map[string]string{"s0": "server", "s1": "server", "s2": "server", "trainer": "trainer"}
	args := map[string][]string{}
	for name, roles := range peers {
		key, cert := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".cert")
		id := swarmnodeOut(t, bin, "id", "--identity", key)
		swarmnodeOut(t, bin, "admit", "--identity", filepath.Join(dir, "owner.key"), "--run", "e2e-swarm", "--peer", id, "--roles", roles, "--valid", "1h", "--out", cert)
		args[name] = []string{"--identity", key, "--certificate", cert}
	}
	admitted := filepath.Join(dir, "admitted.yaml")
	writeFile(t, admitted, swarmTestConfig+"admission: {mode: admitted, owner: "+owner+"}\n")
	open := filepath.Join(dir, "open.yaml")
	writeFile(t, open, swarmTestConfig)

	boot := startRun(t, bin, admitted, append(args["s0"], "--stage", "0", "--role", "server")...)
	bootAddr := boot.addrs[0]
	startRun(t, bin, admitted, append(args["s1"], "--bootstrap", bootAddr, "--stage", "1", "--role", "server")...)
	startRun(t, bin, admitted, append(args["s2"], "--bootstrap", bootAddr, "--stage", "2", "--role", "server")...)
	outsider := startRun(t, bin, open, "--bootstrap", bootAddr, "--stage", "1", "--role", "server")
	summary := filepath.Join(dir, "summary.json")
	trainer := startRun(t, bin, admitted, append(args["trainer"], "--bootstrap", bootAddr, "--role", "trainer", "--steps", "80", "--summary", summary)...)

	outsiderID := ""
	deadline := time.After(2 * time.Minute)
	for done := false; !done; {
		select {
		case <-trainer.exited:
			done = true
		case <-deadline:
			t.Fatalf("trainer still running after 2 minutes\n%s", trainer.stderr)
		case <-time.After(200 * time.Millisecond):
		}
		var o, tr apiStatus
		if outsiderID == "" && readStatus(outsider, &o) == nil {
			outsiderID = o.PeerID
		}
		if outsiderID != "" && readStatus(trainer, &tr) == nil {
			for _, h := range tr.Holders["1"] {
				if h.PeerID == outsiderID {
					t.Fatalf("the trainer lists the outsider as a holder of stage 1")
				}
			}
		}
	}
	if trainer.err != nil {
		t.Fatalf("trainer exited with %v\n%s", trainer.err, trainer.stderr)
	}
	checkSummarySteps(t, summary, 80, trainer)
	var o apiStatus
	if err := readStatus(outsider, &o); err != nil {
		t.Fatal(err)
	}
	if o.Microbatches.Completed != 0 {
		t.Errorf("the outsider served %d microbatches", o.Microbatches.Completed)
	}
	var b apiStatus
	if err := readStatus(boot, &b); err != nil {
		t.Fatal(err)
	}
	for _, h := range b.Holders["1"] {
		if h.PeerID == outsiderID {
			t.Error("the bootstrap lists the outsider as a holder of stage 1")
		}
	}
}
