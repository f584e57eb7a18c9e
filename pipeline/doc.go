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
// The package knows nothing of the DHT's internals: a Router supplies the live
// holders of each stage and learns about failed calls. DHTRouter adapts the run's
// dht.Service; tests use in-process routers over real loopback hosts.
package pipeline
