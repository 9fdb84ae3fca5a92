/* The checkpoint scheduler's thread and schedule (see ckptsched.h for the design). */
#include "node/state/ckptsched.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/worker.h"

/* ---- the pure schedule ---------------------------------------------------------------- */

void ckptsched_slot_init(struct ckptsched_slot *s, const struct ckptsched_params *pp,
                         uint32_t p, uint32_t nparts, int64_t start_ms)
{
    memset(s, 0, sizeof(*s));
    uint32_t n = nparts ? nparts : 1;
    /* interval * (p mod N) / N without overflow for any interval a flag accepts */
    int64_t offset = (int64_t)((double)pp->interval_ms * (double)(p % n) / (double)n);
    s->phase_ms = start_ms + offset;
    s->due_ms = s->phase_ms;
    s->last_end_ms = INT64_MIN;
}

enum ckptsched_action ckptsched_decide(const struct ckptsched_slot *s, int64_t now_ms,
                                       uint64_t seq)
{
    if (now_ms < s->due_ms)
        return CKPTSCHED_WAIT;
    if (seq == 0 || (s->have_last && seq == s->last_seq))
        return CKPTSCHED_SKIP;
    return CKPTSCHED_WRITE;
}

/* The first point phase + k * interval strictly after 't'. */
static int64_t next_point(const struct ckptsched_slot *s, const struct ckptsched_params *pp,
                          int64_t t)
{
    if (t < s->phase_ms)
        return s->phase_ms;
    int64_t k = (t - s->phase_ms) / pp->interval_ms + 1;
    return s->phase_ms + k * pp->interval_ms;
}

void ckptsched_skipped(struct ckptsched_slot *s, const struct ckptsched_params *pp,
                       int64_t now_ms)
{
    s->due_ms = next_point(s, pp, now_ms);
}

void ckptsched_finished(struct ckptsched_slot *s, const struct ckptsched_params *pp,
                        int64_t end_ms, bool ok, uint64_t seq)
{
    s->last_end_ms = end_ms;
    if (ok) {
        s->last_seq = seq;
        s->have_last = true;
    }
    int64_t due = next_point(s, pp, end_ms);
    if (due < end_ms + pp->min_pause_ms)
        due = end_ms + pp->min_pause_ms;
    s->due_ms = due;
}

/* ---- the scheduler ------------------------------------------------------------------- */

/* A queued ckptsched_purge. */
struct purge_req {
    struct purge_req *next;
    uint32_t p;
    uint64_t before_seq;
    ckptsched_purge_done_fn *done;
    void *ud;
};

/* One scheduler thread: it checkpoints the partitions p with p % threads == idx. */
struct ckpt_thread {
    ckptsched *cs;
    uint32_t idx;
    struct worker w;
    pthread_mutex_t mu;        /* guards 'purges' */
    struct purge_req *purges;  /* oldest first */
    struct purge_req **tail;
};

struct ckptsched {
    engine *eng;
    struct ckptsched_opts o;
    struct ckptsched_params pp;
    uint32_t nparts;
    struct ckptsched_slot *slots; /* [nparts]: slot p is its thread's (main before start) */
    uint32_t nthreads;
    struct ckpt_thread *threads;  /* [nthreads] */

    /* [nthreads]: run_mu[p % nthreads] is held while partition p is checkpointed (by its
     * thread or a caller): one checkpoint of a partition at a time, and at most nthreads
     * at once */
    pthread_mutex_t *run_mu;
};

/* The seq of the oldest checkpoint file of 'p' left in the directory (UINT64_MAX: none),
 * and the newest one's in *newest (false if none). */
static eddy_err scan_dir(const char *dir, uint32_t p, uint64_t *oldest, uint64_t *newest,
                         bool *any)
{
    struct checkpoint_file *v = NULL;
    size_t n = 0;
    eddy_err err = checkpoint_list(dir, p, &v, &n);
    *oldest = UINT64_MAX;
    *any = false;
    if (err == EDDY_OK && n > 0) {
        *newest = v[0].seq; /* newest first */
        *oldest = v[n - 1].seq;
        *any = true;
    }
    free(v);
    return err;
}

