package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"swarmnode/model"
)

var testCfg = model.Config{Vocab: 11, DModel: 8, NHead: 2, NLayer: 2, SeqLen: 4}

// testState is a stage's state with distinct values in every slot.
func testState(stage int, salt float32) ([]model.View, model.State) {
	p, err := model.Split(testCfg, []int{1, 1}, stage)
	if err != nil {
		panic(err)
	}
	lay := model.NewLayout(testCfg, p)
	st := model.State{Step: 7, Params: make([]float32, lay.Size), M: make([]float32, lay.Size), V: make([]float32, lay.Size)}
	for i := range st.Params {
		st.Params[i] = salt + float32(i)
		st.M[i] = -float32(i) / 3
		st.V[i] = float32(i) * float32(i)
	}
	return lay.Views, st
}

func want(views []model.View, stage int) Want {
	return Want{Fingerprint: Fingerprint(testCfg, []int{1, 1}), Stage: stage, Views: views}
}

// TestSaveLoadRoundTrip: what Save wrote, Load gives back, with its meta; the
// parameters file holds the HF names only.
func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	views, st := testState(1, 0.5)
	meta := Meta{Step: 7, Stage: 1, Stages: 2, Fingerprint: Fingerprint(testCfg, []int{1, 1}), DataPosition: 42, Loss: 1.25}
	path, err := Save(dir, views, st, meta, 3)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(path) != "step-00000007" {
		t.Fatalf("saved as %s", path)
	}
	got, gm, err := Load(path, want(views, 1))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Params, st.Params) || !slices.Equal(got.M, st.M) || !slices.Equal(got.V, st.V) || got.Step != 7 {
		t.Fatal("the state read back differs")
	}
	if gm.DataPosition != 42 || gm.Loss != 1.25 || gm.Stages != 2 {
		t.Fatalf("meta read back: %+v", gm)
	}
	b, err := os.ReadFile(filepath.Join(path, ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	tensors, tags, err := ReadSafetensors(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tensors["h.1.attn.c_attn.weight"]; !ok || len(tensors) != len(views) || tags["step"] != "7" {
		t.Fatalf("model.safetensors holds %d tensors (want %d, HF names), tags %v", len(tensors), len(views), tags)
	}
}

// TestKeepsTheNewest: Save keeps the newest `keep` checkpoints and Latest
// loads the newest; a checkpoint of an earlier step than those on disk (a run
// that started over) replaces them.
func TestKeepsTheNewest(t *testing.T) {
	dir := t.TempDir()
	views, st := testState(0, 0)
	fp := Fingerprint(testCfg, []int{1, 1})
	for step := 1; step <= 5; step++ {
		st.Params[0] = float32(step)
		if _, err := Save(dir, views, st, Meta{Step: step, Stages: 2, Fingerprint: fp}, 2); err != nil {
			t.Fatal(err)
		}
	}
	paths, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 2 || filepath.Base(paths[0]) != "step-00000005" || filepath.Base(paths[1]) != "step-00000004" {
		t.Fatalf("kept %v", paths)
	}
	got, meta, _, err := Latest(dir, want(views, 0), nil)
	if err != nil || meta.Step != 5 || got.Params[0] != 5 {
		t.Fatalf("latest: step %d, param %v, %v", meta.Step, got.Params[0], err)
	}
	// A run started over writes step 2: it supersedes steps 4 and 5.
	if _, err := Save(dir, views, st, Meta{Step: 2, Stages: 2, Fingerprint: fp}, 2); err != nil {
		t.Fatal(err)
	}
	if paths, _ := List(dir); len(paths) != 1 || filepath.Base(paths[0]) != "step-00000002" {
		t.Fatalf("after a run started over: %v", paths)
	}
}

// TestRefusesBadCheckpoints: a truncated or corrupt file, another model,
// another stage and a missing tensor are each refused with the file and the
// reason, and Latest falls back to the previous good checkpoint.
func TestRefusesBadCheckpoints(t *testing.T) {
	views, st := testState(1, 0)
	fp := Fingerprint(testCfg, []int{1, 1})
	cases := []struct {
		name  string
		spoil func(path string)
		want  Want
		msg   string
	}{
		{"truncated", func(p string) { truncate(t, filepath.Join(p, ModelFile)) }, want(views, 1), "model.safetensors is corrupt or truncated"},
		{"corrupt", func(p string) { flipByte(t, filepath.Join(p, OptimizerFile)) }, want(views, 1), "optimizer.safetensors is corrupt or truncated"},
		{"meta", func(p string) { os.WriteFile(filepath.Join(p, MetaFile), []byte("{"), 0o644) }, want(views, 1), "meta.json"},
		{"other model", func(string) {}, Want{Fingerprint: "0123", Stage: 1, Views: views}, "another model"},
		{"other stage", func(string) {}, want(views, 0), "of stage 1, not 0"},
		{"other layout", func(string) {}, want(append(slices.Clone(views), model.View{Name: "extra", Len: 1, Shape: []int{1}}), 1), "no tensor extra"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			good, err := Save(dir, views, st, Meta{Step: 3, Stage: 1, Fingerprint: fp}, 0)
			if err != nil {
				t.Fatal(err)
			}
			bad, err := Save(dir, views, st, Meta{Step: 4, Stage: 1, Fingerprint: fp}, 0)
			if err != nil {
				t.Fatal(err)
			}
			c.spoil(bad)
			_, _, err = Load(bad, c.want)
			if err == nil || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), bad) {
				t.Fatalf("Load: %v, want an error naming %s and %q", err, bad, c.msg)
			}
			var passed []string
			_, meta, path, err := Latest(dir, c.want, func(p string, err error) { passed = append(passed, p) })
			if c.name == "other model" || c.name == "other stage" || c.name == "other layout" {
				if !errors.Is(err, ErrNone) || len(passed) != 2 {
					t.Fatalf("Latest: %v after passing over %v, want ErrNone", err, passed)
				}
				return
			}
			if err != nil || path != good || meta.Step != 3 || len(passed) != 1 {
				t.Fatalf("Latest: %s (step %d), %v, passed over %v; want the good %s", path, meta.Step, err, passed, good)
			}
		})
	}
}

