/* The state engine of one node: the LevelDB store, the partitions it owns, the writer
 * thread that appends events with group commit, and the apply thread behind it.
 *
 * DESIGN: gRPC handler threads must not do synced LevelDB writes, and the apply must be
 * sequential per partition to stay deterministic. So every write (ingest, delete-user,
 * idle watermark advances) is a job on one bounded queue, drained by one writer thread:
 * it applies every queued job into one store_txn, and the group's keys are written with one
 * synced LevelDB write (group commit: the fsync is shared by all the batches that queued
 * meanwhile). That write runs on a second thread, the sync thread, while the writer
 * already applies the next group on top of it (the txn holds the in-flight values, see
 * store_txn_seal), so the apply, not apply + fsync, bounds the rate. Once a group's write
 * is durable the sync thread publishes it and runs its jobs' completion callbacks, which
 * answer the RPCs; if the write fails, that group and the one applied after it fail and the
 * writer starts again from the store (the txn is reset, the metadata rolled back). One
 * write in flight at a time, so groups reach the store in order. Jobs that write around
 * the txn (restores, exclusive jobs) wait for the write in flight and run alone. Reads
 * (queries) go straight to the store from the handler threads and see only committed,
 * durable state (a group becomes visible when its synced write returns), so an
 * acknowledged event is visible to every query that starts after the acknowledgement.
 *
 * Log first, state written behind (flush_interval_ms > 0): a group's synced write holds
 * only what the log cannot rebuild — LOG, DEDUP, OUTBOX (the forwarder reads it) and the
 * PART_ACK row (duplicates, fencing epoch) — and the group is acknowledged once it is
 * durable. The rest (user models, windows, product state, META...) is published packed in
 * the store's dirty set, which every read consults first (store_set_behind), and a flush
 * thread writes it to LevelDB every flush_interval_ms or past flush_bytes, in writes of
 * about flush_chunk_bytes of whole partitions each (the stage-2 tables first; see
 * store_flush), each partition's rows with its META of the same group boundary. At open, each partition's log after its
 * flushed META is replayed through apply_replay before the engine serves; a group that
 * rewrites earlier log records (DeleteUser, log sweeps) writes through. A partition's
 * checkpoint (moves and replica copies stream one) reads its rows still behind from a
 * copy (store_snapshot_new_range) and flushes nothing; reprocess snapshots, range
 * replaces and compactions flush first, and with them the exclusive jobs and restores
 * that use them.
 *
 * Log first, apply behind: an ingest job's events are only appended in its group — dedup
 * (decided exactly as the apply would: struct apply_ahead), seqs, LOG and DEDUP rows —
 * and the group is sealed and acknowledged once that is durable. A third thread, the apply
 * thread, applies the appended records in log order (apply_appended, the replay's
 * deterministic apply) into the same txn, behind: the writer and it take turns on the txn
 * (the "txn token", a mutex the writer gets first: the apply thread yields after the
 * record it is applying), so the writer appends and seals the next group after at most
 * one record's apply, and the apply runs whenever the writer waits (for a job, for the
 * write in flight). The applied state joins the writer's next write (a write of its own,
 * unsynced, once the apply thread has caught up and no job is queued), with the META of
 * the same point, so a write never holds state beyond its META's seq. So the
 * acknowledgement waits for the append and the fsync, not for any apply. Every other job
 * (DeleteUser, forwards, replays, OUTBOX deliveries, impressions, idle watermarks,
 * flushes) applies the records not applied yet first, on the writer, and restores and
 * exclusive jobs also write them to the store first, so each finds the state of
 * everything before it. The view publishes a partition's durable log end (next_seq) and
 * what is applied in what queries read (applied_seq); queries call engine_read_barrier,
 * which waits until the second reaches the first as of their arrival (read-your-writes).
 * The lag is bounded by engine_opts.max_apply_lag: past it the writer appends no more
 * events until the apply thread is back under it (the queue then fills: backpressure). */
#ifndef EDDY_ENGINE_H
#define EDDY_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/metrics.h"
#include "eddy/v1/eddy.pb-c.h"
#include "node/state/apply.h"
#include "node/state/product.h"
#include "node/state/recommend.h"
#include "node/state/store.h"

struct ckptkey;

/* records: ~1.4 s of apply at ~70 us each, what a query's read barrier may wait when the
 * ingest outruns the apply */
#define ENGINE_MAX_APPLY_LAG_DEFAULT 20000

