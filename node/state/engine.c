/* The writer thread and the job queue of the state engine (see engine.h for the design). */
#include "node/state/engine.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/partition.h"

enum job_kind { JOB_INGEST, JOB_DELETE, JOB_FLUSH };

struct job {
    enum job_kind kind;
    struct job *next;
    /* ingest */
    Eddy__V1__Event *const *events;
    size_t n;
    engine_ingest_done_fn *ingest_done;
    struct engine_ingest_result res;
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

struct engine {
    struct engine_opts o;
    store *st;
    store_txn *txn;

    pthread_mutex_t mu;          /* guards the queue, 'stopping' and the published views */
    pthread_cond_t cv;
    struct job *head, *tail;
    int64_t queued_events;
    bool stopping;
    pthread_t writer;
    bool writer_started;

    /* writer-owned */
    struct part_meta *meta;      /* [partitions] */
    struct part_meta *backup;    /* [partitions], to roll back a failed group */
    int64_t *last_arrival_ms;    /* [partitions], monotonic ms of the last event */

    /* published after each commit, under mu */
    struct engine_partition_view *view; /* [partitions] */
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static eddy_err dev_emit(void *ud, const Eddy__Store__V1__Stage2Batch *b)
{
    engine *e = ud;
    /* --dev owns every partition: stage 2 is applied in the same write batch. */
    return product_apply(e->txn, &e->o.product, b, NULL, NULL);
}

static void publish(engine *e)
{
    pthread_mutex_lock(&e->mu);
    for (uint32_t p = 0; p < e->o.apply.partitions; p++) {
        e->view[p].watermark = e->meta[p].watermark;
        e->view[p].max_ts = e->meta[p].max_ts;
        e->view[p].late_events = e->meta[p].late_events;
        e->view[p].events = e->meta[p].events;
        e->view[p].duplicates = e->meta[p].duplicates;
    }
    pthread_mutex_unlock(&e->mu);
}

static eddy_err run_ingest(engine *e, struct job *j, int64_t now)
{
    memset(&j->res, 0, sizeof(j->res));
    for (size_t i = 0; i < j->n; i++) {
        const Eddy__V1__Event *ev = j->events[i];
        uint32_t p = partition_of_user(ev->user_id, e->o.apply.partitions);
        enum apply_outcome oc;
        eddy_err err = apply_event(e->txn, &e->o.apply, p, &e->meta[p], ev, dev_emit, e, &oc);
        if (err != EDDY_OK)
            return err;
        e->last_arrival_ms[p] = now;
        if (oc == APPLY_DUPLICATE) {
            j->res.duplicates++;
        } else {
            j->res.accepted++;
            j->res.late += oc == APPLY_LATE;
        }
    }
    return EDDY_OK;
}

static eddy_err run_idle(engine *e, int64_t now)
{
    const struct window_params *wp = &e->o.apply.window;
    for (uint32_t p = 0; p < e->o.apply.partitions; p++) {
        struct part_meta *m = &e->meta[p];
        if (m->max_ts == WATERMARK_NONE)
            continue;
        int64_t wm = window_idle_watermark(wp, m->watermark, m->max_ts,
                                           now - e->last_arrival_ms[p]);
        if (window_closes_any(wp, m->watermark, wm)) {
            eddy_err err = apply_idle(e->txn, &e->o.apply, p, m, wm);
            if (err != EDDY_OK)
                return err;
        }
    }
    return EDDY_OK;
}

static void finish(struct job *j, eddy_err err)
{
    switch (j->kind) {
    case JOB_INGEST:
        j->ingest_done(j->ud, err, &j->res);
        break;
    case JOB_DELETE:
        j->delete_done(j->ud, err, j->model_deleted, j->windows_deleted, j->log_deleted);
        free(j->user_id);
        break;
    case JOB_FLUSH:
        break;
    }
}

static void *writer_main(void *arg)
{
    engine *e = arg;
    size_t nparts = e->o.apply.partitions;
    int64_t last_idle = mono_ms();

    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->head && !e->stopping) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_sec += 1;
            if (pthread_cond_timedwait(&e->cv, &e->mu, &dl) == ETIMEDOUT)
                break;
        }
        if (!e->head && e->stopping) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        /* take a group of jobs, at most max_group_events events (at least one job) */
        struct job *group = e->head, *last = NULL;
        int64_t events = 0;
        for (struct job *j = e->head; j; j = j->next) {
            if (last && events + (int64_t)j->n > e->o.max_group_events)
                break;
            events += (int64_t)j->n;
            last = j;
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

        int64_t now = mono_ms();
        bool idle_due = now - last_idle >= 1000;
        if (!group && !idle_due)
            continue;

        memcpy(e->backup, e->meta, nparts * sizeof(*e->meta));
        eddy_err err = EDDY_OK;
        for (struct job *j = group; j && err == EDDY_OK; j = j->next) {
            if (j->kind == JOB_INGEST) {
                err = run_ingest(e, j, now);
            } else if (j->kind == JOB_DELETE) {
                uint32_t p = partition_of_user(j->user_id, e->o.apply.partitions);
                err = apply_delete_user(e->txn, p, j->user_id, &j->model_deleted,
                                        &j->windows_deleted, &j->log_deleted);
            }
        }
        if (err == EDDY_OK && idle_due) {
            err = run_idle(e, now);
            last_idle = now;
        }
        for (uint32_t p = 0; p < nparts && err == EDDY_OK; p++)
            err = apply_meta_save(e->txn, p, &e->meta[p]);
        if (err == EDDY_OK && store_txn_pending(e->txn) > 0)
            err = store_txn_commit(e->txn, true);
        if (err != EDDY_OK) {
            log_error("msg=\"group commit failed\" error=\"%s\" events=%lld",
                      eddy_strerror(err), (long long)events);
            store_txn_reset(e->txn);
            memcpy(e->meta, e->backup, nparts * sizeof(*e->meta));
        }
        publish(e);

        for (struct job *j = group, *next; j; j = next) {
            next = j->next;
            finish(j, err);
            if (j->kind == JOB_FLUSH) {
                pthread_mutex_lock(&e->mu);
                *j->flush_flag = true;
                pthread_cond_broadcast(j->flush_cond);
                pthread_mutex_unlock(&e->mu);
            }
            free(j);
        }
    }
    return NULL;
}

