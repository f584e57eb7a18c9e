package dht

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
)

// Options configures a Service. Zero durations take the defaults below.
type Options struct {
	// Run is the run id; it names the DHT protocol, keys and gossip topic.
	Run string
	// NumStages is how many stages the run has; the refresh looks up each.
	NumStages int
	// Client runs the DHT in client mode: it queries but stores nothing for others.
	Client bool
	// Bootstrap lists the peers to join through.
	Bootstrap []peer.AddrInfo
	// RecordTTL is the validity of this peer's record and provider record, and
	// how long a holder stays listed after it was last heard of. Default 2m.
	RecordTTL time.Duration
	// RepublishEvery is the period of re-providing and re-putting this peer's
	// record. Default RecordTTL/4.
	RepublishEvery time.Duration
	// GossipEvery is the period of load gossip. Default 2s.
	GossipEvery time.Duration
	// RefreshEvery is the period of DHT lookups of every stage's holders. Default 5s.
	RefreshEvery time.Duration
	// DownBackoff is how long MarkDown hides a holder. Default 30s.
	DownBackoff time.Duration
	// OpTimeout is the deadline of each DHT operation. Default 10s.
	OpTimeout time.Duration
	// RTRefreshEvery is the period of routing-table refreshes (a lookup per
	// stale bucket). The first comes at a random point within the first
	// fifth of a period, not at start: kad-dht's own refresh-on-start, run
	// by many peers joining at once, is a storm of lookups that slowed a
	// 64-peer swarm's first announcements from ~6 s to ~13 s. Connections and
	// lookups fill the table meanwhile. Default 10m.
	RTRefreshEvery time.Duration
	// Logger receives progress and errors; nil discards them.
	Logger *slog.Logger
}

func (o *Options) fill() error {
	if o.Run == "" {
		return errors.New("dht: empty run")
	}
	if o.NumStages < 0 || o.NumStages > MaxStages {
		return fmt.Errorf("dht: %d stages out of range [0, %d]", o.NumStages, MaxStages)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.RecordTTL, 2*time.Minute)
	if o.RecordTTL > MaxRecordLifetime {
		return fmt.Errorf("dht: record TTL %s above %s", o.RecordTTL, MaxRecordLifetime)
	}
	def(&o.RepublishEvery, o.RecordTTL/4)
	def(&o.GossipEvery, 2*time.Second)
	def(&o.RefreshEvery, 5*time.Second)
	def(&o.DownBackoff, 30*time.Second)
	def(&o.OpTimeout, 10*time.Second)
	def(&o.RTRefreshEvery, 10*time.Minute)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Self is what this peer announces about itself.
type Self struct {
	// Stage is the stage served, -1 for none.
	Stage int
	// Role is server, trainer or both.
	Role string
	// Throughput is the measured speed in tokens per second.
	Throughput float64
	// Queue is the number of microbatches waiting here.
	Queue int
}

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

	// nearHits and nearMisses count Lookups answered by nearProviders and
	// those that fell back to the full walk; nearFollowups counts the
	// follow-up rounds of the former.
	nearHits, nearMisses, nearFollowups atomic.Uint64

	announceNow chan struct{}
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	closeOnce   sync.Once
}

