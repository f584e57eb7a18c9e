package pipeline

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/codec"
	"swarmnode/wire"
)

func rawFrame(h wire.Header, payload []byte) []byte {
	b := make([]byte, wire.HeaderSize+len(payload))
	copy(b[wire.HeaderSize:], payload)
	wire.MarshalHeader(b[:wire.HeaderSize], &h, b[wire.HeaderSize:])
	return b
}

func floatsFrame(stage, b, t, d int, x []float32) []byte {
	p, err := codec.Format{Kind: codec.FP32}.Append(nil, x)
	if err != nil {
		panic(err)
	}
	return rawFrame(wire.Header{Kind: wire.Activations, DType: wire.Float32, Codec: codec.FP32, ID: 7, Stage: stage, B: b, T: t, D: d}, p)
}

func intsFrame(kind wire.Kind, stage, b, t int, x []int32) []byte {
	return rawFrame(wire.Header{Kind: kind, DType: wire.Int32, Codec: codec.Int32, ID: 7, Stage: stage, B: b, T: t, D: 1}, codec.EncodeInts(nil, x))
}

func ramp(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i%13) * 0.1
	}
	return x
}

func tokens(n int, v int32) []int32 {
	x := make([]int32, n)
	for i := range x {
		x[i] = v
	}
	return x
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// sendRaw writes raw bytes on a fresh stream to p, half-closes it unless hang is
// set, and returns the error frame the server answers with.
func sendRaw(t *testing.T, h host.Host, to host.Host, proto string, raw []byte, hang bool) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: to.Addrs()}); err != nil {
		t.Fatal(err)
	}
	s, err := h.NewStream(ctx, to.ID(), Protocol(proto))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	if _, err := s.Write(raw); err != nil {
		t.Fatal(err)
	}
	if !hang {
		_ = s.CloseWrite()
	}
	_, err = wire.NewConn(s, 1<<20, nil).Read(time.Now().Add(10 * time.Second))
	if err == nil {
		t.Fatal("bad request answered without an error")
	}
	return err
}

