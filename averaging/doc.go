// Package averaging keeps the copies of one pipeline stage close: its holders
// average their parameters (and, per config, their optimizer state) in small
// groups, in the background, and nothing a slow or departing member does can stall
// training. It also carries the state-transfer protocol that a newcomer to a stage
// uses to download the stage from one or several holders at once.
//
// It needs only a libp2p host, a Peers (who holds the stage; the swarm adapts its
// DHT view) and a Source (the vector). It knows nothing of the pipeline.
//
// # Rounds without a coordinator
//
// Round r starts at r·Period since the Unix epoch on every holder's clock. Each
// holder orders the holders it sees by sha256(round key, peer id), where the round
// key is sha256 of (run, key, r), and cuts that order into ceil(n/G) groups of
// near-equal size; the first member of its group is the round's leader. The order
// reshuffles every round, so averages mix across the whole stage. Holders whose
// views of membership differ may compute different groups; the leader settles
// it: members ask it to join, and it confirms one member list to all of them.
// A member the leader does not confirm within the matchmaking window skips the
// round, which costs that round's average and nothing else, and is counted.
//
// # Protocols
//
// Protocol ids are /swarmnode/<run>/avg/<key>/{join,reduce,audit,state}/1.0.0. Every
// message is a typed frame (package wire): uint32 little-endian length n, then n
// bytes: a type byte and the payload. Control payloads are JSON; chunk payloads are
// binary: codec (u8), shard (u32), chunk index (u32), count (u32), then the values
// encoded by package codec (fp32: 4 bytes each; bf16: 2; int8: one float32
// absmax/127 scale per 64 values, all scales first, then one signed byte per value,
// rounded half to even: codec.Planar). An error frame carries a reason and ends the
// exchange. Decoders bound every length and reject NaN and Inf.
//
// join: the member sends {round, len, codec, chunk}; the leader waits until every
// member of its own view joined (or G did, or its window closed) and answers with
// {round, id, members} in round order, or an error frame (not leading this round,
// not a holder in its view, another vector length, group full, lobby closed).
// Members check the list (round order, no duplicates, both of them in it, id =
// sha256 of round key and members).
//
// reduce (butterfly all-reduce): the vector is cut into one contiguous shard per
// member, member j reducing shard j. Every member opens one stream to each other
// member j, sends a header {group, round, from, shard, weight, len} (weight: the
// samples it trained on since its last round) and then shard j of its snapshot in
// chunks; member j answers each chunk with the reduced chunk on the same stream.
// The reducer works in lockstep over chunks, holding a few chunks per sender, and
// a sender has at most a few chunks in flight per reducer, each kept in its own
// buffer until its result is back, so memory stays bounded for any vector size
// (no vector-sized copy is made), and each member sends 2·(G−1)/G of the vector.
// An fp32 chunk goes out as one write straight from the buffer the source filled,
// and the reduction is written straight into the result's frame. A reducer checks
// that the sender's peer id matches its index in the group.
//
// audit: after a round, a member that chose (in secret, with probability
// AuditRate per shard) to audit reducer j sends {group, round, shard, chunk,
// from}; the reducer answers {members, weights} (the parts it reduced in that
// chunk, its own first, with the weights it took) and then each part as a
// chunk frame, its own in fp32 and the others as they arrived. The auditor
// checks that its own part is there unchanged and that the reduction of the
// parts is the result it received (audit.go).
//
// state: the fetcher asks each holder for a manifest of a fresh snapshot
// {snap, step, lens (params, m, v), shard_floats, sums (sha256 per shard), root
// (sha256 of the sums)} and then fetches shards, each from one holder, a few
// shards per holder at a time (FetchOptions.PerHolder); a shard is checked
// against its holder's sum and on mismatch fetched from another holder, and a
// holder that failed once serves no more. A holder caps what it serves per
// second (ServeOptions.Rate) so that newcomers do not starve its training.
//
// # Faults
//
// A sender that misses a chunk by StallTimeout, or whose peer disconnects, is left
// out of that shard from that chunk on; every chunk's result is the reduction of
// the parts that reached it, so a partial shard is still a valid average. A
// reducer that fails, disconnects or stays silent for twice StallTimeout leaves
// the rest of its shard at each member's local value. Every round ends by its
// Deadline, and every goroutine it started ends with it. Holders with another
// vector length or codec are refused at the join and skip.
//
// # Asynchronous application
//
// Training continues during a round. Each chunk is read from the Source just
// before it is sent, and as soon as its average is back the member adds
// average − the values it sent (param += average − snapshot, chunk by chunk), so
// local steps taken meanwhile are kept and the trainer's lock is held for one
// chunk at a time.
//
// # Reading the code
//
// One round, in order: Averager.Round (averager.go) finds the holders and
// assigns the groups (group.go), then leads or joins (match.go: lead, handleJoin,
// join), then runs allReduce (allreduce.go). There every member is the sender of
// the other members' shards (sender.go: sendShard) and the reducer of its own
// (reducer.go: handleReduce receives each sender's stream, reduceShard runs the
// lockstep); audit.go checks reducers after the round. frame.go holds the frames, buffers.go the recycled chunk buffers,
// mean.go the Reducer. State transfer: state.go (the layout and manifest),
// serve.go (a holder's side) and fetch.go (a newcomer's side).
package averaging