// NewPubSub starts GossipSub on h with the settings load gossip needs: strict
// message signing, and flood publishing, without which a message published just
// after subscribing is silently lost.
func NewPubSub(ctx context.Context, h host.Host) (*pubsub.PubSub, error) {
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithFloodPublish(true),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithMaxMessageSize(1<<20),
	)
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
	if err := checkSelf(self); err != nil {
		return nil, err
	}
	key := h.Peerstore().PrivKey(h.ID())
	if key == nil {
		return nil, errors.New("dht: host has no private key")
	}
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
		kaddht.DisableAutoRefresh(),
	}
	if len(opts.Bootstrap) > 0 {
		kopts = append(kopts, kaddht.BootstrapPeers(opts.Bootstrap...))
	}
	kad, err := kaddht.New(h, kopts...)
	if err != nil {
		return nil, fmt.Errorf("dht: %w", err)
	}
	// The DHT's own message sender: GET_PROVIDERS of the short lookup reuse
	// its streams.
	msgr, err := pb.NewProtocolMessenger(kad.MessageSender())
	if err != nil {
		kad.Close()
		return nil, fmt.Errorf("dht messenger: %w", err)
	}
	s := &Service{
		opts: opts, h: h, key: key, kad: kad, msgr: msgr, tab: newTable(opts.RecordTTL),
		ps: ps, log: opts.Logger, self: self, announceNow: make(chan struct{}, 1),
		lastMsg: make(map[peer.ID]time.Time),
	}
	topicName := GossipTopic(opts.Run)
	if err := ps.RegisterTopicValidator(topicName, s.validateLoadMsg); err != nil {
		kad.Close()
		return nil, fmt.Errorf("gossip validator: %w", err)
	}
	s.topic, err = ps.Join(topicName)
	if err != nil {
		_ = ps.UnregisterTopicValidator(topicName)
		kad.Close()
		return nil, fmt.Errorf("gossip join %s: %w", topicName, err)
	}
	s.sub, err = s.topic.Subscribe(pubsub.WithBufferSize(256))
	if err != nil {
		s.topic.Close()
		_ = ps.UnregisterTopicValidator(topicName)
		kad.Close()
		return nil, fmt.Errorf("gossip subscribe: %w", err)
	}
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
	s.wg.Add(6)
	go s.bootstrapLoop(lctx)
	go s.rtRefreshLoop(lctx)
	go s.announceLoop(lctx)
	go s.gossipLoop(lctx)
	go s.readLoop(lctx)
	go s.refreshLoop(lctx)
	return s, nil
}

// recordValidator returns the namespaced validator of a run: only our
// namespace, so no public-key or IPNS records are accepted either.
func recordValidator(run string) record.NamespacedValidator {
	return record.NamespacedValidator{Namespace: Validator{Run: run}}
}

func checkSelf(s Self) error {
	if s.Stage < -1 || s.Stage >= MaxStages {
		return fmt.Errorf("dht: stage %d out of range [-1, %d)", s.Stage, MaxStages)
	}
	switch s.Role {
	case RoleServer, RoleTrainer, RoleBoth:
	default:
		return fmt.Errorf("dht: role %q: want server, trainer or both", s.Role)
	}
	if !(s.Throughput >= 0) || math.IsInf(s.Throughput, 0) || s.Queue < 0 {
		return fmt.Errorf("dht: bad load: throughput %v, queue %d", s.Throughput, s.Queue)
	}
	return nil
}

// connectBootstrap dials the bootstrap peers in parallel, each with a deadline.
func (s *Service) connectBootstrap(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ai := range s.opts.Bootstrap {
		if ai.ID == s.h.ID() {
			continue
		}
		wg.Add(1)
		go func(ai peer.AddrInfo) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
			defer cancel()
			if err := s.h.Connect(cctx, ai); err != nil {
				s.log.Warn("bootstrap peer unreachable", "peer", ai.ID, "err", err)
			}
		}(ai)
	}
	wg.Wait()
}

// bootstrapLoop redials the bootstrap peers while this peer is connected to
// none of them and to nobody else either: a first dial that failed (the
// bootstrap was still starting, the machine was overloaded, a dial backoff)
// must not leave the peer outside the swarm for good.
func (s *Service) bootstrapLoop(ctx context.Context) {
	defer s.wg.Done()
	if len(s.opts.Bootstrap) == 0 {
		return
	}
	wait := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if len(s.h.Network().Peers()) > 0 {
			wait = time.Second
			continue
		}
		s.log.Info("no connected peers: dialing the bootstrap peers again")
		if sw, ok := s.h.Network().(*swarm.Swarm); ok {
			// A failed dial puts a peer in dial backoff; this redial is the
			// deliberate, already rate-limited retry, so it starts clean.
			for _, ai := range s.opts.Bootstrap {
				sw.Backoff().Clear(ai.ID)
			}
		}
		s.connectBootstrap(ctx)
		wait = min(2*wait, 30*time.Second)
	}
}

