/* The stage-2 forwarder of a state node: sends the OUTBOX records (stage-2 batches whose
 * product partitions another node owns, written in the same write batch as the events
 * that produced them) to the owners with Forward, and deletes each record once every
 * owner acknowledged it. Receivers apply a batch at most once per (source partition,
 * source seq), so re-sending after a crash or a timeout is harmless: together that is
 * exactly-once delivery of stage-2 records.
 *
 * DESIGN: a thread of its own, woken by the engine after a commit that wrote OUTBOX
 * records (and every second regardless), so forwarding never blocks the writer or an
 * RPC thread. */
#ifndef EDDY_FORWARDER_H
#define EDDY_FORWARDER_H

#include "node/cluster/membership.h"
#include "node/cluster/peers.h"
#include "node/state/engine.h"

typedef struct forwarder forwarder;

/* Start forwarding. All arguments are borrowed and must outlive the forwarder. */
forwarder *forwarder_start(engine *eng, membership *mem, peers *pe, int64_t timeout_ms);

/* Wake the forwarder (called by the engine after it committed OUTBOX records). */
void forwarder_kick(void *fwd);

/* Stop and join the thread. Accepts NULL. Records not yet sent stay in the OUTBOX. */
void forwarder_stop(forwarder *f);

#endif
