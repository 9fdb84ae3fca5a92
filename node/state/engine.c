/* The writer thread, the sync thread and the job queue of the state engine (see engine.h
 * for the design). */
#include "node/state/engine.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/completion.h"
#include "common/log.h"
#include "common/partition.h"
#include "common/thread.h"
#include "node/state/checkpoint.h"
#include "node/state/logrec.h"
#include "node/state/product.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

enum job_kind { JOB_INGEST, JOB_DELETE, JOB_FLUSH, JOB_FORWARD, JOB_RESTORE, JOB_REPLAY,
                JOB_EXCLUSIVE, JOB_OUTBOX, JOB_IMPRESSION };

struct job {
    enum job_kind kind;
    struct job *next;
    /* ingest */
    Eddy__V1__Event *const *events;
    size_t n;
    int64_t arrival_ns;    /* CLOCK_MONOTONIC */
    engine_ingest_done_fn *ingest_done;
    struct engine_ingest_result res;
    int64_t partition;     /* cluster Apply: the partition, with its epoch; -1 in --dev */
    uint64_t epoch;
    eddy_err job_err;      /* this job failed alone (fencing), the group went on */
    /* forward */
    Eddy__Store__V1__Stage2Batch *const *batches;
    size_t nbatches;
    engine_forward_done_fn *forward_done;
    const uint32_t *fwd_parts;  /* the product partitions the sender means this node to apply */
    size_t fwd_nparts;
    uint8_t *fwd_refused;       /* [fwd_nparts]: set for those not local when the job ran */
    /* restore */
    uint32_t restore_p;
    char *restore_path;
    uint64_t restored_seq;
    engine_restore_done_fn *restore_done;
    /* replay */
    const struct engine_log_entry *entries;
    uint64_t replay_next;
    uint64_t deleted_next;      /* the seq after the last DELETE_USER replayed (0: none) */
    engine_replay_done_fn *replay_done;
    /* exclusive */
    engine_exclusive_fn *excl_fn;
    engine_exclusive_done_fn *excl_done;
    /* outbox: the delivered source seqs of OUTBOX rows of 'partition' (copied) */
    uint64_t *seqs;
    size_t nseqs;          /* not 'n': they are not events queued */
    engine_outbox_done_fn *outbox_done;
    /* impression: packed (owned), of user partition 'partition' */
    uint8_t *impression;
    size_t impression_len;
    /* delete */
    char *user_id;
    engine_delete_done_fn *delete_done;
    bool model_deleted;
    uint64_t windows_deleted, log_deleted;
    /* flush */
    pthread_cond_t *flush_cond;
    bool *flush_flag;
    void *ud;
};

/* A group whose write is sealed (store_txn_seal): the sync thread writes it, then
 * publishes, counts and acknowledges it, while the writer applies the next group. The
 * writer fills it while 'state' is SEALED_NONE and reads it back once SEALED_DONE; in
 * between it belongs to the sync thread. 'state' is guarded by engine.mu. */
struct sealed_group {
    enum { SEALED_NONE, SEALED_QUEUED, SEALED_DONE } state;
    struct job *jobs;           /* NULL: a write of applied state only (unsynced) */
    bool appended;              /* it holds appended log records (a crash point's phase) */
    int64_t start_ns;           /* when its apply began */
    uint64_t outbox_added;      /* OUTBOX records it writes */
    uint64_t outbox_removed;    /* OUTBOX records it deletes (OUTBOX_DONE records) */
    struct part_meta *meta;     /* [partitions] applied, after the group: published once
                                   durable */
    uint64_t *ends;             /* [partitions] log ends after the group (ahead of
                                   meta[p].next_seq by what is appended and not applied) */
    eddy_err err;               /* the write's result, once SEALED_DONE */
};

/* An event record appended ahead of its apply (apply_append_event): its event is kept
 * as the record decodes, because the job's events are the caller's only until the
 * acknowledgement. */
struct pending {
    uint32_t p;
    uint64_t seq;
    struct apply_logged ev;     /* owned */
    bool late;                  /* what the append answered */
};

struct engine {
    struct engine_opts o;
    store *st;
    store_txn *txn;

    pthread_mutex_t mu;          /* guards the queue, 'stopping', sealed.state and the
                                    published views */
    pthread_cond_t cv;           /* the writer waits: jobs queued, or the sealed group done */
    pthread_cond_t sync_cv;      /* the sync thread waits: a group sealed, or stopping */
    pthread_cond_t applied_cv;   /* read barriers wait: applied state published */
    struct job *head, *tail;
    int64_t queued_events;
    uint64_t *queued_epoch;      /* [partition]: the highest epoch a job was queued with */
    bool stopping;
    bool sync_stopping;
    pthread_t writer, syncer;
    bool writer_started, syncer_started;
    struct sealed_group sealed;

    /* The txn token: the writer and the apply thread take turns on the txn (one txn, so
     * no kept value is forgotten between them), the writer first: it says it wants the
     * token ('want') and the apply thread gives it up after the record it is applying.
     * Whoever holds txn_mu owns 'txn' and every field below down to outbox_removed. Lock
     * order: txn_mu, then mu. */
    pthread_mutex_t txn_mu;
    pthread_cond_t apply_cv;     /* the apply thread waits: records appended, token free */
    pthread_cond_t lag_cv;       /* the writer waits (max_apply_lag): the apply caught up */
    atomic_int want;             /* the writer waits for txn_mu */
    pthread_t applier;
    bool applier_started;
    bool apply_stopping;
    bool lag_waiting;            /* the writer waits on lag_cv */
    bool apply_held;             /* engine_hold_apply */
    atomic_bool lag_blocked;     /* lag_waiting, for engine_apply_lag_full (any thread) */
    eddy_err apply_err;          /* the apply thread failed: the writer recovers */
    struct part_meta *meta;      /* [partitions] */
    int64_t *last_arrival_ms;    /* [partitions], monotonic ms of the last event */
    struct apply_ahead *ahead;   /* [partitions], valid where is_ahead */
    bool *is_ahead;              /* [partitions]: records appended and not all applied */
    struct pending *pend;        /* appended, in log order: [pend_head, npend) not applied */
    size_t pend_head, npend, pend_cap;
    bool appended;               /* records appended since the last seal */

    uint64_t outbox_added;       /* OUTBOX records written by the current group */
    uint64_t outbox_removed;     /* OUTBOX records deleted by the current group */
    bool caught_up;              /* under mu: the apply thread applied every record since
                                    the writer last looked (its state waits for a write) */

    /* published after each commit, under mu */
    struct engine_partition_view *view; /* [partitions] */
    int64_t apply_lag_since_ms;  /* monotonic ms since when applied < log end (0: not) */
    int64_t event_lag_ms;        /* see engine_event_time_lag; valid once event_lag_known */
    bool event_lag_known;
    _Atomic uint64_t outbox;     /* OUTBOX records committed and not yet forwarded */
    _Atomic uint64_t barrier_waits;    /* read barriers that waited for the apply */
    _Atomic uint64_t barrier_timeouts; /* ...and gave up (engine_read_barrier_counts) */
    _Atomic uint64_t *log_floor; /* [partitions], see engine_set_log_floor */
    atomic_bool *writing;        /* [partitions], see engine_claim_partition */

    /* write-behind: the flush thread */
    pthread_t flusher;
    bool flusher_started;
    pthread_mutex_t flush_mu;    /* 'flush_kick', 'flush_stopping' */
    pthread_cond_t flush_cv;
    bool flush_kick, flush_stopping;
    size_t flush_bytes;
};

/* The tables the log rebuilds, written behind when flush_interval_ms > 0: everything but
 * LOG, DEDUP, OUTBOX, PART_ACK and EXP_DEF (no log record rebuilds the experiments). */
#define BEHIND_TABLES                                                                      \
    ((UINT32_C(1) << T_DEDUP_EXP) | (UINT32_C(1) << T_USER) | (UINT32_C(1) << T_USER_WIN) | \
     (UINT32_C(1) << T_USER_LOG) | (UINT32_C(1) << T_PART_WIN) | (UINT32_C(1) << T_PRODUCT) | \
     (UINT32_C(1) << T_PROD_WIN) | (UINT32_C(1) << T_CAT_POP) | (UINT32_C(1) << T_LATE) |     \
     (UINT32_C(1) << T_S2_HW) | (UINT32_C(1) << T_BOUGHT) | (UINT32_C(1) << T_META) |        \
     (UINT32_C(1) << T_SEEN) | (UINT32_C(1) << T_IMPR) | (UINT32_C(1) << T_EXP_STAT) |      \
     (UINT32_C(1) << T_COOC))

/* Count a committed group (see struct engine_metrics). 'start_ns': when its apply began. */
static void count_group(engine *e, const struct job *group, int64_t start_ns)
{
    const struct engine_metrics *m = &e->o.metrics;
    uint64_t accepted = 0, dups = 0, late = 0, batches = 0, events = 0;
    int64_t now = clock_mono_ns();
    for (const struct job *j = group; j; j = j->next) {
        if (j->kind != JOB_INGEST)
            continue;
        batches++;
        events += j->n;
        accepted += j->res.accepted;
        dups += j->res.duplicates;
        late += j->res.late;
        metric_histogram_observe_n(m->event_to_result, (double)(now - j->arrival_ns) / 1e9,
                                   j->n);
    }
    if (events == 0)
        return;
    metric_counter_add(m->events_ingested, accepted);
    metric_counter_add(m->events_duplicate, dups);
    metric_counter_add(m->events_late, late);
    metric_counter_add(m->batches, batches);
    metric_histogram_observe(m->processing_seconds, (double)(now - start_ns) / 1e9);
    metric_histogram_observe(m->group_events, (double)events);
}

static eddy_err emit(void *ud, const Eddy__Store__V1__Stage2Batch *b)
{
    engine *e = ud;
    /* --dev owns every partition: stage 2 is applied in the same write batch. */
    if (!e->o.cluster.owns)
        return product_apply(e->txn, &e->o.product, b, NULL, NULL);
    /* Cluster: the whole batch goes to the OUTBOX, whoever owns its product partitions
     * (this node included): what the source partition's state holds is then a function
     * of its log alone, the same on every copy, and the product partitions' leaders log
     * the records they apply (run_forward). */
    struct store_key k;
    key_init(&k, b->source_partition, T_OUTBOX);
    key_u64(&k, b->source_seq);
    eddy_err err = store_txn_put_msg(e->txn, &k, &b->base);
    if (err == EDDY_OK)
        e->outbox_added++;
    return err;
}

