/* The experiments of a node, in memory and in the store or etcd. */
#include "node/state/expreg.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "eddy/v1/store.pb-c.h"

struct expreg {
    pthread_mutex_t mu;          /* guards list/n */
    Eddy__V1__Experiment **list; /* owned, by name */
    size_t n;
    store *st;                   /* borrowed; NULL: saver */
    expreg_save_fn *save;
    void *save_ud;
    _Atomic uint64_t serial;
};

/* A deep copy through the wire format (protobuf-c has no clone). NULL if out of memory. */
static Eddy__V1__Experiment *copy_of(const Eddy__V1__Experiment *e)
{
    size_t len = eddy__v1__experiment__get_packed_size(e);
    uint8_t *buf = malloc(len ? len : 1);
    Eddy__V1__Experiment *c = NULL;
    if (buf) {
        eddy__v1__experiment__pack(e, buf);
        c = eddy__v1__experiment__unpack(NULL, len, buf);
    }
    free(buf);
    return c;
}

static void list_clear(Eddy__V1__Experiment **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        eddy__v1__experiment__free_unpacked(list[i], NULL);
    free(list);
}

static int cmp_name(const void *a, const void *b)
{
    const Eddy__V1__Experiment *x = *(Eddy__V1__Experiment *const *)a;
    const Eddy__V1__Experiment *y = *(Eddy__V1__Experiment *const *)b;
    return strcmp(x->name, y->name);
}

/* The dev store: the whole table rewritten in one synced write (a few experiments). */
static eddy_err store_save(store *st, Eddy__V1__Experiment *const *list, size_t n)
{
    struct store_key start, end, k;
    store_batch *b = store_batch_new();
    eddy_err err = b ? EDDY_OK : EDDY_ERR_NOMEM;
    key_init(&start, EXP_DEF_PARTITION, T_EXP_DEF);
    key_prefix_end(&start, &end);
    for (size_t i = 0; i < n && err == EDDY_OK; i++) {
        Eddy__Store__V1__ExperimentDef d = EDDY__STORE__V1__EXPERIMENT_DEF__INIT;
        d.experiment = list[i];
        size_t len = eddy__store__v1__experiment_def__get_packed_size(&d);
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf) {
            err = EDDY_ERR_NOMEM;
            break;
        }
        eddy__store__v1__experiment_def__pack(&d, buf);
        key_init(&k, EXP_DEF_PARTITION, T_EXP_DEF);
        key_str(&k, list[i]->name);
        err = store_batch_put(b, k.buf, k.len, buf, len);
        free(buf);
    }
    if (err == EDDY_OK)
        err = store_replace_range(st, &start, &end, b, NULL);
    store_batch_free(b);
    return err;
}

struct loading {
    expreg *r;
    eddy_err err;
};

static int load_one(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct loading *l = ud;
    (void)k;
    (void)klen;
    if (l->r->n >= EXPREG_MAX)
        return 1;
    Eddy__Store__V1__ExperimentDef *d =
        eddy__store__v1__experiment_def__unpack(NULL, vlen, (const uint8_t *)v);
    if (!d || !d->experiment) {
        log_warn("msg=\"an experiment in the store does not decode: skipped\"");
        if (d)
            eddy__store__v1__experiment_def__free_unpacked(d, NULL);
        return 0;
    }
    Eddy__V1__Experiment *e = copy_of(d->experiment);
    eddy__store__v1__experiment_def__free_unpacked(d, NULL);
    if (!e) {
        l->err = EDDY_ERR_NOMEM;
        return 1;
    }
    l->r->list[l->r->n++] = e;
    return 0;
}

eddy_err expreg_new(store *st, expreg **out)
{
    expreg *r = calloc(1, sizeof(*r));
    *out = NULL;
    if (!r || !(r->list = calloc(EXPREG_MAX, sizeof(*r->list)))) {
        free(r);
        return EDDY_ERR_NOMEM;
    }
    pthread_mutex_init(&r->mu, NULL);
    r->st = st;
    if (st) {
        struct store_key start, end;
        struct loading l = {r, EDDY_OK};
        key_init(&start, EXP_DEF_PARTITION, T_EXP_DEF);
        key_prefix_end(&start, &end);
        eddy_err err = store_scan(st, &start, &end, load_one, &l);
        if (err == EDDY_OK)
            err = l.err;
        if (err != EDDY_OK) {
            expreg_free(r);
            return err;
        }
    }
    *out = r;
    return EDDY_OK;
}