typedef struct engine engine;

/* What the engine counts (each may be NULL; the series are borrowed and must
 * outlive the engine). Updated once per group commit, after the synced write succeeded. */
struct engine_metrics {
    metric_counter *events_ingested;   /* accepted events (late ones included) */
    metric_counter *events_duplicate;  /* events dropped as duplicates of an event id */
    metric_counter *events_late;       /* accepted events whose window had closed */
    metric_counter *batches;           /* ingest jobs (Ingest requests) committed */
    metric_histogram *processing_seconds; /* apply + synced commit of a group with events */
    metric_histogram *group_events;    /* events per group commit (groups with events) */
    /* The sync thread's steps of a group commit that answers jobs (store_txn_write_times):
     * the synced LevelDB write, and the publish of the write-behind rows. */
    metric_histogram *commit_write_seconds, *commit_publish_seconds;
    metric_histogram *event_to_result; /* per event: arrival -> committed and queryable */
    metric_counter *replay_diverged;   /* engine_replay records that differ from the record
                                          held at their seq */
};

/* Cluster mode (all NULL in --dev, where this node owns every partition). */
struct engine_cluster {
    /* Whether this node owns partition 'p' now. Stage-2 records of partitions it does not
     * own go to the OUTBOX table, in the same write batch, for the forwarder. */
    bool (*owns)(void *ud, uint32_t p);
    void *owns_ud;
    /* Called on the sync thread (the writer for exclusive jobs) after a commit that added
     * OUTBOX records. */
    void (*outbox_kick)(void *ud);
    void *kick_ud;
    /* Whether this node writes partition 'p''s log now (it leads it and has taken it
     * over). Idle watermarks and OUTBOX deliveries are appended only there: a follower's
     * or a move target's copy of the log gets them from the leader's, under the leader's
     * seqs (a target until it has the source's final tail). Impressions follow the epoch
     * they were served at instead, as writes do (engine_impression). NULL: every
     * partition. */
    bool (*leads)(void *ud, uint32_t p);
    void *leads_ud;
    /* Called on the sync thread once a replayed DELETE_USER record of partition 'p' (a
     * follower's copy of a DeleteUser) is durable; 'next_seq' is the seq after it. The
     * node purges the partition's files (ckptsched_purge). NULL: none. */
    void (*user_deleted)(void *ud, uint32_t p, uint64_t next_seq);
    void *deleted_ud;
};

struct engine_opts {
    const char *data_dir;
    int64_t cache_bytes;           /* LevelDB block cache */
    int64_t state_cache_bytes;     /* decoded state the writer keeps between group commits
                                      (store_set_kept_bytes; 0: the store's default) */
    struct apply_params apply;
    struct product_params product;
    struct rec_params rec;
    int64_t stage2_staleness_ms;   /* popularity lists are refreshed when this old (1 s;
                                      answered until twice this, see popcache_top) */
    int candidates;                /* candidates per list for Recommend (50) */
    int64_t max_pending_events;    /* queued events before Ingest answers RESOURCE_EXHAUSTED */
    int64_t max_group_events;      /* events per group commit (10000) */
    struct engine_metrics metrics; /* all NULL: no metrics */
    struct engine_cluster cluster;
    /* The store refused a write (store_write_failed_fn: on the writing thread, before the
     * failed jobs are answered). NULL: the jobs fail and the engine goes on. */
    store_write_failed_fn *store_failed;
    void *store_failed_ud;
    const struct ckptkey *checkpoint_key; /* NULL: plain checkpoints; borrowed for the
                                             engine's life (every checkpoint of its store) */
    /* Write-behind (see "Log first" above): derived state is written to LevelDB by a flush
     * every flush_interval_ms (0: none, every group commit writes everything, synced), or
     * sooner when the dirty set exceeds flush_bytes (0: 64 MiB); at twice that the sync
     * thread flushes before acknowledging more (memory stays bounded). */
    int64_t flush_interval_ms;
    int64_t flush_bytes;
    /* After a flush, malloc's free pages go back to the OS (malloc_trim) at most this often
     * (0: never; glibc only). */
    int64_t trim_interval_ms;
    /* Bytes per LevelDB write of a flush (0: STORE_FLUSH_CHUNK_DEFAULT; -1: one write for
     * everything): a group's synced write waits for at most one of them. */
    int64_t flush_chunk_bytes;
    /* LevelDB's compaction thread's nice value (store_set_compaction_nice). */
    int compaction_nice;
    /* engine_read_barrier waits this long at most (0: no wait; a query may then miss an
     * acknowledged event until the apply thread reaches it). */
    int64_t read_barrier_timeout_ms;
    /* Records appended and not applied yet past which the writer appends no more events
     * until the apply thread is back under it (0: ENGINE_MAX_APPLY_LAG_DEFAULT). Bounds the
     * memory of the records held for the apply and how long a read barrier may wait. */
    int64_t max_apply_lag;
};

