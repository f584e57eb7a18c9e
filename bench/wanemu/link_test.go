package main

import (
	"testing"
	"time"
)

func TestShaperRateDelayAndOrder(t *testing.T) {
	s := shaper{rate: 1e6, burst: 1000, limit: 1 << 20, delay: 30 * time.Millisecond}
	t0 := time.Unix(1000, 0)
	var last time.Time
	for k := range 11 { // 11 packets of 1000 B at once: the first uses the burst
		at, ok := s.admit(t0, 1000)
		if !ok {
			t.Fatalf("packet %d dropped", k)
		}
		if want := t0.Add(30*time.Millisecond + time.Duration(k)*time.Millisecond); !at.Equal(want) {
			t.Errorf("packet %d released at +%v, want +%v", k, at.Sub(t0), want.Sub(t0))
		}
		if at.Before(last) {
			t.Errorf("packet %d released before packet %d", k, k-1)
		}
		last = at
	}
	// After an idle second the bucket is full again, but no fuller than burst.
	t1 := t0.Add(time.Second)
	if at, _ := s.admit(t1, 1000); !at.Equal(t1.Add(30 * time.Millisecond)) {
		t.Errorf("after idle: released at +%v, want +30ms", at.Sub(t1))
	}
	if at, _ := s.admit(t1, 1000); !at.Equal(t1.Add(31 * time.Millisecond)) {
		t.Errorf("second after idle: released at +%v, want +31ms", at.Sub(t1))
	}
}

func TestShaperDropsBeyondQueue(t *testing.T) {
	s := shaper{rate: 1e6, burst: 1000, limit: 10_000}
	t0 := time.Unix(1000, 0)
	sent := 0
	for range 100 {
		if _, ok := s.admit(t0, 1000); ok {
			sent++
		}
	}
	if sent < 10 || sent > 12 { // the burst, then 10 kB queued
		t.Errorf("%d of 100 packets admitted at once, want about 11", sent)
	}
	if _, ok := s.admit(t0.Add(50*time.Millisecond), 1000); !ok {
		t.Error("dropped after the queue drained")
	}
}

func TestShaperUnshaped(t *testing.T) {
	s := shaper{delay: 40 * time.Millisecond}
	t0 := time.Unix(1000, 0)
	for range 1000 {
		if at, ok := s.admit(t0, 1500); !ok || !at.Equal(t0.Add(40*time.Millisecond)) {
			t.Fatalf("unshaped: got %v %v, want +40ms", at.Sub(t0), ok)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"off": 0, "0": 0, "25mbit": 25e6, "500kbit": 5e5, "1gbit": 1e9, "2.5Mbit": 25e5, "100bit": 100, "64000": 64000} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1mbit", "10mbps"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q): no error", in)
		}
	}
}

func TestDestination(t *testing.T) {
	p := make([]byte, 20)
	p[0] = 0x45
	copy(p[16:], []byte{10, 77, 0, 3})
	if j := destination(p, 3); j != 2 {
		t.Errorf("10.77.0.3 of 3 peers: peer %d, want 2", j)
	}
	if j := destination(p, 2); j != -1 {
		t.Errorf("10.77.0.3 of 2 peers: peer %d, want -1", j)
	}
	p[16] = 192
	if j := destination(p, 3); j != -1 {
		t.Errorf("192.77.0.3: peer %d, want -1", j)
	}
	p[0] = 0x60
	if j := destination(p[:20], 3); j != -1 {
		t.Errorf("IPv6: peer %d, want -1", j)
	}
}
