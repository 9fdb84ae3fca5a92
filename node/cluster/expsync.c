/* Experiments in etcd: the watch that feeds a node's registry and the saver of its admin
 * calls.
 *
 * DESIGN: the watch runs on its own thread (etcd_watch) so that no RPC thread waits on
 * etcd for Recommend: the registry is an in-memory copy, replaced whole after every event
 * (a few experiments, rare changes), and simply kept when etcd is gone. The saver runs on
 * the admin call's handler thread, under the registry's mutex, and blocks it for one etcd
 * round trip; that orders the node's own changes, and other nodes' are ordered by the
 * compare-and-swap. The keys' revisions are kept here, not in the registry, which knows
 * nothing of etcd. */
#include "node/cluster/expsync.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "node/state/experiment.h"

/* One key of the prefix as this node last saw it. */
struct known {
    char name[EXPERIMENT_NAME_MAX + 1];
    int64_t mod_revision;
    uint8_t *value; /* owned; the encoded Experiment */
    size_t len;
};

struct expsync {
    expreg *reg;          /* borrowed */
    etcd_client *_Atomic etcd; /* borrowed; NULL until started (the saver refuses) */
    etcd_watch *watch;
    char prefix[EXPSYNC_PREFIX_MAX];
    pthread_mutex_t mu;   /* guards keys/n */
    struct known *keys;   /* [EXPREG_MAX], by name */
    size_t n;
};

bool expsync_key(const char *cluster, const char *name, char *out, size_t len)
{
    int w = snprintf(out, len, "/eddy/%s/experiments/%s", cluster, name);
    return w > 0 && (size_t)w < len;
}

Eddy__V1__Experiment *expsync_decode(const char *name, const void *value, size_t len)
{
    char why[256];
    Eddy__V1__Experiment *e = eddy__v1__experiment__unpack(NULL, len, value);
    if (e && (strcmp(e->name, name) != 0 || !experiment_valid(e, why, sizeof(why)))) {
        eddy__v1__experiment__free_unpacked(e, NULL);
        e = NULL;
    }
    return e;
}

static struct known *find_locked(expsync *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->keys[i].name, name) == 0)
            return &s->keys[i];
    }
    return NULL;
}

static void forget_locked(expsync *s, const char *name)
{
    struct known *k = find_locked(s, name);
    if (!k)
        return;
    free(k->value);
    *k = s->keys[--s->n];
}

/* Remember 'name' at 'rev' unless a newer version is known (the watch and a saver may
 * report one write in either order). */
static eddy_err learn_locked(expsync *s, const char *name, int64_t rev, const void *v,
                             size_t len)
{
    struct known *k = find_locked(s, name);
    if (k && k->mod_revision >= rev)
        return EDDY_OK;
    if (!k && s->n >= EXPREG_MAX) {
        log_warn("msg=\"more experiments in etcd than a node keeps: ignored\" experiment=%s "
                 "max=%d", name, EXPREG_MAX);
        return EDDY_OK;
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return EDDY_ERR_NOMEM;
    memcpy(copy, v, len);
    if (!k) {
        k = &s->keys[s->n++];
        snprintf(k->name, sizeof(k->name), "%s", name);
    } else {
        free(k->value);
    }
    k->mod_revision = rev;
    k->value = copy;
    k->len = len;
    return EDDY_OK;
}

/* The name of 'key' under the prefix, or NULL if it is not a valid experiment's key. */
static const char *name_of(const expsync *s, const char *key)
{
    size_t pl = strlen(s->prefix);
    if (!key || strncmp(key, s->prefix, pl) != 0 || !experiment_name_valid(key + pl))
        return NULL;
    return key + pl;
}

/* Learn one key read or watched; a value that is not a valid experiment of its key's
 * name is left out (logged), as if absent. */
static eddy_err learn_kv_locked(expsync *s, const struct etcd_kv *kv)
{
    const char *name = name_of(s, kv->key);
    if (!name)
        return EDDY_OK;
    Eddy__V1__Experiment *e = expsync_decode(name, kv->value, kv->value_len);
    if (!e) {
        log_warn("msg=\"an experiment in etcd is not valid: ignored\" key=%s", kv->key);
        forget_locked(s, name);
        return EDDY_OK;
    }
    eddy__v1__experiment__free_unpacked(e, NULL);
    return learn_locked(s, name, kv->mod_revision, kv->value, kv->value_len);
}

/* Hand what is known to the registry (outside the mutex: the registry's comes first). */
static void publish(expsync *s)
{
    ProtobufCBinaryData defs[EXPREG_MAX];
    uint8_t *owned[EXPREG_MAX];
    size_t n = 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n; i++) {
        if (!(owned[n] = malloc(s->keys[i].len ? s->keys[i].len : 1)))
            continue; /* the next change publishes it again */
        memcpy(owned[n], s->keys[i].value, s->keys[i].len);
        defs[n] = (ProtobufCBinaryData){s->keys[i].len, owned[n]};
        n++;
    }
    pthread_mutex_unlock(&s->mu);
    if (expreg_replace(s->reg, defs, n) != EDDY_OK)
        log_warn("msg=\"experiments from etcd not applied (no memory): kept the last\"");
    for (size_t i = 0; i < n; i++)
        free(owned[i]);
}