struct engine_ingest_result {
    uint32_t accepted;
    uint32_t duplicates;
    uint32_t late;
};

/* Called once when the job is durable (err == EDDY_OK) or failed, on the sync thread (or
 * the writer thread for a job that failed before its write, and for restores and exclusive
 * jobs). Callbacks run one at a time, in queue order; they must not wait for the engine. */
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

/* engine_ingest for events that arrived at 'arrival_ns' (CLOCK_MONOTONIC nanoseconds, e.g.
 * rpc_call_arrival_ns): the start of their eddy_event_to_result_seconds. engine_ingest
 * uses the time of the call. */
eddy_err engine_ingest_timed(engine *e, Eddy__V1__Event *const *events, size_t n,
                             int64_t arrival_ns, engine_ingest_done_fn *done, void *ud);

/* Cluster mode: apply 'n' events of user partition 'p' at ownership 'epoch' (same contract
 * as engine_ingest). The partition persists the highest epoch it has seen; a job with an
 * older epoch fails with EDDY_ERR_NOT_OWNER (fencing a stale owner's router). */
eddy_err engine_apply(engine *e, uint32_t p, uint64_t epoch, Eddy__V1__Event *const *events,
                      size_t n, engine_ingest_done_fn *done, void *ud);

/* Ingest jobs built one at a time and queued at once (engine_submit), so that the writer
 * takes them into one group, one synced write: an Apply of a batch's many partitions (a
 * 500-event batch spans most of 256) queued job by job was taken as the writer happened to
 * find them, two or three groups written one after the other. */
struct job;
struct engine_batch {
    struct job *head, *tail;
    int64_t events;
};
#define ENGINE_BATCH_INIT {NULL, NULL, 0}

/* engine_apply's job added to 'b' (queued by engine_submit), or queued now if 'b' is NULL.
 * An error means the job was not added. */
eddy_err engine_apply_in(engine *e, struct engine_batch *b, uint32_t p, uint64_t epoch,
                         Eddy__V1__Event *const *events, size_t n, engine_ingest_done_fn *done,
                         void *ud);

/* Queue every job of 'b' (and empty it). If the engine refuses them (closing, or the queue
 * full: EDDY_ERR_FULL), each job's 'done' runs here with the error. */
void engine_submit(engine *e, struct engine_batch *b);

/* Cluster mode: apply forwarded stage-2 batches (records of partitions this node owns
 * only; each batch at most once). 'batches' is borrowed until 'done' runs, which gets the
 * number of batches processed. */
typedef void engine_forward_done_fn(void *ud, eddy_err err, size_t applied);
eddy_err engine_forward(engine *e, Eddy__Store__V1__Stage2Batch *const *batches, size_t n,
                        engine_forward_done_fn *done, void *ud);

/* Cluster mode: replace partition 'p''s state with the checkpoint file 'path' (verified
 * first), after every job queued before it and before every job queued after it. 'done'
 * runs once on the writer thread with the partition's next seq after the load; on an
 * error the partition keeps its state. Same queue contract as engine_ingest. */
typedef void engine_restore_done_fn(void *ud, eddy_err err, uint32_t p, uint64_t next_seq);
eddy_err engine_restore(engine *e, uint32_t p, const char *path, engine_restore_done_fn *done,
                        void *ud);

/* engine_forward for the records of the product partitions 'parts' only (borrowed until
 * 'done'): the partitions the sender believes this node owns. A partition that is not
 * local when the job runs (cluster.owns false: moved away, or frozen by a move) gets
 * refused[i] = 1 (caller's array of 'nparts', zeroed, borrowed until 'done') and none of
 * its records is applied, so the sender keeps them. parts == NULL: every record of a
 * partition this node owns (engine_forward). */
eddy_err engine_forward_to(engine *e, Eddy__Store__V1__Stage2Batch *const *batches, size_t n,
                           const uint32_t *parts, uint8_t *refused, size_t nparts,
                           engine_forward_done_fn *done, void *ud);

