/* Publishing a state node's load (docs/design.md §7, "moves on load imbalance"): every
 * interval the event rate of each partition this node owns, measured from the engine's
 * per-partition event counters, goes to /eddy/<cluster>/load/<node> on the node's lease:
 *
 *   {"node":"s1","at_ms":1795626608468,"interval_ms":10000,"rates":[[3,812.5],[7,20.1]],
 *    "durable":[[5,2,10412],[9,3,877]]}
 *
 * (partition, events per second over the last interval; partitions with no events are
 * left out). The leading coordinator swaps a hot and a cold partition between the most
 * and the least loaded nodes when they differ by more than its --load-imbalance.
 * "durable" lists (partition, epoch, durable log seq) of every partition this node
 * follows: when a leader's lease expires the coordinator promotes the in-sync follower
 * with the highest one. Riding on this record costs no extra etcd write or watch; the
 * value is at most one interval old, which can only change which unacknowledged records
 * survive a failover (every in-sync follower holds every acknowledged one).
 *
 * Threads: one thread of its own. */
#ifndef EDDY_LOADPUB_H
#define EDDY_LOADPUB_H

#include <stdint.h>

#include "common/err.h"
#include "node/cluster/membership.h"
#include "node/state/engine.h"

typedef struct loadpub loadpub;

/* Start publishing every 'interval_ms' (> 0). Caller owns *out. */
eddy_err loadpub_start(engine *eng, membership *mem, const char *cluster, int64_t interval_ms,
                       loadpub **out);
/* Stop the thread and free. Accepts NULL. */
void loadpub_stop(loadpub *lp);

#endif
