/* The product half of a cluster-wide rebuild (see stage2_side.h). */
#include "node/state/stage2_side.h"

#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/completion.h"
#include "common/log.h"
#include "node/state/product.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

#define SWAP_COMMIT_ROWS 200000 /* rows per synced write of the swap, as reprocess's */

/* The product tables a rebuild replaces (store.h). */
static const enum store_table product_tables[] = {T_PRODUCT, T_PROD_WIN, T_CAT_POP, T_S2_HW,
                                                  T_COOC};
#define N_PRODUCT_TABLES (sizeof(product_tables) / sizeof(product_tables[0]))

struct stage2_side {
    struct stage2_side_opts o;
    char work_dir[PATH_MAX];
    uint32_t partitions;
    _Atomic int64_t frozen_until; /* CLOCK_MONOTONIC ms; 0: not frozen */

    pthread_mutex_t mu;           /* everything below */
    uint64_t id;                  /* the open rebuild; 0: none */
    store *side;
    store_txn *txn;
    struct product_params pp;     /* with the new half-lives */
    int64_t set[RP_PARAMS];
    uint8_t *owned;               /* [partitions]: owned at prepare */
    uint64_t batches;
};

stage2_side *stage2_side_new(const struct stage2_side_opts *o)
{
    stage2_side *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->o = *o;
    s->partitions = engine_options(o->eng)->apply.partitions;
    s->owned = calloc(s->partitions, 1);
    if (!s->owned || snprintf(s->work_dir, sizeof(s->work_dir), "%s", o->work_dir) >=
                         (int)sizeof(s->work_dir)) {
        free(s->owned);
        free(s);
        return NULL;
    }
    s->o.work_dir = s->work_dir;
    atomic_init(&s->frozen_until, 0);
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

bool stage2_side_frozen(const stage2_side *s)
{
    if (!s)
        return false;
    int64_t until = atomic_load_explicit(&s->frozen_until, memory_order_acquire);
    return until != 0 && clock_mono_ms() < until;
}

/* Close the open rebuild: unfreeze, remove the side store. Caller holds mu. */
static void close_rebuild(stage2_side *s)
{
    atomic_store_explicit(&s->frozen_until, 0, memory_order_release);
    store_txn_free(s->txn);
    store_close(s->side);
    s->txn = NULL;
    s->side = NULL;
    if (s->id)
        store_destroy(s->work_dir, NULL, 0);
    s->id = 0;
    s->batches = 0;
}

void stage2_side_free(stage2_side *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    if (s->id)
        log_warn("msg=\"stage-2 rebuild dropped at shutdown\" rebuild=%" PRIu64, s->id);
    close_rebuild(s);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_destroy(&s->mu);
    free(s->owned);
    free(s);
}

static void renew(stage2_side *s)
{
    atomic_store_explicit(&s->frozen_until, clock_mono_ms() + s->o.freeze_ms,
                          memory_order_release);
}

/* Rebuild 'id' is open and its freeze holds. Caller holds mu. */
static eddy_err check_open(stage2_side *s, uint64_t id, char *err, size_t errlen)
{
    if (s->id == 0 || s->id != id) {
        snprintf(err, errlen, "stage-2 rebuild %" PRIu64 " is not open on this node", id);
        return EDDY_ERR_NOT_FOUND;
    }
    if (!stage2_side_frozen(s)) {
        snprintf(err, errlen, "stage-2 rebuild %" PRIu64 ": the freeze lapsed (nothing "
                              "renewed it for %" PRId64 " ms)", id, s->o.freeze_ms);
        return EDDY_ERR_NOT_FOUND;
    }
    return EDDY_OK;
}

eddy_err stage2_side_prepare(stage2_side *s, uint64_t id, const int64_t set[RP_PARAMS],
                             char *err, size_t errlen)
{
    if (id == 0) {
        snprintf(err, errlen, "a stage-2 rebuild needs an id");
        return EDDY_ERR_INVALID;
    }
    pthread_mutex_lock(&s->mu);
    eddy_err r = EDDY_OK;
    if (s->id == id) { /* a retried prepare */
        renew(s);
        goto out;
    }
    if (s->id && stage2_side_frozen(s)) {
        snprintf(err, errlen, "another stage-2 rebuild (%" PRIu64 ") is running on this node",
                 s->id);
        r = EDDY_ERR_CONFLICT;
        goto out;
    }
    if (s->id)
        log_warn("msg=\"stage-2 rebuild dropped: its freeze lapsed\" rebuild=%" PRIu64, s->id);
    close_rebuild(s);
    store_destroy(s->work_dir, NULL, 0); /* leftovers of a node that stopped mid-rebuild */

    const struct engine_opts *eo = engine_options(s->o.eng);
    s->pp = eo->product;
    if (set[RP_POPULARITY])
        s->pp.popularity.half_life_ms = set[RP_POPULARITY];
    if (set[RP_NEIGHBOURS])
        s->pp.neighbours.half_life_ms = set[RP_NEIGHBOURS];
    memcpy(s->set, set, sizeof(s->set));
    for (uint32_t q = 0; q < s->partitions; q++)
        s->owned[q] = s->o.owns(s->o.owns_ud, q);

    char lerr[256] = "";
    struct store_opts so = {s->work_dir, 8 << 20, 0};
    if ((r = store_open(&so, &s->side, lerr, sizeof(lerr))) != EDDY_OK) {
        snprintf(err, errlen, "cannot open the side store %s: %s", s->work_dir, lerr);
        goto out;
    }
    if (!(s->txn = store_txn_new(s->side))) {
        r = EDDY_ERR_NOMEM;
        store_close(s->side);
        s->side = NULL;
        goto out;
    }
    s->id = id;
    renew(s);
    /* a writer job that was applying stage-2 records when the freeze began ends first */
    if ((r = engine_flush(s->o.eng)) != EDDY_OK) {
        snprintf(err, errlen, "stage-2 freeze: %s", eddy_strerror(r));
        close_rebuild(s);
        goto out;
    }
    log_info("msg=\"stage-2 rebuild prepared: product state frozen\" rebuild=%" PRIu64
             " popularity_half_life=%" PRId64 " neighbour_half_life=%" PRId64,
             id, s->pp.popularity.half_life_ms, s->pp.neighbours.half_life_ms);
out:
    pthread_mutex_unlock(&s->mu);
    return r;
}

eddy_err stage2_side_renew(stage2_side *s, uint64_t id, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    eddy_err r = check_open(s, id, err, errlen);
    if (r == EDDY_OK)
        renew(s);
    pthread_mutex_unlock(&s->mu);
    return r;
}

static bool owned_at_prepare(void *ud, uint32_t q)
{
    const stage2_side *s = ud;
    return q < s->partitions && s->owned[q];
}

eddy_err stage2_side_apply(stage2_side *s, uint64_t id, Eddy__Store__V1__Stage2Batch *const *b,
                           size_t n, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    eddy_err r = check_open(s, id, err, errlen);
    for (size_t i = 0; i < n && r == EDDY_OK; i++)
        r = product_apply(s->txn, &s->pp, b[i], owned_at_prepare, s);
    if (r == EDDY_OK)
        r = store_txn_commit(s->txn, false); /* the side store is rebuilt from scratch after a crash */
    if (r == EDDY_OK) {
        s->batches += n;
        renew(s);
    } else {
        store_txn_reset(s->txn);
        if (!err[0])
            snprintf(err, errlen, "stage-2 rebuild: applying rebuilt records: %s",
                     eddy_strerror(r));
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

/* ---- the swap (writer thread) ------------------------------------------------------------ */

struct swap {
    stage2_side *s;
    const struct stage2_cut *cuts;
    size_t ncuts;
    store_txn *txn;      /* the live store's */
    bool putting;        /* row(): side rows are put, else live rows deleted */
    uint64_t rows;
    uint32_t *swapped;
    size_t nswapped;
    eddy_err err;
    struct completion done;
};

static int row(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct swap *sw = ud;
    struct store_key key;
    key.len = klen;
    memcpy(key.buf, k, klen);
    sw->err = sw->putting ? store_txn_put(sw->txn, &key, v, vlen) : store_txn_del(sw->txn, &key);
    sw->rows++;
    return sw->err != EDDY_OK;
}

static eddy_err scan_table(store *st, uint32_t q, enum store_table t, struct swap *sw)
{
    struct store_key start, end;
    key_init(&start, q, t);
    key_prefix_end(&start, &end);
    eddy_err err = store_scan(st, &start, &end, row, sw);
    return err != EDDY_OK ? err : sw->err;
}

/* Product partition q: live tables out, the side store's in, the marks at the cuts. */
static eddy_err swap_partition(struct swap *sw, store *live, uint32_t q)
{
    stage2_side *s = sw->s;
    eddy_err err = EDDY_OK;
    for (size_t i = 0; i < N_PRODUCT_TABLES && err == EDDY_OK; i++) {
        sw->putting = false;
        err = scan_table(live, q, product_tables[i], sw);
        sw->putting = true;
        if (err == EDDY_OK)
            err = scan_table(s->side, q, product_tables[i], sw);
    }
    /* a cut's next_seq marks every seq below it as applied */
    for (size_t i = 0; i < sw->ncuts && err == EDDY_OK; i++)
        err = product_mark_set(sw->txn, q, sw->cuts[i].partition, sw->cuts[i].next_seq);
    return err;
}

static eddy_err swap_fn(void *ud, engine *e)
{
    struct swap *sw = ud;
    stage2_side *s = sw->s;
    store *live = engine_store(e);
    sw->txn = store_txn_new(live);
    if (!sw->txn)
        return EDDY_ERR_NOMEM;
    eddy_err err = EDDY_OK;
    for (uint32_t q = 0; q < s->partitions && err == EDDY_OK; q++) {
        if (!s->owned[q])
            continue;
        err = swap_partition(sw, live, q);
        if (err == EDDY_OK)
            sw->swapped[sw->nswapped++] = q;
        if (err == EDDY_OK && sw->rows >= SWAP_COMMIT_ROWS) {
            err = store_txn_commit(sw->txn, true);
            sw->rows = 0;
        }
    }
    if (err == EDDY_OK)
        err = store_txn_commit(sw->txn, true);
    else
        store_txn_reset(sw->txn);
    store_txn_free(sw->txn);
    if (err == EDDY_OK)
        reprocess_publish_params(e, s->set);
    return err;
}

static void swap_done(void *ud, eddy_err err)
{
    struct swap *sw = ud;
    completion_signal(&sw->done, err, 0);
}

/* Every user partition has a cut, once. */
static bool cuts_complete(const stage2_side *s, const struct stage2_cut *cuts, size_t n)
{
    if (n != s->partitions)
        return false;
    uint8_t *seen = calloc(s->partitions, 1);
    bool ok = seen != NULL;
    for (size_t i = 0; i < n && ok; i++) {
        ok = cuts[i].partition < s->partitions && !seen[cuts[i].partition];
        if (ok)
            seen[cuts[i].partition] = 1;
    }
    free(seen);
    return ok;
}

eddy_err stage2_side_swap(stage2_side *s, uint64_t id, const struct stage2_cut *cuts,
                          size_t ncuts, uint32_t *swapped, size_t *nswapped, uint64_t *batches,
                          char *err, size_t errlen)
{
    *nswapped = 0;
    *batches = 0;
    pthread_mutex_lock(&s->mu);
    eddy_err r = check_open(s, id, err, errlen);
    if (r == EDDY_OK && !cuts_complete(s, cuts, ncuts)) {
        snprintf(err, errlen, "stage-2 swap: the cuts must name each of the %u user "
                              "partitions once (got %zu)", s->partitions, ncuts);
        r = EDDY_ERR_INVALID;
    }
    for (uint32_t q = 0; q < s->partitions && r == EDDY_OK; q++) {
        if (s->owned[q] != s->o.owns(s->o.owns_ud, q)) {
            snprintf(err, errlen, "stage-2 swap: partition %u changed owner during the "
                                  "rebuild; run it again", q);
            r = EDDY_ERR_UNAVAILABLE;
        }
    }
    if (r == EDDY_OK) {
        struct swap sw = {.s = s, .cuts = cuts, .ncuts = ncuts, .swapped = swapped};
        int64_t t0 = clock_mono_ms();
        completion_init(&sw.done);
        r = completion_wait(&sw.done, engine_exclusive(s->o.eng, swap_fn, swap_done, &sw));
        *nswapped = sw.nswapped;
        *batches = s->batches;
        if (r != EDDY_OK)
            snprintf(err, errlen, "stage-2 swap: %s", eddy_strerror(r));
        else
            log_info("msg=\"stage-2 rebuild swapped: product state live, unfrozen\" rebuild=%" PRIu64
                     " partitions=%zu batches=%" PRIu64 " pause_ms=%" PRId64,
                     id, *nswapped, s->batches, clock_mono_ms() - t0);
    }
    if (r != EDDY_OK)
        log_error("msg=\"stage-2 rebuild failed; product state unchanged\" rebuild=%" PRIu64
                  " error=\"%s\"",
                  id, err);
    if (r != EDDY_ERR_NOT_FOUND || s->id == id)
        close_rebuild(s);
    pthread_mutex_unlock(&s->mu);
    return r;
}

void stage2_side_abort(stage2_side *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    if (s->id && (id == 0 || s->id == id)) {
        log_warn("msg=\"stage-2 rebuild aborted; product state unchanged, unfrozen\" "
                 "rebuild=%" PRIu64,
                 s->id);
        close_rebuild(s);
    }
    pthread_mutex_unlock(&s->mu);
}

bool stage2_side_busy(stage2_side *s)
{
    if (!s)
        return false;
    pthread_mutex_lock(&s->mu);
    bool busy = s->id != 0 && stage2_side_frozen(s);
    pthread_mutex_unlock(&s->mu);
    return busy;
}