/* Cluster mode, a move's target: append the log records 'entries' (another node's log of
 * partition 'p', raw LogRecord bytes, ascending seq; borrowed until 'done') to this node's
 * log under the same seqs and apply them as the source did. Records below the
 * partition's next seq are skipped (already here); one that differs from the record held
 * at its seq is logged and counted (engine_metrics.replay_diverged). 'done' gets the
 * partition's next seq afterwards; a record that does not decode fails the job with
 * EDDY_ERR_CORRUPT (the records before it stay applied). Same queue contract as
 * engine_ingest. */
struct engine_log_entry {
    uint64_t seq;
    const uint8_t *data;
    size_t len;
};
typedef void engine_replay_done_fn(void *ud, eddy_err err, uint64_t next_seq);
eddy_err engine_replay(engine *e, uint32_t p, const struct engine_log_entry *entries, size_t n,
                       engine_replay_done_fn *done, void *ud);

/* Run 'fn' on the writer thread alone: after every job queued before it, before every job
 * queued after it, outside any group commit. 'fn' may read and write the store directly
 * (store_replace_range, whole partitions); afterwards the engine re-reads every
 * partition's metadata and the OUTBOX count from the store (but not a copy's still
 * loading around the writer: engine_outbox_loaded). 'done' runs once on the writer thread
 * with fn's result (or the engine's error). Same queue contract as engine_ingest. */
typedef eddy_err engine_exclusive_fn(void *ud, engine *e);
typedef void engine_exclusive_done_fn(void *ud, eddy_err err);
eddy_err engine_exclusive(engine *e, engine_exclusive_fn *fn, engine_exclusive_done_fn *done,
                          void *ud);

/* engine_exclusive for a function that writes partition 'p' only: only its metadata
 * and OUTBOX count are re-read afterwards (p < 0: all, as engine_exclusive). */
eddy_err engine_exclusive_partition(engine *e, int64_t p, engine_exclusive_fn *fn,
                                    engine_exclusive_done_fn *done, void *ud);

/* Delete every key of partition 'p' (a copy this node no longer owns) in one synced
 * write, as an exclusive job; blocks until done. *deleted (may be NULL): keys removed. */
eddy_err engine_drop_partition(engine *e, uint32_t p, uint64_t *deleted);

/* OUTBOX records committed and not yet forwarded. */
uint64_t engine_outbox_depth(engine *e);

/* A partition written into the store around the writer (a copy loaded in batches by
 * ckptcopy_receive, which holds the partition): engine_outbox_loaded counts the OUTBOX
 * records of each batch as it lands (any thread), so that the count is right whenever the
 * load stops; engine_take_partition then makes the engine take the partition's metadata
 * from the store (converting its layout if META says so) in an exclusive job that does not
 * count its OUTBOX again (a scan of 122,000 records took a second of a move's copy:
 * bench/move.sh, docs/BENCHMARKS.md). 'done' as engine_exclusive. */
void engine_outbox_loaded(engine *e, uint64_t records);
eddy_err engine_take_partition(engine *e, uint32_t p, engine_exclusive_done_fn *done, void *ud);

/* Cluster mode, the forwarder: the OUTBOX rows of partition 'p' with source seqs 'seqs'
 * ('n' > 0; copied) were delivered. They are removed through p's log (an OUTBOX_DONE
 * record) so its followers remove them too; the job fails with EDDY_ERR_NOT_OWNER when
 * this node does not lead p any more (cluster.leads), and nothing is removed. 'done' runs
 * once when durable. Same queue contract as engine_ingest. */
typedef void engine_outbox_done_fn(void *ud, eddy_err err);
eddy_err engine_outbox_forwarded(engine *e, uint32_t p, const uint64_t *seqs, size_t n,
                                 engine_outbox_done_fn *done, void *ud);

/* Queue an IMPRESSION record for its user's partition ('imp' is copied), served while this
 * node owned the partition at 'epoch' (the epoch the call was routed at). Nobody waits
 * for it: the answer goes out once it is queued, and a job queued before it with a newer
 * epoch (a move's fence) refuses it at once, EDDY_ERR_NOT_OWNER, so that no answer goes
 * out whose impression the new owner's log will lack. EDDY_ERR_FULL /
 * EDDY_ERR_UNAVAILABLE as engine_ingest. */
