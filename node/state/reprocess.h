/* Reprocessing (Kappa, docs/design.md §7): rebuild a partition's derived state by replaying its
 * retained log, from the start or from a checkpoint, with the current code and parameters
 * (or new half-lives), beside the live state, and swap it in atomically.
 *
 * DESIGN: the rebuild must not stop serving, so it never touches the live key ranges
 * until the end. It replays into a side LevelDB (WORK_DIR) on the caller's thread, reading
 * the live log through a snapshot, then catches up from fresh snapshots while ingest goes
 * on. Only the last step runs as an engine_exclusive job on the writer thread: the records
 * committed since the last snapshot are replayed into the side store, then each partition
 * becomes, in one synced write (store_replace_range), the rebuilt tables plus the live
 * ones that are not derived (below), and the new parameters are published. Queries keep
 * reading LevelDB throughout and see the old or the new partition, never a mix.
 *
 * What is rebuilt of a partition P (the rest of P's key range is kept as it is live):
 *   stage 1, always:   USER, USER_WIN, PART_WIN, BOUGHT, SEEN, and META's watermark, max event
 *                      time and sweep progress;
 *   stage 2, only with all partitions from the start and no owns() (--dev, where this
 *                      node holds every partition's log): PRODUCT, PROD_WIN, CAT_POP, S2_HW.
 *   kept live:         LOG, LATE, USER_LOG, DEDUP, DEDUP_EXP, OUTBOX (the log and its
 *                      indexes, the dedup memory, unsent stage-2 records) and META's
 *                      counters, epoch, log_first_seq and dedup_next_seq.
 * A user that exists in the rebuilt USER/USER_WIN/BOUGHT/SEEN rows but no longer live was
 * deleted (DeleteUser) after its log records were replayed: those rows are dropped.
 *
 * Threads: reprocess_run blocks for the whole rebuild; call it from a thread of its own,
 * never a gRPC completion-queue or handler thread, and one at a time per engine. */
#ifndef EDDY_REPROCESS_H
#define EDDY_REPROCESS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/engine.h"

/* The parameters a reprocess may change (node flags of the same names). */
enum reprocess_param { RP_AFFINITY, RP_POPULARITY, RP_NEIGHBOURS, RP_PARAMS };

/* "affinity-half-life", "popularity-half-life", "neighbour-half-life". */
extern const char *const reprocess_param_names[RP_PARAMS];

#define REPROCESS_ID_MAX 128

struct reprocess_request {
    bool all;                        /* every partition (this node owns) */
    uint32_t partition;              /* when !all */
    char checkpoint[REPROCESS_ID_MAX]; /* "": from the start; "latest", a file name or a seq */
    int64_t set[RP_PARAMS];          /* new half-lives in ms; 0: unchanged */
};

/* Record "NAME=VALUE" of --set in rq->set: NAME is "half-life" (all three) or one of
 * reprocess_param_names, VALUE a duration > 0 ("30d", "12h", "500ms", plain ms).
 * EDDY_ERR_INVALID with a message in 'err' otherwise. */
eddy_err reprocess_set_param(struct reprocess_request *rq, const char *name, const char *value,
                             char *err, size_t errlen);

struct reprocess_opts {
    engine *eng;                     /* borrowed */
    const char *work_dir;            /* the side store (created, and removed afterwards) */
    const char *checkpoint_dir;      /* NULL or "": no checkpoints */
    /* Cluster: the partitions this node owns (all: the ones rebuilt; checked again at the
     * swap, a partition that moved away meanwhile is left alone). NULL: all (--dev). */
    bool (*owns)(void *ud, uint32_t p);
    void *owns_ud;
    const _Atomic bool *cancel;      /* set: stop soon with EDDY_ERR_UNAVAILABLE; may be NULL */
    /* Cluster, part of a cluster-wide stage-2 rebuild (stage2_side.h; all, from the start):
     * the stage-2 records of every replayed event are kept in the side store's OUTBOX
     * instead of being applied, and once the stage-1 swap is done 'deliver' gets the side
     * store to send them to the product partitions' owners (its OUTBOX rows, keyed by
     * user partition and seq as the live OUTBOX is), before the store is removed. Its
     * failure fails the call (the stage-1 swap stays: it is complete by itself). The stage-1 swap then publishes affinity-half-life only; the
     * stage-2 swap the others. NULL: stage 2 is not rebuilt (in a cluster). */
    eddy_err (*deliver)(void *ud, store *side, char *err, size_t errlen);
    void *deliver_ud;
};

/* What was rebuilt of one partition. */
struct reprocess_part {
    uint32_t partition;
    uint64_t first_seq;              /* first log seq replayed (start point if none) */
    uint64_t records;                /* log records replayed */
    uint64_t next_seq;               /* the partition's next seq at the swap */
    bool truncated;                  /* from the start, but the log began at first_seq > 0 */
    char checkpoint[REPROCESS_ID_MAX]; /* file name started from; "" from the start */
};

struct reprocess_result {
    struct reprocess_part *parts;    /* [n], partition order; owned, reprocess_result_release */
    size_t n;
    uint64_t records;
    uint64_t first_seq;              /* min first_seq over partitions with records */
    int64_t duration_ms;
    int64_t pause_ms;                /* the exclusive job: final catch-up and swap */
    bool stage2;
    int64_t params[RP_PARAMS];       /* half-lives in effect afterwards */
};

/* Whether 'rq' rebuilds stage 2 too: every partition from the start (in a cluster, a
 * cluster-wide rebuild; see stage2_side.h). */
bool reprocess_rebuilds_stage2(const struct reprocess_request *rq);

/* The checks that need no node: partition below 'partitions', a parameter change needs
 * all (parameters are node-wide) and no checkpoint (its state was built with the old
 * ones), with all a checkpoint id is "latest". EDDY_ERR_INVALID with a message in 'err'.
 * (An ingest node checks this before fanning out.) */
eddy_err reprocess_check_request(const struct reprocess_request *rq, uint32_t partitions,
                                 char *err, size_t errlen);

/* reprocess_check_request, then against this node (cheap, no replay): a checkpoint
 * directory and the named checkpoint exist (EDDY_ERR_INVALID), owns() says the partition
 * is here (EDDY_ERR_NOT_OWNER). */
eddy_err reprocess_check(const struct reprocess_opts *o, const struct reprocess_request *rq,
                         char *err, size_t errlen);

/* Rebuild and swap (see DESIGN above). Checks 'rq' first (reprocess_check). On success
 * 'out' is filled (caller releases it); on failure the live state and parameters are
 * unchanged and 'err' says why. */
eddy_err reprocess_run(const struct reprocess_opts *o, const struct reprocess_request *rq,
                       struct reprocess_result *out, char *err, size_t errlen);

void reprocess_result_release(struct reprocess_result *r);

/* Make the half-lives 'set' (0: unchanged) the engine's, for the apply and the queries.
 * On the writer thread only (an exclusive job). */
void reprocess_publish_params(engine *e, const int64_t set[RP_PARAMS]);

#endif
