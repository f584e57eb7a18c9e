package dht

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"
)

// maxReply bounds a GET_VALUE reply read from a peer: a record plus the
// closer peers a server adds.
const maxReply = 64 << 10

// fetchDirect asks the provider itself for its record with one kad GET_VALUE
// request on the run's DHT protocol. Every server-mode peer keeps its own
// record (PutValue stores it locally first), so this is one round trip where
// a DHT GetValue is a whole walk towards the key. The reply is validated by
// the caller like any other value.
func (s *Service) fetchDirect(ctx context.Context, ai peer.AddrInfo, key string) ([]byte, error) {
	if len(ai.Addrs) > 0 {
		s.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
	}
	str, err := s.h.NewStream(ctx, ai.ID, ProtocolPrefix(s.opts.Run)+"/kad/1.0.0")
	if err != nil {
		return nil, err
	}
	defer str.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = str.SetDeadline(dl)
	} else {
		_ = str.SetDeadline(time.Now().Add(s.opts.OpTimeout))
	}
	req, err := proto.Marshal(pb.NewMessage(pb.Message_GET_VALUE, []byte(key), 0))
	if err != nil {
		return nil, err
	}
	if err := msgio.NewVarintWriter(str).WriteMsg(req); err != nil {
		_ = str.Reset()
		return nil, err
	}
	raw, err := msgio.NewVarintReaderSize(str, maxReply).ReadMsg()
	if err != nil {
		_ = str.Reset()
		return nil, err
	}
	var reply pb.Message
	if err := proto.Unmarshal(raw, &reply); err != nil {
		return nil, fmt.Errorf("GET_VALUE reply: %w", err)
	}
	if reply.GetType() != pb.Message_GET_VALUE || reply.Record == nil || string(reply.Record.Key) != key {
		return nil, errors.New("GET_VALUE reply carries no record for the key")
	}
	return reply.Record.Value, nil
}
