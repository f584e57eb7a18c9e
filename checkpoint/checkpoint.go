package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"swarmnode/model"
)

// The files of a checkpoint directory.
const (
	ModelFile     = "model.safetensors"
	OptimizerFile = "optimizer.safetensors"
	MetaFile      = "meta.json"
)

// ErrNone is returned by Latest when the directory holds no valid checkpoint.
var ErrNone = errors.New("checkpoint: none found")

// Meta describes a checkpoint: what it is a state of and where training was.
type Meta struct {
	// Step is the number of optimizer steps applied: the stage's version.
	Step int `json:"step"`
	// Stage is the stage's index of Stages; Fingerprint identifies the model
	// and its split (see Fingerprint).
	Stage       int    `json:"stage"`
	Stages      int    `json:"stages"`
	Fingerprint string `json:"fingerprint"`
	// DataPosition is how many training microbatches the trainer had drawn.
	DataPosition int64 `json:"data_position"`
	// Loss is the last step's training loss, for the log line of a resume.
	Loss float64 `json:"loss"`
	// Created is when the checkpoint was written.
	Created time.Time `json:"created"`
	// Files maps each data file's name to its SHA-256, hex.
	Files map[string]string `json:"files"`
}

// Fingerprint identifies a model and its split into stages: two states can
// replace each other only when their fingerprints are equal.
func Fingerprint(cfg model.Config, stages []int) string {
	b, _ := json.Marshal(struct {
		Model  model.Config
		Stages []int
	}{cfg, stages})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Save writes st, a stage's state laid out by views, as the checkpoint of
// meta.Step in dir (created if missing), crash-safe, and then removes
// temporary directories left by interrupted saves, checkpoints of later steps
// (of a run that started over) and all but the newest keep checkpoints (keep
// ≤ 0 keeps all). It returns the checkpoint's path.
func Save(dir string, views []model.View, st model.State, meta Meta, keep int) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, ".tmp-")
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	meta.Created = time.Now().UTC()
	meta.Files = map[string]string{}
	var params, opt []Tensor
	for _, v := range views {
		params = append(params, Tensor{Name: v.Name, Shape: v.Shape, Data: v.Of(st.Params)})
		opt = append(opt, Tensor{Name: "exp_avg." + v.Name, Shape: v.Shape, Data: v.Of(st.M)},
			Tensor{Name: "exp_avg_sq." + v.Name, Shape: v.Shape, Data: v.Of(st.V)})
	}
	tags := map[string]string{"format": "pt", "step": strconv.Itoa(meta.Step), "stage": strconv.Itoa(meta.Stage), "fingerprint": meta.Fingerprint}
	for _, f := range []struct {
		name    string
		tensors []Tensor
	}{{ModelFile, params}, {OptimizerFile, opt}} {
		var buf bytes.Buffer
		if err := WriteSafetensors(&buf, f.tensors, tags); err != nil {
			return "", fmt.Errorf("checkpoint: %s: %w", f.name, err)
		}
		sum := sha256.Sum256(buf.Bytes())
		meta.Files[f.name] = hex.EncodeToString(sum[:])
		if err := writeSynced(filepath.Join(tmp, f.name), buf.Bytes()); err != nil {
			return "", err
		}
	}
	mb, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return "", err
	}
	if err := writeSynced(filepath.Join(tmp, MetaFile), mb); err != nil {
		return "", err
	}
	if err := syncDir(tmp); err != nil {
		return "", err
	}
	final := filepath.Join(dir, fmt.Sprintf("step-%08d", meta.Step))
	if err := os.RemoveAll(final); err != nil { // a checkpoint of the same step, replaced whole
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return "", err
	}
	return final, prune(dir, meta.Step, keep)
}

// writeSynced writes b to a new file at path and syncs it to disk.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("checkpoint: writing %s: %w", path, err)
	}
	return nil
}

// syncDir syncs a directory, so that the names created or renamed in it
// survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("checkpoint: syncing %s: %w", dir, err)
	}
	return nil
}

// List returns the checkpoint directories in dir, newest step first.
func List(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	type ck struct {
		step int
		path string
	}
	var cks []ck
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "step-")
		if !ok || !e.IsDir() {
			continue
		}
		if step, err := strconv.Atoi(rest); err == nil && step >= 0 {
			cks = append(cks, ck{step, filepath.Join(dir, e.Name())})
		}
	}
	sort.Slice(cks, func(i, j int) bool { return cks[i].step > cks[j].step })
	out := make([]string, len(cks))
	for i, c := range cks {
		out[i] = c.path
	}
	return out, nil
}

// stepOf is the step of a checkpoint directory's name (step-N).
func stepOf(path string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(filepath.Base(path), "step-"))
	return n
}

// prune removes the temporary directories of interrupted saves, the
// checkpoints of steps after step (left by a run that started over, with
// --fresh say: the one just written supersedes them), and all but the newest
// keep of the rest.
func prune(dir string, step, keep int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("checkpoint: %w", err)
			}
		}
	}
	all, err := List(dir)
	if err != nil {
		return err
	}
	var stale []string
	for len(all) > 0 && stepOf(all[0]) > step {
		stale, all = append(stale, all[0]), all[1:]
	}
	if keep > 0 {
		stale = append(stale, all[min(keep, len(all)):]...)
	}
	for _, p := range stale {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	return nil
}

// WriteFile writes b to path crash-safe: to a temporary file beside it,
// synced, then renamed over path, so path holds the old bytes or the new, never
// a part.
func WriteFile(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	tmp := fmt.Sprintf("%s.tmp-%d", path, os.Getpid())
	os.Remove(tmp)
	if err := writeSynced(tmp, b); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("checkpoint: %w", err)
	}
	return syncDir(dir)
}
