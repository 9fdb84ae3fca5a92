/* The state engine of one node: the LevelDB store, the partitions it owns, and the writer
 * thread that applies events with group commit.
 *
 * DESIGN: gRPC handler threads must not do synced LevelDB writes, and the apply must be
 * sequential per partition to stay deterministic. So every write (ingest, delete-user,
 * idle watermark advances) is a job on one bounded queue, drained by one writer thread:
 * it applies every queued job into one store_txn, writes it with one synced LevelDB write
 * (group commit: the fsync is shared by all the batches that queued meanwhile), and then
 * runs the jobs' completion callbacks, which answer the RPCs. Reads (queries) go straight
 * to LevelDB from the handler threads and see only committed state, so an acknowledged
 * event is visible to every query that starts after the acknowledgement. */
#ifndef EDDY_ENGINE_H
#define EDDY_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "eddy/v1/eddy.pb-c.h"
#include "node/state/apply.h"
#include "node/state/product.h"
#include "node/state/recommend.h"
#include "node/state/store.h"

typedef struct engine engine;

struct engine_opts {
    const char *data_dir;
    int64_t cache_bytes;           /* LevelDB block cache */
    struct apply_params apply;
    struct product_params product;
    struct rec_params rec;
    int64_t stage2_staleness_ms;   /* popularity lists are at most this old (1 s) */
    int candidates;                /* candidates per list for Recommend (50) */
    int64_t max_pending_events;    /* queued events before Ingest answers RESOURCE_EXHAUSTED */
    int64_t max_group_events;      /* events per group commit (10000) */
};

struct engine_ingest_result {
    uint32_t accepted;
    uint32_t duplicates;
    uint32_t late;
};

/* Called once on the writer thread when the job is durable (err == EDDY_OK) or failed. */
typedef void engine_ingest_done_fn(void *ud, eddy_err err, const struct engine_ingest_result *r);
typedef void engine_delete_done_fn(void *ud, eddy_err err, bool model_deleted,
                                   uint64_t windows_deleted, uint64_t log_deleted);

/* Open the store under opts->data_dir and start the writer. Caller owns *out; free with
 * engine_close. 'err' receives a message on failure. */
eddy_err engine_open(const struct engine_opts *opts, engine **out, char *err, size_t errlen);

/* Stop the writer after the queued jobs are done, then close the store. Accepts NULL. */
void engine_close(engine *e);

/* Queue 'n' validated events (borrowed until 'done' runs). If this returns an error,
 * 'done' never runs: EDDY_ERR_FULL when the queue is full, EDDY_ERR_UNAVAILABLE when
 * closing. */
eddy_err engine_ingest(engine *e, Eddy__V1__Event *const *events, size_t n,
                       engine_ingest_done_fn *done, void *ud);

/* Queue the deletion of a user (same contract as engine_ingest; 'user_id' is copied). */
eddy_err engine_delete_user(engine *e, const char *user_id, engine_delete_done_fn *done,
                            void *ud);

/* Block until every job queued before the call is committed (tests and shutdown). */
void engine_flush(engine *e);

/* --- read side (any thread) ----------------------------------------------------------- */

struct engine_partition_view {
    int64_t watermark;    /* WATERMARK_NONE if no event yet */
    int64_t max_ts;
    uint64_t late_events;
    uint64_t events;
    uint64_t duplicates;
};

const struct engine_opts *engine_options(const engine *e);
store *engine_store(engine *e);
void engine_partition(engine *e, uint32_t p, struct engine_partition_view *v);
/* The minimum watermark over partitions that have seen events (WATERMARK_NONE if none),
 * and the maximum event time over all partitions. */
void engine_global(engine *e, int64_t *watermark, int64_t *max_ts, uint64_t *late_events);
/* Events waiting in the queue. */
int64_t engine_queue_depth(engine *e);

#endif