void expreg_free(expreg *r)
{
    if (!r)
        return;
    list_clear(r->list, r->n);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

void expreg_set_saver(expreg *r, expreg_save_fn *fn, void *ud)
{
    pthread_mutex_lock(&r->mu);
    r->save = fn;
    r->save_ud = ud;
    pthread_mutex_unlock(&r->mu);
}

eddy_err expreg_replace(expreg *r, const ProtobufCBinaryData *defs, size_t n)
{
    Eddy__V1__Experiment **list = calloc(EXPREG_MAX, sizeof(*list));
    size_t m = 0;
    if (!list)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < n && m < EXPREG_MAX; i++) {
        Eddy__V1__Experiment *e = eddy__v1__experiment__unpack(NULL, defs[i].len, defs[i].data);
        if (e)
            list[m++] = e;
    }
    qsort(list, m, sizeof(*list), cmp_name);
    pthread_mutex_lock(&r->mu);
    Eddy__V1__Experiment **old = r->list;
    size_t oldn = r->n;
    r->list = list;
    r->n = m;
    pthread_mutex_unlock(&r->mu);
    list_clear(old, oldn);
    return EDDY_OK;
}

static int find_locked(const expreg *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->list[i]->name, name) == 0)
            return (int)i;
    }
    return -1;
}

/* Save the list with 'e' at index 'at' (r->n: added), then make it the list. The mutex is
 * held. On failure the list is unchanged, 'e' freed and 'why' may say why. */
static eddy_err commit_locked(expreg *r, size_t at, Eddy__V1__Experiment *e, char *why,
                              size_t whylen)
{
    Eddy__V1__Experiment *old = at < r->n ? r->list[at] : NULL;
    size_t n = r->n;
    r->list[at] = e;
    if (at == n)
        n++;
    /* the saved order is by name too */
    Eddy__V1__Experiment **sorted = malloc(n * sizeof(*sorted));
    if (!sorted) {
        r->list[at] = old;
        eddy__v1__experiment__free_unpacked(e, NULL);
        return EDDY_ERR_NOMEM;
    }
    memcpy(sorted, r->list, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_name);
    eddy_err err = r->save ? r->save(r->save_ud, old, e, why, whylen)
                   : r->st ? store_save(r->st, sorted, n)
                           : EDDY_OK;
    if (err != EDDY_OK) {
        free(sorted);
        r->list[at] = old;
        eddy__v1__experiment__free_unpacked(e, NULL);
        return err;
    }
    memcpy(r->list, sorted, n * sizeof(*sorted));
    free(sorted);
    r->n = n;
    if (old)
        eddy__v1__experiment__free_unpacked(old, NULL);
    return EDDY_OK;
}

/* commit_locked, then a copy of what was stored in *out (if asked); 'why' says why a
 * failure other than memory was not saved. The mutex is held. */
static eddy_err commit_out_locked(expreg *r, size_t at, Eddy__V1__Experiment *e,
                                  Eddy__V1__Experiment **out, char *why, size_t whylen)
{
    char name[EXPERIMENT_NAME_MAX + 1];
    snprintf(name, sizeof(name), "%s", e->name); /* 'e' is freed on failure */
    why[0] = '\0';
    eddy_err err = commit_locked(r, at, e, why, whylen);
    if (err == EDDY_OK && out) {
        int j = find_locked(r, name);
        if (!(*out = copy_of(r->list[j])))
            err = EDDY_ERR_NOMEM;
    }
    if (err != EDDY_OK && err != EDDY_ERR_NOMEM && !why[0])
        snprintf(why, whylen, "not saved: %s", eddy_strerror(err));
    return err;
}

/* Store 'e' (validated) as new (create) or over the existing one of its name. */
static eddy_err put(expreg *r, const Eddy__V1__Experiment *e, bool create, int64_t now,
                    Eddy__V1__Experiment **out, char *why, size_t whylen)
{
    if (out)
        *out = NULL;
    if (!experiment_valid(e, why, whylen))
        return EDDY_ERR_INVALID;
    Eddy__V1__Experiment *c = copy_of(e);
    if (!c)
        return EDDY_ERR_NOMEM;
    if (c->state == EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_UNSPECIFIED)
        c->state = EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_RUNNING;
    c->updated_ms = now;
    pthread_mutex_lock(&r->mu);
    int i = find_locked(r, c->name);
    eddy_err err = EDDY_OK;
    if (create && i >= 0) {
        snprintf(why, whylen, "name: experiment \"%s\" exists (update or stop it)", c->name);
        err = EDDY_ERR_CONFLICT;
    } else if (!create && i < 0) {
        snprintf(why, whylen, "name: no experiment \"%s\"", c->name);
        err = EDDY_ERR_NOT_FOUND;
    } else if (create && r->n >= EXPREG_MAX) {
        snprintf(why, whylen, "experiments: at most %d", EXPREG_MAX);
        err = EDDY_ERR_INVALID;
    }
    if (err != EDDY_OK) {
        pthread_mutex_unlock(&r->mu);
        eddy__v1__experiment__free_unpacked(c, NULL);
        return err;
    }
    c->created_ms = create ? now : r->list[i]->created_ms;
    err = commit_out_locked(r, create ? r->n : (size_t)i, c, out, why, whylen);
    pthread_mutex_unlock(&r->mu);
    return err;
}

