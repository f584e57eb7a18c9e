package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/admission"
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

// TestRevokeCommand: `swarmnode revoke` creates the list, adds to it on each
// call (re-signed, issued later), and refuses a list of another owner.
func TestRevokeCommand(t *testing.T) {
	bin := swarmnodeBinary(t)
	dir := t.TempDir()
	ownerKey := filepath.Join(dir, "owner.key")
	owner, err := peer.Decode(swarmnodeOut(t, bin, "id", "--identity", ownerKey))
	if err != nil {
		t.Fatal(err)
	}
	p := swarmnodeOut(t, bin, "id", "--identity", filepath.Join(dir, "p.key"))
	q := swarmnodeOut(t, bin, "id", "--identity", filepath.Join(dir, "q.key"))
	list := filepath.Join(dir, "revoked.json")
	swarmnodeOut(t, bin, "revoke", "--identity", ownerKey, "--run", "r", "--peer", p, "--list", list)
	first, err := admission.LoadRevocations(list)
	if err != nil {
		t.Fatal(err)
	}
	swarmnodeOut(t, bin, "revoke", "--identity", ownerKey, "--run", "r", "--peer", q, "--list", list)
	second, err := admission.LoadRevocations(list)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := peer.Decode(p)
	qid, _ := peer.Decode(q)
	if err := second.Verify(owner, "r"); err != nil || !second.Revoked(pid) || !second.Revoked(qid) || second.Issued.Before(first.Issued) {
		t.Errorf("list after two calls: %+v, %v", second, err)
	}
	// Another owner's key cannot extend the owner's list.
	cmd := exec.Command(bin, "revoke", "--identity", filepath.Join(dir, "p.key"), "--run", "r", "--peer", q, "--list", list)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "not the run owner") {
		t.Errorf("another key extended the list: %v %s", err, out)
	}
	if err := exec.Command(bin, "revoke", "--run", "r", "--list", list).Run(); err == nil {
		t.Error("revoke without --peer succeeded")
	}
}