// Kad returns the underlying kad-dht, for callers that need raw DHT access.
func (s *Service) Kad() *kaddht.IpfsDHT { return s.kad }

// Self returns what this peer currently announces.
func (s *Service) Self() Self {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.self
}

// SetSelf changes what this peer announces. A change of stage or role is
// announced at once; load alone goes out with the next gossip.
func (s *Service) SetSelf(self Self) error {
	if err := checkSelf(self); err != nil {
		return err
	}
	s.mu.Lock()
	changed := self.Stage != s.self.Stage || self.Role != s.self.Role
	if self.Stage < 0 && s.self.Stage >= 0 {
		old := s.self
		s.left = &old
	}
	s.self = self
	s.mu.Unlock()
	if changed {
		s.kick()
	}
	return nil
}

// SetLoad updates the throughput (tokens/s) and queue length this peer
// gossips; non-finite or negative values are ignored.
func (s *Service) SetLoad(throughput float64, queue int) {
	if !(throughput >= 0) || math.IsInf(throughput, 0) || queue < 0 {
		return
	}
	s.mu.Lock()
	s.self.Throughput, s.self.Queue = throughput, queue
	s.mu.Unlock()
}

func (s *Service) kick() {
	select {
	case s.announceNow <- struct{}{}:
	default:
	}
}

// Holders returns the live holders of stage (this peer included when it
// serves the stage), from the cache that gossip and the refresh loop keep.
func (s *Service) Holders(stage int) []Holder { return s.tab.holders(stage, time.Now()) }

// AllHolders returns the live holders of every stage, by stage.
func (s *Service) AllHolders() map[int][]Holder { return s.tab.all(time.Now()) }

// MarkDown drops p from the holders at once, after a call to it failed. It
// returns after Options.DownBackoff if it is still announcing itself.
func (s *Service) MarkDown(p peer.ID) { s.tab.markDown(p, time.Now(), s.opts.DownBackoff) }

// nextSeq returns a sequence number larger than any before it, also across
// restarts (it follows the wall clock).
func (s *Service) nextSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := uint64(time.Now().UnixNano())
	if seq <= s.lastSeq {
		seq = s.lastSeq + 1
	}
	s.lastSeq = seq
	return seq
}

// Record builds and signs this peer's current record.
func (s *Service) Record() (PeerRecord, []byte, error) {
	self := s.Self()
	addrs := s.h.Addrs()
	if len(addrs) > MaxAddrs {
		addrs = addrs[:MaxAddrs]
	}
	rec := PeerRecord{
		Run: s.opts.Run, Peer: s.h.ID(), Stage: self.Stage, Role: self.Role,
		Throughput: self.Throughput, Queue: self.Queue,
		Seq: s.nextSeq(), Expires: time.Now().Add(s.opts.RecordTTL).UnixMilli(),
	}
	for _, a := range addrs {
		rec.Addrs = append(rec.Addrs, a.String())
	}
	b, err := Sign(rec, s.key)
	return rec, b, err
}

// announce puts this peer's record and provides its stage.
func (s *Service) announce(ctx context.Context) error {
	rec, b, err := s.Record()
	if err != nil {
		return err
	}
	if rec.Stage >= 0 {
		s.tab.observeRecord(rec, time.Now())
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	var errs []error
	if err := s.kad.PutValue(cctx, PeerKey(s.opts.Run, rec.Peer), b); err != nil {
		errs = append(errs, fmt.Errorf("put record: %w", err))
	}
	if rec.Stage >= 0 {
		if err := s.kad.Provide(cctx, StageCID(s.opts.Run, rec.Stage), true); err != nil {
			errs = append(errs, fmt.Errorf("provide stage %d: %w", rec.Stage, err))
		}
	}
	return errors.Join(errs...)
}

// announceLoop re-announces every RepublishEvery, at once on a stage change,
// and every GossipEvery while the last attempt failed (e.g. no peers yet).
// Right after joining the routing table is still filling, so the first
// announcements reach few peers: the period starts at min(GossipEvery, 1s)
// and doubles up to RepublishEvery.
func (s *Service) announceLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	warmStart := min(s.opts.GossipEvery, time.Second)
	warm := warmStart
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.announceNow:
			s.mu.Lock()
			left := s.left
			s.left = nil
			s.mu.Unlock()
			if left != nil {
				s.publish(ctx, *left, true)
			}
			s.publishLoad(ctx, false)
			warm = warmStart
		}
		next := min(warm, s.opts.RepublishEvery)
		warm *= 2
		if err := s.announce(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Debug("announce", "err", err)
			next = min(next, s.opts.GossipEvery)
		}
		t.Reset(next)
	}
}