eddy_err engine_open(const struct engine_opts *opts, engine **out, char *err, size_t errlen)
{
    size_t nparts = opts->apply.partitions;
    engine *e = calloc(1, sizeof(*e));
    if (!e)
        return EDDY_ERR_NOMEM;
    e->o = *opts;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->meta = calloc(nparts, sizeof(*e->meta));
    e->backup = calloc(nparts, sizeof(*e->backup));
    e->last_arrival_ms = calloc(nparts, sizeof(*e->last_arrival_ms));
    e->view = calloc(nparts, sizeof(*e->view));
    if (!e->meta || !e->backup || !e->last_arrival_ms || !e->view) {
        engine_close(e);
        return EDDY_ERR_NOMEM;
    }
    struct store_opts so = {opts->data_dir, opts->cache_bytes, 0};
    eddy_err r = store_open(&so, &e->st, err, errlen);
    if (r != EDDY_OK) {
        engine_close(e);
        return r;
    }
    e->txn = store_txn_new(e->st);
    if (!e->txn) {
        engine_close(e);
        return EDDY_ERR_NOMEM;
    }
    int64_t now = mono_ms();
    for (uint32_t p = 0; p < nparts; p++) {
        if ((r = apply_meta_load(e->st, p, &e->meta[p])) != EDDY_OK) {
            snprintf(err, errlen, "cannot read partition %u metadata: %s", p, eddy_strerror(r));
            engine_close(e);
            return r;
        }
        e->last_arrival_ms[p] = now;
    }
    publish(e);
    if (pthread_create(&e->writer, NULL, writer_main, e) != 0) {
        engine_close(e);
        return EDDY_ERR_NOMEM;
    }
    e->writer_started = true;
    *out = e;
    return EDDY_OK;
}

void engine_close(engine *e)
{
    if (!e)
        return;
    if (e->writer_started) {
        pthread_mutex_lock(&e->mu);
        e->stopping = true;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->writer, NULL);
    }
    store_txn_free(e->txn);
    store_close(e->st);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->meta);
    free(e->backup);
    free(e->last_arrival_ms);
    free(e->view);
    free(e);
}

static eddy_err enqueue(engine *e, struct job *j)
{
    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        return EDDY_ERR_UNAVAILABLE;
    }
    if (j->kind == JOB_INGEST && e->queued_events > 0 &&
        e->queued_events + (int64_t)j->n > e->o.max_pending_events) {
        pthread_mutex_unlock(&e->mu);
        return EDDY_ERR_FULL;
    }
    e->queued_events += (int64_t)j->n;
    if (e->tail)
        e->tail->next = j;
    else
        e->head = j;
    e->tail = j;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return EDDY_OK;
}

eddy_err engine_ingest(engine *e, Eddy__V1__Event *const *events, size_t n,
                       engine_ingest_done_fn *done, void *ud)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return EDDY_ERR_NOMEM;
    j->kind = JOB_INGEST;
    j->events = events;
    j->n = n;
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

void engine_flush(engine *e)
{
    pthread_cond_t cond;
    bool flag = false;
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return;
    pthread_cond_init(&cond, NULL);
    j->kind = JOB_FLUSH;
    j->flush_cond = &cond;
    j->flush_flag = &flag;
    if (enqueue(e, j) != EDDY_OK) {
        free(j);
    } else {
        pthread_mutex_lock(&e->mu);
        while (!flag)
            pthread_cond_wait(&cond, &e->mu);
        pthread_mutex_unlock(&e->mu);
    }
    pthread_cond_destroy(&cond);
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

int64_t engine_queue_depth(engine *e)
{
    pthread_mutex_lock(&e->mu);
    int64_t n = e->queued_events;
    pthread_mutex_unlock(&e->mu);
    return n;
}