/* Make 'meta' (the partitions' applied metadata as of the last durable write) and 'ends'
 * (their log ends; NULL: meta's next seqs) what queries see, and wake the read barriers. */
static void publish(engine *e, const struct part_meta *meta, const uint64_t *ends)
{
    bool behind = false;
    int64_t newest = WATERMARK_NONE;
    for (uint32_t p = 0; p < e->o.apply.partitions; p++)
        if (meta[p].watermark != WATERMARK_NONE && meta[p].max_ts > newest)
            newest = meta[p].max_ts;
    int64_t now = clock_wall_ms(); /* a metric only: the apply itself never reads it */
    pthread_mutex_lock(&e->mu);
    if (newest != WATERMARK_NONE) {
        e->event_lag_ms = now - newest;
        e->event_lag_known = true;
    }
    for (uint32_t p = 0; p < e->o.apply.partitions; p++) {
        e->view[p].watermark = meta[p].watermark;
        e->view[p].max_ts = meta[p].max_ts;
        e->view[p].late_events = meta[p].late_events;
        e->view[p].events = meta[p].events;
        e->view[p].duplicates = meta[p].duplicates;
        e->view[p].next_seq = ends ? ends[p] : meta[p].next_seq;
        e->view[p].applied_seq = meta[p].next_seq;
        e->view[p].log_first_seq = meta[p].log_first_seq;
        behind |= e->view[p].applied_seq < e->view[p].next_seq;
    }
    if (!behind)
        e->apply_lag_since_ms = 0;
    else if (e->apply_lag_since_ms == 0)
        e->apply_lag_since_ms = clock_mono_ms();
    pthread_cond_broadcast(&e->applied_cv);
    pthread_mutex_unlock(&e->mu);
}

/* Forget the records appended (applied, or their write failed). */
static void pending_clear(engine *e)
{
    for (size_t i = 0; i < e->npend; i++) {
        e->is_ahead[e->pend[i].p] = false;
        apply_logged_release(&e->pend[i].ev);
    }
    e->npend = 0;
    e->pend_head = 0;
}

/* Records appended and not applied yet. Token held. */
static size_t unapplied(const engine *e)
{
    return e->npend - e->pend_head;
}

/* Apply the oldest record appended ahead, as a replay would (apply_appended); once none
 * is left, forget them all. Token held. */
static eddy_err apply_next(engine *e)
{
    struct pending *pd = &e->pend[e->pend_head];
    enum apply_outcome oc = APPLY_ACCEPTED;
    eddy_err err = apply_appended(e->txn, &e->o.apply, pd->p, &e->meta[pd->p], pd->seq,
                                  pd->ev.ev, emit, e, &oc);
    /* the answer was the append's: the apply must decide the same */
    assert(err != EDDY_OK || (oc == APPLY_LATE) == pd->late);
    apply_logged_release(&pd->ev);
    e->pend_head++;
    if (e->pend_head == e->npend)
        pending_clear(e);
    return err;
}

/* Apply every record appended ahead, in log order, on this thread (the token held: the
 * apply thread waits). On an error the rest are dropped too: the caller takes the store as
 * the truth again (recover), whose replay applies the ones that are durable. */
static eddy_err drain(engine *e)
{
    eddy_err err = EDDY_OK;
    while (unapplied(e) > 0 && err == EDDY_OK)
        err = apply_next(e);
    if (err != EDDY_OK)
        pending_clear(e);
    return err;
}

/* The writer takes the txn token: the apply thread yields after its current record. */
static void token_take(engine *e)
{
    atomic_fetch_add(&e->want, 1);
    pthread_mutex_lock(&e->txn_mu);
    atomic_fetch_sub(&e->want, 1);
}

/* The writer gives the token back: the apply thread goes on. */
static void token_give(engine *e)
{
    pthread_cond_signal(&e->apply_cv);
    pthread_mutex_unlock(&e->txn_mu);
}

/* Whether the writer appends no more events for now (engine_opts.max_apply_lag). Token
 * held. */
static bool lag_full(const engine *e)
{
    return (int64_t)unapplied(e) >= e->o.max_apply_lag;
}

/* The apply thread: apply the records the writer appended, in log order, one at a time
 * while the writer does not want the txn, so that the acknowledgement of a group waits for
 * at most one record's apply, not for the apply of the groups before it. Their state joins
 * the writer's next write; once nothing is left, the writer is told to write it. */
static void *applier_main(void *arg)
{
    thread_name("apply");
    engine *e = arg;
    pthread_mutex_lock(&e->txn_mu);
    for (;;) {
        bool writer_may_go = e->lag_waiting && !lag_full(e);
        if (writer_may_go)
            pthread_cond_signal(&e->lag_cv); /* and yield: the writer appends again */
        if (e->apply_stopping)
            break;
        if (unapplied(e) == 0 || atomic_load(&e->want) > 0 || e->apply_err != EDDY_OK ||
            writer_may_go || e->apply_held) {
            pthread_cond_wait(&e->apply_cv, &e->txn_mu);
            continue;
        }
        eddy_err err = apply_next(e);
        if (err != EDDY_OK) {
            pending_clear(e);
            e->apply_err = err;
        }
        if (err != EDDY_OK || unapplied(e) == 0) {
            if (err == EDDY_OK)
                store_crash_point("applied"); /* applied in the txn, not written */
            pthread_mutex_lock(&e->mu);
            e->caught_up = true;
            pthread_cond_broadcast(&e->cv);
            pthread_mutex_unlock(&e->mu);
        }
    }
    pthread_mutex_unlock(&e->txn_mu);
    return NULL;
}

/* Append 'ev' of partition p ahead of its apply (apply_append_event): *dup if it is a
 * duplicate, else *late as its apply will find it. A record whose apply sweeps is applied
 * at once, with every record before it, so the appends after it see what it forgets. */
static eddy_err append_event(engine *e, uint32_t p, const Eddy__V1__Event *ev, bool *dup,
                             bool *late)
{
    if (e->npend == e->pend_cap && e->pend_head > 0) {
        /* drop the applied records' slots: the array holds what is behind, not all since
         * the apply last caught up */
        memmove(e->pend, e->pend + e->pend_head, unapplied(e) * sizeof(*e->pend));
        e->npend -= e->pend_head;
        e->pend_head = 0;
    }
    if (e->npend == e->pend_cap) {
        size_t cap = e->pend_cap ? 2 * e->pend_cap : 1024;
        struct pending *np = realloc(e->pend, cap * sizeof(*np));
        if (!np)
            return EDDY_ERR_NOMEM;
        e->pend = np;
        e->pend_cap = cap;
    }
    if (!e->is_ahead[p])
        apply_ahead_init(&e->ahead[p], &e->meta[p]);
    struct pending *pd = &e->pend[e->npend];
    pd->p = p;
    pd->seq = e->ahead[p].end;
    eddy_err err = apply_append_event(e->txn, p, &e->meta[p], &e->ahead[p], ev, &pd->ev, dup);
    if (err != EDDY_OK || *dup)
        return err;
    e->is_ahead[p] = true;
    e->appended = true;
    e->npend++;
    bool sweeps = apply_ahead_event(&e->o.apply, &e->ahead[p], ev->timestamp_ms, &pd->late);
    *late = pd->late;
    return sweeps ? drain(e) : EDDY_OK;
}

/* Whether a newer owner has written to the partition of cluster job j (a higher epoch is
 * recorded): then j fails alone, EDDY_ERR_NOT_OWNER; otherwise j's epoch is recorded. */
static bool fenced_out(engine *e, struct job *j)
{
    struct part_meta *m = &e->meta[j->partition];
    if (m->epoch > j->epoch) {
        j->job_err = EDDY_ERR_NOT_OWNER;
        return true;
    }
    if (m->epoch < j->epoch) {
        m->epoch = j->epoch;
        m->dirty = true;
    }
    return false;
}

/* Events are appended here; their apply follows the group's seal (drain). */
static eddy_err run_ingest(engine *e, struct job *j, int64_t now)
{
    memset(&j->res, 0, sizeof(j->res));
    if (j->partition >= 0 && fenced_out(e, j))
        return EDDY_OK;
    for (size_t i = 0; i < j->n; i++) {
        const Eddy__V1__Event *ev = j->events[i];
        uint32_t p = partition_of_user(ev->user_id, e->o.apply.partitions);
        bool dup = false, late = false;
        eddy_err err = append_event(e, p, ev, &dup, &late);
        if (err != EDDY_OK)
            return err;
        e->last_arrival_ms[p] = now;
        if (dup) {
            j->res.duplicates++;
        } else {
            j->res.accepted++;
            j->res.late += late;
        }
    }
    return EDDY_OK;
}

/* Whether partition p, if this node leads it, gets an idle watermark *wm at 'now' that
 * closes a window (window_idle_watermark), from the state its appended records leave,
 * which the apply reaches before run_idle writes it. */
static bool idle_due_in(const engine *e, uint32_t p, int64_t now, int64_t *wm)
{
    const struct engine_cluster *c = &e->o.cluster;
    const struct part_meta *m = &e->meta[p];
    if (c->leads && !c->leads(c->leads_ud, p))
        return false;
    int64_t from = e->is_ahead[p] ? e->ahead[p].watermark : m->watermark;
    int64_t max_ts = e->is_ahead[p] ? e->ahead[p].max_ts : m->max_ts;
    if (max_ts == WATERMARK_NONE)
        return false;
    *wm = window_idle_watermark(&e->o.apply.window, from, max_ts, now - e->last_arrival_ms[p]);
    return window_closes_any(&e->o.apply.window, from, *wm);
}

/* Whether run_idle would write anything. Checked before the records appended ahead are
 * applied (run_idle needs them applied), so that the writer applies them itself, ahead of
 * a group's acknowledgement, only when an idle watermark is due: the check runs once a
 * second, and most seconds close nothing. */
static bool idle_closes_any(const engine *e, int64_t now)
{
    int64_t wm;
    for (uint32_t p = 0; p < e->o.apply.partitions; p++)
        if (idle_due_in(e, p, now, &wm))
            return true;
    return false;
}

