// Package transport measures where the libp2p transport's throughput ceiling
// lies for the pipeline's traffic pattern: a caller opens a stream, sends one
// frame of int8 activations (8192 tokens × 768 values, ~6.3 MB) and reads an
// answer of the same size (the gradient), over loopback. Its benchmark
// (transport_test.go) compares a raw TCP socket with libp2p over TCP+TLS,
// TCP+Noise and QUIC, several yamux windows, and several streams or
// connections at once; docs/transport.md holds the figures.
package transport

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tls "github.com/libp2p/go-libp2p/p2p/security/tls"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// FrameBytes is one frame's payload: int8 activations of 8192 tokens × 768.
const FrameBytes = 8192 * 768

// Protocol is the echo protocol the server side of a Link answers on.
const Protocol = "/swarmnode/bench/echo/1.0.0"

// headerBytes is the frame's length header: a big-endian uint32.
const headerBytes = 4

// dialTimeout bounds connecting two hosts and opening one stream.
const dialTimeout = 10 * time.Second

// Link is a client connected to an echo server: RoundTrip sends out as one
// frame and reads the answer, of the same length, into in.
type Link interface {
	// RoundTrip sends out and reads the echoed frame into in[:len(out)].
	RoundTrip(out, in []byte) error
	// Close shuts both ends down.
	Close() error
}

// Variant is one transport configuration under test.
type Variant struct {
	// Name names the variant in benchmark and test names.
	Name string
	// Raw makes the link a plain TCP socket without libp2p (the reference);
	// Options is then unused.
	Raw bool
	// Options returns the libp2p options of both hosts, listen address
	// included (a fresh set each call: options may hold state).
	Options func() []libp2p.Option
}

// Dial builds a Link of variant v.
func (v Variant) Dial() (Link, error) {
	if v.Raw {
		return dialRaw()
	}
	return dialP2P(v.Options)
}

// Variants are the configurations the benchmark compares, the raw TCP
// reference first.
func Variants() []Variant {
	tcpAddr, quicAddr := "/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"
	tlsSec := func() libp2p.Option { return libp2p.Security(tls.ID, tls.New) }
	noiseSec := func() libp2p.Option { return libp2p.Security(noise.ID, noise.New) }
	tcpWith := func(sec func() libp2p.Option, mux *yamux.Transport) func() []libp2p.Option {
		return func() []libp2p.Option {
			return baseOptions(tcpAddr, libp2p.Transport(tcp.NewTCPTransport), sec(), libp2p.Muxer(yamux.ID, mux))
		}
	}
	return []Variant{
		{Name: "raw-tcp", Raw: true},
		{Name: "tcp-tls-yamux", Options: tcpWith(tlsSec, yamux.DefaultTransport)},
		{Name: "tcp-noise-yamux", Options: tcpWith(noiseSec, yamux.DefaultTransport)},
		{Name: "tcp-tls-yamux-max256k", Options: tcpWith(tlsSec, yamuxWindow(256<<10, 256<<10))},
		{Name: "tcp-tls-yamux-max64m", Options: tcpWith(tlsSec, yamuxWindow(256<<10, 64<<20))},
		{Name: "tcp-tls-yamux-init16m", Options: tcpWith(tlsSec, yamuxWindow(16<<20, 16<<20))},
		{Name: "quic", Options: func() []libp2p.Option {
			return baseOptions(quicAddr, libp2p.Transport(libp2pquic.NewTransport), tlsSec())
		}},
		{Name: "libp2p-defaults", Options: func() []libp2p.Option {
			// What swarm/host.go gets for security, muxer and resource
			// limits: go-libp2p's defaults, listening on TCP only here.
			return []libp2p.Option{libp2p.ListenAddrStrings(tcpAddr), libp2p.DisableMetrics(), libp2p.DisableRelay()}
		}},
	}
}

// baseOptions are a benchmark host's options: one listen address on
// loopback, the given transport, security and muxer, no resource limits, no
// metrics, no relay.
func baseOptions(addr string, opts ...libp2p.Option) []libp2p.Option {
	return append([]libp2p.Option{
		libp2p.ListenAddrStrings(addr),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.DisableMetrics(),
		libp2p.DisableRelay(),
	}, opts...)
}

