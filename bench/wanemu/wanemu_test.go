package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// helperEnv, set, makes the test binary a helper run inside a namespace:
// "server ADDR" or "client ADDR" (see runHelper).
const helperEnv = "WANEMU_TEST_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		if err := runHelper(strings.Fields(h)); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestEmulatedLink runs the emulator with 2 peers, 8 Mbit/s and 30 ms one way,
// and measures, between the namespaces, a TCP ping-pong's round trip (at
// least twice the delay) and a bulk transfer's rate (at most the link's).
func TestEmulatedLink(t *testing.T) {
	requireRoot(t)
	const prefix = "wanemut"
	if _, err := DeleteNamespaces(prefix); err != nil { // left by a killed run
		t.Fatal(err)
	}
	cfg := Config{Peers: 2, Rate: 8e6, Delay: 30 * time.Millisecond, Prefix: prefix}
	startEmulator(t, cfg)

	server := helper(t, prefix+"1", "server "+Addr(1).String()+":7000")
	defer func() {
		server.Process.Kill()
		server.Wait()
	}()
	out, err := helper(t, prefix+"0", "client "+Addr(1).String()+":7000").Output()
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	t.Logf("TCP round trip: median %.1f ms (min %.1f); bulk %d bytes: %.2f Mbit/s of 8",
		r.RTTms, r.MinRTTms, r.Bytes, r.Mbit)
	// Only what the emulator must enforce is checked: no packet beats the
	// delay, no transfer beats the rate. How close a loaded machine comes to
	// them is a measurement (logged above), not a pass/fail matter.
	if r.MinRTTms < 60 {
		t.Errorf("round trip %.1f ms (min %.1f): want at least 60 ms (2 × 30)", r.RTTms, r.MinRTTms)
	}
	if r.Mbit > 1.1*8 {
		t.Errorf("bulk rate %.2f Mbit/s: over the link's 8", r.Mbit)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces and TUN devices)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command")
	}
	// A container may be root without the right to make namespaces.
	probe := fmt.Sprintf("wanemuprobe%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("cannot create network namespaces: %v: %s", err, out)
	}
	_ = exec.Command("ip", "netns", "del", probe).Run()
}

// startEmulator runs cfg until the test ends, then checks that its namespaces
// are gone.
func startEmulator(t *testing.T, cfg Config) {
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		stats, err := Run(ctx, cfg, func() { close(ready) })
		var b strings.Builder
		stats.Print(&b)
		t.Logf("emulator counters:\n%s", b.String())
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("emulator: %v", err)
		}
		if left, _ := listNamespaces(cfg.Prefix); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
			deleteNamespaces(left)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("emulator did not start: %v", err)
	}
}

// helper returns this test binary as a helper in namespace ns; a server is
// started and has printed its first line (it listens), a client is not.
func helper(t *testing.T, ns, args string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+args)
	cmd.Stderr = os.Stderr
	if !strings.HasPrefix(args, "server") {
		return cmd
	}
	stdout, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		t.Fatalf("server did not start: %q %v", line, err)
	}
	return cmd
}

// result is what the client helper prints, as JSON.
type result struct {
	RTTms    float64 `json:"rtt_ms"`
	MinRTTms float64 `json:"min_rtt_ms"`
	Bytes    int     `json:"bytes"`
	Mbit     float64 `json:"mbit"`
}

const (
	pings     = 20
	bulkBytes = 4 << 20
)

// runHelper is the helper's main: "server ADDR" listens on ADDR and prints a
// line, "client ADDR" measures against it and prints a result.
func runHelper(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("want server|client ADDR, got %q", args)
	}
	if args[0] == "server" {
		return serve(args[1])
	}
	r, err := measure(args[1])
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// serve answers connections on addr: the first byte 'p' asks for an echo of
// every byte, 'b' for a length, that many bytes, and a byte back.
func serve(addr string) error {
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			c.(*net.TCPConn).SetNoDelay(true)
			var op [1]byte
			if _, err := io.ReadFull(c, op[:]); err != nil {
				return
			}
			if op[0] == 'p' {
				io.Copy(c, c)
				return
			}
			var n uint64
			if binary.Read(c, binary.BigEndian, &n) == nil {
				if _, err := io.CopyN(io.Discard, c, int64(n)); err == nil {
					c.Write([]byte{1})
				}
			}
		}()
	}
}

// measure times pings one-byte round trips, then a bulk transfer, to the
// server at addr.
func measure(addr string) (result, error) {
	c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
	if err != nil {
		return result{}, err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	if _, err := c.Write([]byte{'p'}); err != nil {
		return result{}, err
	}
	b := []byte{'x'}
	var rtts []float64
	for range pings + 1 { // the first one may wait for the server's goroutine
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			return result{}, err
		}
		if _, err := io.ReadFull(c, b[:1]); err != nil {
			return result{}, err
		}
		rtts = append(rtts, float64(time.Since(start).Microseconds())/1000)
	}
	rtts = rtts[1:]
	slices.Sort(rtts)
	r := result{RTTms: rtts[len(rtts)/2], MinRTTms: rtts[0], Bytes: bulkBytes}
	d, err := bulk(addr, bulkBytes)
	r.Mbit = float64(bulkBytes) * 8 / d.Seconds() / 1e6
	return r, err
}

// bulk sends n bytes to the server at addr and returns the time from the
// first byte sent to the server's receipt coming back.
func bulk(addr string, n int) (time.Duration, error) {
	c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	head := binary.BigEndian.AppendUint64([]byte{'b'}, uint64(n))
	if _, err := c.Write(append(head, make([]byte, n)...)); err != nil {
		return 0, err
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 0, errors.Join(errors.New("no receipt"), err)
	}
	return time.Since(start), nil
}

// TestPartition: with -split 1 of 3 peers, a cut drops what crosses it
// (peer 0 cannot reach 1 or 2, either way) while 1 and 2 still reach each
// other; healed, every pair reaches again.
func TestPartition(t *testing.T) {
	requireRoot(t)
	const prefix = "wanemup"
	if _, err := DeleteNamespaces(prefix); err != nil {
		t.Fatal(err)
	}
	cut := new(atomic.Bool)
	cfg := Config{Peers: 3, Prefix: prefix, Split: 1, Cut: cut}
	startEmulator(t, cfg)
	reaches := func(i, j int) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
		defer cancel()
		return probePair(ctx, prefix, i, j) == nil
	}
	cut.Store(true)
	for _, p := range [][2]int{{0, 1}, {1, 0}, {0, 2}, {2, 0}} {
		if reaches(p[0], p[1]) {
			t.Errorf("cut: %d reached %d across the partition", p[0], p[1])
		}
	}
	if !reaches(1, 2) || !reaches(2, 1) {
		t.Error("cut: 1 and 2, on one side, do not reach each other")
	}
	cut.Store(false)
	for _, p := range [][2]int{{0, 1}, {1, 0}, {0, 2}, {2, 0}, {1, 2}} {
		if !reaches(p[0], p[1]) {
			t.Errorf("healed: %d does not reach %d", p[0], p[1])
		}
	}
	if err := (Config{Peers: 3, Prefix: "x", Split: 3}).check(); err == nil {
		t.Error("a split with every peer on one side passed")
	}
}