/* The idle watermarks due, as log records; the appended records are applied already. */
static eddy_err run_idle(engine *e, int64_t now)
{
    int64_t wm;
    for (uint32_t p = 0; p < e->o.apply.partitions; p++) {
        if (!idle_due_in(e, p, now, &wm))
            continue;
        eddy_err err = apply_idle(e->txn, &e->o.apply, p, &e->meta[p], wm);
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}

struct fwd_set {
    const uint32_t *parts;
    const uint8_t *refused;
    size_t n;
};

static bool in_set(void *ud, uint32_t q)
{
    const struct fwd_set *fs = ud;
    for (size_t i = 0; i < fs->n; i++)
        if (fs->parts[i] == q)
            return !fs->refused[i];
    return false;
}

/* Apply the records of 'b' that fall in partitions 'accept' takes (NULL: all) as STAGE2
 * records of each one's log, one per partition, so its followers replay them. */
static eddy_err log_stage2(engine *e, const Eddy__Store__V1__Stage2Batch *b,
                           bool (*accept)(void *ud, uint32_t q), void *ud)
{
    uint32_t P = e->o.apply.partitions;
    size_t total = product_records(b);
    uint32_t *qs = malloc((total ? total : 1) * sizeof(*qs));
    Eddy__Store__V1__ProductUpdate **ups = malloc((b->n_updates ? b->n_updates : 1) * sizeof(*ups));
    Eddy__Store__V1__CoOccurrence **prs = malloc((b->n_pairs ? b->n_pairs : 1) * sizeof(*prs));
    eddy_err err = EDDY_ERR_NOMEM;
    if (!qs || !ups || !prs)
        goto out;
    for (size_t i = 0; i < total; i++)
        qs[i] = partition_of_product(product_record_key(b, i), P);
    err = EDDY_OK;
    for (size_t i = 0; i < total && err == EDDY_OK; i++) {
        size_t first = 0;
        while (qs[first] != qs[i])
            first++;
        if (first < i || (accept && !accept(ud, qs[i])))
            continue; /* done with its first record, or not this node's */
        Eddy__Store__V1__Stage2Batch sub = EDDY__STORE__V1__STAGE2_BATCH__INIT;
        sub.source_partition = b->source_partition;
        sub.source_seq = b->source_seq;
        sub.updates = ups;
        sub.pairs = prs;
        for (size_t k = i; k < total; k++) {
            if (qs[k] != qs[i])
                continue;
            if (k < b->n_updates)
                ups[sub.n_updates++] = b->updates[k];
            else
                prs[sub.n_pairs++] = b->pairs[k - b->n_updates];
        }
        bool logged;
        err = apply_stage2(e->txn, &e->o.apply, qs[i], &e->meta[qs[i]], &sub, &logged);
    }
out:
    free(qs);
    free(ups);
    free(prs);
    return err;
}

static eddy_err run_forward(engine *e, struct job *j)
{
    const struct engine_cluster *c = &e->o.cluster;
    /* Checked here, in log order with the applies: a partition that stopped being local
     * after the Forward was queued (a move froze or took it) must not lose the records
     * silently: it is refused, and the sender keeps the records that touch it and retries
     * with its refreshed map. */
    for (size_t i = 0; i < j->fwd_nparts; i++) {
        if (j->fwd_parts[i] >= e->o.apply.partitions ||
            (c->owns && !c->owns(c->owns_ud, j->fwd_parts[i])))
            j->fwd_refused[i] = 1;
    }
    struct fwd_set fs = {j->fwd_parts, j->fwd_refused, j->fwd_nparts};
    for (size_t i = 0; i < j->nbatches; i++) {
        eddy_err err = j->fwd_parts ? log_stage2(e, j->batches[i], in_set, &fs)
                                    : log_stage2(e, j->batches[i], c->owns, c->owns_ud);
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}

/* Whether two log records' bytes hold the same record, compared decoded: layouts 5 and 6
 * encode one event differently (logrec.h). True also when either does not decode or out
 * of memory: nothing to tell then. */
static bool same_record(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    if (alen == blen && memcmp(a, b, alen) == 0)
        return true;
    Eddy__Store__V1__LogRecord *ra = logrec_unpack(a, alen), *rb = logrec_unpack(b, blen);
    size_t na = ra ? protobuf_c_message_get_packed_size(&ra->base) : 0;
    size_t nb = rb ? protobuf_c_message_get_packed_size(&rb->base) : 0;
    uint8_t *pa = ra && rb ? malloc(na + nb + 1) : NULL;
    bool same = !pa || (na == nb && protobuf_c_message_pack(&ra->base, pa) == na &&
                        protobuf_c_message_pack(&rb->base, pa + na) == nb &&
                        memcmp(pa, pa + na, na) == 0);
    free(pa);
    eddy__store__v1__log_record__free_unpacked(ra, NULL);
    eddy__store__v1__log_record__free_unpacked(rb, NULL);
    return same;
}

/* A tail record at a seq this copy already holds should be the record held there. One
 * that differs means the two logs diverged: one of them took the seq for another record
 * (a move's target appending a record of its own before the final tail once did, and the
 * tail's event there was lost). Logged and counted, not repaired: which log is right is
 * not known here. */
static void check_replayed(engine *e, uint32_t p, const struct engine_log_entry *le)
{
    struct store_key k;
    key_init(&k, p, T_LOG);
    key_u64(&k, le->seq);
    const char *held = NULL;
    size_t len = 0;
    bool found = false;
    if (store_txn_get(e->txn, &k, &held, &len, &found) != EDDY_OK || !found ||
        same_record((const uint8_t *)held, len, le->data, le->len))
        return; /* (a record below the log's floor is gone: nothing to compare) */
    metric_counter_inc(e->o.metrics.replay_diverged);
    log_error("msg=\"replayed log record differs from the one held at its seq\" partition=%u "
              "seq=%" PRIu64,
              p, le->seq);
}

/* Append a tail of another node's log of the partition (a move's target catching up) and
 * apply it exactly as the source did. Records already here are skipped (check_replayed). */
static eddy_err run_replay(engine *e, struct job *j, int64_t now)
{
    uint32_t p = (uint32_t)j->partition;
    struct part_meta *m = &e->meta[p];
    for (size_t i = 0; i < j->n; i++) {
        const struct engine_log_entry *le = &j->entries[i];
        if (le->seq < m->next_seq) {
            check_replayed(e, p, le);
            continue;
        }
        Eddy__Store__V1__LogRecord *r = logrec_unpack(le->data, le->len);
        if (!r) {
            j->job_err = EDDY_ERR_CORRUPT;
            break;
        }
        struct store_key k;
        key_init(&k, p, T_LOG);
        key_u64(&k, le->seq);
        enum apply_outcome oc;
        e->outbox_removed += apply_outbox_present(e->txn, p, r);
        bool deletes = r->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_DELETE_USER;
        uint64_t outbox_before = deletes ? apply_outbox_rows(e->txn, p) : 0;
        eddy_err err = store_txn_put(e->txn, &k, (const char *)le->data, le->len);
        if (err == EDDY_OK)
            err = apply_replay(e->txn, &e->o.apply, p, m, le->seq, r, emit, e, &oc);
        if (deletes) {
            store_txn_write_through(e->txn);
            e->outbox_removed += outbox_before - apply_outbox_rows(e->txn, p);
            j->deleted_next = le->seq + 1;
        }
        eddy__store__v1__log_record__free_unpacked(r, NULL);
        if (err != EDDY_OK)
            return err;
        e->last_arrival_ms[p] = now;
    }
    j->replay_next = m->next_seq;
    return EDDY_OK;
}

/* Delivered OUTBOX rows go through the partition's log (an OUTBOX_DONE record), so its
 * followers drop them too; only the partition's leader writes its log. */
static eddy_err run_outbox(engine *e, struct job *j)
{
    const struct engine_cluster *c = &e->o.cluster;
    uint32_t p = (uint32_t)j->partition;
    if (c->leads && !c->leads(c->leads_ud, p)) {
        j->job_err = EDDY_ERR_NOT_OWNER; /* the new leader forwards them again */
        return EDDY_OK;
    }
    return apply_outbox_done(e->txn, p, &e->meta[p], j->seqs, j->nseqs, &e->outbox_removed);
}

/* A Recommend answer in an experiment joins its user's partition log at the epoch it was
 * served at, by the rule of the writes: one queued before a move's fence is in the final
 * tail the new owner fetches, even when this node has seen the new map by now (the
 * enqueue refused those queued after the fence). */
static eddy_err run_impression(engine *e, struct job *j)
{
    uint32_t p = (uint32_t)j->partition;
    if (fenced_out(e, j))
        return EDDY_OK;
    Eddy__Store__V1__Impression *imp =
        eddy__store__v1__impression__unpack(NULL, j->impression_len, j->impression);
    if (!imp) {
        j->job_err = EDDY_ERR_NOMEM;
        return EDDY_OK;
    }
    eddy_err err = apply_impression(e->txn, p, &e->meta[p], imp);
    eddy__store__v1__impression__free_unpacked(imp, NULL);
    return err;
}

/* A partition of state format 2 or older (its own, or a checkpoint's) keeps its
 * co-occurrence neighbours as lists in the product states: they become COOC rows in the
 * txn, with the metadata of the current format, so that no list is ever read as if it were
 * every pair (product_convert). One of format 4 or older has event ids in its user models:
 * they go, and the recent lists take format 5's order (apply_convert_models). One of
 * format 5 or older has protobuf event records and DEDUP rows keyed by the ids: they take
 * format 6's encodings (apply_convert_log). */
static eddy_err upgrade_partition(engine *e, uint32_t p)
{
    size_t n = 0, users = 0, records = 0;
    if (e->meta[p].format >= apply_meta_format())
        return EDDY_OK;
    eddy_err err = product_convert(e->txn, p, &n);
    if (err == EDDY_OK)
        err = apply_convert_models(e->txn, p, &users);
    if (err == EDDY_OK)
        err = apply_convert_log(e->txn, p, &records);
    if (err != EDDY_OK || (n == 0 && users == 0 && records == 0))
        return err;
    if (n > 0)
        log_info("msg=\"stage-2 neighbour lists converted to pairs\" partition=%u "
                 "products=%zu from_format=%u",
                 p, n, e->meta[p].format);
    if (users > 0)
        log_info("msg=\"user models converted\" partition=%u users=%zu from_format=%u", p,
                 users, e->meta[p].format);
    if (records > 0)
        log_info("msg=\"log and dedup rows converted\" partition=%u rows=%zu from_format=%u",
                 p, records, e->meta[p].format);
    e->meta[p].dirty = true;
    return apply_meta_save(e->txn, p, &e->meta[p]);
}

static eddy_err replay_tail(engine *e, uint32_t p, uint64_t *replayed);

/* Replace the partition's state with a checkpoint (one synced LevelDB write of its own;
 * the txn is empty: a restore is alone in its group), take over its metadata and apply
 * the log records the checkpoint holds after it: a checkpoint taken while records were
 * appended and not yet applied has them in its log (their DEDUP rows too), and they must
 * be applied here as they would have been there, not overwritten by the next appends. */
static eddy_err run_restore(engine *e, struct job *j, int64_t now)
{
    struct checkpoint_info info;
    uint32_t p = j->restore_p;
    eddy_err err = checkpoint_load(e->o.checkpoint_key, e->st, p, j->restore_path, &info);
    if (err != EDDY_OK) {
        j->job_err = err; /* the partition keeps its state; the caller decides */
        return EDDY_OK;
    }
    uint64_t replayed = 0;
    if ((err = apply_meta_load(e->st, p, &e->meta[p])) != EDDY_OK ||
        (err = upgrade_partition(e, p)) != EDDY_OK ||
        (err = replay_tail(e, p, &replayed)) != EDDY_OK)
        return err;
    e->last_arrival_ms[p] = now;
    j->restored_seq = e->meta[p].next_seq;
    if (replayed > 0)
        log_info("msg=\"restored checkpoint's log tail applied\" partition=%u records=%llu", p,
                 (unsigned long long)replayed);
    log_info("msg=\"partition restored from checkpoint\" partition=%u seq=%llu events=%llu "
             "path=%s",
             p, (unsigned long long)j->restored_seq, (unsigned long long)e->meta[p].events,
             j->restore_path);
    return EDDY_OK;
}

static int count_key(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen);

/* OUTBOX records of partition p in the store. */
static uint64_t outbox_of(engine *e, uint32_t p)
{
    _Atomic uint64_t n = 0;
    struct store_key start, end;
    key_init(&start, p, T_OUTBOX);
    key_prefix_end(&start, &end);
    store_scan(e->st, &start, &end, count_key, &n);
    return atomic_load(&n);
}

/* Whether an exclusive job counts partition p's OUTBOX records before and after it: not
 * engine_take_partition (no function), nor a job over every partition for a copy still
 * loading (no META taken yet): that copy's loader counts its records as they land
 * (engine_outbox_loaded), beside the job. */
static bool counts_outbox(const engine *e, const struct job *j, uint32_t p)
{
    return j->excl_fn && (j->partition >= 0 || e->meta[p].stored);
}

/* Run a caller's function alone, then take the store as the truth again: the metadata
 * and the OUTBOX count of the partition it names (all of them for -1) are re-read (the
 * function may have replaced whole partitions). */
static eddy_err run_exclusive(engine *e, struct job *j, int64_t now)
{
    uint32_t first = 0, last = e->o.apply.partitions;
    if (j->partition >= 0) {
        first = (uint32_t)j->partition;
        last = first + 1;
    }
    uint64_t before = 0, after = 0;
    for (uint32_t p = first; p < last; p++)
        before += counts_outbox(e, j, p) ? outbox_of(e, p) : 0;
    if (j->excl_fn)
        j->job_err = j->excl_fn(j->ud, e);
    for (uint32_t p = first; p < last; p++) {
        bool count = counts_outbox(e, j, p); /* as before the job: META not re-read yet */
        eddy_err err = apply_meta_load(e->st, p, &e->meta[p]);
        /* A partition without META is a copy still loading (ckptcopy writes it in
         * batches, META after the tables it describes): its layout is known, and
         * converted, once it is taken with META. Converting each batch rescanned
         * every product and user model loaded so far: a move's target spent 25-36 s of
         * a 33-58 s copy of 88 MB outside its writes (bench/move.sh, docs/BENCHMARKS.md,
         * "Moves"). */
        if (err == EDDY_OK && e->meta[p].stored)
            err = upgrade_partition(e, p);
        if (err != EDDY_OK)
            return err;
        e->last_arrival_ms[p] = now;
        after += count ? outbox_of(e, p) : 0;
    }
    atomic_fetch_add(&e->outbox, after);
    atomic_fetch_sub(&e->outbox, before);
    return EDDY_OK;
}

static void finish(engine *e, struct job *j, eddy_err err)
{
    if (err == EDDY_OK)
        err = j->job_err;
    switch (j->kind) {
    case JOB_INGEST:
        j->ingest_done(j->ud, err, &j->res);
        break;
    case JOB_FORWARD:
        j->forward_done(j->ud, err, err == EDDY_OK ? j->nbatches : 0);
        break;
    case JOB_RESTORE:
        j->restore_done(j->ud, err, j->restore_p, j->restored_seq);
        free(j->restore_path);
        break;
    case JOB_DELETE:
        j->delete_done(j->ud, err, j->model_deleted, j->windows_deleted, j->log_deleted);
        free(j->user_id);
        break;
    case JOB_REPLAY:
        if (err == EDDY_OK && j->deleted_next && e->o.cluster.user_deleted)
            e->o.cluster.user_deleted(e->o.cluster.deleted_ud, (uint32_t)j->partition,
                                      j->deleted_next);
        j->replay_done(j->ud, err, err == EDDY_OK ? j->replay_next : 0);
        break;
    case JOB_EXCLUSIVE:
        j->excl_done(j->ud, err);
        break;
    case JOB_OUTBOX:
        j->outbox_done(j->ud, err);
        free(j->seqs);
        break;
    case JOB_IMPRESSION:
        if (err != EDDY_OK && err != EDDY_ERR_NOT_OWNER)
            log_warn("msg=\"impression not logged\" partition=%" PRId64 " error=\"%s\"",
                     j->partition, eddy_strerror(err));
        free(j->impression);
        break;
    case JOB_FLUSH:
        break;
    }
}

/* Answer every job of a group (in order) with 'err' and free them. */
static void finish_group(engine *e, struct job *group, eddy_err err)
{
    for (struct job *j = group, *next; j; j = next) {
        next = j->next;
        finish(e, j, err);
        if (j->kind == JOB_FLUSH) {
            pthread_mutex_lock(&e->mu);
            *j->flush_flag = true;
            pthread_cond_broadcast(j->flush_cond);
            pthread_mutex_unlock(&e->mu);
        }
        free(j);
    }
}

/* A group's end once its write returned 'err': publish 'meta' and 'ends' (what the store
 * now holds, see publish), count the group and wake the forwarder if it is durable, then
 * answer its jobs. */
static void complete_group(engine *e, struct job *group, const struct part_meta *meta,
                           const uint64_t *ends, int64_t start_ns, uint64_t outbox_added,
                           uint64_t outbox_removed, eddy_err err)
{
    publish(e, meta, ends);
    if (err == EDDY_OK) {
        count_group(e, group, start_ns); /* committed and visible to queries */
        atomic_fetch_sub(&e->outbox, outbox_removed);
        if (outbox_added > 0) {
            atomic_fetch_add(&e->outbox, outbox_added);
            if (e->o.cluster.outbox_kick)
                e->o.cluster.outbox_kick(e->o.cluster.kick_ud);
        }
    }
    finish_group(e, group, err);
}

static void log_group_failed(eddy_err err, const struct job *group)
{
    int64_t events = 0;
    for (const struct job *j = group; j; j = j->next)
        events += (int64_t)j->n;
    log_error("msg=\"group commit failed\" error=\"%s\" events=%lld", eddy_strerror(err),
              (long long)events);
}

/* After a group's write: wake the flush thread past the dirty budget, and flush here (the
 * acknowledgements wait) past twice of it, when the flush thread does not keep up. */
static void flush_due(engine *e)
{
    if (!e->flusher_started)
        return;
    size_t dirty = store_dirty_bytes(e->st);
    if (dirty <= e->flush_bytes)
        return;
    if (dirty > 2 * e->flush_bytes) {
        store_flush(e->st);
        return;
    }
    pthread_mutex_lock(&e->flush_mu);
    e->flush_kick = true;
    pthread_cond_signal(&e->flush_cv);
    pthread_mutex_unlock(&e->flush_mu);
}

/* Give the pages malloc holds free back to the OS, at most every trim_interval_ms. glibc
 * keeps what is freed in its arenas: the flush's batches (a copy of the dirty set), the
 * memtables LevelDB dropped, the kept values the txn evicted (a quarter of its budget at
 * once). At a million users that was ~280 MB free in the arenas, 40 % of the node's
 * resident memory (docs/BENCHMARKS.md, "Footprint per user"). On the flush thread: off
 * the writer's and the acknowledgements' way. */
static void trim_due(engine *e, int64_t *last_ms)
{
#if defined(__GLIBC__)
    int64_t now = clock_mono_ms();
    if (e->o.trim_interval_ms <= 0 || now - *last_ms < e->o.trim_interval_ms)
        return;
    *last_ms = now;
    malloc_trim(0);
#else
    (void)e;
    (void)last_ms;
#endif
}

/* The flush thread: write the dirty set every flush_interval_ms, or when kicked. A failed
 * flush keeps the values for the next one (and the store told the node: it exits). */
static void *flusher_main(void *arg)
{
    thread_name("flush");
    engine *e = arg;
    int64_t trimmed_ms = clock_mono_ms();
    pthread_mutex_lock(&e->flush_mu);
    while (!e->flush_stopping) {
        struct timespec dl = clock_mono_after(e->o.flush_interval_ms);
        while (!e->flush_kick && !e->flush_stopping &&
               pthread_cond_timedwait(&e->flush_cv, &e->flush_mu, &dl) != ETIMEDOUT) {
        }
        if (e->flush_stopping)
            break;
        e->flush_kick = false;
        pthread_mutex_unlock(&e->flush_mu);
        store_flush(e->st);
        trim_due(e, &trimmed_ms);
        pthread_mutex_lock(&e->flush_mu);
    }
    pthread_mutex_unlock(&e->flush_mu);
    return NULL;
}

/* Observe the steps of the group commit store_txn_write just made. */
static void count_commit_steps(engine *e)
{
    int64_t write_ns, publish_ns;
    store_txn_write_times(e->txn, &write_ns, &publish_ns);
    metric_histogram_observe(e->o.metrics.commit_write_seconds, (double)write_ns / 1e9);
    metric_histogram_observe(e->o.metrics.commit_publish_seconds, (double)publish_ns / 1e9);
}

/* The sync thread: write each sealed group (one synced LevelDB write), then publish, count
 * and acknowledge it, while the writer applies the next group. */
static void *syncer_main(void *arg)
{
    thread_name("sync");
    engine *e = arg;
    struct sealed_group *sg = &e->sealed;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (sg->state != SEALED_QUEUED && !e->sync_stopping)
            pthread_cond_wait(&e->sync_cv, &e->mu);
        if (sg->state != SEALED_QUEUED)
            break;
        pthread_mutex_unlock(&e->mu);
        /* a write of applied state only needs no sync: the log rebuilds it, and a later
         * synced write makes it durable with everything before it */
        bool answers = sg->jobs != NULL;
        eddy_err err = store_txn_write(e->txn, answers);
        if (err != EDDY_OK)
            log_group_failed(err, sg->jobs);
        else if (answers)
            count_commit_steps(e);
        /* on a failure the writer takes the store as the truth again before publishing */
        if (err == EDDY_OK)
            complete_group(e, sg->jobs, sg->meta, sg->ends, sg->start_ns, sg->outbox_added,
                           sg->outbox_removed, err);
        else
            finish_group(e, sg->jobs, err);
        if (answers)
            store_crash_point("acked");
        if (sg->appended)
            store_crash_point("appended"); /* acknowledged, not applied in the store */
        if (err == EDDY_OK)
            flush_due(e);
        pthread_mutex_lock(&e->mu);
        sg->jobs = NULL;
        sg->err = err;
        sg->state = SEALED_DONE;
        pthread_cond_broadcast(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* Take the store as the truth again, as at open: forget the txn and the records appended
 * ahead, reload every partition's metadata and replay its log after it (records appended
 * in a write that succeeded are applied there, whatever became of their apply's write),
 * and count the OUTBOX again. After a failed write or apply, with no write in flight. */
static eddy_err recover(engine *e)
{
    uint64_t replayed = 0, outbox = 0;
    eddy_err err = EDDY_OK;
    pending_clear(e);
    store_txn_reset(e->txn);
    e->appended = false;
    e->outbox_added = 0;
    e->outbox_removed = 0;
    for (uint32_t p = 0; p < e->o.apply.partitions && err == EDDY_OK; p++)
        err = apply_meta_load(e->st, p, &e->meta[p]);
    for (uint32_t p = 0; p < e->o.apply.partitions && err == EDDY_OK; p++)
        err = replay_tail(e, p, &replayed);
    for (uint32_t p = 0; p < e->o.apply.partitions; p++)
        outbox += outbox_of(e, p);
    atomic_store(&e->outbox, outbox);
    if (err != EDDY_OK)
        log_error("msg=\"cannot take the store as the truth again\" error=\"%s\"",
                  eddy_strerror(err));
    publish(e, e->meta, NULL);
    return err;
}

/* Wait until the sealed group, if any, is written and answered, and settle the txn with
 * its result (token held; the apply thread's during the wait). On a failed write the
 * engine goes on from the store (recover): whatever was applied or appended after it (the
 * caller's group) must fail too. */
static eddy_err await_sealed(engine *e)
{
    struct sealed_group *sg = &e->sealed;
    pthread_mutex_lock(&e->mu);
    if (sg->state == SEALED_NONE) {
        pthread_mutex_unlock(&e->mu);
        return EDDY_OK;
    }
    if (sg->state != SEALED_DONE) {
        /* the apply thread has the txn meanwhile (store_txn_write reads only the sealed
         * batch) */
        pthread_mutex_unlock(&e->mu);
        token_give(e);
        pthread_mutex_lock(&e->mu);
        while (sg->state != SEALED_DONE)
            pthread_cond_wait(&e->cv, &e->mu);
        pthread_mutex_unlock(&e->mu);
        token_take(e);
        pthread_mutex_lock(&e->mu);
    }
    sg->state = SEALED_NONE;
    eddy_err err = sg->err;
    pthread_mutex_unlock(&e->mu);
    store_txn_settle(e->txn, err);
    if (err != EDDY_OK)
        recover(e);
    return err;
}

/* The metadata of every partition into the txn, as of the state it holds now (the apply
 * thread's records included: a write's META must match its state, or a restart's replay
 * would apply some records twice). Token held. */
static eddy_err save_metas(engine *e)
{
    eddy_err err = EDDY_OK;
    for (uint32_t p = 0; p < e->o.apply.partitions && err == EDDY_OK; p++)
        err = apply_meta_save(e->txn, p, &e->meta[p]);
    return err;
}

/* Hand the group to the sync thread (after the previous one is settled); the records it
 * appended are the apply thread's to apply. */
static eddy_err seal_group(engine *e, struct job *group, int64_t start_ns)
{
    struct sealed_group *sg = &e->sealed;
    size_t bytes = e->o.apply.partitions * sizeof(*e->meta);
    eddy_err err = save_metas(e);
    if (err == EDDY_OK)
        err = store_txn_seal(e->txn);
    if (err != EDDY_OK)
        return err;
    sg->jobs = group;
    sg->appended = e->appended;
    sg->start_ns = start_ns;
    sg->outbox_added = e->outbox_added;
    sg->outbox_removed = e->outbox_removed;
    memcpy(sg->meta, e->meta, bytes);
    for (uint32_t p = 0; p < e->o.apply.partitions; p++)
        sg->ends[p] = e->is_ahead[p] ? e->ahead[p].end : e->meta[p].next_seq;
    e->appended = false;
    e->outbox_added = 0;
    e->outbox_removed = 0;
    pthread_mutex_lock(&e->mu);
    sg->state = SEALED_QUEUED;
    pthread_cond_signal(&e->sync_cv);
    pthread_mutex_unlock(&e->mu);
    return EDDY_OK;
}

/* Apply a group's jobs (and the idle watermarks if due) into the txn: the events of
 * ingest jobs are only appended (the apply thread applies them); every other job appends
 * its record at the log end and needs the state before it, so the appended records are
 * applied first, here. */
static eddy_err apply_group(engine *e, struct job *group, int64_t now, bool idle_due)
{
    eddy_err err = EDDY_OK;
    for (struct job *j = group; j && err == EDDY_OK; j = j->next) {
        if (j->kind != JOB_INGEST && (err = drain(e)) != EDDY_OK)
            break;
        if (j->kind == JOB_INGEST) {
            err = run_ingest(e, j, now);
        } else if (j->kind == JOB_FORWARD) {
            err = run_forward(e, j);
        } else if (j->kind == JOB_RESTORE) {
            err = run_restore(e, j, now);
        } else if (j->kind == JOB_REPLAY) {
            err = run_replay(e, j, now);
        } else if (j->kind == JOB_EXCLUSIVE) {
            err = run_exclusive(e, j, now);
        } else if (j->kind == JOB_OUTBOX) {
            err = run_outbox(e, j);
        } else if (j->kind == JOB_IMPRESSION) {
            err = run_impression(e, j);
        } else if (j->kind == JOB_DELETE) {
            uint32_t p = partition_of_user(j->user_id, e->o.apply.partitions);
            uint64_t outbox_before = apply_outbox_rows(e->txn, p);
            store_txn_write_through(e->txn); /* it erases earlier log records */
            err = apply_delete_user(e->txn, p, &e->meta[p], j->user_id, &j->model_deleted,
                                    &j->windows_deleted, &j->log_deleted);
            e->outbox_removed += outbox_before - apply_outbox_rows(e->txn, p);
        }
    }
    if (err == EDDY_OK && idle_due && idle_closes_any(e, now) && (err = drain(e)) == EDDY_OK)
        err = run_idle(e, now);
    return err;
}

/* A failed apply: drop what the group wrote into the txn (and the state applied behind
 * earlier groups, which the log rebuilds: recover). */
static void roll_back(engine *e, struct job *group, eddy_err err)
{
    log_group_failed(err, group);
    recover(e);
}

/* Write what the txn holds (state applied behind earlier groups), synced, before a job
 * that writes around the txn or reads the store as a whole. */
static eddy_err commit_applied(engine *e)
{
    eddy_err err = drain(e);
    if (err == EDDY_OK)
        err = save_metas(e);
    if (err == EDDY_OK && store_txn_pending(e->txn) > 0)
        err = store_txn_commit(e->txn, true);
    return err;
}

/* A group that writes around the txn (a restore or an exclusive job) runs alone, on a
 * store that holds everything queued before it: after the sealed group is settled, with
 * its own synced commit on this thread. If that group's write failed, its jobs have
 * failed and the txn and the metadata are back to the store's: this one runs on that. */
static void run_alone(engine *e, struct job *group, int64_t now)
{
    /* No flush here: the reads see the dirty set, and what writes around the txn or
     * copies the store (store_replace_range, snapshots, compactions) flushes itself. */
    await_sealed(e);
    int64_t start_ns = clock_mono_ns();
    eddy_err err = commit_applied(e);
    if (err == EDDY_OK)
        err = apply_group(e, group, now, false);
    if (err == EDDY_OK)
        err = save_metas(e);
    if (err == EDDY_OK && store_txn_pending(e->txn) > 0)
        err = store_txn_commit(e->txn, true);
    if (err != EDDY_OK)
        roll_back(e, group, err);
    complete_group(e, group, e->meta, NULL, start_ns, e->outbox_added, e->outbox_removed, err);
    e->outbox_added = 0;
    e->outbox_removed = 0;
}

/* Append (and apply, for the other jobs) a group while the previous one's write runs on
 * the sync thread, and seal it for the sync thread once that write is settled. The events
 * it appended are the apply thread's, applied while the group is written and acknowledged
 * and whenever the writer waits: their state joins a later write. A failed write fails
 * this group too: it was applied on top of values that never reached the store. group ==
 * NULL: the state applied since the last seal (and the idle watermarks if due), written
 * unsynced so that queries see it. Token held. */
static void run_pipelined(engine *e, struct job *group, int64_t now, bool idle_due)
{
    int64_t start_ns = clock_mono_ns();
    eddy_err err = apply_group(e, group, now, idle_due);
    eddy_err werr = await_sealed(e);
    if (werr != EDDY_OK) { /* the engine is back on the store, before the failed group */
        complete_group(e, group, e->meta, NULL, start_ns, 0, 0, werr);
        return;
    }
    if (err == EDDY_OK)
        err = seal_group(e, group, start_ns);
    if (err != EDDY_OK) {
        roll_back(e, group, err);
        complete_group(e, group, e->meta, NULL, start_ns, 0, 0, err);
    }
}

/* The apply thread failed (its records are durable: the log rebuilds them): take the
 * store as the truth again once the write in flight is settled. Token held. */
static void apply_failed(engine *e)
{
    log_error("msg=\"apply behind the log failed\" error=\"%s\"", eddy_strerror(e->apply_err));
    e->apply_err = EDDY_OK;
    if (await_sealed(e) == EDDY_OK)
        recover(e);
}

/* engine_opts.max_apply_lag: before appending more events, wait until the apply thread is
 * back under the limit (the queue fills meanwhile, and Ingest answers RESOURCE_EXHAUSTED
 * past max_pending_events). The token is the apply thread's during the wait. */
static void await_apply_lag(engine *e)
{
    while (lag_full(e) && e->apply_err == EDDY_OK) {
        e->lag_waiting = true;
        atomic_store(&e->lag_blocked, true);
        pthread_cond_signal(&e->apply_cv);
        pthread_cond_wait(&e->lag_cv, &e->txn_mu);
    }
    e->lag_waiting = false;
    atomic_store(&e->lag_blocked, false);
}

static bool has_ingest(const struct job *group)
{
    for (const struct job *j = group; j; j = j->next)
        if (j->kind == JOB_INGEST)
            return true;
    return false;
}

/* Take the next group of queued jobs: at most max_group_events events (at least one job);
 * a restore or an exclusive job alone. Waits up to a second for a job, for the apply
 * thread to catch up (*caught_up: its state waits for a write) or for the write in
 * flight to end (*written: settle it now, not on the next group's way to its
 * acknowledgement); NULL if none (then *stop says whether the engine is closing). */
static struct job *take_group(engine *e, bool *stop, bool *caught_up, bool *written)
{
    pthread_mutex_lock(&e->mu);
    while (!e->head && !e->stopping && !e->caught_up && e->sealed.state != SEALED_DONE) {
        struct timespec dl = clock_mono_after(1000);
        if (pthread_cond_timedwait(&e->cv, &e->mu, &dl) == ETIMEDOUT)
            break;
    }
    *caught_up = e->caught_up;
    e->caught_up = false;
    *written = e->sealed.state == SEALED_DONE;
    *stop = !e->head && e->stopping;
    struct job *group = e->head, *last = NULL;
    int64_t events = 0;
    for (struct job *j = e->head; j; j = j->next) {
        bool alone = j->kind == JOB_RESTORE || j->kind == JOB_EXCLUSIVE;
        if (last && (alone || events + (int64_t)j->n > e->o.max_group_events))
            break; /* a restore starts a group of its own... */
        events += (int64_t)j->n;
        last = j;
        if (alone)
            break; /* ...and nothing joins it: it writes outside the txn */
    }
    if (last) {
        e->head = last->next;
        if (!e->head)
            e->tail = NULL;
        last->next = NULL;
        e->queued_events -= events;
    } else {
        group = NULL;
    }
    pthread_mutex_unlock(&e->mu);
    return group;
}

static void *writer_main(void *arg)
{
    thread_name("writer");
    engine *e = arg;
    int64_t last_idle = clock_mono_ms();
    bool stop = false;
    while (!stop) {
        bool caught_up = false, written = false;
        struct job *group = take_group(e, &stop, &caught_up, &written);
        int64_t now = clock_mono_ms();
        token_take(e);
        if (e->apply_err != EDDY_OK)
            apply_failed(e);
        else if (written && !group)
            await_sealed(e); /* settles it (a failure has already failed its jobs) */
        if (group && (group->kind == JOB_RESTORE || group->kind == JOB_EXCLUSIVE)) {
            run_alone(e, group, now);
            token_give(e);
            continue;
        }
        bool idle_due = !stop && now - last_idle >= 1000;
        bool unsealed = caught_up && store_txn_pending(e->txn) > 0;
        if (stop) {
            /* what the apply thread left, here: nothing stays behind a close */
            if (drain(e) != EDDY_OK && await_sealed(e) == EDDY_OK)
                recover(e);
            unsealed = store_txn_pending(e->txn) > 0;
        }
        if (group || idle_due || unsealed) {
            if (idle_due)
                last_idle = now;
            if (has_ingest(group))
                await_apply_lag(e);
            run_pipelined(e, group, now, idle_due);
        }
        token_give(e);
    }
    token_take(e);
    await_sealed(e);
    token_give(e);
    return NULL;
}

static int count_key(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    atomic_fetch_add((_Atomic uint64_t *)ud, 1);
    return 0;
}

/* The log records of a partition's tail, collected by a scan (applied after it). */
struct tail {
    uint64_t *seqs;
    Eddy__Store__V1__LogRecord **recs;
    size_t n, cap;
    bool bad;
};

#define TAIL_CHUNK 4096 /* records replayed per commit at open */

static int collect_tail(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct tail *t = ud;
    size_t off = 3;
    uint64_t seq;
    if (!key_get_u64(k, klen, &off, &seq) ||
        !(t->recs[t->n] = logrec_unpack((const uint8_t *)v, vlen))) {
        t->bad = true;
        return 1;
    }
    t->seqs[t->n++] = seq;
    return t->n == t->cap;
}

/* Write-behind's restart: apply partition p's log records after its flushed META (the
 * state the last flush wrote) exactly as they were applied, in chunks of TAIL_CHUNK
 * records per commit. *replayed: records applied. */
static eddy_err replay_tail(engine *e, uint32_t p, uint64_t *replayed)
{
    struct part_meta *m = &e->meta[p];
    struct tail t = {.cap = TAIL_CHUNK};
    eddy_err err = EDDY_ERR_NOMEM;
    t.seqs = malloc(t.cap * sizeof(*t.seqs));
    t.recs = malloc(t.cap * sizeof(*t.recs));
    if (!t.seqs || !t.recs)
        goto out;
    for (;;) {
        struct store_key start, end;
        key_init(&start, p, T_LOG);
        key_prefix_end(&start, &end);
        key_u64(&start, m->next_seq);
        t.n = 0;
        if ((err = store_scan(e->st, &start, &end, collect_tail, &t)) != EDDY_OK)
            goto out;
        if (t.bad) {
            err = EDDY_ERR_CORRUPT;
            goto out;
        }
        if (t.n == 0)
            break;
        for (size_t i = 0; i < t.n && err == EDDY_OK; i++) {
            enum apply_outcome oc;
            /* its erasures must not reach the log before the state they follow */
            if (t.recs[i]->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_DELETE_USER)
                store_txn_write_through(e->txn);
            err = apply_replay(e->txn, &e->o.apply, p, m, t.seqs[i], t.recs[i], emit, e, &oc);
        }
        for (size_t i = 0; i < t.n; i++)
            eddy__store__v1__log_record__free_unpacked(t.recs[i], NULL);
        *replayed += t.n;
        t.n = 0;
        /* stage 2 of --dev writes other partitions' metadata too: save them all */
        for (uint32_t q = 0; q < e->o.apply.partitions && err == EDDY_OK; q++)
            err = apply_meta_save(e->txn, q, &e->meta[q]);
        if (err == EDDY_OK)
            err = store_txn_commit(e->txn, true);
        if (err != EDDY_OK)
            goto out;
    }
    err = EDDY_OK;
out:
    for (size_t i = 0; i < t.n; i++)
        eddy__store__v1__log_record__free_unpacked(t.recs[i], NULL);
    free(t.seqs);
    free(t.recs);
    return err;
}

eddy_err engine_open(const struct engine_opts *opts, engine **out, char *err, size_t errlen)
{
    size_t nparts = opts->apply.partitions;
    engine *e = calloc(1, sizeof(*e));
    if (!e)
        return EDDY_ERR_NOMEM;
    e->o = *opts;
    pthread_mutex_init(&e->mu, NULL);
    clock_cond_init(&e->cv);
    pthread_mutex_init(&e->txn_mu, NULL);
    pthread_cond_init(&e->apply_cv, NULL);
    pthread_cond_init(&e->lag_cv, NULL);
    if (e->o.max_apply_lag <= 0)
        e->o.max_apply_lag = ENGINE_MAX_APPLY_LAG_DEFAULT;
    pthread_mutex_init(&e->flush_mu, NULL);
    clock_cond_init(&e->flush_cv);
    pthread_cond_init(&e->sync_cv, NULL);
    clock_cond_init(&e->applied_cv);
    e->meta = calloc(nparts, sizeof(*e->meta));
    e->ahead = calloc(nparts, sizeof(*e->ahead));
    e->is_ahead = calloc(nparts, sizeof(*e->is_ahead));
    e->sealed.meta = calloc(nparts, sizeof(*e->sealed.meta));
    e->sealed.ends = calloc(nparts, sizeof(*e->sealed.ends));
    e->last_arrival_ms = calloc(nparts, sizeof(*e->last_arrival_ms));
    e->view = calloc(nparts, sizeof(*e->view));
    e->log_floor = calloc(nparts, sizeof(*e->log_floor));
    e->writing = calloc(nparts, sizeof(*e->writing));
    e->queued_epoch = calloc(nparts, sizeof(*e->queued_epoch));
    if (!e->meta || !e->ahead || !e->is_ahead || !e->sealed.meta || !e->sealed.ends ||
        !e->last_arrival_ms || !e->view || !e->log_floor || !e->writing || !e->queued_epoch) {
        engine_close(e);
        return EDDY_ERR_NOMEM;
    }
    for (uint32_t p = 0; p < nparts; p++)
        atomic_init(&e->log_floor[p], UINT64_MAX); /* no checkpoint: no floor */
    e->o.apply.log_floor = e->log_floor;
    e->o.apply.product = &e->o.product;
    struct store_opts so = {opts->data_dir, opts->cache_bytes, 0};
    store_set_compaction_nice(opts->compaction_nice);
    eddy_err r = store_open(&so, &e->st, err, errlen);
    if (r != EDDY_OK) {
        engine_close(e);
        return r;
    }
    store_on_write_failed(e->st, opts->store_failed, opts->store_failed_ud);
    e->flush_bytes = opts->flush_bytes > 0 ? (size_t)opts->flush_bytes : (size_t)64 << 20;
    if (opts->flush_interval_ms > 0)
        store_set_behind(e->st, BEHIND_TABLES);
    if (opts->flush_chunk_bytes)
        store_set_flush_chunk(e->st, opts->flush_chunk_bytes > 0 ? (size_t)opts->flush_chunk_bytes
                                                                 : 0);
    if (opts->state_cache_bytes > 0)
        store_set_kept_bytes(e->st, (size_t)opts->state_cache_bytes);
    e->txn = store_txn_new(e->st);
    if (!e->txn) {
        engine_close(e);
        return EDDY_ERR_NOMEM;
    }
    int64_t now = clock_mono_ms();
    for (uint32_t p = 0; p < nparts; p++) {
        if ((r = apply_meta_load(e->st, p, &e->meta[p])) != EDDY_OK) {
            if (r == EDDY_ERR_TOO_LARGE)
                snprintf(err, errlen,
                         "partition %u has a newer state layout than this binary reads "
                         "(PartitionMeta.format above %u): refusing to misread its log; "
                         "run the newer eddy-node on %s",
                         p, apply_meta_format(), opts->data_dir);
            else
                snprintf(err, errlen, "cannot read partition %u metadata: %s", p,
                         eddy_strerror(r));
            engine_close(e);
            return r;
        }
        if ((r = upgrade_partition(e, p)) != EDDY_OK) {
            snprintf(err, errlen, "cannot convert partition %u to state format %u: %s", p,
                     apply_meta_format(), eddy_strerror(r));
            engine_close(e);
            return r;
        }
        /* flushed at once: a conversion is not in the log, so no replay would redo it; one
         * partition at a time, so that the converted rows of a big store are not all
         * pending at once */
        if (store_txn_pending(e->txn) > 0 && ((r = store_txn_commit(e->txn, true)) != EDDY_OK ||
                                              (r = store_flush(e->st)) != EDDY_OK)) {
            snprintf(err, errlen, "cannot write the converted partition %u: %s", p,
                     eddy_strerror(r));
            engine_close(e);
            return r;
        }
        e->last_arrival_ms[p] = now;
    }
    uint64_t replayed = 0;
    for (uint32_t p = 0; p < nparts && r == EDDY_OK; p++)
        r = replay_tail(e, p, &replayed);
    if (r == EDDY_OK && replayed > 0) {
        r = store_flush(e->st);
        log_info("msg=\"replayed the log after the flushed state\" records=%llu",
                 (unsigned long long)replayed);
    }
    if (r != EDDY_OK) {
        snprintf(err, errlen, "cannot replay the log after the flushed state: %s",
                 eddy_strerror(r));
        engine_close(e);
        return r;
    }
    for (uint32_t p = 0; p < nparts; p++) {
        struct store_key start, end;
        key_init(&start, p, T_OUTBOX);
        key_prefix_end(&start, &end);
        store_scan(e->st, &start, &end, count_key, &e->outbox);
    }
    publish(e, e->meta, NULL);
    if (pthread_create(&e->syncer, NULL, syncer_main, e) != 0) {
        engine_close(e);
        return EDDY_ERR_NOMEM;
    }
    e->syncer_started = true;
    if (pthread_create(&e->applier, NULL, applier_main, e) != 0) {
        engine_close(e);
        return EDDY_ERR_NOMEM;
    }
    e->applier_started = true;
    if (opts->flush_interval_ms > 0) {
        if (pthread_create(&e->flusher, NULL, flusher_main, e) != 0) {
            engine_close(e);
            return EDDY_ERR_NOMEM;
        }
        e->flusher_started = true;
    }
    if (pthread_create(&e->writer, NULL, writer_main, e) != 0) {
        engine_close(e);
        return EDDY_ERR_NOMEM;
    }
    e->writer_started = true;
    *out = e;
    return EDDY_OK;
}

/* Set 'flag' under 'mu', wake the waiters on 'cv' and join 't'. */
static void stop_thread(pthread_t t, pthread_mutex_t *mu, pthread_cond_t *cv, bool *flag)
{
    pthread_mutex_lock(mu);
    *flag = true;
    pthread_cond_broadcast(cv);
    pthread_mutex_unlock(mu);
    pthread_join(t, NULL);
}

void engine_close(engine *e)
{
    if (!e)
        return;
    /* the writer first: it leaves nothing sealed, nothing to apply */
    if (e->writer_started)
        stop_thread(e->writer, &e->mu, &e->cv, &e->stopping);
    if (e->applier_started)
        stop_thread(e->applier, &e->txn_mu, &e->apply_cv, &e->apply_stopping);
    if (e->syncer_started)
        stop_thread(e->syncer, &e->mu, &e->sync_cv, &e->sync_stopping);
    if (e->flusher_started)
        stop_thread(e->flusher, &e->flush_mu, &e->flush_cv, &e->flush_stopping);
    store_txn_free(e->txn);
    store_close(e->st);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_cond_destroy(&e->sync_cv);
    pthread_cond_destroy(&e->applied_cv);
    pthread_mutex_destroy(&e->txn_mu);
    pthread_cond_destroy(&e->apply_cv);
    pthread_cond_destroy(&e->lag_cv);
    pthread_mutex_destroy(&e->flush_mu);
    pthread_cond_destroy(&e->flush_cv);
    free(e->meta);
    free(e->queued_epoch);
    pending_clear(e);
    free(e->pend);
    free(e->ahead);
    free(e->is_ahead);
    free(e->sealed.meta);
    free(e->sealed.ends);
    free(e->last_arrival_ms);
    free(e->view);
    free((void *)e->log_floor);
    free((void *)e->writing);
    free(e);
}

/* Queue the jobs 'first'..'last' (linked, 'events' events in all) at once: the writer
 * finds all or none of them. Ingest jobs ('ingest') are refused past max_pending_events. */
static eddy_err enqueue_list(engine *e, struct job *first, struct job *last, int64_t events,
                             bool ingest)
{
    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        return EDDY_ERR_UNAVAILABLE;
    }
    if (ingest && e->queued_events > 0 && e->queued_events + events > e->o.max_pending_events) {
        pthread_mutex_unlock(&e->mu);
        return EDDY_ERR_FULL;
    }
    /* an impression served at an epoch older than a job queued before it (a move's
     * fence): the answer must not go out, the new owner's log will not have it */
    if (first->kind == JOB_IMPRESSION && first->epoch < e->queued_epoch[first->partition]) {
        pthread_mutex_unlock(&e->mu);
        return EDDY_ERR_NOT_OWNER;
    }
    for (struct job *j = first;; j = j->next) {
        if (j->partition >= 0 && j->epoch > e->queued_epoch[j->partition])
            e->queued_epoch[j->partition] = j->epoch;
        if (j == last)
            break;
    }
    e->queued_events += events;
    if (e->tail)
        e->tail->next = first;
    else
        e->head = first;
    e->tail = last;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return EDDY_OK;
}

static eddy_err enqueue(engine *e, struct job *j)
{
    return enqueue_list(e, j, j, (int64_t)j->n, j->kind == JOB_INGEST);
}

eddy_err engine_ingest(engine *e, Eddy__V1__Event *const *events, size_t n,
                       engine_ingest_done_fn *done, void *ud)
{
    return engine_ingest_timed(e, events, n, clock_mono_ns(), done, ud);
}

eddy_err engine_ingest_timed(engine *e, Eddy__V1__Event *const *events, size_t n,
                             int64_t arrival_ns, engine_ingest_done_fn *done, void *ud)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    j->kind = JOB_INGEST;
    j->partition = -1;
    j->events = events;
    j->n = n;
    j->arrival_ns = arrival_ns;
    j->ingest_done = done;
    j->ud = ud;
    eddy_err err = enqueue(e, j);
    if (err != EDDY_OK)
        free(j);
    return err;
}

eddy_err engine_delete_user(engine *e, const char *user_id, engine_delete_done_fn *done,
                            void *ud)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    j->kind = JOB_DELETE;
    j->user_id = strdup(user_id);
    j->delete_done = done;
    j->ud = ud;
    eddy_err err = j->user_id ? enqueue(e, j) : EDDY_ERR_NOMEM;
    if (err != EDDY_OK) {
        free(j->user_id);
        free(j);
    }
    return err;
}

eddy_err engine_outbox_forwarded(engine *e, uint32_t p, const uint64_t *seqs, size_t n,
                                 engine_outbox_done_fn *done, void *ud)
{
    if (p >= e->o.apply.partitions || n == 0)
        return EDDY_ERR_INVALID;
    struct job *j = calloc(1, sizeof(*j));
    uint64_t *copy = malloc(n * sizeof(*copy));
    eddy_err err = EDDY_ERR_NOMEM;
    if (j && copy) {
        memcpy(copy, seqs, n * sizeof(*copy));
        j->kind = JOB_OUTBOX;
        j->partition = p;
        j->seqs = copy;
        j->nseqs = n;
        j->outbox_done = done;
        j->ud = ud;
        err = enqueue(e, j);
    }
    if (err != EDDY_OK) {
        free(copy);
        free(j);
    }
    return err;
}

eddy_err engine_impression(engine *e, const Eddy__Store__V1__Impression *imp, uint64_t epoch)
{
    uint32_t p = partition_of_user(imp->user_id, e->o.apply.partitions);
    size_t len = eddy__store__v1__impression__get_packed_size(imp);
    struct job *j = calloc(1, sizeof(*j));
    uint8_t *buf = malloc(len ? len : 1);
    eddy_err err = EDDY_ERR_NOMEM;
    if (j && buf) {
        eddy__store__v1__impression__pack(imp, buf);
        j->kind = JOB_IMPRESSION;
        j->partition = p;
        j->impression = buf;
        j->impression_len = len;
        j->epoch = epoch;
        err = enqueue(e, j);
    }
    if (err != EDDY_OK) {
        free(buf);
        free(j);
    }
    return err;
}

eddy_err engine_flush(engine *e)
{
    pthread_cond_t cond;
    bool flag = false;
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    pthread_cond_init(&cond, NULL);
    j->kind = JOB_FLUSH;
    j->flush_cond = &cond;
    j->flush_flag = &flag;
    eddy_err err = enqueue(e, j);
    if (err != EDDY_OK) {
        free(j);
    } else {
        pthread_mutex_lock(&e->mu);
        while (!flag)
            pthread_cond_wait(&cond, &e->mu);
        pthread_mutex_unlock(&e->mu);
    }
    pthread_cond_destroy(&cond);
    return err;
}

const struct engine_opts *engine_options(const engine *e)
{
    return &e->o;
}

store *engine_store(engine *e)
{
    return e->st;
}

void engine_partition(engine *e, uint32_t p, struct engine_partition_view *v)
{
    pthread_mutex_lock(&e->mu);
    *v = e->view[p];
    pthread_mutex_unlock(&e->mu);
}

void engine_global(engine *e, int64_t *watermark, int64_t *max_ts, uint64_t *late_events)
{
    int64_t wm = WATERMARK_NONE, mx = WATERMARK_NONE;
    uint64_t late = 0;
    pthread_mutex_lock(&e->mu);
    for (uint32_t p = 0; p < e->o.apply.partitions; p++) {
        const struct engine_partition_view *v = &e->view[p];
        late += v->late_events;
        if (v->watermark == WATERMARK_NONE)
            continue;
        if (wm == WATERMARK_NONE || v->watermark < wm)
            wm = v->watermark;
        if (v->max_ts > mx)
            mx = v->max_ts;
    }
    pthread_mutex_unlock(&e->mu);
    if (watermark)
        *watermark = wm;
    if (max_ts)
        *max_ts = mx;
    if (late_events)
        *late_events = late;
}

bool engine_event_time_lag(engine *e, int64_t *lag_ms)
{
    pthread_mutex_lock(&e->mu);
    bool known = e->event_lag_known;
    *lag_ms = known ? e->event_lag_ms : 0;
    pthread_mutex_unlock(&e->mu);
    return known;
}

eddy_err engine_read_barrier(engine *e, int64_t p)
{
    uint32_t first = 0, last = e->o.apply.partitions;
    if (p >= (int64_t)last)
        return EDDY_ERR_INVALID;
    if (p >= 0) {
        first = (uint32_t)p;
        last = first + 1;
    }
    /* the common case, nothing applied behind its log end anywhere: no copy of the log
     * ends, no scan of them */
    if (engine_caught_up(e))
        return EDDY_OK;
    uint64_t one, *want = last - first == 1 ? &one : malloc((last - first) * sizeof(*want));
    if (!want)
        return EDDY_ERR_NOMEM;
    struct timespec dl = clock_mono_after(e->o.read_barrier_timeout_ms);
    eddy_err err = EDDY_OK;
    pthread_mutex_lock(&e->mu);
    /* the log ends now: every acknowledgement before the query is below them */
    for (uint32_t q = first; q < last; q++)
        want[q - first] = e->view[q].next_seq;
    bool waited = false;
    for (uint32_t q = first; q < last && err == EDDY_OK; q++) {
        if (!waited && e->view[q].applied_seq < want[q - first]) {
            waited = true;
            atomic_fetch_add(&e->barrier_waits, 1);
        }
        while (e->view[q].applied_seq < want[q - first]) {
            if (pthread_cond_timedwait(&e->applied_cv, &e->mu, &dl) == ETIMEDOUT) {
                err = e->view[q].applied_seq < want[q - first] ? EDDY_ERR_TIMEOUT : EDDY_OK;
                break;
            }
        }
    }
    pthread_mutex_unlock(&e->mu);
    if (want != &one)
        free(want);
    if (err == EDDY_ERR_TIMEOUT)
        atomic_fetch_add(&e->barrier_timeouts, 1);
    if (err != EDDY_OK)
        log_warn("msg=\"read barrier: the events acknowledged before the query are not "
                 "applied after --read-barrier-timeout\" partition=%" PRId64 " timeout_ms=%" PRId64,
                 p, e->o.read_barrier_timeout_ms);
    return err;
}

void engine_read_barrier_counts(engine *e, uint64_t *waits, uint64_t *timeouts)
{
    if (waits)
        *waits = atomic_load(&e->barrier_waits);
    if (timeouts)
        *timeouts = atomic_load(&e->barrier_timeouts);
}

bool engine_caught_up(engine *e)
{
    if (e->o.read_barrier_timeout_ms <= 0)
        return true;
    /* publish keeps apply_lag_since_ms 0 exactly when nothing is behind its log end */
    pthread_mutex_lock(&e->mu);
    bool behind = e->apply_lag_since_ms != 0;
    pthread_mutex_unlock(&e->mu);
    return !behind;
}

void engine_apply_lag(engine *e, uint64_t *records, double *seconds)
{
    uint64_t n = 0;
    pthread_mutex_lock(&e->mu);
    for (uint32_t p = 0; p < e->o.apply.partitions; p++)
        n += e->view[p].next_seq - e->view[p].applied_seq;
    int64_t since = e->apply_lag_since_ms;
    pthread_mutex_unlock(&e->mu);
    if (records)
        *records = n;
    if (seconds)
        *seconds = since ? (double)(clock_mono_ms() - since) / 1e3 : 0;
}

bool engine_apply_lag_full(engine *e)
{
    return atomic_load(&e->lag_blocked);
}

void engine_hold_apply(engine *e, bool hold)
{
    token_take(e);
    e->apply_held = hold;
    token_give(e);
}

int64_t engine_queue_depth(engine *e)
{
    pthread_mutex_lock(&e->mu);
    int64_t n = e->queued_events;
    pthread_mutex_unlock(&e->mu);
    return n;
}

eddy_err engine_apply(engine *e, uint32_t p, uint64_t epoch, Eddy__V1__Event *const *events,
                      size_t n, engine_ingest_done_fn *done, void *ud)
{
    return engine_apply_in(e, NULL, p, epoch, events, n, done, ud);
}

eddy_err engine_apply_in(engine *e, struct engine_batch *b, uint32_t p, uint64_t epoch,
                         Eddy__V1__Event *const *events, size_t n, engine_ingest_done_fn *done,
                         void *ud)
{
    if (p >= e->o.apply.partitions)
        return EDDY_ERR_INVALID;
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    j->kind = JOB_INGEST;
    j->events = events;
    j->n = n;
    j->arrival_ns = clock_mono_ns();
    j->ingest_done = done;
    j->ud = ud;
    j->partition = p;
    j->epoch = epoch;
    if (b) {
        if (b->tail)
            b->tail->next = j;
        else
            b->head = j;
        b->tail = j;
        b->events += (int64_t)n;
        return EDDY_OK;
    }
    eddy_err err = enqueue(e, j);
    if (err != EDDY_OK)
        free(j);
    return err;
}

void engine_submit(engine *e, struct engine_batch *b)
{
    if (!b->head)
        return;
    eddy_err err = enqueue_list(e, b->head, b->tail, b->events, true);
    if (err != EDDY_OK)
        finish_group(e, b->head, err); /* answered as engine_apply would have been refused */
    *b = (struct engine_batch)ENGINE_BATCH_INIT;
}

eddy_err engine_forward(engine *e, Eddy__Store__V1__Stage2Batch *const *batches, size_t n,
                        engine_forward_done_fn *done, void *ud)
{
    return engine_forward_to(e, batches, n, NULL, NULL, 0, done, ud);
}

eddy_err engine_forward_to(engine *e, Eddy__Store__V1__Stage2Batch *const *batches, size_t n,
                           const uint32_t *parts, uint8_t *refused, size_t nparts,
                           engine_forward_done_fn *done, void *ud)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    j->kind = JOB_FORWARD;
    j->partition = -1;
    j->batches = batches;
    j->nbatches = n;
    j->fwd_parts = parts;
    j->fwd_refused = refused;
    j->fwd_nparts = nparts;
    j->forward_done = done;
    j->ud = ud;
    eddy_err err = enqueue(e, j);
    if (err != EDDY_OK)
        free(j);
    return err;
}

