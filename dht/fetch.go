package dht

import (
	"context"
	"errors"
	"fmt"
	"time"

	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"
)

// FetchRecord gets and verifies p's record from the DHT.
func (s *Service) FetchRecord(ctx context.Context, p peer.ID) (PeerRecord, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	return s.fetchRecord(ctx, p)
}

// fetchProviderRecord asks the provider for its record first and falls back
// to a DHT GetValue (a client-mode provider serves no DHT requests).
func (s *Service) fetchProviderRecord(ctx context.Context, ai peer.AddrInfo) (PeerRecord, error) {
	if ai.ID != s.h.ID() {
		key := PeerKey(s.opts.Run, ai.ID)
		dctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout/4)
		b, err := s.fetchDirect(dctx, ai, key)
		cancel()
		if err == nil {
			rec, err := Validator{Run: s.opts.Run}.open(key, b)
			if err == nil {
				return rec, nil
			}
			s.log.Debug("direct record fetch", "peer", ai.ID, "err", err)
		}
	}
	return s.fetchRecord(ctx, ai.ID)
}

// fetchRecord gets p's record with a DHT walk towards its key.
func (s *Service) fetchRecord(ctx context.Context, p peer.ID) (PeerRecord, error) {
	key := PeerKey(s.opts.Run, p)
	// Quorum 1: the first valid record will do; gossip carries fresher load.
	b, err := s.kad.GetValue(ctx, key, kaddht.Quorum(1))
	if err != nil {
		return PeerRecord{}, fmt.Errorf("get record of %s: %w", p, err)
	}
	rec, err := Validator{Run: s.opts.Run}.open(key, b)
	if err != nil {
		return PeerRecord{}, fmt.Errorf("record of %s: %w", p, err)
	}
	return rec, nil
}

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
