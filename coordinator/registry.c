/* The coordinator's table of live nodes and drain requests (see registry.h). */
#include "coordinator/registry.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"

struct reg_node {
    char id[CLUSTER_ID_MAX];
    unsigned roles;
    char zone[CLUSTER_ZONE_MAX];
};

struct registry {
    pthread_mutex_t mu;
    pthread_cond_t cv;         /* generation changed, or woken */
    uint64_t gen;
    uint64_t wakes;            /* bumped by registry_wake */
    struct reg_node *nodes;    /* [nnodes], unordered */
    size_t nnodes, capnodes;
    char (*drains)[CLUSTER_ID_MAX]; /* [ndrains], unordered */
    size_t ndrains, capdrains;
};

registry *registry_new(void)
{
    registry *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int e1 = pthread_mutex_init(&r->mu, NULL);
    int e2 = pthread_cond_init(&r->cv, &a);
    pthread_condattr_destroy(&a);
    if (e1 || e2) {
        if (!e1)
            pthread_mutex_destroy(&r->mu);
        if (!e2)
            pthread_cond_destroy(&r->cv);
        free(r);
        return NULL;
    }
    return r;
}

void registry_free(registry *r)
{
    if (!r)
        return;
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r->nodes);
    free(r->drains);
    free(r);
}

/* Called with the lock held. */
static void bump(registry *r)
{
    r->gen++;
    pthread_cond_broadcast(&r->cv);
}

static struct reg_node *find_node(registry *r, const char *id)
{
    for (size_t i = 0; i < r->nnodes; i++) {
        if (strcmp(r->nodes[i].id, id) == 0)
            return &r->nodes[i];
    }
    return NULL;
}

static size_t find_drain(registry *r, const char *id)
{
    for (size_t i = 0; i < r->ndrains; i++) {
        if (strcmp(r->drains[i], id) == 0)
            return i;
    }
    return SIZE_MAX;
}

void registry_clear_nodes(registry *r)
{
    pthread_mutex_lock(&r->mu);
    if (r->nnodes) {
        r->nnodes = 0;
        bump(r);
    }
    pthread_mutex_unlock(&r->mu);
}

void registry_clear_drains(registry *r)
{
    pthread_mutex_lock(&r->mu);
    if (r->ndrains) {
        r->ndrains = 0;
        bump(r);
    }
    pthread_mutex_unlock(&r->mu);
}

/* Remove nodes[i] (lock held); bumps only if the node mattered to the assigner. The
 * draining flag of a node that is not a state node changes nothing either. */
static void drop_node(registry *r, struct reg_node *n)
{
    bool state = (n->roles & ROLE_STATE) != 0;
    *n = r->nodes[--r->nnodes];
    if (state)
        bump(r);
}

eddy_err registry_node_put(registry *r, const char *id, const char *json, size_t len)
{
    if (!id || !*id || strlen(id) >= CLUSTER_ID_MAX)
        return EDDY_ERR_INVALID;
    struct cluster_node rec;
    eddy_err err = cluster_node_from_json(json, len, &rec);
    if (err == EDDY_OK && strcmp(rec.id, id) != 0)
        err = EDDY_ERR_CORRUPT;
    pthread_mutex_lock(&r->mu);
    struct reg_node *n = find_node(r, id);
    if (err != EDDY_OK) {
        if (n)
            drop_node(r, n);
        pthread_mutex_unlock(&r->mu);
        log_warn("msg=\"ignoring a node record that does not decode\" id=%s", id);
        return err;
    }
    if (n) {
        if (((n->roles ^ rec.roles) & ROLE_STATE) ||
            ((rec.roles & ROLE_STATE) && strcmp(n->zone, rec.zone) != 0))
            bump(r);
        n->roles = rec.roles;
        memcpy(n->zone, rec.zone, sizeof(n->zone));
        pthread_mutex_unlock(&r->mu);
        return EDDY_OK;
    }
    if (r->nnodes == REGISTRY_MAX) {
        pthread_mutex_unlock(&r->mu);
        log_warn("msg=\"too many nodes: ignoring one\" id=%s max=%d", id, REGISTRY_MAX);
        return EDDY_ERR_FULL;
    }
    if (r->nnodes == r->capnodes) {
        size_t cap = r->capnodes ? r->capnodes * 2 : 16;
        struct reg_node *p = realloc(r->nodes, cap * sizeof(*p));
        if (!p) {
            pthread_mutex_unlock(&r->mu);
            return EDDY_ERR_NOMEM;
        }
        r->nodes = p;
        r->capnodes = cap;
    }
    n = &r->nodes[r->nnodes++];
    memcpy(n->id, rec.id, sizeof(n->id));
    n->roles = rec.roles;
    memcpy(n->zone, rec.zone, sizeof(n->zone));
    if (n->roles & ROLE_STATE)
        bump(r);
    pthread_mutex_unlock(&r->mu);
    return EDDY_OK;
}

