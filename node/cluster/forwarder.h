/* The stage-2 forwarder of a state node: sends the OUTBOX records of the partitions it
 * leads (every stage-2 batch, written in the same write batch as the event that produced
 * it) to the leaders of their product partitions with Forward, this node included, and
 * removes each record once every owner acknowledged it, through the partition's log
 * (engine_outbox_forwarded) so its followers remove it too. Receivers apply a batch at
 * most once per (source partition, source seq), so re-sending after a crash, a timeout or
 * a failover (the new leader's OUTBOX still holds what the old one had not removed) is
 * harmless: together that is exactly-once delivery of stage-2 records.
 *
 * DESIGN: a thread of its own, woken by the engine after a commit that wrote OUTBOX
 * records (and every second regardless), so forwarding never blocks the writer or an
 * RPC thread. */
#ifndef EDDY_FORWARDER_H
#define EDDY_FORWARDER_H

#include "node/cluster/membership.h"
#include "node/cluster/peers.h"
#include "node/cluster/replica.h"
#include "node/state/engine.h"

typedef struct forwarder forwarder;

/* Start forwarding. All arguments are borrowed and must outlive the forwarder. 'repl'
 * (NULL: none) bounds what is sent: only the records of source seqs its leader has on
 * min-insync copies (replica_committed), so a deposed leader's unacknowledged suffix,
 * whose seqs its successor reuses for other events, never reaches the exactly-once marks. */
forwarder *forwarder_start(engine *eng, membership *mem, peers *pe, replica *repl,
                           int64_t timeout_ms);

/* Wake the forwarder (called by the engine after it committed OUTBOX records). */
void forwarder_kick(void *fwd);

/* Stop and join the thread. Accepts NULL. Records not yet sent stay in the OUTBOX. */
void forwarder_stop(forwarder *f);

#endif
