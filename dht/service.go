package dht

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Service announces this peer in a run and tracks the live holders of every stage.
type Service struct {
	opts  Options
	h     host.Host
	key   crypto.PrivKey
	kad   *kaddht.IpfsDHT
	msgr  *pb.ProtocolMessenger
	ps    *pubsub.PubSub
	topic *pubsub.Topic
	sub   *pubsub.Subscription
	tab   *table
	log   *slog.Logger

	mu      sync.Mutex
	self    Self
	lastSeq uint64
	// left is what this peer served before it stopped serving any stage;
	// the announce loop tells the run with a leave message.
	left *Self

	// lastMsg is when each author's last load message was accepted, for
	// the per-author rate limit; refreshLoop prunes it.
	rateMu  sync.Mutex
	lastMsg map[peer.ID]time.Time

	// counts says how Lookups found their providers.
	counts lookupCounts

	announceNow chan struct{}
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	closeOnce   sync.Once
}

// pubsubOptions are the GossipSub settings load gossip needs: strict message
// signing, and flood publishing, without which a message published just after
// subscribing is silently lost.
func pubsubOptions(run string) []pubsub.Option {
	params, thresholds := peerScore(run)
	return []pubsub.Option{
		pubsub.WithFloodPublish(true),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithMaxMessageSize(1 << 20),
		pubsub.WithPeerScore(params, thresholds),
	}
}

// NewPubSub starts GossipSub on h with the settings load gossip of run needs,
// peer scoring on its topic included (score.go).
func NewPubSub(ctx context.Context, h host.Host, run string) (*pubsub.PubSub, error) {
	ps, err := pubsub.NewGossipSub(ctx, h, pubsubOptions(run)...)
	if err != nil {
		return nil, fmt.Errorf("gossipsub: %w", err)
	}
	return ps, nil
}

// New starts the DHT on h, joins the load gossip topic on ps, and starts
// announcing self. It runs until Close or until ctx ends.
func New(ctx context.Context, h host.Host, ps *pubsub.PubSub, self Self, opts Options) (*Service, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if err := self.check(); err != nil {
		return nil, fmt.Errorf("dht: %w", err)
	}
	key := h.Peerstore().PrivKey(h.ID())
	if key == nil {
		return nil, errors.New("dht: host has no private key")
	}
	kad, msgr, err := startKad(h, opts)
	if err != nil {
		return nil, err
	}
	s := &Service{
		opts: opts, h: h, key: key, kad: kad, msgr: msgr, tab: newTable(opts.RecordTTL),
		ps: ps, log: opts.Logger, self: self, announceNow: make(chan struct{}, 1),
		lastMsg: make(map[peer.ID]time.Time),
	}
	if err := s.joinGossip(); err != nil {
		kad.Close()
		return nil, err
	}
	s.start(ctx)
	return s, nil
}

// startKad starts the run's kad-dht on h, with the run's protocol, validator
// and record lifetimes, and the message sender the short lookup reuses.
func startKad(h host.Host, opts Options) (*kaddht.IpfsDHT, *pb.ProtocolMessenger, error) {
	mode := kaddht.ModeServer
	if opts.Client {
		mode = kaddht.ModeClient
	}
	kopts := []kaddht.Option{
		kaddht.ProtocolPrefix(ProtocolPrefix(opts.Run)),
		kaddht.Mode(mode),
		kaddht.Validator(recordValidator(opts.Run)),
		kaddht.ProviderManagerOpts(
			records.ProvideValidity(opts.RecordTTL),
			records.CleanupInterval(opts.RecordTTL),
		),
		kaddht.MaxRecordAge(opts.RecordTTL),
		// rtRefreshLoop refreshes instead, at a random first time.
		kaddht.DisableAutoRefresh(),
	}
	if len(opts.Bootstrap) > 0 {
		kopts = append(kopts, kaddht.BootstrapPeers(opts.Bootstrap...))
	}
	kad, err := kaddht.New(h, kopts...)
	if err != nil {
		return nil, nil, fmt.Errorf("dht: %w", err)
	}
	// The DHT's own message sender: GET_PROVIDERS of the short lookup reuse
	// its streams.
	msgr, err := pb.NewProtocolMessenger(kad.MessageSender())
	if err != nil {
		kad.Close()
		return nil, nil, fmt.Errorf("dht messenger: %w", err)
	}
	return kad, msgr, nil
}