void registry_node_delete(registry *r, const char *id)
{
    pthread_mutex_lock(&r->mu);
    struct reg_node *n = find_node(r, id);
    if (n)
        drop_node(r, n);
    pthread_mutex_unlock(&r->mu);
}

eddy_err registry_drain_put(registry *r, const char *id)
{
    if (!id || !*id || strlen(id) >= CLUSTER_ID_MAX)
        return EDDY_ERR_INVALID;
    eddy_err err = EDDY_OK;
    pthread_mutex_lock(&r->mu);
    if (find_drain(r, id) != SIZE_MAX)
        goto out;
    if (r->ndrains == REGISTRY_MAX) {
        err = EDDY_ERR_FULL;
        goto out;
    }
    if (r->ndrains == r->capdrains) {
        size_t cap = r->capdrains ? r->capdrains * 2 : 8;
        char(*p)[CLUSTER_ID_MAX] = realloc(r->drains, cap * sizeof(*p));
        if (!p) {
            err = EDDY_ERR_NOMEM;
            goto out;
        }
        r->drains = p;
        r->capdrains = cap;
    }
    memcpy(r->drains[r->ndrains], id, strlen(id) + 1);
    r->ndrains++;
    struct reg_node *n = find_node(r, id);
    if (n && (n->roles & ROLE_STATE))
        bump(r);
out:
    pthread_mutex_unlock(&r->mu);
    return err;
}

void registry_drain_delete(registry *r, const char *id)
{
    pthread_mutex_lock(&r->mu);
    size_t i = find_drain(r, id);
    if (i != SIZE_MAX) {
        if (i != r->ndrains - 1)
            memcpy(r->drains[i], r->drains[r->ndrains - 1], sizeof(r->drains[i]));
        r->ndrains--;
        struct reg_node *n = find_node(r, id);
        if (n && (n->roles & ROLE_STATE))
            bump(r);
    }
    pthread_mutex_unlock(&r->mu);
}

uint64_t registry_generation(registry *r)
{
    pthread_mutex_lock(&r->mu);
    uint64_t g = r->gen;
    pthread_mutex_unlock(&r->mu);
    return g;
}

uint64_t registry_wait(registry *r, uint64_t seen, int64_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms < 0)
        timeout_ms = 0;
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    uint64_t wakes = r->wakes;
    while (r->gen == seen && r->wakes == wakes) {
        if (pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0)
            break;
    }
    uint64_t g = r->gen;
    pthread_mutex_unlock(&r->mu);
    return g;
}

void registry_wake(registry *r)
{
    pthread_mutex_lock(&r->mu);
    r->wakes++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static int cmp_assign(const void *a, const void *b)
{
    return strcmp(((const struct assign_node *)a)->id, ((const struct assign_node *)b)->id);
}

eddy_err registry_snapshot(registry *r, struct assign_node **out, size_t *n, uint64_t *gen)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&r->mu);
    struct assign_node *a = NULL;
    if (r->nnodes) {
        a = calloc(r->nnodes, sizeof(*a));
        if (!a) {
            pthread_mutex_unlock(&r->mu);
            return EDDY_ERR_NOMEM;
        }
    }
    for (size_t i = 0; i < r->nnodes; i++) {
        memcpy(a[i].id, r->nodes[i].id, sizeof(a[i].id));
        a[i].state = (r->nodes[i].roles & ROLE_STATE) != 0;
        a[i].draining = find_drain(r, r->nodes[i].id) != SIZE_MAX;
        memcpy(a[i].zone, r->nodes[i].zone, sizeof(a[i].zone));
    }
    *n = r->nnodes;
    if (gen)
        *gen = r->gen;
    pthread_mutex_unlock(&r->mu);
    if (a)
        qsort(a, *n, sizeof(*a), cmp_assign);
    *out = a;
    return EDDY_OK;
}

size_t registry_node_count(registry *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->nnodes;
    pthread_mutex_unlock(&r->mu);
    return n;
}

size_t registry_state_count(registry *r)
{
    pthread_mutex_lock(&r->mu);
    size_t k = 0;
    for (size_t i = 0; i < r->nnodes; i++)
        k += (r->nodes[i].roles & ROLE_STATE) != 0;
    pthread_mutex_unlock(&r->mu);
    return k;
}

size_t registry_drain_count(registry *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->ndrains;
    pthread_mutex_unlock(&r->mu);
    return n;
}
