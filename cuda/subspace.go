package cuda

import "fmt"

// A subspace model (model.Subspace) carries k coordinates per token across a
// stage boundary instead of d_model values. A stage on the GPU converts on the
// device, so only the coordinates cross the bus: its input is rebuilt as
// x = g·U·c + ê(tokens), with g the boundary's gain and ê the stage's own
// input embeddings (the layout's InWTE and InWPE), and what leaves it as
// coordinates: its output as x·U, its input gradient as g·dx·U. Like the CPU
// stage, the GEMMs run in float32.

// subspace reports whether the stage's boundaries carry subspace coordinates.
func (s *Stage) subspace() bool { return s.cfg.Model.Subspace > 0 }

// coordBuf returns n float32 values of device memory for coordinates in or
// out (one buffer per stage, grown on demand: passes run one at a time on the
// device thread).
func (s *Stage) coordBuf(c *Ctx, n int) (Buf, error) { return grow(c, &s.coords, F32, n) }

// uploadCoords copies N rows of coordinates to the device and writes
// dst = gain·U·c (+ dst when add is set) for the basis U.
func (s *Stage) uploadCoords(c *Ctx, dst Buf, coords []float32, N int, add bool, gain float32, U Buf) error {
	D, K := s.cfg.Model.DModel, s.cfg.Model.Subspace
	if len(coords) != N*K {
		return fmt.Errorf("cuda: %d coordinates, want %d×%d", len(coords), N, K)
	}
	cb, err := s.coordBuf(c, N*K)
	if err != nil {
		return err
	}
	if err := c.Upload(cb, coords); err != nil {
		return err
	}
	beta := float32(0)
	if add {
		beta = 1
	}
	return c.Gemm(false, true, N, D, K, gain, cb, K, U, K, beta, dst, D, ComputeFP32)
}

// downloadCoords copies the coordinates gain·x·U of N rows of src in the basis
// U to the host.
func (s *Stage) downloadCoords(c *Ctx, src Buf, N int, gain float32, U Buf) ([]float32, error) {
	D, K := s.cfg.Model.DModel, s.cfg.Model.Subspace
	cb, err := s.coordBuf(c, N*K)
	if err != nil {
		return nil, err
	}
	if err := c.Gemm(false, false, N, K, D, gain, src, D, U, K, 0, cb, K, ComputeFP32); err != nil {
		return nil, err
	}
	out := make([]float32, N*K)
	return out, c.Download(out, cb)
}

// subspaceInput writes a pass's input stream x = g·U·c + ê(tokens) into a.in
// from the coordinates and token ids of a later stage's input.
func (s *Stage) subspaceInput(c *Ctx, a *acts, coords []float32, tokens []int32) error {
	B, T, C := a.B, a.T, s.cfg.Model.DModel
	if err := c.UploadI32(a.tok, tokens); err != nil {
		return err
	}
	x := a.in.Slice(0, B*T*C)
	if err := c.EncoderForward(x, a.tok, s.param(s.lay.InWTE), s.param(s.lay.InWPE).Slice(0, T*C), B, T, C); err != nil {
		return err
	}
	return s.uploadCoords(c, x, coords, B*T, true, s.cfg.Gain, s.basisIn)
}
