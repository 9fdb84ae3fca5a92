/* Registration, session upkeep and the watched view of the cluster. */
#include "node/cluster/membership.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/etcd.h"
#include "common/log.h"
#include "common/worker.h"

#define MAX_NODES 1024

struct membership {
    struct membership_opts o;
    char self[CLUSTER_ID_MAX];
    char cluster[CLUSTER_ID_MAX];
    char node_key[CLUSTER_KEY_MAX];
    char *node_json;
    etcd_client *etcd;
    etcd_session *session;        /* maintenance thread replaces it; guarded by smu */
    pthread_mutex_t smu;
    etcd_watch *w_nodes, *w_map;

    pthread_rwlock_t lock;        /* guards everything below */
    pthread_cond_t changed;       /* with cmu */
    pthread_mutex_t cmu;
    uint32_t nparts;
    uint32_t min_insync;          /* from the config (1 for a cluster without replication) */
    struct cluster_map map;
    bool have_map;
    uint64_t version;             /* local change counter */
    struct cluster_node *nodes;   /* [nnodes] */
    size_t nnodes;

    struct worker maint;          /* registers again when the session is lost */
    bool fixed;                   /* membership_start_static: no etcd, the map never changes */
    bool stopping;                /* under cmu: ends membership_wait_change */
};

static void bump(membership *m)
{
    pthread_mutex_lock(&m->cmu);
    m->version++;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->cmu);
    if (m->o.on_change)
        m->o.on_change(m->o.change_ud, m);
}

/* ---- watched state --------------------------------------------------------------------- */

static void node_put(membership *m, const struct cluster_node *n)
{
    pthread_rwlock_wrlock(&m->lock);
    size_t i;
    for (i = 0; i < m->nnodes; i++) {
        if (strcmp(m->nodes[i].id, n->id) == 0)
            break;
    }
    if (i == m->nnodes && m->nnodes < MAX_NODES)
        m->nnodes++;
    if (i < MAX_NODES)
        m->nodes[i] = *n;
    pthread_rwlock_unlock(&m->lock);
}

static void node_del(membership *m, const char *id)
{
    pthread_rwlock_wrlock(&m->lock);
    for (size_t i = 0; i < m->nnodes; i++) {
        if (strcmp(m->nodes[i].id, id) == 0) {
            m->nodes[i] = m->nodes[--m->nnodes];
            break;
        }
    }
    pthread_rwlock_unlock(&m->lock);
}

static const char *key_tail(const char *key)
{
    const char *s = strrchr(key, '/');
    return s ? s + 1 : key;
}

static int64_t load_nodes(membership *m)
{
    char prefix[CLUSTER_KEY_MAX];
    struct etcd_kvs kvs = {0};
    int64_t rev = 0;
    cluster_key(prefix, sizeof(prefix), m->cluster, "nodes/");
    if (etcd_range_prefix(m->etcd, prefix, &kvs, &rev) != EDDY_OK)
        return 0;
    pthread_rwlock_wrlock(&m->lock);
    m->nnodes = 0;
    for (size_t i = 0; i < kvs.n && m->nnodes < MAX_NODES; i++) {
        if (cluster_node_from_json(kvs.kvs[i].value, kvs.kvs[i].value_len,
                                   &m->nodes[m->nnodes]) == EDDY_OK)
            m->nnodes++;
    }
    pthread_rwlock_unlock(&m->lock);
    etcd_kvs_release(&kvs);
    bump(m);
    return rev + 1;
}

static int64_t on_nodes(const struct etcd_event *ev, void *ud)
{
    membership *m = ud;
    if (ev->type == ETCD_EVENT_RESYNC)
        return load_nodes(m);
    if (ev->type == ETCD_EVENT_DELETE) {
        node_del(m, key_tail(ev->kv.key));
    } else {
        struct cluster_node n;
        if (cluster_node_from_json(ev->kv.value, ev->kv.value_len, &n) == EDDY_OK)
            node_put(m, &n);
    }
    bump(m);
    return 0;
}

static void map_set(membership *m, const char *json, size_t len)
{
    struct cluster_map next = {0};
    if (cluster_map_from_json(json, len, &next) != EDDY_OK) {
        log_error("msg=\"unreadable assignment in etcd\"");
        return;
    }
    if (next.nparts != m->nparts) {
        log_error("msg=\"assignment has %u partitions, cluster config says %u\"", next.nparts,
                  m->nparts);
        cluster_map_release(&next);
        return;
    }
    pthread_rwlock_wrlock(&m->lock);
    cluster_map_release(&m->map);
    m->map = next;
    m->have_map = true;
    uint64_t version = m->map.version;
    pthread_rwlock_unlock(&m->lock);
    bump(m);
    log_info("msg=\"assignment seen\" version=%llu", (unsigned long long)version);
}

