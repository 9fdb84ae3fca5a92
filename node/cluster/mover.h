/* The node side of live partition moves (docs/design.md §7).
 *
 * As a target: for every record /eddy/<cluster>/moves/<p> naming this node as "to", the
 * mover thread brings the partition here while the source keeps serving it:
 *
 *   copy     FetchCheckpoint from the source (which freezes the partition's stage 2 and
 *            streams a fresh checkpoint from a snapshot), checked as it arrives and
 *            written in batches of 4 MiB (writer jobs of their own), then FetchLog and
 *            engine_replay the source's log from the checkpoint's seq, again and again;
 *            once within --move-lag records, CAS the record's phase to "ready" and keep
 *            tailing so the lag stays small;
 *   flipped  the leader gave this node the partition at epoch + 1 (its writes now wait
 *            here, UNAVAILABLE, and the routers retry): FetchLog with fence_epoch makes
 *            the source refuse older writes after those already queued and hands over
 *            the final tail; once applied the partition is served (the write pause is
 *            the time from seeing the flip to here);
 *   done     a checkpoint of the partition is written, then the phase is CAS'd to "done".
 *
 * A target the map lists as a follower of the partition at the move's epoch (a leader
 * moving to its own follower) copies nothing: its copy is the replicated log's, possibly
 * the one the in-sync record names and a failover promotes, so it catches up through
 * replication, marks the record "ready" within --move-lag records, and after the flip
 * fetches the final tail as above. No copy the in-sync record (isr/<p>, any epoch) names
 * is deleted by drop_copy (cancelled copies, moved-away sources, the clean-up of copies
 * left behind).
 *
 * A copy that fails (source unreachable, freeze lapsed, restarted source) starts again
 * from a fresh checkpoint while the record stays; a record deleted before the flip
 * (cancelled by the leader) drops the partial copy. After a restart the records are read
 * again: a partition flipped here resumes at its final tail from the local copy.
 *
 * As a source: when a record naming this node as "from" reaches "done", the mover deletes
 * the partition's data here (it no longer owns it; the target has checkpointed).
 *
 * Threads: one mover thread and one etcd watch thread. */
#ifndef EDDY_MOVER_H
#define EDDY_MOVER_H

#include <stdint.h>

#include "common/err.h"
#include "common/metrics.h"
#include "node/cluster/membership.h"
#include "node/cluster/peers.h"
#include "node/cluster/replica.h"
#include "node/cluster/state_service.h"
#include "node/state/ckptsched.h"
#include "node/state/engine.h"

typedef struct mover mover;

/* What the mover counts (each may be NULL; borrowed). */
struct mover_metrics {
    metric_histogram *duration; /* seconds from start of the copy to serving (moves in) */
    metric_histogram *pause;    /* seconds writes waited: flip seen -> final tail applied */
    metric_gauge *active;       /* moves into this node in progress */
    metric_counter *failures;   /* copy attempts that failed and will be retried */
};

struct mover_opts {
    engine *eng;
    membership *mem;
    peers *peers;
    struct state_service *ss;
    ckptsched *cks;             /* NULL: checkpoints off (the move ends without one) */
    replica *rep;               /* NULL: no replication (a target never follows its move) */
    const char *cluster;
    int64_t lag_records;        /* --move-lag */
    int64_t rpc_timeout_ms;     /* FetchLog calls */
    int64_t copy_timeout_ms;    /* one FetchCheckpoint stream */
    int64_t final_wait_ms;      /* --move-final-wait: how long to retry the final tail */
    struct mover_metrics metrics;
};

/* Read the current move records (marking incoming partitions in o->ss before the first
 * take-over runs), then start the watch and the thread. Caller owns *out. */
eddy_err mover_start(const struct mover_opts *o, mover **out);

/* Stop the thread (a copy in progress is abandoned; it restarts on the next start). */
void mover_stop(mover *m);

#endif
