// Package dht is a run's private view of who serves which pipeline stage.
//
// It wraps go-libp2p-kad-dht with a run-specific protocol prefix and adds three
// things on top of it:
//
//   - stage membership as provider records: every holder of stage k provides
//     StageCID(run, k), with a short provider validity, re-provided periodically;
//   - a signed, expiring per-peer info record (PeerRecord) stored under
//     PeerKey(run, id), checked by Validator (signature, signer = peer in the key,
//     run, expiry, well-formed content) and selected by sequence number;
//   - fast-changing load (throughput, queue) gossiped on a GossipSub topic per run.
//
// Service ties them together: it announces this peer and keeps a cached,
// refreshed table of the live holders of every stage (Holders), from which a
// caller can drop a holder at once after a failed call (MarkDown). Lookup asks
// the DHT now: a short walk to the peers closest to the stage key that stops
// once two answers confirm each other, falling back to kad-dht's full provider
// walk (LookupFull, which the periodic refresh runs).
//
// The files, one job each: options.go (Options and their defaults, from
// package dht/defaults), service.go (construction and shutdown), announce.go
// (what this peer announces: its record and provider record), gossip.go (load
// messages, sent and received), refresh.go (the bootstrap, routing-table and
// holder refresh loops), lookup.go (Lookup), near.go (its short walk),
// fetch.go (fetching peer records), holders.go (the live-holders table),
// record.go, validator.go and keys.go (records, their validation, DHT keys).
//
// docs/protocol.md describes the wire formats for other implementations;
// docs/dht-notes.md the measurements behind some choices.
package dht