/* Read the whole prefix into 'keys' (replacing them); '*rev' the revision read at. */
static eddy_err load(expsync *s, etcd_client *etcd, int64_t *rev)
{
    struct etcd_kvs kvs = {0};
    eddy_err err = etcd_range_prefix(etcd, s->prefix, &kvs, rev);
    if (err != EDDY_OK)
        return err;
    pthread_mutex_lock(&s->mu);
    while (s->n > 0)
        free(s->keys[--s->n].value);
    for (size_t i = 0; i < kvs.n && err == EDDY_OK; i++)
        err = learn_kv_locked(s, &kvs.kvs[i]);
    pthread_mutex_unlock(&s->mu);
    etcd_kvs_release(&kvs);
    return err;
}

static int64_t on_event(const struct etcd_event *ev, void *ud)
{
    expsync *s = ud;
    int64_t resume = 0;
    eddy_err err = EDDY_OK;
    if (ev->type == ETCD_EVENT_RESYNC) {
        int64_t rev = 0;
        if ((err = load(s, atomic_load(&s->etcd), &rev)) == EDDY_OK)
            resume = rev + 1;
    } else {
        const char *name = name_of(s, ev->kv.key);
        if (!name)
            return 0;
        pthread_mutex_lock(&s->mu);
        if (ev->type == ETCD_EVENT_PUT) {
            err = learn_kv_locked(s, &ev->kv);
        } else {
            struct known *k = find_locked(s, name);
            if (k && k->mod_revision < ev->kv.mod_revision)
                forget_locked(s, name);
        }
        pthread_mutex_unlock(&s->mu);
    }
    if (err != EDDY_OK)
        log_warn("msg=\"experiments from etcd not read: kept the last\" error=\"%s\"",
                 eddy_strerror(err));
    publish(s);
    return resume;
}

/* An admin call's change: the key written only if it is still what this node knows of
 * it (absent for a new experiment), and what it knows is the registry's 'prev'. */