eddy_err ckptsched_new(engine *eng, const struct ckptsched_opts *o, ckptsched **out)
{
    *out = NULL;
    if (!o->dir || !o->dir[0] || o->interval_ms <= 0 || o->min_pause_ms < 0 || o->keep < 1)
        return EDDY_ERR_INVALID;
    ckptsched *cs = calloc(1, sizeof(*cs));
    if (!cs)
        return EDDY_ERR_NOMEM;
    cs->eng = eng;
    cs->o = *o;
    cs->pp = (struct ckptsched_params){o->interval_ms, o->min_pause_ms};
    cs->nparts = engine_options(eng)->apply.partitions;
    cs->nthreads = o->threads > 1 ? (uint32_t)o->threads : 1;
    cs->slots = calloc(cs->nparts ? cs->nparts : 1, sizeof(*cs->slots));
    cs->threads = calloc(cs->nthreads, sizeof(*cs->threads));
    cs->run_mu = calloc(cs->nthreads, sizeof(*cs->run_mu));
    if (!cs->slots || !cs->threads || !cs->run_mu) {
        free(cs->slots);
        free(cs->threads);
        free(cs->run_mu);
        free(cs);
        return EDDY_ERR_NOMEM;
    }
    for (uint32_t i = 0; i < cs->nthreads; i++) {
        pthread_mutex_init(&cs->run_mu[i], NULL);
        pthread_mutex_init(&cs->threads[i].mu, NULL);
        cs->threads[i].tail = &cs->threads[i].purges;
    }

    int64_t now = clock_mono_ms();
    for (uint32_t p = 0; p < cs->nparts; p++) {
        ckptsched_slot_init(&cs->slots[p], &cs->pp, p, cs->nparts, now);
        uint64_t oldest, newest = 0;
        bool any;
        eddy_err err = scan_dir(o->dir, p, &oldest, &newest, &any);
        if (err != EDDY_OK) {
            log_error("msg=\"cannot list checkpoints\" dir=%s partition=%" PRIu32 " error=\"%s\"",
                      o->dir, p, eddy_strerror(err));
            ckptsched_free(cs);
            return err;
        }
        if (any) {
            cs->slots[p].last_seq = newest;
            cs->slots[p].have_last = true;
        }
        engine_set_log_floor(eng, p, oldest);
    }
    *out = cs;
    return EDDY_OK;
}

static eddy_err run_one(ckptsched *cs, uint32_t p, struct checkpoint_info *out);

eddy_err ckptsched_run_one(ckptsched *cs, uint32_t p, struct checkpoint_info *out)
{
    pthread_mutex_t *mu = &cs->run_mu[p % cs->nthreads];
    pthread_mutex_lock(mu);
    eddy_err err = run_one(cs, p, out);
    pthread_mutex_unlock(mu);
    return err;
}

static eddy_err run_one(ckptsched *cs, uint32_t p, struct checkpoint_info *out)
{
    const struct ckptsched_metrics *m = &cs->o.metrics;
    const struct ckptkey *key = engine_options(cs->eng)->checkpoint_key;
    struct checkpoint_info ci;
    int64_t t0 = clock_mono_ns();
    int64_t deadline = cs->o.timeout_ms > 0 ? t0 / 1000000 + cs->o.timeout_ms : 0;
    eddy_err err =
        checkpoint_write_dir_until(key, engine_store(cs->eng), p, cs->o.dir, deadline, &ci);
    if (err == EDDY_OK) {
        size_t removed = 0;
        /* the file just written is good (its CRC was computed as it was written, and it
         * was fsynced): reading it back would double the checkpoint's cost */
        eddy_err perr = checkpoint_prune_trusting(key, cs->o.dir, p, cs->o.keep, ci.path,
                                                  &removed);
        if (perr != EDDY_OK) /* the new file is in place: keep going, retry next time */
            log_warn("msg=\"checkpoint prune failed\" dir=%s partition=%" PRIu32
                     " error=\"%s\"",
                     cs->o.dir, p, eddy_strerror(perr));
        uint64_t oldest, newest;
        bool any;
        /* the floor only moves when the listing succeeds: a failed listing keeps the
         * older, lower floor (more log, never less) */
        if (scan_dir(cs->o.dir, p, &oldest, &newest, &any) == EDDY_OK && any)
            engine_set_log_floor(cs->eng, p, oldest);
    }
    double secs = (double)(clock_mono_ns() - t0) / 1e9;
    if (err != EDDY_OK) {
        metric_counter_inc(m->failures);
        log_error("msg=\"checkpoint failed\" partition=%" PRIu32 " dir=%s error=\"%s\""
                  " seconds=%.3f",
                  p, cs->o.dir, eddy_strerror(err), secs);
        return err;
    }
    metric_histogram_observe(m->duration, secs);
    metric_gauge_set(m->bytes, (double)ci.bytes);
    metric_gauge_set(m->last_success, (double)clock_wall_ms() / 1000.0);
    if (cs->o.written)
        cs->o.written(cs->o.written_ud, &ci);
    if (out)
        *out = ci;
    return EDDY_OK;
}