// TestBadFramesRejected sends every kind of bad request to live servers: each is
// answered with an error frame of the right code, and the swarm then trains on.
func TestBadFramesRejected(t *testing.T) {
	cfg := testConfig()
	cfg.Pipeline.HopTimeout = time.Second // for the hanging peer
	cfg.Pipeline.MaxFrameBytes = 1 << 20
	cfg.Train.Steps, cfg.Train.EvalEvery = 10, 10
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	client := newHost(t)
	B, T, D := 2, 8, cfg.Model.DModel
	n := B * T * D
	good := floatsFrame(1, B, T, D, ramp(n))
	targets := intsFrame(wire.Targets, 1, B, T, tokens(B*T, 3))
	resum := func(b []byte) []byte {
		binary.LittleEndian.PutUint32(b[44:], wire.Checksum(b[:44], b[wire.HeaderSize:]))
		return b
	}
	patch := func(b []byte, f func([]byte)) []byte {
		b = append([]byte(nil), b...)
		f(b)
		return b
	}
	nan := patch(good, func(b []byte) {
		binary.LittleEndian.PutUint32(b[wire.HeaderSize+40:], math.Float32bits(float32(math.NaN())))
		resum(b)
	})
	int8p, _ := codec.Format{Kind: codec.Int8, Block: 16}.Append(nil, ramp(n))
	binary.LittleEndian.PutUint32(int8p, 0x7f800000) // +Inf scale
	infScale := rawFrame(wire.Header{Kind: wire.Activations, DType: wire.Float32, Codec: codec.Int8, Block: 16, ID: 7, Stage: 1, B: B, T: T, D: D}, int8p)
	badZstd := rawFrame(wire.Header{Kind: wire.Activations, DType: wire.Float32, Codec: codec.FP32, Zstd: true, ID: 7, Stage: 1, B: B, T: T, D: D}, []byte("not a zstd frame at all"))
	oversize := patch(good[:wire.HeaderSize], func(b []byte) { binary.LittleEndian.PutUint32(b[40:], 1<<30); resum(b) })

	for _, tc := range []struct {
		name  string
		stage int
		raw   []byte
		hang  bool
		want  wire.Code
	}{
		{"truncated header", 1, good[:20], false, wire.CodeBadFrame},
		{"truncated payload", 1, good[:len(good)-100], false, wire.CodeBadFrame},
		{"bad checksum", 1, patch(good, func(b []byte) { b[wire.HeaderSize+5] ^= 0x10 }), false, wire.CodeBadFrame},
		{"bad magic", 1, patch(good, func(b []byte) { b[0] = 'Z' }), false, wire.CodeBadFrame},
		{"future version", 1, patch(good, func(b []byte) { b[3] = 9 }), false, wire.CodeBadFrame},
		{"oversize", 1, oversize, false, wire.CodeOversize},
		{"wrong width for the stage", 1, cat(floatsFrame(1, B, T, D/2, ramp(n/2)), targets), false, wire.CodeShape},
		{"microbatch over the cap", 1, cat(floatsFrame(1, 5, 2, D, ramp(10*D)), intsFrame(wire.Targets, 1, 5, 2, tokens(10, 1))), false, wire.CodeShape},
		{"T over seq_len", 1, cat(floatsFrame(1, 1, 64, D, ramp(64*D)), intsFrame(wire.Targets, 1, 1, 64, tokens(64, 1))), false, wire.CodeShape},
		{"targets of another shape", 1, cat(good, intsFrame(wire.Targets, 1, B, T-1, tokens(B*(T-1), 1))), false, wire.CodeShape},
		{"gradient as a request", 1, patch(good, func(b []byte) { b[4] = byte(wire.Gradient); resum(b) }), false, wire.CodeShape},
		{"tokens to a middle stage", 1, intsFrame(wire.Tokens, 1, B, T, tokens(B*T, 1)), false, wire.CodeShape},
		{"wrong stage", 1, cat(floatsFrame(2, B, T, D, ramp(n)), targets), false, wire.CodeWrongStage},
		{"NaN activation", 1, cat(nan, targets), false, wire.CodeNonFinite},
		{"Inf int8 scale", 1, cat(infScale, targets), false, wire.CodeNonFinite},
		{"bad zstd", 1, cat(badZstd, targets), false, wire.CodeBadFrame},
		{"target out of vocab", 1, cat(good, intsFrame(wire.Targets, 1, B, T, tokens(B*T, 256))), false, wire.CodeRange},
		{"token out of vocab", 0, cat(intsFrame(wire.Tokens, 0, B, T, tokens(B*T, 999)), intsFrame(wire.Targets, 0, B, T, tokens(B*T, 1))), false, wire.CodeRange},
		{"hanging peer", 1, good[:wire.HeaderSize+10], true, wire.CodeTimeout},
	} {
		srv := sw.servers[tc.stage][0]
		err := sendRaw(t, client, srv.host, cfg.Run, tc.raw, tc.hang)
		var re *wire.RemoteError
		if !errors.As(err, &re) || re.Code != tc.want {
			t.Errorf("%s: got %v, want an error frame with code %v", tc.name, err, tc.want)
		}
	}
	if bad := sw.servers[1][0].Stats().BadFrames + sw.servers[0][0].Stats().BadFrames; bad != 19 {
		t.Errorf("servers counted %d bad requests, want 19", bad)
	}
	// The servers keep serving.
	tr := sw.newTrainer(t, corpus, TrainerOptions{})
	sum := runTrainer(t, tr, 60*time.Second)
	if st := tr.Stats(); sum.Step != cfg.Train.Steps || st.Failed != 0 {
		t.Fatalf("training after bad frames: %+v %+v", sum, st)
	}
}