static int64_t load_map(membership *m)
{
    char key[CLUSTER_KEY_MAX];
    struct etcd_kv kv = {0};
    bool found = false;
    cluster_key(key, sizeof(key), m->cluster, "assignment");
    if (etcd_get(m->etcd, key, &kv, &found) != EDDY_OK)
        return 0;
    int64_t rev = found ? kv.mod_revision : 0;
    if (found)
        map_set(m, kv.value, kv.value_len);
    etcd_kv_release(&kv);
    return rev + 1;
}

static int64_t on_map(const struct etcd_event *ev, void *ud)
{
    membership *m = ud;
    if (ev->type == ETCD_EVENT_RESYNC)
        return load_map(m);
    if (ev->type == ETCD_EVENT_PUT)
        map_set(m, ev->kv.value, ev->kv.value_len);
    return 0;
}

/* ---- session upkeep ---------------------------------------------------------------------- */

static eddy_err register_self(membership *m)
{
    etcd_session *s = etcd_session_new(m->etcd, m->o.lease_ttl_s, NULL, NULL);
    if (!s)
        return EDDY_ERR_UNAVAILABLE;
    eddy_err err = etcd_put(m->etcd, m->node_key, m->node_json, strlen(m->node_json),
                            etcd_session_lease(s), NULL);
    if (err != EDDY_OK) {
        etcd_session_free(s);
        return err;
    }
    pthread_mutex_lock(&m->smu);
    etcd_session *old = m->session;
    m->session = s;
    pthread_mutex_unlock(&m->smu);
    etcd_session_free(old);
    log_info("msg=\"registered\" node=%s lease=%lld", m->self, (long long)etcd_session_lease(s));
    return EDDY_OK;
}

static void maint_main(struct worker *w, void *arg)
{
    membership *m = arg;
    bool was_alive = false;
    while (worker_wait(w, 200)) {
        if (!membership_alive(m)) {
            if (was_alive)
                log_warn("msg=\"etcd session lost: not acknowledging writes; registering again\"");
            if (register_self(m) == EDDY_OK)
                bump(m);
        }
        bool alive = membership_alive(m);
        if (alive != was_alive && m->o.on_alive)
            m->o.on_alive(m->o.alive_ud, alive);
        was_alive = alive;
    }
}

/* ---- lifecycle ------------------------------------------------------------------------ */

/* Poll etcd through 'ec' for the cluster config until it exists or 'wait_ms' passes. */
static eddy_err read_config(etcd_client *ec, const char *cluster, int64_t wait_ms,
                            struct cluster_config *out, char *err, size_t errlen)
{
    char key[CLUSTER_KEY_MAX];
    cluster_key(key, sizeof(key), cluster, "config");
    int64_t until = clock_mono_ms() + wait_ms;
    for (;;) {
        struct etcd_kv kv = {0};
        bool found = false;
        eddy_err e = etcd_get(ec, key, &kv, &found);
        if (e == EDDY_OK && found) {
            e = cluster_config_from_json(kv.value, kv.value_len, out);
            etcd_kv_release(&kv);
            if (e != EDDY_OK) {
                snprintf(err, errlen, "cluster config %s has no valid partition count", key);
                return EDDY_ERR_CORRUPT;
            }
            return EDDY_OK;
        }
        if (clock_mono_ms() >= until) {
            snprintf(err, errlen, "no cluster config at %s (is eddy-coordinator running?): %s",
                     key, e == EDDY_OK ? "not created yet" : etcd_last_error(ec));
            return EDDY_ERR_TIMEOUT;
        }
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL); /* polling etcd while the coordinator creates the cluster */
    }
}

eddy_err membership_read_config(const struct membership_opts *o, int64_t wait_ms,
                                struct cluster_config *out, char *err, size_t errlen)
{
    etcd_client *ec = etcd_client_new_secure(o->etcd, o->etcd_timeout_ms, o->etcd_sec);
    if (!ec) {
        snprintf(err, errlen, "cannot create the etcd client for '%s'", o->etcd);
        return EDDY_ERR_NOMEM;
    }
    eddy_err e = read_config(ec, o->cluster, wait_ms, out, err, errlen);
    etcd_client_free(ec);
    return e;
}

/* What both kinds of membership start with: the node itself (its record in m->node_json
 * and *me), the locks, no view yet. NULL on allocation failure. */