func (s *Service) publishLoad(ctx context.Context, leaving bool) {
	s.publish(ctx, s.Self(), leaving)
}

// publish gossips self's load, or that it leaves self.Stage.
func (s *Service) publish(ctx context.Context, self Self, leaving bool) {
	if self.Stage < 0 {
		return
	}
	l := Load{Stage: self.Stage, Role: self.Role, Throughput: self.Throughput, Queue: self.Queue, Seq: s.nextSeq(), Leaving: leaving}
	b, err := EncodeLoad(l)
	if err != nil {
		s.log.Warn("encode load", "err", err)
		return
	}
	// Our own table too: a peer that stops serving drops its own entry.
	s.tab.observeLoad(s.h.ID(), l, time.Now())
	cctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	if err := s.topic.Publish(cctx, b); err != nil && ctx.Err() == nil {
		s.log.Debug("publish load", "err", err)
	}
}

func (s *Service) gossipLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.GossipEvery)
	defer t.Stop()
	for {
		s.publishLoad(ctx, false)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// MinLoadInterval is the shortest interval between two accepted load
// messages of one author; faster ones are dropped unforwarded, so a peer
// cannot make the swarm verify and relay a flood of its messages.
const MinLoadInterval = 100 * time.Millisecond

// validateLoadMsg is the topic validator: GossipSub has checked the signature
// already; this rejects malformed content (the sender's score drops) and
// ignores an author's messages that come faster than MinLoadInterval.
func (s *Service) validateLoadMsg(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	l, err := DecodeLoad(m.Data)
	if err != nil {
		return pubsub.ValidationReject
	}
	if from := m.GetFrom(); from != s.h.ID() && !l.Leaving {
		now := time.Now()
		s.rateMu.Lock()
		last, seen := s.lastMsg[from]
		tooSoon := seen && now.Sub(last) < MinLoadInterval
		if !tooSoon {
			s.lastMsg[from] = now
		}
		s.rateMu.Unlock()
		if tooSoon {
			return pubsub.ValidationIgnore
		}
	}
	m.ValidatorData = l
	return pubsub.ValidationAccept
}

// pruneRate forgets authors not heard from for a while.
func (s *Service) pruneRate(now time.Time) {
	s.rateMu.Lock()
	defer s.rateMu.Unlock()
	for p, t := range s.lastMsg {
		if now.Sub(t) > 10*time.Second {
			delete(s.lastMsg, p)
		}
	}
}

func (s *Service) readLoop(ctx context.Context) {
	defer s.wg.Done()
	for {
		m, err := s.sub.Next(ctx)
		if err != nil {
			return
		}
		from := m.GetFrom()
		if from == s.h.ID() {
			continue
		}
		l, ok := m.ValidatorData.(Load)
		if !ok {
			continue
		}
		s.tab.observeLoad(from, l, time.Now())
	}
}

// rtRefreshLoop refreshes the routing table's stale buckets every
// RTRefreshEvery, starting at a random point of the first fifth.
func (s *Service) rtRefreshLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTimer(rand.N(s.opts.RTRefreshEvery/5 + 1))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case err := <-s.kad.RefreshRoutingTable():
			if err != nil && ctx.Err() == nil {
				s.log.Debug("routing table refresh", "err", err)
			}
		case <-ctx.Done():
			return
		}
		t.Reset(s.opts.RTRefreshEvery)
	}
}

