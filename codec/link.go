package codec

import (
	"fmt"
	"sync"
	"time"
)

// ZstdMode says when to entropy-code payloads.
type ZstdMode uint8

// The zstd modes of config.Compression.Zstd.
const (
	ZstdOff ZstdMode = iota
	ZstdOn
	ZstdAuto
)

// ParseZstd reads on, off or auto.
func ParseZstd(s string) (ZstdMode, error) {
	switch s {
	case "off":
		return ZstdOff, nil
	case "on":
		return ZstdOn, nil
	case "auto":
		return ZstdAuto, nil
	}
	return 0, fmt.Errorf("codec: zstd mode %q (want on, off or auto)", s)
}

// String is the mode as config spells it.
func (m ZstdMode) String() string {
	switch m {
	case ZstdOn:
		return "on"
	case ZstdAuto:
		return "auto"
	}
	return "off"
}

// probeEvery is how often, in frames, an auto link that chose raw sends still
// compresses one frame to keep its estimate of zstd's speed and gain fresh.
const probeEvery = 16

// Link decides, per peer, whether zstd pays off. zstd saves (1-ratio)·S/bandwidth of
// send time and costs S/speed of CPU time; it is worth it only when
// bandwidth < speed·(1-ratio), that is, when the link is the bottleneck. On
// loopback or a LAN that is never true and compression is skipped.
//
// A Link is safe for concurrent use.
type Link struct {
	mode ZstdMode

	mu     sync.Mutex
	frames int
	bw     ewma // wire bytes per second, measured on sends
	speed  ewma // zstd input bytes per second
	ratio  ewma // compressed / raw size
}

// NewLink returns a link deciding by mode.
func NewLink(mode ZstdMode) *Link { return &Link{mode: mode} }

// UseZstd says whether the next frame should be compressed.
func (l *Link) UseZstd() bool {
	switch l.mode {
	case ZstdOn:
		return true
	case ZstdOff:
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.frames++
	if !l.speed.ok || !l.bw.ok || l.frames%probeEvery == 0 {
		return true
	}
	return l.bw.v < l.speed.v*(1-l.ratio.v)
}

// ObserveZstd records one compression: raw and compressed sizes and the time taken.
func (l *Link) ObserveZstd(raw, compressed int, d time.Duration) {
	if raw <= 0 || d <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.speed.add(float64(raw) / d.Seconds())
	l.ratio.add(float64(compressed) / float64(raw))
}

// ObserveSend records one frame of wire bytes written in d.
func (l *Link) ObserveSend(wire int, d time.Duration) {
	if wire <= 0 || d <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bw.add(float64(wire) / d.Seconds())
}

// ewma is an exponential moving average that starts at its first sample.
type ewma struct {
	v  float64
	ok bool
}

func (e *ewma) add(x float64) {
	if !e.ok {
		e.v, e.ok = x, true
		return
	}
	e.v += 0.2 * (x - e.v)
}