static eddy_err save(void *ud, const Eddy__V1__Experiment *prev, const Eddy__V1__Experiment *next,
                     char *why, size_t whylen)
{
    expsync *s = ud;
    etcd_client *etcd = atomic_load(&s->etcd);
    char key[EXPSYNC_PREFIX_MAX + EXPERIMENT_NAME_MAX + 1];
    size_t len = eddy__v1__experiment__get_packed_size(next);
    uint8_t *buf = NULL, *was = NULL;
    struct etcd_kv cur = {0};
    bool written = false;
    eddy_err err = EDDY_ERR_UNAVAILABLE;
    if (!etcd) {
        snprintf(why, whylen, "this node has not joined its cluster yet (experiments are kept "
                              "in etcd); retry");
        return err;
    }
    snprintf(key, sizeof(key), "%s%s", s->prefix, next->name);
    size_t wlen = prev ? eddy__v1__experiment__get_packed_size(prev) : 0;
    if (!(buf = malloc(len ? len : 1)) || !(was = malloc(wlen ? wlen : 1))) {
        err = EDDY_ERR_NOMEM;
        goto out;
    }
    eddy__v1__experiment__pack(next, buf);
    if (prev)
        eddy__v1__experiment__pack(prev, was);
    pthread_mutex_lock(&s->mu);
    const struct known *k = find_locked(s, next->name);
    int64_t expect = k ? k->mod_revision : 0;
    /* the registry lags the keys by one publish at most: then the change is refused as
     * a concurrent one rather than made on a version the caller did not see */
    bool current = prev ? k && k->len == wlen && memcmp(k->value, was, wlen) == 0 : !k;
    pthread_mutex_unlock(&s->mu);
    if (!current) {
        err = EDDY_ERR_CONFLICT;
        goto lost;
    }
    err = etcd_txn_cas(etcd, key, expect, buf, len, 0, &written, &cur);
    if (err != EDDY_OK) {
        snprintf(why, whylen, "etcd unreachable (%s: %s): experiments cannot change now; "
                 "Recommend follows the definitions last read", eddy_strerror(err),
                 etcd_last_error(etcd));
        err = EDDY_ERR_UNAVAILABLE;
        goto out;
    }
    if (!written) {
        err = EDDY_ERR_CONFLICT;
        goto lost;
    }
    pthread_mutex_lock(&s->mu);
    err = learn_locked(s, next->name, cur.mod_revision, buf, len);
    pthread_mutex_unlock(&s->mu);
    goto out;
lost:
    if (prev)
        snprintf(why, whylen, "experiment \"%s\" was changed on another node meanwhile; "
                 "read it again and retry", next->name);
    else
        snprintf(why, whylen, "name: experiment \"%s\" exists (created on another node; "
                 "update or stop it)", next->name);
out:
    etcd_kv_release(&cur);
    free(buf);
    free(was);
    return err;
}

eddy_err expsync_new(expreg *reg, const char *cluster, expsync **out)
{
    expsync *s = calloc(1, sizeof(*s));
    *out = NULL;
    if (!s || !(s->keys = calloc(EXPREG_MAX, sizeof(*s->keys)))) {
        free(s);
        return EDDY_ERR_NOMEM;
    }
    if (!expsync_key(cluster, "", s->prefix, sizeof(s->prefix))) {
        free(s->keys);
        free(s);
        return EDDY_ERR_INVALID;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->reg = reg;
    expreg_set_saver(reg, save, s);
    *out = s;
    return EDDY_OK;
}

eddy_err expsync_start(expsync *s, etcd_client *etcd, char *why, size_t whylen)
{
    int64_t rev = 0;
    eddy_err err = load(s, etcd, &rev);
    if (err != EDDY_OK) {
        snprintf(why, whylen, "cannot read the experiments in etcd (%s: %s)", eddy_strerror(err),
                 etcd_last_error(etcd));
        return err;
    }
    publish(s);
    /* before the watch: its RESYNC re-reads through s->etcd */
    atomic_store(&s->etcd, etcd);
    if (!(s->watch = etcd_watch_start(etcd, s->prefix, true, rev + 1, on_event, s))) {
        snprintf(why, whylen, "cannot watch the experiments in etcd");
        atomic_store(&s->etcd, NULL);
        return EDDY_ERR_NOMEM;
    }
    return EDDY_OK;
}

void expsync_free(expsync *s)
{
    if (!s)
        return;
    etcd_watch_stop(s->watch);
    expreg_set_saver(s->reg, NULL, NULL);
    while (s->n > 0)
        free(s->keys[--s->n].value);
    free(s->keys);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