eddy_err engine_impression(engine *e, const Eddy__Store__V1__Impression *imp, uint64_t epoch);

/* Queue the deletion of a user (same contract as engine_ingest; 'user_id' is copied). */
eddy_err engine_delete_user(engine *e, const char *user_id, engine_delete_done_fn *done,
                            void *ud);

/* Block until every job queued before the call is committed, its events applied and
 * published (the drain: tests, shutdown, checkpoint publication, and the barrier of a
 * stage-2 freeze: the jobs that may have applied stage-2 records before it are done). EDDY_OK, or why the flush could not be queued (nothing was waited for). */
eddy_err engine_flush(engine *e);

/* --- read side (any thread) ----------------------------------------------------------- */

struct engine_partition_view {
    int64_t watermark;    /* WATERMARK_NONE if no event yet */
    int64_t max_ts;
    uint64_t late_events;
    uint64_t events;
    uint64_t duplicates;
    uint64_t next_seq;      /* log records appended so far (the next record's seq): the
                               durable log end */
    uint64_t applied_seq;   /* the records below it are applied in what queries read (the
                               rest of the view is as of it) */
    uint64_t log_first_seq; /* oldest log record still kept */
};

const struct engine_opts *engine_options(const engine *e);
store *engine_store(engine *e);
void engine_partition(engine *e, uint32_t p, struct engine_partition_view *v);
/* The minimum watermark over partitions that have seen events (WATERMARK_NONE if none),
 * and the maximum event time over all partitions. */
void engine_global(engine *e, int64_t *watermark, int64_t *max_ts, uint64_t *late_events);
/* How far event time lags the wall clock on this node: at the last durable write, the
 * wall clock minus the newest event time applied so far (over all partitions), in ms
 * (negative for events stamped ahead of this clock). It is measured when events are
 * applied, so a node that receives nothing keeps its last value rather than growing by
 * itself. False (and 0) before the first event. Any thread. */
bool engine_event_time_lag(engine *e, int64_t *lag_ms);
/* Read-your-writes (see "Log first, apply behind"): wait until partition 'p' (p < 0:
 * every partition) has applied, in what queries read, every record of its log at the
 * call, so that every event acknowledged before it is seen; no wait when nothing is
 * behind. EDDY_ERR_TIMEOUT past engine_opts.read_barrier_timeout_ms. Any thread but the
 * engine's own (its callbacks must not wait for it). */
eddy_err engine_read_barrier(engine *e, int64_t p);
/* How many engine_read_barrier calls have waited for the apply so far, and how many of
 * them gave up after read_barrier_timeout_ms (either may be NULL). Any thread. */
void engine_read_barrier_counts(engine *e, uint64_t *waits, uint64_t *timeouts);
/* Whether engine_read_barrier would return at once now: nothing acknowledged is waiting
 * to be applied anywhere (or barriers are off). A hint: an Ingest acknowledged right after
 * may make the next barrier wait for its apply. Never waits for anything; any thread. */
bool engine_caught_up(engine *e);
/* Records of the durable log not applied yet in what queries read (all partitions), and
 * for how long some have been (0 when none). Any thread. */
void engine_apply_lag(engine *e, uint64_t *records, double *seconds);
/* Whether the writer waits for the apply to get back under engine_opts.max_apply_lag
 * (backpressure: no event is appended meanwhile). Any thread. */
bool engine_apply_lag_full(engine *e);
/* Tests: the apply thread applies nothing while held (what the writer applies itself, the
 * drains before other jobs and at close, still runs). Any thread but the engine's own. */
void engine_hold_apply(engine *e, bool hold);
/* Events waiting in the queue. */
int64_t engine_queue_depth(engine *e);

/* A partition's copy is written from outside by one party at a time: a move's target
 * loading a checkpoint and tailing the source (mover), or the replicated log replaying
 * its leader's records or replacing the copy with the leader's checkpoint (replica).
 * Claim before writing: false if another party holds it (try again later). Any thread. */
bool engine_claim_partition(engine *e, uint32_t p);
void engine_release_partition(engine *e, uint32_t p);

/* Keep partition 'p''s log at least back to 'seq' (the oldest retained checkpoint's seq;
 * UINT64_MAX, the initial value: no checkpoint, only --log-retention applies). Any thread;
 * the writer's next log sweep honours it (apply_params.log_floor). */
void engine_set_log_floor(engine *e, uint32_t p, uint64_t seq);

#endif
