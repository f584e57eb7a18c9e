// Package pipeline runs a GPT as a SWARM pipeline over libp2p: stage servers, the
// trainer that feeds them, and the routing between them.
//
// A microbatch is one chain of nested two-way streams, one per hop, on the run's
// stage protocol (Protocol). The trainer opens a stream to a holder of stage 0 and
// sends the token ids and targets; each server runs its stage forward, picks a
// holder of the next stage at random with weight throughput/(1+queue) among those
// not in backoff, and streams its output there; the last stage computes the loss
// and answers with the gradient of its input, and every hop in turn runs its
// backward pass and answers upstream with its own input gradient. Activations and
// gradients are compressed both ways (package codec) inside checksummed frames
// (package wire).
//
// Each hop owns its downstream: when a downstream holder fails or times out, the
// hop marks it down with exponential backoff and resends its cached output to
// another holder, up to a retry limit, before it reports the failure upstream; the
// trainer restarts a microbatch that failed at stage 0, so none is lost. Every
// request carries a time budget, so that a hop gives up on its downstream in time
// to answer its upstream.
//
// A hop also hedges against a holder that is merely slow. A step commits only
// once every microbatch of it is back, so the few microbatches that routing still
// sends to a much slower holder would stall the whole step. The call is not
// duplicated; instead, once a training call has taken half the stage's recent
// median latency (at least 0.5 ms) while another live holder of that stage is
// measured at least twice as fast, the hop closes its side of the stream: a
// request to give up. A holder honours it only while nothing of the microbatch is
// done: while it runs its forward pass, or waits for a downstream that itself
// gives up when asked in turn (the request travels down the chain); it then drops
// its cached pass and answers "busy: cancelled", and the hop sends its cached
// output to another holder, which counts as a hedge, not a failure
// (ServerStats.Hedged, TrainerStats.Hedged, and TrainerStats.Retried). Once the
// downstream has answered (or, on the last stage, the backward pass is due) the
// holder carries on and answers as usual. A holder that does not answer at all
// (stopped) is left to the hop timeout.
//
// Steps are committed by the trainer (commit.go): the holders of a stage keep a
// ledger of the microbatches they accumulated (ledger.go); at each step the
// trainer asks them what they hold, has duplicates taken back and lost
// microbatches sent again, and asks them to step together, their gradients
// all-reduced through WorkerOptions.Reduce. Every microbatch counts exactly once
// at every stage (docs/sync.md).
//
// The package knows nothing of the DHT: a Router supplies the live holders of
// each stage and learns about failed calls. Package swarm adapts the run's DHT to
// it; tests use in-process routers over real loopback hosts.
package pipeline