uint64_t engine_outbox_depth(engine *e)
{
    return atomic_load(&e->outbox);
}

void engine_outbox_loaded(engine *e, uint64_t records)
{
    atomic_fetch_add(&e->outbox, records);
}

bool engine_claim_partition(engine *e, uint32_t p)
{
    bool free_now = false;
    return p < e->o.apply.partitions &&
           atomic_compare_exchange_strong(&e->writing[p], &free_now, true);
}

void engine_release_partition(engine *e, uint32_t p)
{
    if (p < e->o.apply.partitions)
        atomic_store(&e->writing[p], false);
}

void engine_set_log_floor(engine *e, uint32_t p, uint64_t seq)
{
    if (p < e->o.apply.partitions)
        atomic_store_explicit(&e->log_floor[p], seq, memory_order_relaxed);
}

eddy_err engine_restore(engine *e, uint32_t p, const char *path, engine_restore_done_fn *done,
                        void *ud)
{
    if (p >= e->o.apply.partitions)
        return EDDY_ERR_INVALID;
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    j->kind = JOB_RESTORE;
    j->partition = -1;
    j->restore_p = p;
    j->restore_path = strdup(path);
    j->restore_done = done;
    j->ud = ud;
    eddy_err err = j->restore_path ? enqueue(e, j) : EDDY_ERR_NOMEM;
    if (err != EDDY_OK) {
        free(j->restore_path);
        free(j);
    }
    return err;
}