/* Delete partition p's checkpoint files whose seq is below 'below' (newest kept). */
static eddy_err remove_older(ckptsched *cs, uint32_t p, uint64_t below)
{
    struct checkpoint_file *v = NULL;
    size_t n = 0;
    eddy_err err = checkpoint_list(cs->o.dir, p, &v, &n);
    for (size_t i = 0; i < n && err == EDDY_OK; i++) {
        if (v[i].seq >= below)
            continue;
        if (unlink(v[i].path) != 0 && errno != ENOENT) {
            log_error("msg=\"purge: cannot delete a checkpoint\" path=%s error=\"%s\"",
                      v[i].path, strerror(errno));
            err = EDDY_ERR_IO;
        }
    }
    free(v);
    uint64_t oldest, newest;
    bool any;
    if (err == EDDY_OK && scan_dir(cs->o.dir, p, &oldest, &newest, &any) == EDDY_OK)
        engine_set_log_floor(cs->eng, p, oldest);
    return err;
}

static eddy_err purge_one(struct ckpt_thread *th, const struct purge_req *rq)
{
    ckptsched *cs = th->cs;
    uint32_t p = rq->p;
    int64_t t0 = clock_mono_ns();
    for (uint32_t i = 0; i < cs->nthreads; i++) /* in order: no other checkpoint runs */
        pthread_mutex_lock(&cs->run_mu[i]);
    struct store_key start, end;
    start.len = 0;
    key_u16(&start, (uint16_t)p);
    key_prefix_end(&start, &end);
    /* the run_mu held, no scheduled checkpoint holds a snapshot (a FetchCheckpoint stream
     * or a reprocess may) */
    int snapshots = 0;
    eddy_err err = store_compact_range(engine_store(cs->eng), &start, &end, &snapshots);
    int64_t compact_ns = clock_mono_ns() - t0;
    uint64_t below = rq->before_seq;
    if (err == EDDY_OK && (!cs->o.owns || cs->o.owns(cs->o.owns_ud, p))) {
        struct checkpoint_info ci;
        if ((err = run_one(cs, p, &ci)) == EDDY_OK) {
            ckptsched_finished(&cs->slots[p], &cs->pp, clock_mono_ms(), true, ci.seq);
            below = ci.seq;
        }
    }
    if (err == EDDY_OK)
        err = remove_older(cs, p, below);
    for (uint32_t i = cs->nthreads; i-- > 0;)
        pthread_mutex_unlock(&cs->run_mu[i]);
    /* snapshots > 0: the old versions they see stayed in the files (store_compact_range) */
    log_info("msg=\"partition purged after DeleteUser\" partition=%" PRIu32
             " compact_ms=%" PRId64 " total_ms=%" PRId64 " snapshots_open=%d"
             " old_versions_kept=%s error=\"%s\"",
             p, compact_ns / 1000000, (clock_mono_ns() - t0) / 1000000, snapshots,
             snapshots > 0 ? "true" : "false", eddy_strerror(err));
    return err;
}

/* Answer the queued purges: run them, or (stopping) refuse them. */
static void run_purges(struct ckpt_thread *th, bool stopping)
{
    for (;;) {
        pthread_mutex_lock(&th->mu);
        struct purge_req *rq = th->purges;
        if (rq) {
            th->purges = rq->next;
            if (!th->purges)
                th->tail = &th->purges;
        }
        pthread_mutex_unlock(&th->mu);
        if (!rq)
            return;
        rq->done(rq->ud, stopping ? EDDY_ERR_UNAVAILABLE : purge_one(th, rq));
        free(rq);
    }
}

