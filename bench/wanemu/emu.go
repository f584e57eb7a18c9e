package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes the emulated network: Peers namespaces, each pair linked
// both ways at Rate with a one-way Delay.
type Config struct {
	// Peers is the number of peers, each in namespace Prefix+index.
	Peers int
	// Rate is each directed link's rate in bits per second; 0 is unshaped.
	Rate int64
	// Delay is each link's one-way delay; 0 is none.
	Delay time.Duration
	// Prefix names the namespaces.
	Prefix string
	// Queue is the bytes a link queues before it drops; 0 is one second at
	// Rate, at least 256 kB.
	Queue int
	// Split, if positive, is where Cut partitions the peers: while it is
	// set, packets between [0,Split) and [Split,Peers) are dropped.
	Split int
	// Cut is the partition's switch (nil: never cut).
	Cut *atomic.Bool
}

const (
	minQueue  = 256 << 10
	maxPeers  = 253
	tunName   = "wan0"
	mtu       = 1500
	burstSize = mtu // the token bucket's depth: one full packet
)

func (c Config) check() error {
	switch {
	case c.Peers < 1 || c.Peers > maxPeers:
		return fmt.Errorf("peers %d: want 1 to %d", c.Peers, maxPeers)
	case c.Rate < 0 || c.Delay < 0 || c.Queue < 0:
		return errors.New("rate, delay and queue must not be negative")
	case c.Split < 0 || c.Split >= c.Peers && c.Split > 0:
		return fmt.Errorf("split %d: want 1 to %d peers on the first side", c.Split, c.Peers-1)
	case c.Prefix == "" || strings.ContainsAny(c.Prefix, "/ \t\n") || c.Prefix[0] == '.':
		return fmt.Errorf("prefix %q: want a plain file name", c.Prefix)
	}
	return nil
}

// queueBytes is the queue limit of a link.
func (c Config) queueBytes() int {
	if c.Queue > 0 {
		return c.Queue
	}
	return max(int(c.Rate/8), minQueue)
}

// Addr is the address of peer i: 10.77.0.i+1.
func Addr(i int) net.IP { return net.IPv4(10, 77, 0, byte(i+1)) }

// ParseRate reads a rate in bits per second as tc writes it: a number with
// an optional unit bit, kbit, mbit or gbit (powers of 1000); "off" is 0.
func ParseRate(s string) (int64, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "off" {
		return 0, nil
	}
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}, {"bit", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad rate %q: want e.g. 25mbit, 500kbit or off", s)
	}
	return int64(v * float64(mult)), nil
}

// Run creates cfg's namespaces and TUN devices, calls ready (if not nil) once
// packets flow between them, and routes until ctx ends. It deletes the
// namespaces it created before it returns, on every path, and returns the
// links' counters.
func Run(ctx context.Context, cfg Config, ready func()) (Stats, error) {
	if err := cfg.check(); err != nil {
		return Stats{}, err
	}
	if old, err := listNamespaces(cfg.Prefix); err != nil {
		return Stats{}, err
	} else if len(old) > 0 {
		return Stats{}, fmt.Errorf("namespaces %s already exist (another wanemu, or one killed): "+
			"delete them with `wanemu -cleanup -prefix %s`", strings.Join(old, ", "), cfg.Prefix)
	}
	var created []string
	defer func() { deleteNamespaces(created) }()
	tuns := make([]*os.File, cfg.Peers)
	defer func() {
		for _, t := range tuns {
			if t != nil {
				t.Close()
			}
		}
	}()
	for i := range cfg.Peers {
		name := fmt.Sprintf("%s%d", cfg.Prefix, i)
		if err := addNamespace(name); err != nil {
			return Stats{}, err
		}
		created = append(created, name)
		t, err := setupPeer(name, i)
		if err != nil {
			return Stats{}, err
		}
		tuns[i] = t
	}
	return route(ctx, cfg, tuns, ready)
}

// route forwards packets between tuns until ctx ends, after checking that
// they flow; it closes tuns.
func route(ctx context.Context, cfg Config, tuns []*os.File, ready func()) (Stats, error) {
	n := len(tuns)
	links := make([][]*link, n)
	for i := range links {
		links[i] = make([]*link, n)
		for j := range links[i] {
			if i != j {
				links[i][j] = newLink(i, j, cfg)
			}
		}
	}
	lctx, stopLinks := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	unknown, cut := make([]int64, n), make([]int64, n)
	errs := make(chan error, n)
	for i := range n {
		for j := range n {
			if l := links[i][j]; l != nil {
				wg.Go(func() { l.deliver(lctx, tuns[j]) })
			}
		}
		wg.Go(func() { errs <- forward(i, tuns[i], links[i], cfg, &unknown[i], &cut[i]) })
	}
	err := probe(ctx, cfg)
	if err == nil && ready != nil {
		ready()
	}
	if err == nil {
		select {
		case <-ctx.Done():
		case err = <-errs: // a TUN failed
		}
	}
	for _, t := range tuns {
		t.Close() // ends forward
	}
	stopLinks()
	wg.Wait()
	st := collect(links, unknown)
	for _, c := range cut {
		st.Cut += c
	}
	return st, err
}