func truncate(t *testing.T, p string) {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, p string) {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-3] ^= 0x40
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestKilledMidSave: a process killed with SIGKILL while it saves
// checkpoints again and again leaves only complete checkpoints (and perhaps a
// temporary directory, which the next Save removes): Latest always loads one.
func TestKilledMidSave(t *testing.T) {
	if os.Getenv("CHECKPOINT_SAVE_LOOP") != "" {
		saveLoop(os.Getenv("CHECKPOINT_SAVE_LOOP"))
		return
	}
	dir := t.TempDir()
	views, _ := testState(1, 0)
	for round := 0; round < 5; round++ {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestKilledMidSave$")
		cmd.Env = append(os.Environ(), "CHECKPOINT_SAVE_LOOP="+dir)
		var out bytes.Buffer
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitForCheckpoints(t, dir, round+1)
		cmd.Process.Kill()
		cmd.Wait()
		_, meta, path, err := Latest(dir, want(views, 1), func(p string, err error) { t.Errorf("passed over %s: %v", p, err) })
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		t.Logf("round %d: killed; latest %s (step %d)", round, filepath.Base(path), meta.Step)
	}
}

// saveLoop saves checkpoints of growing steps into dir until killed.
func saveLoop(dir string) {
	views, st := testState(1, 0)
	fp := Fingerprint(testCfg, []int{1, 1})
	start := 0
	if paths, _ := List(dir); len(paths) > 0 {
		_, meta, _, err := Latest(dir, want(views, 1), nil)
		if err != nil {
			os.Exit(3)
		}
		start = meta.Step
	}
	for step := start + 1; ; step++ {
		if _, err := Save(dir, views, st, Meta{Step: step, Stage: 1, Fingerprint: fp}, 3); err != nil {
			os.Exit(2)
		}
	}
}

// waitForCheckpoints waits until the newest checkpoint in dir is of step
// 5·round or later: the saver of this round has made progress.
func waitForCheckpoints(t *testing.T, dir string, round int) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if paths, _ := List(dir); len(paths) > 0 {
			var step int
			if _, err := fmt.Sscanf(filepath.Base(paths[0]), "step-%d", &step); err == nil && step >= round*5 {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no progress in %s", dir)
}