eddy_err ckptsched_purge(ckptsched *cs, uint32_t p, uint64_t before_seq,
                         ckptsched_purge_done_fn *done, void *ud)
{
    if (p >= cs->nparts)
        return EDDY_ERR_INVALID;
    struct ckpt_thread *th = &cs->threads[p % cs->nthreads];
    struct purge_req *rq = malloc(sizeof(*rq));
    if (!rq)
        return EDDY_ERR_NOMEM;
    *rq = (struct purge_req){NULL, p, before_seq, done, ud};
    pthread_mutex_lock(&th->mu);
    *th->tail = rq;
    th->tail = &rq->next;
    pthread_mutex_unlock(&th->mu);
    worker_kick(&th->w);
    return EDDY_OK;
}

static void sched_main(struct worker *w, void *arg)
{
    struct ckpt_thread *th = arg;
    ckptsched *cs = th->cs;
    for (;;) {
        run_purges(th, false);
        int64_t now = clock_mono_ms();
        int64_t next = now + 1000; /* wake at least once a second (ownership changes) */
        for (uint32_t p = th->idx; p < cs->nparts && !worker_stopping(w); p += cs->nthreads) {
            struct ckptsched_slot *s = &cs->slots[p];
            if (cs->o.owns && !cs->o.owns(cs->o.owns_ud, p))
                continue;
            struct engine_partition_view v;
            engine_partition(cs->eng, p, &v);
            now = clock_mono_ms();
            /* the applied seq: a checkpoint's seq is its state's, which runs behind the
             * log; decided on the log's end, one taken between an acknowledgement and
             * the apply of its events held the log without them applied (seq 0 for a
             * partition's first events, integration.checkpoints in a CI run), and every
             * later pass saw the log ahead of it and wrote again */
            switch (ckptsched_decide(s, now, v.applied_seq)) {
            case CKPTSCHED_WAIT:
                break;
            case CKPTSCHED_SKIP:
                ckptsched_skipped(s, &cs->pp, now);
                break;
            case CKPTSCHED_WRITE: {
                struct checkpoint_info ci;
                eddy_err err = ckptsched_run_one(cs, p, &ci);
                ckptsched_finished(s, &cs->pp, clock_mono_ms(), err == EDDY_OK,
                                   err == EDDY_OK ? ci.seq : 0);
                break;
            }
            }
            if (s->due_ms < next)
                next = s->due_ms;
        }
        if (!worker_wait(w, next - clock_mono_ms()))
            break;
    }
    run_purges(th, true);
}

eddy_err ckptsched_start(ckptsched *cs)
{
    int64_t now = clock_mono_ms();
    for (uint32_t p = 0; p < cs->nparts; p++) {
        struct ckptsched_slot *s = &cs->slots[p];
        struct ckptsched_slot fresh;
        ckptsched_slot_init(&fresh, &cs->pp, p, cs->nparts, now);
        s->phase_ms = fresh.phase_ms;
        s->due_ms = fresh.due_ms;
    }
    for (uint32_t i = 0; i < cs->nthreads; i++) {
        cs->threads[i].cs = cs;
        cs->threads[i].idx = i;
        if (worker_start(&cs->threads[i].w, "checkpoint", sched_main, &cs->threads[i]) !=
            EDDY_OK)
            return EDDY_ERR_NOMEM; /* ckptsched_free stops the ones started */
    }
    log_info("msg=\"checkpoint scheduler started\" dir=%s interval_ms=%" PRId64
             " min_pause_ms=%" PRId64 " timeout_ms=%" PRId64 " keep=%d threads=%" PRIu32,
             cs->o.dir, cs->o.interval_ms, cs->o.min_pause_ms, cs->o.timeout_ms, cs->o.keep,
             cs->nthreads);
    return EDDY_OK;
}

void ckptsched_free(ckptsched *cs)
{
    if (!cs)
        return;
    for (uint32_t i = 0; i < cs->nthreads; i++) /* all at once, then wait for each */
        worker_request_stop(&cs->threads[i].w);
    for (uint32_t i = 0; i < cs->nthreads; i++)
        worker_stop(&cs->threads[i].w);
    for (uint32_t i = 0; i < cs->nthreads; i++) {
        run_purges(&cs->threads[i], true); /* queued before start, or after the thread */
        pthread_mutex_destroy(&cs->run_mu[i]);
        pthread_mutex_destroy(&cs->threads[i].mu);
    }
    free(cs->slots);
    free(cs->threads);
    free(cs->run_mu);
    free(cs);
}