func (s *Service) refreshLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.RefreshEvery)
	defer t.Stop()
	for {
		for k := 0; k < s.opts.NumStages; k++ {
			if _, err := s.lookup(ctx, k, true); err != nil && ctx.Err() == nil {
				s.log.Debug("refresh holders", "stage", k, "err", err)
			}
		}
		s.tab.prune(time.Now())
		s.pruneRate(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Lookup searches the DHT for the holders of stage now (and updates the
// cache): it finds the stage's providers and returns those with a valid
// signed record. The providers come from the peers closest to the stage key,
// found by a short walk without kad-dht's follow-up (see nearProviders); when
// that walk does not converge or finds nobody, Lookup runs the full kad-dht
// provider walk instead. Records are fetched only for providers whose record
// is not cached with at least half its lifetime left (a signed record does
// not change until it expires; load changes travel by gossip). Providers
// without a valid record are left out.
func (s *Service) Lookup(ctx context.Context, stage int) ([]Holder, error) {
	return s.lookup(ctx, stage, false)
}

// LookupFull is Lookup with kad-dht's full provider walk (walk, then a
// follow-up query to each of the K closest peers found), as the periodic
// refresh runs it.
func (s *Service) LookupFull(ctx context.Context, stage int) ([]Holder, error) {
	return s.lookup(ctx, stage, true)
}

// LookupStats counts how Lookups found their providers.
type LookupStats struct {
	// Near is how many the short walk towards the closest peers answered.
	Near uint64
	// Followups is how many extra rounds those needed because the answers
	// disagreed or missed a holder already known.
	Followups uint64
	// Fallbacks is how many ran the full kad-dht walk instead.
	Fallbacks uint64
}

// LookupStats returns the counts of Lookups since the start.
func (s *Service) LookupStats() LookupStats {
	return LookupStats{Near: s.nearHits.Load(), Followups: s.nearFollowups.Load(), Fallbacks: s.nearMisses.Load()}
}

func (s *Service) lookup(ctx context.Context, stage int, full bool) ([]Holder, error) {
	if stage < 0 || stage >= MaxStages {
		return nil, fmt.Errorf("stage %d out of range", stage)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	defer cancel()
	horizon := time.Now().Add(s.opts.RecordTTL / 2)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		out  []Holder
		errs []error
	)
	var known []peer.ID
	for _, h := range s.tab.holders(stage, time.Now()) {
		known = append(known, h.Peer)
	}
	for ai := range s.providersOf(ctx, StageCID(s.opts.Run, stage), full, known) {
		if h, ok := s.tab.fresh(ai.ID, horizon); ok {
			if h.Stage == stage {
				mu.Lock()
				out = append(out, h)
				mu.Unlock()
			}
			continue
		}
		wg.Add(1)
		go func(ai peer.AddrInfo) {
			defer wg.Done()
			rec, err := s.fetchProviderRecord(ctx, ai)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			now := time.Now()
			s.tab.observeRecord(rec, now)
			if rec.Stage == stage && !s.tab.isHidden(rec.Peer, now) {
				out = append(out, Holder{Peer: rec.Peer, Stage: rec.Stage, Role: rec.Role,
					Throughput: rec.Throughput, Queue: rec.Queue, Addrs: rec.Multiaddrs(),
					Seq: rec.Seq, LastSeen: now, Expires: rec.ExpiresAt()})
			}
		}(ai)
	}
	wg.Wait()
	sortHolders(out)
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

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

// Close tells the run this peer is leaving (best effort, bounded), stops the
// loops and closes the DHT. It does not close the host or the pubsub.
func (s *Service) Close() error {
	var err error
	s.closeOnce.Do(func() {
		lctx, cancel := context.WithTimeout(context.Background(), min(s.opts.OpTimeout, 500*time.Millisecond))
		s.publishLoad(lctx, true)
		cancel()
		s.cancel()
		s.wg.Wait()
		s.sub.Cancel()
		err = errors.Join(s.topic.Close(), s.ps.UnregisterTopicValidator(GossipTopic(s.opts.Run)), s.kad.Close())
	})
	return err
}
