package swarm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"swarmnode/config"
	"swarmnode/dht"
	"swarmnode/receipt"
)

// The ledger of verified work. At every commit a holder is given the
// trainer's signed receipt of its stage's step (package receipt); it checks
// it, appends it to <data_dir>/receipts-<run>.jsonl and adds it to its tally,
// shown at /api/ledger. Any peer may read a holder's receipts over the ledger
// protocol; `swarmnode ledger` collects them from every holder it finds,
// checks every signature and sums each (trainer, step, stage) once: the
// holders of a stage keep copies of the same receipts, so a holder gone since
// is still credited by the others.

// LedgerProtocol is the protocol over which a holder serves its receipts.
func LedgerProtocol(run string) protocol.ID {
	return protocol.ID("/swarmnode/" + run + "/ledger/1.0.0")
}

// maxLedgerBytes bounds the receipts one holder serves or a collector reads
// from one holder.
const maxLedgerBytes = 64 << 20

// workLedger is a node's receipts: the file and the tally.
type workLedger struct {
	path string
	run  string

	mu     sync.Mutex
	params []int // per stage, for FLOPs; nil until load
	tally  *receipt.Tally
	file   *os.File // appended to; nil until the first receipt
}

// receiptsFile is where a node of run keeps its receipts.
func receiptsFile(dataDir, run string) string {
	return filepath.Join(dataDir, "receipts-"+run+".jsonl")
}

func newLedger(dataDir, run string) *workLedger {
	l := &workLedger{path: receiptsFile(dataDir, run), run: run}
	l.tally = receipt.NewTally(l.paramsOf)
	return l
}

// paramsOf is stage k's parameter count (l.mu held: Tally.Add calls it).
func (l *workLedger) paramsOf(k int) int {
	if k < len(l.params) {
		return l.params[k]
	}
	return 0
}

// load sets each stage's parameter count and tallies the receipts the node
// kept when it last ran: lines that do not parse or verify are skipped (a
// torn last line after a crash).
func (l *workLedger) load(params []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.params = params
	if f, err := os.Open(l.path); err == nil {
		readReceipts(f, l.run, maxLedgerBytes, func(r receipt.Receipt) { l.tally.Add(r) })
		f.Close()
	}
}

// add keeps a verified receipt: appended to the file once, tallied once.
func (l *workLedger) add(r receipt.Receipt) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.tally.Add(r) {
		return nil
	}
	if l.file == nil {
		f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		l.file = f
	}
	_, err := l.file.Write(append(r.Encode(), '\n'))
	return err
}

// Ledger is the work a node's receipts credit, as /api/ledger shows it.
type Ledger struct {
	// Receipts counts the distinct receipts.
	Receipts int `json:"receipts"`
	// Peers is the work credited to each peer id.
	Peers map[string]receipt.Work `json:"peers"`
}

// snapshot copies the tally.
func (l *workLedger) snapshot() Ledger {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := Ledger{Receipts: l.tally.Receipts, Peers: map[string]receipt.Work{}}
	for p, w := range l.tally.Peers {
		out.Peers[p] = *w
	}
	return out
}

// close closes the file.
func (l *workLedger) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}

// serve writes this node's receipts file to s: the ledger protocol's answer.
func (l *workLedger) serve(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(time.Minute))
	l.mu.Lock()
	if l.file != nil {
		_ = l.file.Sync()
	}
	l.mu.Unlock()
	f, err := os.Open(l.path)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = io.Copy(s, io.LimitReader(f, maxLedgerBytes))
}

// readReceipts calls add with each receipt of run that r holds, one JSON
// per line, that parses and verifies, within limit bytes. It returns the
// lines it skipped.
func readReceipts(r io.Reader, run string, limit int64, add func(receipt.Receipt)) (bad int) {
	sc := bufio.NewScanner(io.LimitReader(r, limit))
	sc.Buffer(make([]byte, 64<<10), receipt.MaxSize+1)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		rc, err := receipt.Parse(line)
		if err == nil {
			err = rc.Verify(run)
		}
		if err != nil {
			bad++
			continue
		}
		add(rc)
	}
	if sc.Err() != nil {
		bad++
	}
	return bad
}

// stageParams is each stage's parameter count under cfg.
func stageParams(cfg config.Config) ([]int, error) {
	lays, err := stageLayouts(cfg)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(lays))
	for k, l := range lays {
		out[k] = l.Size
	}
	return out, nil
}

// Audit is what CollectLedger found: the tally of every valid receipt, and
// what it could not use.
type Audit struct {
	Ledger
	// Holders counts the holders asked; Unreachable those that did not answer.
	Holders     int `json:"holders"`
	Unreachable int `json:"unreachable"`
	// Invalid counts the lines that did not parse or verify.
	Invalid int `json:"invalid"`
}

// CollectLedger joins the swarm of cfg through bootstrap as a client, asks
// every holder of every stage it finds for its receipts, checks each
// signature and sums each receipt once.
func CollectLedger(ctx context.Context, cfg config.Config, bootstrap []string, log *slog.Logger) (Audit, error) {
	params, err := stageParams(cfg)
	if err != nil {
		return Audit{}, err
	}
	dir, err := os.MkdirTemp("", "swarmnode-ledger-")
	if err != nil {
		return Audit{}, err
	}
	defer os.RemoveAll(dir)
	opts := OptionsFromConfig(cfg)
	opts.Bootstrap, opts.DataDir, opts.Identity, opts.StatusAddr, opts.Role = bootstrap, dir, "", "off", dht.RoleTrainer
	opts.Listen, opts.Logger = []string{"/ip4/0.0.0.0/tcp/0"}, log
	if opts.Admission, err = AdmissionFromConfig(cfg.Admission); err != nil {
		return Audit{}, err
	}
	if opts.NetworkKey, err = NetworkKeyFromConfig(cfg.Admission); err != nil {
		return Audit{}, err
	}
	n, err := New(ctx, opts)
	if err != nil {
		return Audit{}, err
	}
	defer n.Close()
	r := newRoles(n, cfg, RunOptions{Logger: log})
	tally := receipt.NewTally(func(k int) int { return params[k] })
	var audit Audit
	asked := map[peer.ID]bool{}
	for k := range cfg.Stages {
		for _, p := range r.knownHolders(ctx, k) {
			if asked[p] {
				continue
			}
			asked[p] = true
			audit.Holders++
			bad, err := fetchReceipts(ctx, n, cfg.Run, p, func(rc receipt.Receipt) { tally.Add(rc) })
			audit.Invalid += bad
			if bad > 0 {
				log.Warn("receipts that do not verify", "holder", p.ShortString(), "lines", bad)
			}
			if err != nil {
				audit.Unreachable++
				log.Warn("ledger not read", "holder", p.ShortString(), "err", err)
			}
		}
	}
	if audit.Holders == 0 {
		return audit, errors.New("no holder found in the swarm")
	}
	audit.Receipts = tally.Receipts
	audit.Peers = map[string]receipt.Work{}
	for p, w := range tally.Peers {
		audit.Peers[p] = *w
	}
	return audit, nil
}

// fetchReceipts reads holder p's receipts over the ledger protocol.
func fetchReceipts(ctx context.Context, n *Node, run string, p peer.ID, add func(receipt.Receipt)) (bad int, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	s, err := n.Host().NewStream(ctx, p, LedgerProtocol(run))
	if err != nil {
		return 0, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(time.Minute))
	if err := s.CloseWrite(); err != nil {
		return 0, err
	}
	return readReceipts(s, run, maxLedgerBytes, add), nil
}