// recordValidator returns the namespaced validator of a run: only our
// namespace, so no public-key or IPNS records are accepted either.
func recordValidator(run string) record.NamespacedValidator {
	return record.NamespacedValidator{Namespace: Validator{Run: run}}
}

// joinGossip registers the load message validator and subscribes to the
// run's gossip topic; on failure it undoes what it did.
func (s *Service) joinGossip() error {
	name := GossipTopic(s.opts.Run)
	if err := s.ps.RegisterTopicValidator(name, s.validateLoadMsg); err != nil {
		return fmt.Errorf("gossip validator: %w", err)
	}
	topic, err := s.ps.Join(name)
	if err != nil {
		_ = s.ps.UnregisterTopicValidator(name)
		return fmt.Errorf("gossip join %s: %w", name, err)
	}
	sub, err := topic.Subscribe(pubsub.WithBufferSize(256))
	if err != nil {
		topic.Close()
		_ = s.ps.UnregisterTopicValidator(name)
		return fmt.Errorf("gossip subscribe: %w", err)
	}
	s.topic, s.sub = topic, sub
	return nil
}

// start dials the bootstrap peers and starts the service's loops, which run
// until Close or until ctx ends.
func (s *Service) start(ctx context.Context) {
	lctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		// The caller's ctx bounds the service too.
		select {
		case <-ctx.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	s.connectBootstrap(lctx)
	loops := []func(context.Context){
		s.bootstrapLoop, s.rtRefreshLoop, s.announceLoop, s.gossipLoop, s.readLoop, s.refreshLoop,
	}
	s.wg.Add(len(loops))
	for _, loop := range loops {
		go func() {
			defer s.wg.Done()
			loop(lctx)
		}()
	}
}

// Kad returns the underlying kad-dht, for callers that need raw DHT access.
func (s *Service) Kad() *kaddht.IpfsDHT { return s.kad }

// Holders returns the live holders of stage (this peer included when it
// serves the stage), from the cache that gossip and the refresh loop keep.
func (s *Service) Holders(stage int) []Holder { return s.tab.holders(stage, time.Now()) }

// AllHolders returns the live holders of every stage, by stage.
func (s *Service) AllHolders() map[int][]Holder { return s.tab.all(time.Now()) }

// MarkDown drops p from the holders at once, after a call to it failed. It
// returns after Options.DownBackoff if it is still announcing itself.
func (s *Service) MarkDown(p peer.ID) { s.tab.markDown(p, time.Now(), s.opts.DownBackoff) }

// Recovered lists the holders of stage that MarkDown hides but that have
// announced themselves since: a caller's backoff keeps them out of its
// routing, but others may route to them again (a holder frozen for a while,
// then resumed).
func (s *Service) Recovered(stage int) []Holder { return s.tab.recovered(stage, time.Now()) }

// Close tells the run this peer is leaving (best effort, bounded), stops the
// loops and closes the DHT. It does not close the host or the pubsub.
func (s *Service) Close() error {
	var err error
	s.closeOnce.Do(func() {
		lctx, cancel := context.WithTimeout(context.Background(), min(s.opts.OpTimeout, leaveTimeout))
		s.publishLoad(lctx, true)
		cancel()
		s.cancel()
		s.wg.Wait()
		s.sub.Cancel()
		err = errors.Join(s.topic.Close(), s.ps.UnregisterTopicValidator(GossipTopic(s.opts.Run)), s.kad.Close())
	})
	return err
}

// leaveTimeout bounds the leave message of Close: a peer shutting down on a
// signal must not hang on a dead network.
const leaveTimeout = 500 * time.Millisecond
