/* The checkpoint scheduler of a state node (docs/design.md §7): threads that write a
 * checkpoint of every partition the node owns every --checkpoint-interval, staggered so
 * partitions never all checkpoint at once, prunes old ones, and keeps the log of each
 * partition back to its oldest retained checkpoint.
 *
 * Schedule of partition p (all times CLOCK_MONOTONIC ms), the pure part below:
 *   - the first checkpoint is due at start + interval * p / P (a deterministic spread over
 *     one interval);
 *   - when due, a partition whose log seq has not changed since its last checkpoint (or
 *     that has no log record at all) is skipped until its next due time;
 *   - after an attempt (success or failure) the next one is due at the next point of the
 *     partition's phase (due + k * interval) after it finished, and never sooner than
 *     --checkpoint-min-pause after it finished.
 *
 * Log floor: after each prune the scheduler tells the engine the seq of the partition's
 * oldest checkpoint file left in the directory (engine_set_log_floor); the log retention
 * sweep never deletes records at or after it.
 *
 * DESIGN: checkpoint writes read a whole partition and fsync, and the cluster metadata is
 * an etcd call: neither may run on the writer or on a gRPC thread, so they get threads of
 * their own: --checkpoint-threads of them, partition p on thread p % threads (a
 * checkpoint is one LevelDB scan on one core, bound by the CPU: a node with more state
 * than one core can checkpoint in an interval needs more than one). A small fixed number
 * keeps the disk load of checkpointing bounded.
 *
 * Threads: ckptsched_new/start/free from one thread (main). The scheduler threads call the
 * hooks, several at once when threads > 1. */
#ifndef EDDY_CKPTSCHED_H
#define EDDY_CKPTSCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/metrics.h"
#include "node/state/checkpoint.h"
#include "node/state/engine.h"

/* ---- the pure schedule (no I/O, no clock) ---------------------------------------------- */

struct ckptsched_params {
    int64_t interval_ms;  /* > 0 */
    int64_t min_pause_ms; /* >= 0 */
};

/* One partition's schedule. Owned by the partition's scheduler thread. */
struct ckptsched_slot {
    int64_t due_ms;      /* next attempt not before this */
    int64_t phase_ms;    /* due times are phase_ms + k * interval */
    int64_t last_end_ms; /* when the last attempt finished; INT64_MIN: none */
    uint64_t last_seq;   /* seq of the last checkpoint written */
    bool have_last;      /* whether last_seq is set */
};

enum ckptsched_action {
    CKPTSCHED_WAIT,  /* not due yet */
    CKPTSCHED_SKIP,  /* due, but nothing new since the last checkpoint: ckptsched_skipped */
    CKPTSCHED_WRITE, /* write one now, then ckptsched_finished */
};

/* Initialise partition p's slot (of 'nparts') for a scheduler started at 'start_ms'. */
void ckptsched_slot_init(struct ckptsched_slot *s, const struct ckptsched_params *pp,
                         uint32_t p, uint32_t nparts, int64_t start_ms);

/* What to do at 'now_ms' for a partition whose applied seq (applied_seq: a checkpoint
 * holds the applied state, and its seq is that state's) is 'seq'. */
enum ckptsched_action ckptsched_decide(const struct ckptsched_slot *s, int64_t now_ms,
                                       uint64_t seq);

/* Due but unchanged at 'now_ms': the next due time is the next point of the phase. */
void ckptsched_skipped(struct ckptsched_slot *s, const struct ckptsched_params *pp,
                       int64_t now_ms);

/* An attempt finished at 'end_ms'; if 'ok', the checkpoint holds 'seq'. */
void ckptsched_finished(struct ckptsched_slot *s, const struct ckptsched_params *pp,
                        int64_t end_ms, bool ok, uint64_t seq);

/* ---- the scheduler ------------------------------------------------------------------- */

/* What the scheduler counts (each may be NULL; borrowed, must outlive the scheduler). */
struct ckptsched_metrics {
    metric_histogram *duration;  /* seconds per successful checkpoint (write + prune) */
    metric_gauge *bytes;         /* size of the last checkpoint written */
    metric_counter *failures;    /* attempts that failed or timed out */
    metric_gauge *last_success;  /* wall clock (Unix seconds) of the last success */
};

struct ckptsched_opts {
    const char *dir;          /* checkpoint directory (created if missing); borrowed */
    int64_t interval_ms;      /* > 0 */
    int64_t min_pause_ms;
    int64_t timeout_ms;       /* an attempt gives up (nothing published) after this; 0: never */
    int keep;                 /* files kept per partition (>= 1) */
    int threads;              /* checkpoints written at once (0 is taken as 1); partition p
                                 is thread p % threads's */
    struct ckptsched_metrics metrics;
    /* Whether this node owns partition p now (NULL: every partition, --dev). */
    bool (*owns)(void *ud, uint32_t p);
    void *owns_ud;
    /* Called after each checkpoint was written and pruned (NULL: none); 'ci' is borrowed
     * for the call. Cluster mode records it in etcd. */
    void (*written)(void *ud, const struct checkpoint_info *ci);
    void *written_ud;
};

typedef struct ckptsched ckptsched;

/* Read the checkpoints already in o->dir: each partition's newest seq (so an unchanged
 * partition is not written again after a restart) and its log floor, published to 'eng'
 * at once, before any event can be applied. Does not start the thread. 'eng' and 'o'
 * (with its strings) are borrowed until ckptsched_free. Caller owns *out. */
eddy_err ckptsched_new(engine *eng, const struct ckptsched_opts *o, ckptsched **out);

/* Start the thread; the schedule's start time is now. */
eddy_err ckptsched_start(ckptsched *cs);

/* Stop the thread (after the checkpoint in progress, if any) and free. Accepts NULL. Call
 * before engine_close and before whatever the hooks use goes away. */
void ckptsched_free(ckptsched *cs);

/* DeleteUser's erasure of partition 'p' from this node's files (docs/security.md,
 * "Deleting a user"), on p's scheduler thread: LevelDB compacted over the partition (the
 * write-ahead log rolled), then, where this node owns p, a fresh checkpoint written, and
 * every checkpoint file of p older than that (where it does not own p: older than
 * 'before_seq', the seq after the DeleteUser record) deleted from the directory. No other
 * checkpoint of this scheduler runs meanwhile (their LevelDB snapshots would keep the old
 * values). 'done' (any thread may call ckptsched_purge) runs on that thread once it is
 * over: EDDY_OK, or why not (then the older files are kept). Not after ckptsched_free
 * started: requests still queued then are answered EDDY_ERR_UNAVAILABLE. */
typedef void ckptsched_purge_done_fn(void *ud, eddy_err err);
eddy_err ckptsched_purge(ckptsched *cs, uint32_t p, uint64_t before_seq,
                         ckptsched_purge_done_fn *done, void *ud);

/* One checkpoint of partition 'p' now, as the thread does it (write, prune, floor, metrics,
 * hook). For tests, the threads and a move's target (any thread: one checkpoint of a
 * partition runs at a time). 'out' (may be NULL) receives the file written. */
eddy_err ckptsched_run_one(ckptsched *cs, uint32_t p, struct checkpoint_info *out);

#endif
