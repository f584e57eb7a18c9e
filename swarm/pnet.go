package swarm

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/libp2p/go-libp2p/core/pnet"
)

// A closed run may also use a libp2p private network: every connection
// starts with a handshake keyed by a pre-shared key, so a host without the
// key cannot even reach the run's protocols (not the admission protocol, not
// identify). It is coarser than admission (one key for everyone, no roles, no
// revocation short of a new key) and runs over TCP only: QUIC, WebTransport
// and WebRTC do not support private networks in go-libp2p.

// NewNetworkKey returns a fresh private-network key in libp2p's PSK v1 file
// format.
func NewNetworkKey() ([]byte, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	return []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(k) + "\n"), nil
}

// LoadNetworkKey reads a private-network key file (NewNetworkKey's format).
func LoadNetworkKey(path string) (pnet.PSK, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("network key: %w", err)
	}
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("network key %s: %w", path, err)
	}
	return psk, nil
}

// tcpOnly keeps the TCP listen addresses of listen, the only ones a private
// network can use; it fails when none is left.
func tcpOnly(listen []string) (tcp, dropped []string, err error) {
	for _, a := range listen {
		if strings.Contains(a, "/tcp/") && !strings.Contains(a, "/ws") {
			tcp = append(tcp, a)
		} else {
			dropped = append(dropped, a)
		}
	}
	if len(tcp) == 0 {
		return nil, dropped, errors.New("a private network (admission.network_key) runs over TCP only: node.listen has no TCP address")
	}
	return tcp, dropped, nil
}