eddy_err engine_replay(engine *e, uint32_t p, const struct engine_log_entry *entries, size_t n,
                       engine_replay_done_fn *done, void *ud)
{
    if (p >= e->o.apply.partitions)
        return EDDY_ERR_INVALID;
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    j->kind = JOB_REPLAY;
    j->partition = p;
    j->entries = entries;
    j->n = n;
    j->replay_done = done;
    j->ud = ud;
    eddy_err err = enqueue(e, j);
    if (err != EDDY_OK)
        free(j);
    return err;
}

eddy_err engine_exclusive(engine *e, engine_exclusive_fn *fn, engine_exclusive_done_fn *done,
                          void *ud)
{
    return engine_exclusive_partition(e, -1, fn, done, ud);
}

eddy_err engine_exclusive_partition(engine *e, int64_t p, engine_exclusive_fn *fn,
                                    engine_exclusive_done_fn *done, void *ud)
{
    if (p >= (int64_t)e->o.apply.partitions)
        return EDDY_ERR_INVALID;
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    j->kind = JOB_EXCLUSIVE;
    j->partition = p < 0 ? -1 : p;
    j->excl_fn = fn;
    j->excl_done = done;
    j->ud = ud;
    eddy_err err = enqueue(e, j);
    if (err != EDDY_OK)
        free(j);
    return err;
}

