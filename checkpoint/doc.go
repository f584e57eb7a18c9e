// Package checkpoint keeps a stage's training state on disk: its parameters in
// safetensors with GPT-2's Hugging Face names (model.safetensors), AdamW's
// moments beside them under PyTorch's names (optimizer.safetensors:
// exp_avg.<name>, exp_avg_sq.<name>), and a meta.json with the step, the
// config's fingerprint, the stage, the data position and a SHA-256 of each
// file.
//
// A checkpoint is a directory, step-<step>, written under a temporary name,
// synced and renamed into place, so a crash mid-write leaves at most a
// temporary directory that the next save removes, never a partial checkpoint
// under a final name; the previous checkpoints stay until the new one is
// complete. Loading checks everything it reads (hashes, shapes, fingerprint,
// stage) and says which file is wrong and why; Latest falls back to the newest
// checkpoint that passes.
package checkpoint