static membership *membership_new(const struct membership_opts *o, struct cluster_node *me)
{
    membership *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->o = *o;
    snprintf(m->self, sizeof(m->self), "%s", o->node_id);
    snprintf(m->cluster, sizeof(m->cluster), "%s", o->cluster);
    pthread_rwlock_init(&m->lock, NULL);
    pthread_mutex_init(&m->smu, NULL);
    pthread_mutex_init(&m->cmu, NULL);
    clock_cond_init(&m->changed);
    m->nodes = calloc(MAX_NODES, sizeof(*m->nodes));
    memset(me, 0, sizeof(*me));
    snprintf(me->id, sizeof(me->id), "%s", o->node_id);
    me->roles = o->roles;
    snprintf(me->grpc_addr, sizeof(me->grpc_addr), "%s", o->grpc_addr);
    snprintf(me->metrics_addr, sizeof(me->metrics_addr), "%s",
             o->metrics_addr ? o->metrics_addr : "");
    snprintf(me->zone, sizeof(me->zone), "%s", o->zone ? o->zone : "");
    me->started_ms = clock_wall_ms();
    m->node_json = cluster_node_to_json(me);
    if (!m->nodes || !m->node_json) {
        membership_stop(m);
        return NULL;
    }
    return m;
}

eddy_err membership_start_static(const struct membership_opts *o, uint32_t partitions,
                                 membership **out)
{
    struct cluster_node me;
    membership *m = membership_new(o, &me);
    if (!m || cluster_map_init(&m->map, partitions) != EDDY_OK) {
        membership_stop(m);
        return EDDY_ERR_NOMEM;
    }
    m->fixed = true;
    m->nparts = partitions;
    m->min_insync = 1;
    for (uint32_t p = 0; p < partitions; p++) {
        cluster_part_set_single(&m->map.parts[p], m->self);
        m->map.parts[p].epoch = 1;
    }
    m->map.version = 1;
    m->nodes[0] = me;
    m->nnodes = 1;
    m->have_map = true;
    *out = m;
    bump(m); /* the first view, as a cluster member gets it from its watches */
    return EDDY_OK;
}

eddy_err membership_start(const struct membership_opts *o, int64_t wait_ms, membership **out,
                          char *err, size_t errlen)
{
    struct cluster_node me;
    membership *m = membership_new(o, &me);
    if (!m)
        return EDDY_ERR_NOMEM;
    char suffix[CLUSTER_KEY_MAX];
    snprintf(suffix, sizeof(suffix), "nodes/%s", o->node_id);
    cluster_key(m->node_key, sizeof(m->node_key), o->cluster, suffix);
    m->etcd = etcd_client_new_secure(o->etcd, o->etcd_timeout_ms, o->etcd_sec);
    eddy_err e = EDDY_ERR_NOMEM;
    if (!m->etcd) {
        snprintf(err, errlen, "cannot create the etcd client for '%s'", o->etcd);
        goto fail;
    }
    struct cluster_config cc;
    if ((e = read_config(m->etcd, m->cluster, wait_ms, &cc, err, errlen)) != EDDY_OK)
        goto fail;
    m->nparts = cc.partitions;
    m->min_insync = cc.min_insync;
    if (cluster_map_init(&m->map, m->nparts) != EDDY_OK)
        goto fail;
    if ((e = register_self(m)) != EDDY_OK) {
        snprintf(err, errlen, "cannot register in etcd: %s", etcd_last_error(m->etcd));
        goto fail;
    }
    char prefix[CLUSTER_KEY_MAX], mapkey[CLUSTER_KEY_MAX];
    cluster_key(prefix, sizeof(prefix), o->cluster, "nodes/");
    cluster_key(mapkey, sizeof(mapkey), o->cluster, "assignment");
    int64_t rn = load_nodes(m), rm = load_map(m);
    m->w_nodes = etcd_watch_start(m->etcd, prefix, true, rn, on_nodes, m);
    m->w_map = etcd_watch_start(m->etcd, mapkey, false, rm, on_map, m);
    if (!m->w_nodes || !m->w_map ||
        worker_start(&m->maint, "membership", maint_main, m) != EDDY_OK) {
        e = EDDY_ERR_NOMEM;
        goto fail;
    }
    *out = m;
    return EDDY_OK;
fail:
    etcd_watch_stop(m->w_nodes);
    etcd_watch_stop(m->w_map);
    etcd_session_free(m->session);
    etcd_client_free(m->etcd);
    cluster_map_release(&m->map);
    free(m->nodes);
    free(m->node_json);
    free(m);
    return e;
}

void membership_stop(membership *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->cmu);
    m->stopping = true;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->cmu);
    worker_stop(&m->maint);
    etcd_watch_stop(m->w_nodes);
    etcd_watch_stop(m->w_map);
    etcd_session_free(m->session); /* revokes the lease: our registration disappears */
    etcd_client_free(m->etcd);
    cluster_map_release(&m->map);
    free(m->nodes);
    free(m->node_json);
    pthread_rwlock_destroy(&m->lock);
    pthread_mutex_destroy(&m->smu);
    pthread_mutex_destroy(&m->cmu);
    pthread_cond_destroy(&m->changed);
    free(m);
}