eddy_err engine_take_partition(engine *e, uint32_t p, engine_exclusive_done_fn *done, void *ud)
{
    return engine_exclusive_partition(e, p, NULL, done, ud);
}

/* engine_drop_partition: the range deletion and the caller waiting for it. */
struct drop {
    uint32_t p;
    uint64_t deleted;
    struct completion done;
};

static eddy_err drop_fn(void *ud, engine *e)
{
    struct drop *d = ud;
    struct store_key start, end;
    start.len = 0;
    key_u16(&start, (uint16_t)d->p);
    key_prefix_end(&start, &end);
    store_batch *b = store_batch_new();
    eddy_err err = b ? store_replace_range(e->st, &start, &end, b, &d->deleted) : EDDY_ERR_NOMEM;
    store_batch_free(b);
    return err;
}

static void drop_done(void *ud, eddy_err err)
{
    struct drop *d = ud;
    completion_signal(&d->done, err, 0);
}

eddy_err engine_drop_partition(engine *e, uint32_t p, uint64_t *deleted)
{
    if (p >= e->o.apply.partitions)
        return EDDY_ERR_INVALID;
    struct drop d = {.p = p};
    completion_init(&d.done);
    eddy_err err =
        completion_wait(&d.done, engine_exclusive_partition(e, p, drop_fn, drop_done, &d));
    if (deleted)
        *deleted = d.deleted;
    return err;
}