eddy_err expreg_create(expreg *r, const Eddy__V1__Experiment *e, int64_t now,
                       Eddy__V1__Experiment **out, char *why, size_t whylen)
{
    return put(r, e, true, now, out, why, whylen);
}

eddy_err expreg_update(expreg *r, const Eddy__V1__Experiment *e, int64_t now,
                       Eddy__V1__Experiment **out, char *why, size_t whylen)
{
    return put(r, e, false, now, out, why, whylen);
}

/* The stop is made on the version the registry holds when it commits, under the mutex: a
 * copy read before it and committed after a newer version arrived (from etcd) would write
 * the older variants back over that change. */
eddy_err expreg_stop(expreg *r, const char *name, int64_t now, Eddy__V1__Experiment **out,
                     char *why, size_t whylen)
{
    eddy_err err = EDDY_OK;
    if (out)
        *out = NULL;
    pthread_mutex_lock(&r->mu);
    int i = name ? find_locked(r, name) : -1;
    Eddy__V1__Experiment *c = NULL;
    if (i < 0) {
        snprintf(why, whylen, "name: no experiment \"%s\"", name ? name : "");
        err = EDDY_ERR_NOT_FOUND;
    } else if (!(c = copy_of(r->list[i]))) {
        err = EDDY_ERR_NOMEM;
    }
    if (err == EDDY_OK) {
        c->state = EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_STOPPED;
        c->updated_ms = now;
        err = commit_out_locked(r, (size_t)i, c, out, why, whylen); /* takes c */
    }
    pthread_mutex_unlock(&r->mu);
    return err;
}

eddy_err expreg_get(expreg *r, const char *name, Eddy__V1__Experiment **out)
{
    eddy_err err = EDDY_OK;
    *out = NULL;
    pthread_mutex_lock(&r->mu);
    int i = name ? find_locked(r, name) : -1;
    if (i >= 0 && !(*out = copy_of(r->list[i])))
        err = EDDY_ERR_NOMEM;
    pthread_mutex_unlock(&r->mu);
    return err;
}

eddy_err expreg_list(expreg *r, Eddy__V1__ListExperimentsResponse **out)
{
    Eddy__V1__ListExperimentsResponse *l = malloc(sizeof(*l));
    eddy_err err = EDDY_ERR_NOMEM;
    *out = NULL;
    if (!l)
        return err;
    eddy__v1__list_experiments_response__init(l);
    pthread_mutex_lock(&r->mu);
    if ((l->experiments = calloc(r->n ? r->n : 1, sizeof(*l->experiments)))) {
        err = EDDY_OK;
        for (size_t i = 0; i < r->n && err == EDDY_OK; i++) {
            if ((l->experiments[i] = copy_of(r->list[i])))
                l->n_experiments++;
            else
                err = EDDY_ERR_NOMEM;
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (err != EDDY_OK) {
        eddy__v1__list_experiments_response__free_unpacked(l, NULL);
        return err;
    }
    *out = l;
    return EDDY_OK;
}

uint64_t expreg_serial(expreg *r)
{
    return atomic_fetch_add(&r->serial, 1);
}

bool expreg_choose(expreg *r, const char *user_id, const struct rec_params *base,
                   struct expreg_choice *out)
{
    struct experiment_variant v[EXPERIMENT_VARIANTS_MAX];
    bool found = false;
    if (!r)
        return false;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n && !found; i++) {
        const Eddy__V1__Experiment *e = r->list[i];
        if (e->state != EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_RUNNING)
            continue;
        size_t nv = e->n_variants < EXPERIMENT_VARIANTS_MAX ? e->n_variants
                                                            : EXPERIMENT_VARIANTS_MAX;
        for (size_t j = 0; j < nv; j++)
            v[j] = (struct experiment_variant){e->variants[j]->name, e->variants[j]->weight};
        int k = experiment_assign(e->name, user_id, v, nv);
        if (k < 0)
            continue;
        const Eddy__V1__Variant *var = e->variants[k];
        snprintf(out->experiment, sizeof(out->experiment), "%s", e->name);
        snprintf(out->variant, sizeof(out->variant), "%s", var->name);
        experiment_rec_params(base, var->params, &out->rec);
        out->exclude = var->params ? var->params->exclude : EDDY__V1__EXCLUSION__EXCLUSION_DEFAULT;
        out->max_recommendations = var->params ? var->params->max_recommendations : 0;
        out->click_window_ms = e->click_window_ms;
        out->purchase_window_ms = e->purchase_window_ms;
        found = true;
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}