// forward reads the packets peer i sends into its TUN and queues each on the
// link to its destination, dropping those across the partition while it is
// cut; it returns when the TUN is closed (nil) or fails.
func forward(i int, tun *os.File, out []*link, cfg Config, unknown, cut *int64) error {
	buf := make([]byte, 1<<16)
	for {
		k, err := tun.Read(buf)
		if errors.Is(err, os.ErrClosed) {
			return nil
		} else if err != nil {
			return fmt.Errorf("peer %d: read TUN: %w", i, err)
		}
		j := destination(buf[:k], len(out))
		if j < 0 || j == i {
			*unknown++ // only read by collect, after this goroutine ends
			continue
		}
		if cfg.Split > 0 && cfg.Cut != nil && cfg.Cut.Load() && (i < cfg.Split) != (j < cfg.Split) {
			*cut++ // only read after this goroutine ends, as unknown
			continue
		}
		out[j].send(time.Now(), append([]byte(nil), buf[:k]...))
	}
}

// destination is the peer an IPv4 packet is for, -1 for anything else.
func destination(p []byte, peers int) int {
	if len(p) < 20 || p[0]>>4 != 4 || p[16] != 10 || p[17] != 77 || p[18] != 0 {
		return -1
	}
	if j := int(p[19]) - 1; j >= 0 && j < peers {
		return j
	}
	return -1
}

// probe checks that packets flow: peer i sends UDP to peer i+1 (mod n) until
// it arrives, for every i at once.
func probe(ctx context.Context, cfg Config) error {
	if cfg.Peers < 2 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second+4*cfg.Delay)
	defer cancel()
	errs := make(chan error, cfg.Peers)
	for i := range cfg.Peers {
		go func() { errs <- probePair(ctx, cfg.Prefix, i, (i+1)%cfg.Peers) }()
	}
	var first error
	for range cfg.Peers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// probePair sends a datagram from peer i to peer j every 100 ms until one
// arrives or ctx ends.
func probePair(ctx context.Context, prefix string, i, j int) error {
	var rx, tx *net.UDPConn
	err := inNetns(fmt.Sprintf("%s%d", prefix, j), func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: Addr(j)})
		return err
	})
	if err != nil {
		return fmt.Errorf("probe: listen in peer %d: %w", j, err)
	}
	defer rx.Close()
	err = inNetns(fmt.Sprintf("%s%d", prefix, i), func() (err error) {
		tx, err = net.DialUDP("udp4", nil, rx.LocalAddr().(*net.UDPAddr))
		return err
	})
	if err != nil {
		return fmt.Errorf("probe: dial from peer %d: %w", i, err)
	}
	defer tx.Close()
	got := make(chan struct{})
	go func() {
		if _, _, err := rx.ReadFrom(make([]byte, 16)); err == nil {
			close(got)
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		tx.Write([]byte("wanemu probe")) // errors: the next tick retries
		select {
		case <-got:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("probe: no packet from peer %d reached peer %d: %w", i, j, ctx.Err())
		case <-tick.C:
		}
	}
}

// Stats are the counters of every link with traffic, and the packets dropped
// for an unknown destination.
type Stats struct {
	// Links are the links that carried or dropped packets.
	Links []LinkStats
	// Unknown counts packets to no peer (or not IPv4), dropped.
	Unknown int64
	// Cut counts packets dropped across the partition.
	Cut int64
}

// LinkStats counts what one directed link From→To delivered and dropped.
type LinkStats struct {
	// From and To are the peers' indices.
	From, To int
	// Bytes and Packets count the IP packets delivered, headers included.
	Bytes, Packets int64
	// Dropped and DropLen count the packets dropped on a full queue, and their bytes.
	Dropped, DropLen int64
}

// collect gathers the counters of links, once their goroutines have ended.
func collect(links [][]*link, unknown []int64) Stats {
	var s Stats
	for _, row := range links {
		for _, l := range row {
			if l == nil {
				continue
			}
			if ls := l.stats(); ls.Packets+ls.Dropped > 0 {
				s.Links = append(s.Links, ls)
			}
		}
	}
	for _, u := range unknown {
		s.Unknown += u
	}
	return s
}

// Print writes one line per link and a total line.
func (s Stats) Print(w io.Writer) {
	var t LinkStats
	for _, l := range s.Links {
		fmt.Fprintf(w, "link %d->%d: %d bytes, %d packets, %d dropped (%d bytes)\n",
			l.From, l.To, l.Bytes, l.Packets, l.Dropped, l.DropLen)
		t.Bytes, t.Packets, t.Dropped, t.DropLen = t.Bytes+l.Bytes, t.Packets+l.Packets, t.Dropped+l.Dropped, t.DropLen+l.DropLen
	}
	fmt.Fprintf(w, "total: %d bytes, %d packets, %d dropped (%d bytes), %d to unknown addresses, %d across the partition\n",
		t.Bytes, t.Packets, t.Dropped, t.DropLen, s.Unknown, s.Cut)
}