// yamuxWindow is go-libp2p's yamux transport with the given initial and
// maximum stream receive windows (go-libp2p ships 256 KiB and 16 MiB).
func yamuxWindow(initial, max uint32) *yamux.Transport {
	t := *yamux.DefaultTransport
	t.InitialStreamWindowSize = initial
	t.MaxStreamWindowSize = max
	return &t
}

// writeFrame writes p behind its length header.
func writeFrame(w io.Writer, p []byte) error {
	var h [headerBytes]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(p)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(p)
	return err
}

// readFrame reads one frame into buf and returns its payload.
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	var h [headerBytes]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(h[:]))
	if n > len(buf) {
		return nil, fmt.Errorf("frame of %d bytes, buffer holds %d", n, len(buf))
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// echo answers frames read from rw with the same bytes until rw ends.
func echo(rw io.ReadWriter, buf []byte) error {
	for {
		p, err := readFrame(rw, buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := writeFrame(rw, p); err != nil {
			return err
		}
	}
}

// roundTrip writes out as a frame and reads the answer into in.
func roundTrip(rw io.ReadWriter, out, in []byte) error {
	if err := writeFrame(rw, out); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	p, err := readFrame(rw, in)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if len(p) != len(out) {
		return fmt.Errorf("answer of %d bytes to %d", len(p), len(out))
	}
	return nil
}

// rawLink is the reference: one persistent TCP connection, no libp2p. Its
// RoundTrip is not safe for concurrent use.
type rawLink struct {
	ln   net.Listener
	conn net.Conn
}

// dialRaw starts an echo server on a loopback TCP port and connects to it.
func dialRaw() (Link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = echo(c, make([]byte, FrameBytes))
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), dialTimeout)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &rawLink{ln: ln, conn: c}, nil
}

// RoundTrip sends out on the connection and reads the answer into in.
func (l *rawLink) RoundTrip(out, in []byte) error { return roundTrip(l.conn, out, in) }

// Close closes the connection and the listener.
func (l *rawLink) Close() error {
	l.conn.Close()
	return l.ln.Close()
}

// p2pLink is two libp2p hosts, connected: each RoundTrip opens a new stream
// on their connection, as the pipeline does for each microbatch, and may run
// concurrently with others.
type p2pLink struct {
	client, server host.Host
	bufs           sync.Pool
}

// dialP2P starts a server and a client host with options, connects them and
// has the server echo frames on Protocol.
func dialP2P(options func() []libp2p.Option) (Link, error) {
	server, err := libp2p.New(options()...)
	if err != nil {
		return nil, fmt.Errorf("server host: %w", err)
	}
	client, err := libp2p.New(options()...)
	if err != nil {
		server.Close()
		return nil, fmt.Errorf("client host: %w", err)
	}
	l := &p2pLink{client: client, server: server}
	l.bufs.New = func() any { b := make([]byte, FrameBytes); return &b }
	server.SetStreamHandler(Protocol, l.serve)
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	if err := client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		l.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	return l, nil
}

// serve echoes the frames of one stream, with a pooled buffer.
func (l *p2pLink) serve(s network.Stream) {
	buf := l.bufs.Get().(*[]byte)
	defer l.bufs.Put(buf)
	if err := echo(s, *buf); err != nil {
		s.Reset()
		return
	}
	s.Close()
}

// RoundTrip opens a stream, sends out, closes its write side and reads the
// answer into in.
func (l *p2pLink) RoundTrip(out, in []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	s, err := l.client.NewStream(ctx, l.server.ID(), Protocol)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if err := writeFrame(s, out); err != nil {
		s.Reset()
		return fmt.Errorf("write: %w", err)
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return fmt.Errorf("close write: %w", err)
	}
	p, err := readFrame(s, in)
	if err != nil {
		s.Reset()
		return fmt.Errorf("read: %w", err)
	}
	s.Close()
	if len(p) != len(out) {
		return fmt.Errorf("answer of %d bytes to %d", len(p), len(out))
	}
	return nil
}

// Close shuts both hosts down.
func (l *p2pLink) Close() error {
	l.client.Close()
	return l.server.Close()
}