uint32_t membership_partitions(const membership *m)
{
    return m->nparts;
}

const char *membership_self(const membership *m)
{
    return m->self;
}

int64_t membership_lease(membership *m)
{
    pthread_mutex_lock(&m->smu);
    int64_t lease = m->session ? etcd_session_lease(m->session) : 0;
    pthread_mutex_unlock(&m->smu);
    return lease;
}

bool membership_alive(membership *m)
{
    if (m->fixed)
        return true; /* no lease to lose: nobody else can be given its partitions */
    pthread_mutex_lock(&m->smu);
    bool alive = m->session && etcd_session_alive(m->session);
    pthread_mutex_unlock(&m->smu);
    return alive;
}

static bool addr_locked(membership *m, const char *id, char addr[CLUSTER_ADDR_MAX])
{
    for (size_t i = 0; i < m->nnodes; i++) {
        if (strcmp(m->nodes[i].id, id) == 0) {
            snprintf(addr, CLUSTER_ADDR_MAX, "%s", m->nodes[i].grpc_addr);
            return true;
        }
    }
    addr[0] = '\0';
    return false;
}

bool membership_owner(membership *m, uint32_t p, char owner[CLUSTER_ID_MAX], uint64_t *epoch,
                      char addr[CLUSTER_ADDR_MAX])
{
    bool ok = false;
    pthread_rwlock_rdlock(&m->lock);
    owner[0] = '\0';
    addr[0] = '\0';
    *epoch = 0;
    if (m->have_map && p < m->map.nparts && m->map.parts[p].owner[0]) {
        snprintf(owner, CLUSTER_ID_MAX, "%s", m->map.parts[p].owner);
        *epoch = m->map.parts[p].epoch;
        ok = addr_locked(m, owner, addr);
    }
    pthread_rwlock_unlock(&m->lock);
    return ok;
}

bool membership_part(membership *m, uint32_t p, struct cluster_part *out)
{
    pthread_rwlock_rdlock(&m->lock);
    bool ok = m->have_map && p < m->map.nparts;
    if (ok)
        *out = m->map.parts[p];
    else
        memset(out, 0, sizeof(*out));
    pthread_rwlock_unlock(&m->lock);
    return ok;
}

uint32_t membership_min_insync(const membership *m)
{
    return m->min_insync ? m->min_insync : 1;
}

bool membership_owns(membership *m, uint32_t p, uint64_t *epoch)
{
    pthread_rwlock_rdlock(&m->lock);
    bool own = m->have_map && p < m->map.nparts && strcmp(m->map.parts[p].owner, m->self) == 0;
    *epoch = own ? m->map.parts[p].epoch : 0;
    pthread_rwlock_unlock(&m->lock);
    return own;
}

uint32_t membership_owned_count(membership *m)
{
    uint32_t n = 0;
    pthread_rwlock_rdlock(&m->lock);
    for (uint32_t p = 0; m->have_map && p < m->map.nparts; p++)
        n += strcmp(m->map.parts[p].owner, m->self) == 0;
    pthread_rwlock_unlock(&m->lock);
    return n;
}

uint64_t membership_version(membership *m)
{
    pthread_mutex_lock(&m->cmu);
    uint64_t v = m->version;
    pthread_mutex_unlock(&m->cmu);
    return v;
}

void membership_wait_change(membership *m, uint64_t version, int64_t timeout_ms)
{
    struct timespec dl = clock_mono_after(timeout_ms);
    pthread_mutex_lock(&m->cmu);
    while (m->version == version && !m->stopping) {
        if (pthread_cond_timedwait(&m->changed, &m->cmu, &dl) != 0)
            break;
    }
    pthread_mutex_unlock(&m->cmu);
}

size_t membership_state_nodes(membership *m, struct cluster_node *out, size_t max)
{
    size_t k = 0;
    pthread_rwlock_rdlock(&m->lock);
    for (size_t i = 0; i < m->nnodes && k < max; i++) {
        if (m->nodes[i].roles & ROLE_STATE)
            out[k++] = m->nodes[i];
    }
    pthread_rwlock_unlock(&m->lock);
    return k;
}

bool membership_addr(membership *m, const char *id, char addr[CLUSTER_ADDR_MAX])
{
    pthread_rwlock_rdlock(&m->lock);
    bool ok = addr_locked(m, id, addr);
    pthread_rwlock_unlock(&m->lock);
    return ok;
}

etcd_client *membership_etcd(membership *m)
{
    return m->etcd;
}
