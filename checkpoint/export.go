package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"swarmnode/model"
)

// Part is one stage's parameters for Export: its views and its flat vector.
type Part struct {
	Views  []model.View
	Params []float32
}

// HFConfig is the config.json of a Hugging Face GPT-2 model.
type HFConfig struct {
	Architectures      []string `json:"architectures"`
	ModelType          string   `json:"model_type"`
	VocabSize          int      `json:"vocab_size"`
	NPositions         int      `json:"n_positions"`
	NCtx               int      `json:"n_ctx"`
	NEmbd              int      `json:"n_embd"`
	NLayer             int      `json:"n_layer"`
	NHead              int      `json:"n_head"`
	ActivationFunction string   `json:"activation_function"`
	LayerNormEpsilon   float64  `json:"layer_norm_epsilon"`
	// TieWordEmbeddings is false: swarmnode's LM head is a tensor of its own
	// (it lives on the last stage, the token embedding on the first).
	TieWordEmbeddings bool    `json:"tie_word_embeddings"`
	ResidPdrop        float64 `json:"resid_pdrop"`
	EmbdPdrop         float64 `json:"embd_pdrop"`
	AttnPdrop         float64 `json:"attn_pdrop"`
}

// hfName is a tensor's name in a Hugging Face GPT-2 checkpoint: the layout's
// names, with ".weight" on the two embeddings.
func hfName(name string) string {
	switch name {
	case "wte", "wpe":
		return name + ".weight"
	}
	return name
}

// Export writes the whole model cfg, given as the parameters of every stage
// in order, to dir as Hugging Face's GPT-2 format: model.safetensors (HF
// names, the Conv1D orientation HF uses for c_attn, c_proj and c_fc) and
// config.json. A subspace model is refused: its stage boundaries project the
// residual stream, which a GPT-2 does not.
func Export(dir string, cfg model.Config, parts []Part, meta map[string]string) error {
	hc, tensors, err := HFTensors(cfg, parts)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, tensors, meta); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	cj, err := json.MarshalIndent(hc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := WriteFile(filepath.Join(dir, "model.safetensors"), buf.Bytes()); err != nil {
		return err
	}
	return WriteFile(filepath.Join(dir, "config.json"), append(cj, '\n'))
}

// HFTensors is the whole model cfg, given as the parameters of every stage in
// order, as a Hugging Face GPT-2: its config.json and its tensors under HF
// names (the data shares the parts' memory). See Export.
func HFTensors(cfg model.Config, parts []Part) (HFConfig, []Tensor, error) {
	if cfg.Subspace > 0 {
		return HFConfig{}, nil, fmt.Errorf("export: a subspace model (model.subspace %d) is not a GPT-2: its stage boundaries project the residual stream", cfg.Subspace)
	}
	if len(parts) == 0 {
		return HFConfig{}, nil, errors.New("export: no stages")
	}
	var tensors []Tensor
	seen := map[string]bool{}
	for k, p := range parts {
		for _, v := range p.Views {
			if v.Offset+v.Len > len(p.Params) {
				return HFConfig{}, nil, fmt.Errorf("export: stage %d's %s lies outside its %d parameters", k, v.Name, len(p.Params))
			}
			name := hfName(v.Name)
			if seen[name] {
				return HFConfig{}, nil, fmt.Errorf("export: tensor %s in two stages", name)
			}
			seen[name] = true
			tensors = append(tensors, Tensor{Name: name, Shape: v.Shape, Data: v.Of(p.Params)})
		}
	}
	for _, need := range []string{"wte.weight", "wpe.weight", "ln_f.weight", "lm_head.weight", fmt.Sprintf("h.%d.mlp.c_proj.bias", cfg.NLayer-1)} {
		if !seen[need] {
			return HFConfig{}, nil, fmt.Errorf("export: the stages given lack %s: not the whole model", need)
		}
	}
	return HFConfigOf(cfg), tensors, nil
}

