package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"swarmnode/model"
)

// Want is what a checkpoint must be a state of to be loaded.
type Want struct {
	// Fingerprint is the model's and split's (see Fingerprint).
	Fingerprint string
	// Stage is the stage index.
	Stage int
	// Views are the stage's tensors, in its layout.
	Views []model.View
}

// Load reads the checkpoint at path, a directory Save wrote, and checks it
// against want: the files' hashes, the fingerprint, the stage and every
// tensor's name and shape. The error names the file and what is wrong.
func Load(path string, want Want) (model.State, Meta, error) {
	var meta Meta
	mb, err := os.ReadFile(filepath.Join(path, MetaFile))
	if err != nil {
		return model.State{}, meta, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if err := json.Unmarshal(mb, &meta); err != nil {
		return model.State{}, meta, fmt.Errorf("checkpoint %s: %s: %w", path, MetaFile, err)
	}
	if meta.Fingerprint != want.Fingerprint {
		return model.State{}, meta, fmt.Errorf("checkpoint %s: of another model or split (fingerprint %s, this run's %s)", path, meta.Fingerprint, want.Fingerprint)
	}
	if meta.Stage != want.Stage {
		return model.State{}, meta, fmt.Errorf("checkpoint %s: of stage %d, not %d", path, meta.Stage, want.Stage)
	}
	if meta.Step < 0 {
		return model.State{}, meta, fmt.Errorf("checkpoint %s: step %d", path, meta.Step)
	}
	size := 0
	for _, v := range want.Views {
		size = max(size, v.Offset+v.Len)
	}
	st := model.State{Step: meta.Step, Params: make([]float32, size), M: make([]float32, size), V: make([]float32, size)}
	files := []struct {
		name   string
		fill   []float32
		prefix string
	}{{ModelFile, st.Params, ""}, {OptimizerFile, st.M, "exp_avg."}, {OptimizerFile, st.V, "exp_avg_sq."}}
	read := map[string]map[string]Tensor{}
	for _, f := range files {
		tensors, ok := read[f.name]
		if !ok {
			if tensors, err = readFile(path, f.name, meta.Files[f.name]); err != nil {
				return model.State{}, meta, err
			}
			read[f.name] = tensors
		}
		prefix := f.prefix
		if err := fill(f.fill, tensors, func(n string) string { return prefix + n }, want.Views); err != nil {
			return model.State{}, meta, fmt.Errorf("checkpoint %s: %s: %w", path, f.name, err)
		}
	}
	return st, meta, nil
}

// readFile reads one safetensors file of a checkpoint and checks its hash.
func readFile(dir, name, wantSum string) (map[string]Tensor, error) {
	p := filepath.Join(dir, name)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != wantSum {
		return nil, fmt.Errorf("checkpoint %s: %s is corrupt or truncated (SHA-256 %.12s…, %s says %.12s…)", dir, name, got, MetaFile, wantSum)
	}
	tensors, _, err := ReadSafetensors(b)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %s: %w", dir, name, err)
	}
	return tensors, nil
}

// fill copies the tensors named name(view name) into dst, laid out by views;
// each must be there with the view's shape.
func fill(dst []float32, tensors map[string]Tensor, name func(string) string, views []model.View) error {
	for _, v := range views {
		n := name(v.Name)
		t, ok := tensors[n]
		if !ok {
			return fmt.Errorf("no tensor %s", n)
		}
		if !slices.Equal(t.Shape, v.Shape) {
			return fmt.Errorf("tensor %s has shape %v, the model's is %v", n, t.Shape, v.Shape)
		}
		copy(v.Of(dst), t.Data)
	}
	return nil
}

// Latest loads the newest checkpoint in dir that Load accepts. It calls
// refused, if not nil, with each newer checkpoint it passed over and why, and
// returns ErrNone when no checkpoint is accepted.
func Latest(dir string, want Want, refused func(path string, err error)) (model.State, Meta, string, error) {
	paths, err := List(dir)
	if err != nil {
		return model.State{}, Meta{}, "", err
	}
	for _, p := range paths {
		st, meta, err := Load(p, want)
		if err == nil {
			return st, meta, p, nil
		}
		if refused != nil {
			refused(p, err)
		}
	}
	return model.State{}, Meta{}, "", ErrNone
}
