package pipeline

import (
	"context"
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/wire"
)

// TestOverloadKeepsServing: while a trainer trains through a 3-stage swarm,
// four foreign clients (test code's adversaries) flood the middle stage's
// holder with streams that never send, requests whose answers they never
// read, oversized frame claims and truncated frames, as fast as it takes
// them. The trainer still finishes every step with no microbatch failed, the
// holder answers what it can with errors or "busy", and the process's heap
// stays bounded (printed; failed only beyond 512 MiB of growth).
func TestOverloadKeepsServing(t *testing.T) {
	cfg := testConfig()
	cfg.Pipeline.HopTimeout = 2 * time.Second
	cfg.Pipeline.MaxFrameBytes = 1 << 20
	cfg.Train.Steps, cfg.Train.EvalEvery = 30, 30
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	target := sw.servers[1][0].host
	B, T, D := 2, 8, cfg.Model.DModel
	good := floatsFrame(1, B, T, D, ramp(B*T*D))
	request := cat(good, intsFrame(wire.Targets, 1, B, T, tokens(B*T, 3)))
	oversize := append([]byte(nil), good[:wire.HeaderSize]...)
	binary.LittleEndian.PutUint32(oversize[40:], 1<<30) // a 1 GiB payload claim, checksummed
	binary.LittleEndian.PutUint32(oversize[44:], wire.Checksum(oversize[:44], nil))

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak atomic.Uint64
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var sent, refused atomic.Int64
	for c := range 4 {
		client := newHost(t)
		if err := client.Connect(ctx, peer.AddrInfo{ID: target.ID(), Addrs: target.Addrs()}); err != nil {
			t.Fatal(err)
		}
		for w := range 8 {
			wg.Go(func() {
				flood(ctx, client, target, cfg.Run, (c+w)%4, request, oversize, good[:wire.HeaderSize+10], &sent, &refused)
			})
		}
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	tr := sw.newTrainer(t, corpus, TrainerOptions{})
	sum := runTrainer(t, tr, 2*time.Minute)
	stop()
	wg.Wait()
	st := tr.Stats()
	growth := float64(peak.Load()) - float64(before.HeapInuse)
	t.Logf("flood: %d streams opened, %d refused at once; trainer: step %d, retried %d, failed %d; heap in use %.1f MiB before, peak %.1f MiB (+%.1f)",
		sent.Load(), refused.Load(), sum.Step, st.Retried, st.Failed, float64(before.HeapInuse)/(1<<20), float64(peak.Load())/(1<<20), growth/(1<<20))
	if sum.Step != cfg.Train.Steps || st.Failed != 0 {
		t.Fatalf("training under the flood: %+v %+v", sum, st)
	}
	if sent.Load() < 100 {
		t.Fatalf("the flood opened only %d streams", sent.Load())
	}
	if growth > 512<<20 {
		t.Fatalf("heap grew by %.0f MiB under the flood", growth/(1<<20))
	}
}

// flood opens streams to the holder until ctx ends, each of one kind: 0 never
// sends, 1 sends a request and never reads its answer, 2 claims a 1 GiB
// payload, 3 sends a truncated frame and hangs. Streams of kinds 0, 1 and 3
// are left open until the holder gives up on them.
func flood(ctx context.Context, h, to host.Host, run string, kind int, request, oversize, truncated []byte, sent, refused *atomic.Int64) {
	var open []interface{ Reset() error }
	defer func() {
		for _, s := range open {
			s.Reset()
		}
	}()
	for ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		s, err := h.NewStream(sctx, to.ID(), Protocol(run))
		cancel()
		if err != nil {
			refused.Add(1)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		sent.Add(1)
		switch kind {
		case 1:
			_, err = s.Write(request)
			_ = s.CloseWrite()
		case 2:
			_, err = s.Write(oversize)
		case 3:
			_, err = s.Write(truncated)
		}
		if err != nil {
			refused.Add(1)
		}
		open = append(open, s)
		if len(open) > 64 { // keep a window of streams held open
			open[0].Reset()
			open = open[1:]
		}
		time.Sleep(time.Millisecond)
	}
}