// HFConfigOf is the Hugging Face GPT-2 config.json of model cfg.
func HFConfigOf(cfg model.Config) HFConfig {
	return HFConfig{
		Architectures: []string{"GPT2LMHeadModel"}, ModelType: "gpt2",
		VocabSize: cfg.Vocab, NPositions: cfg.SeqLen, NCtx: cfg.SeqLen, NEmbd: cfg.DModel,
		NLayer: cfg.NLayer, NHead: cfg.NHead, ActivationFunction: "gelu_new", LayerNormEpsilon: 1e-5,
	}
}

// PartTensors names one stage's tensors as Hugging Face's GPT-2 does (the
// names HFTensors gives them in the whole model). The tensors share p.Params.
func PartTensors(p Part) (map[string]Tensor, error) {
	t := make(map[string]Tensor, len(p.Views))
	for _, v := range p.Views {
		if v.Offset+v.Len > len(p.Params) {
			return nil, fmt.Errorf("export: %s lies outside the stage's %d parameters", v.Name, len(p.Params))
		}
		t[hfName(v.Name)] = Tensor{Name: hfName(v.Name), Shape: v.Shape, Data: v.Of(p.Params)}
	}
	return t, nil
}

// ReadHF reads a model directory in Hugging Face's GPT-2 format, as Export
// writes it: its config.json and the tensors of its model.safetensors by name.
func ReadHF(dir string) (HFConfig, map[string]Tensor, error) {
	var hc HFConfig
	cj, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return hc, nil, fmt.Errorf("read %s: %w", dir, err)
	}
	if err := json.Unmarshal(cj, &hc); err != nil {
		return hc, nil, fmt.Errorf("read %s: config.json: %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		return hc, nil, fmt.Errorf("read %s: %w", dir, err)
	}
	tensors, _, err := ReadSafetensors(b)
	if err != nil {
		return hc, nil, fmt.Errorf("read %s: model.safetensors: %w", dir, err)
	}
	return hc, tensors, nil
}

// FillHF copies the tensors of a stage laid out by views from a Hugging Face
// GPT-2's tensors into params; each must be there with the view's shape.
func FillHF(params []float32, views []model.View, tensors map[string]Tensor) error {
	return fill(params, tensors, hfName, views)
}

// InitFromHF fills params, a stage of cfg laid out by views, from the model
// directory dir in Hugging Face's GPT-2 format: Export's, or a GPT-2
// checkpoint of transformers (its names may carry a "transformer." prefix, a
// tied model has no lm_head.weight and wte.weight serves, and a model of more
// positions than cfg.SeqLen gives its first rows of wpe). The shapes must
// otherwise be cfg's.
func InitFromHF(dir string, cfg model.Config, views []model.View, params []float32) error {
	hc, tensors, err := ReadHF(dir)
	if err != nil {
		return err
	}
	if hc.NEmbd != cfg.DModel || hc.NLayer != cfg.NLayer || hc.NHead != cfg.NHead || hc.VocabSize != cfg.Vocab || hc.NPositions < cfg.SeqLen {
		return fmt.Errorf("init from %s: a model of n_embd %d, n_layer %d, n_head %d, vocab %d, %d positions; the config's is d_model %d, n_layer %d, n_head %d, vocab %d, seq_len %d",
			dir, hc.NEmbd, hc.NLayer, hc.NHead, hc.VocabSize, hc.NPositions, cfg.DModel, cfg.NLayer, cfg.NHead, cfg.Vocab, cfg.SeqLen)
	}
	for name, t := range tensors {
		if rest, ok := strings.CutPrefix(name, "transformer."); ok {
			tensors[rest] = t
		}
	}
	if _, ok := tensors["lm_head.weight"]; !ok {
		tensors["lm_head.weight"] = tensors["wte.weight"]
	}
	if wpe, ok := tensors["wpe.weight"]; ok && len(wpe.Shape) == 2 && wpe.Shape[0] > cfg.SeqLen {
		tensors["wpe.weight"] = Tensor{Name: wpe.Name, Shape: []int{cfg.SeqLen, wpe.Shape[1]}, Data: wpe.Data[:cfg.SeqLen*wpe.Shape[1]]}
	}
	if err := FillHF(params, views, tensors); err != nil {
		return fmt.Errorf("init from %s: %w", dir, err)
	}
	return nil
}
