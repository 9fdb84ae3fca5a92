/* The leader loop: config, registry of nodes, assignment writes (see leader.h). */
#include "coordinator/leader.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/cluster.h"
#include "common/log.h"
#include "common/worker.h"
#include "coordinator/assigner.h"
#include "coordinator/planner.h"
#include "coordinator/registry.h"

/* A settle longer than this keeps being extended by a steady trickle of changes; past
 * settle * SETTLE_MAX_FACTOR the map is computed anyway. */
#define SETTLE_MAX_FACTOR 10
/* Lost compares in a row before backing off (another writer is racing us). */
#define CAS_RETRIES 5

struct leader {
    struct leader_opts o;
    etcd_session *session;
    char cluster[CLUSTER_ID_MAX], id[CLUSTER_ID_MAX];
    char k_config[CLUSTER_KEY_MAX], k_assign[CLUSTER_KEY_MAX], k_leader[CLUSTER_KEY_MAX];
    char k_nodes[CLUSTER_KEY_MAX], k_drain[CLUSTER_KEY_MAX], k_moves[CLUSTER_KEY_MAX];
    registry *reg;
    etcd_watch *w_nodes, *w_drain, *w_moves; /* the leader thread's; stopped by leader_stop */
    pthread_mutex_t moves_mu;      /* guards 'moves' (the watch thread writes it) */
    struct plan_rec *moves;        /* [nparts] the records under moves/ */
    atomic_uint_fast64_t moves_gen; /* bumped on every change of 'moves' */
    char k_isr[CLUSTER_KEY_MAX];
    etcd_watch *w_isr;
    pthread_mutex_t isr_mu;        /* guards 'isr' (the watch thread writes it) */
    struct cluster_isr *isr;       /* [nparts] the records under isr/ (nisr 0: none) */
    atomic_uint_fast64_t isr_gen;  /* bumped on every change of 'isr' */
    char k_load[CLUSTER_KEY_MAX];
    etcd_watch *w_load;
    pthread_mutex_t load_mu;       /* guards 'loads' (the watch thread writes it) */
    struct load_rec *loads;        /* the nodes' load records */
    size_t nloads;
    int64_t last_load_ms;          /* the leader thread's: when the last load move started */
    struct worker worker;   /* the leader thread; it sleeps on the registry, not on a kick */
    /* The leader thread's: */
    uint32_t nparts;
    struct cluster_map cur; /* the map as stored (or a fresh one when 'fresh') */
    int64_t cur_mod;        /* mod_revision of the stored map; 0: none stored */
    bool fresh;             /* 'cur' is not stored yet: write it even if nothing moved */
    bool fenced;            /* the leader key no longer holds our id: write nothing */
    struct assign_node *seen_nodes; /* the registry at the last reassign (NULL: none yet) */
    size_t nseen;
};

uint32_t leader_parse_config(const char *json, size_t len)
{
    struct cluster_config c;
    return cluster_config_from_json(json, len, &c) == EDDY_OK ? c.partitions : 0;
}

/* Sleep up to 'ms', waking early on stop (or on a registry change, which is harmless). */
static void pause_ms(leader *l, int64_t ms)
{
    registry_wait(l->reg, registry_generation(l->reg), ms);
}

/* --- setup ------------------------------------------------------------------------------ */

/* Write 'want' (this leader's R and M) over the config stored at mod_revision 'mod', only
 * while the leader key is ours and the record is unchanged; EDDY_ERR_CONFLICT otherwise
 * (setup fails, logs and runs again). */
static eddy_err update_config(leader *l, const struct cluster_config *want, int64_t mod)
{
    char *json = cluster_config_to_json(want);
    if (!json)
        return EDDY_ERR_NOMEM;
    struct etcd_txn t;
    etcd_txn_init(&t);
    etcd_txn_compare(&t, l->k_config, ETCD_CMP_MOD, ETCD_CMP_EQUAL, mod);
    etcd_txn_compare_value(&t, l->k_leader, ETCD_CMP_EQUAL, l->id, strlen(l->id));
    etcd_txn_put(&t, ETCD_ON_SUCCESS, l->k_config, json, strlen(json), 0);
    struct etcd_txn_result r;
    eddy_err err = etcd_txn(l->o.etcd, &t, &r);
    free(json);
    if (err != EDDY_OK)
        return err;
    if (!r.succeeded)
        err = EDDY_ERR_CONFLICT;
    etcd_txn_result_release(&r);
    return err;
}

static eddy_err ensure_config(leader *l)
{
    struct cluster_config want = {.partitions = l->o.partitions,
                                  .replication_factor = l->o.replication_factor,
                                  .min_insync = l->o.min_insync};
    char *json = cluster_config_to_json(&want);
    if (!json)
        return EDDY_ERR_NOMEM;
    bool created = false;
    struct etcd_kv cur;
    eddy_err err = etcd_txn_cas(l->o.etcd, l->k_config, 0, json, strlen(json), 0, &created, &cur);
    free(json);
    if (err != EDDY_OK)
        return err;
    struct cluster_config got;
    if (!cur.key || cluster_config_from_json(cur.value, cur.value_len, &got) != EDDY_OK) {
        log_error("msg=\"cluster config does not decode\" key=%s value=\"%.200s\"", l->k_config,
                  cur.value ? cur.value : "");
        etcd_kv_release(&cur);
        return EDDY_ERR_CORRUPT;
    }
    int64_t mod = cur.mod_revision;
    etcd_kv_release(&cur);
    if (created)
        log_info("msg=\"created cluster config\" cluster=%s partitions=%u replication_factor=%u "
                 "min_insync=%u",
                 l->cluster, got.partitions, got.replication_factor, got.min_insync);
    else if (got.partitions != l->o.partitions)
        log_warn("msg=\"cluster exists with another partition count; using the stored one\" "
                 "cluster=%s stored=%u flag=%u",
                 l->cluster, got.partitions, l->o.partitions);
    want.partitions = got.partitions;
    if (got.replication_factor != want.replication_factor || got.min_insync != want.min_insync) {
        err = update_config(l, &want, mod);
        if (err != EDDY_OK)
            return err;
        log_warn("msg=\"replication settings changed by this leader's flags\" cluster=%s "
                 "replication_factor=%u->%u min_insync=%u->%u",
                 l->cluster, got.replication_factor, want.replication_factor, got.min_insync,
                 want.min_insync);
    }
    l->nparts = got.partitions;
    return EDDY_OK;
}

/* Make 'kv' (the stored assignment, or NULL/keyless if absent) the current map. */
static eddy_err take_assignment(leader *l, const struct etcd_kv *kv)
{
    struct cluster_map m = {0};
    if (kv && kv->key) {
        eddy_err err = cluster_map_from_json(kv->value, kv->value_len, &m);
        if (err == EDDY_OK && m.nparts == l->nparts) {
            cluster_map_release(&l->cur);
            l->cur = m;
            l->cur_mod = kv->mod_revision;
            l->fresh = false;
            return EDDY_OK;
        }
        /* Replace what cannot be used; keep the version growing and the CAS target. */
        log_error("msg=\"stored assignment unusable; starting a new map\" key=%s err=\"%s\" "
                  "stored_partitions=%u partitions=%u",
                  l->k_assign, err == EDDY_OK ? "partition count differs" : eddy_strerror(err),
                  m.nparts, l->nparts);
        uint64_t version = m.version;
        cluster_map_release(&m);
        if (cluster_map_init(&m, l->nparts) != EDDY_OK)
            return EDDY_ERR_NOMEM;
        m.version = version;
        l->cur_mod = kv->mod_revision;
    } else {
        if (cluster_map_init(&m, l->nparts) != EDDY_OK)
            return EDDY_ERR_NOMEM;
        l->cur_mod = 0;
    }
    cluster_map_release(&l->cur);
    l->cur = m;
    l->fresh = true;
    return EDDY_OK;
}

static eddy_err load_assignment(leader *l)
{
    struct etcd_kv kv;
    bool found = false;
    eddy_err err = etcd_get(l->o.etcd, l->k_assign, &kv, &found);
    if (err != EDDY_OK)
        return err;
    err = take_assignment(l, found ? &kv : NULL);
    etcd_kv_release(&kv);
    return err;
}

/* The last part of 'key' under 'prefix', or NULL if the key is not directly under it. */
static const char *id_of(const char *key, const char *prefix)
{
    size_t n = strlen(prefix);
    if (!key || strncmp(key, prefix, n) != 0 || !key[n] || strchr(key + n, '/'))
        return NULL;
    return key + n;
}

/* Read every key under nodes/ or drain/ into the registry; '*rev' is the read revision. */
static eddy_err load_prefix(leader *l, bool nodes, int64_t *rev)
{
    const char *prefix = nodes ? l->k_nodes : l->k_drain;
    struct etcd_kvs kvs;
    eddy_err err = etcd_range_prefix(l->o.etcd, prefix, &kvs, rev);
    if (err != EDDY_OK)
        return err;
    if (nodes)
        registry_clear_nodes(l->reg);
    else
        registry_clear_drains(l->reg);
    for (size_t i = 0; i < kvs.n; i++) {
        const char *id = id_of(kvs.kvs[i].key, prefix);
        if (!id)
            continue;
        if (nodes)
            registry_node_put(l->reg, id, kvs.kvs[i].value, kvs.kvs[i].value_len);
        else
            registry_drain_put(l->reg, id);
    }
    etcd_kvs_release(&kvs);
    return EDDY_OK;
}

static int64_t on_event(leader *l, bool nodes, const struct etcd_event *ev)
{
    const char *prefix = nodes ? l->k_nodes : l->k_drain;
    if (ev->type == ETCD_EVENT_RESYNC) {
        log_warn("msg=\"watch history compacted; re-reading\" prefix=%s", prefix);
        int64_t rev = 0;
        while (!worker_stopping(&l->worker)) {
            if (load_prefix(l, nodes, &rev) == EDDY_OK)
                return rev + 1;
            log_warn("msg=\"re-read failed; retrying\" prefix=%s err=\"%s\"", prefix,
                     etcd_last_error(l->o.etcd));
            pause_ms(l, 200);
        }
        return 0;
    }
    const char *id = id_of(ev->kv.key, prefix);
    if (!id)
        return 0;
    if (nodes && ev->type == ETCD_EVENT_PUT)
        registry_node_put(l->reg, id, ev->kv.value, ev->kv.value_len);
    else if (nodes)
        registry_node_delete(l->reg, id);
    else if (ev->type == ETCD_EVENT_PUT)
        registry_drain_put(l->reg, id);
    else
        registry_drain_delete(l->reg, id);
    /* rare, and the start of every failover's clock: info */
    log_info("msg=\"%s %s\" id=%s revision=%lld", nodes ? "node" : "drain",
             ev->type == ETCD_EVENT_PUT ? "put" : "deleted", id, (long long)ev->revision);
    return 0;
}

static int64_t on_nodes(const struct etcd_event *ev, void *ud)
{
    return on_event(ud, true, ev);
}

static int64_t on_drain(const struct etcd_event *ev, void *ud)
{
    return on_event(ud, false, ev);
}

/* One node's load record: events/s of the partitions it owned when it measured, and the
 * durable log seq of those it followed (for promotions). */
struct load_rec {
    char id[CLUSTER_ID_MAX];
    size_t n;
    uint32_t *parts;
    double *rates;
    size_t nd;
    struct load_durable *durable;
};

struct load_durable {
    uint32_t part;
    uint64_t epoch;
    uint64_t seq;
};

static void load_rec_release(struct load_rec *r)
{
    free(r->parts);
    free(r->rates);
    free(r->durable);
    r->parts = NULL;
    r->rates = NULL;
    r->durable = NULL;
    r->n = r->nd = 0;
}

/* Parse "durable":[[p, epoch, seq], ...] into 'r'; a record without it (an older node)
 * has none. */
static bool load_parse_durable(const cJSON *o, uint32_t nparts, struct load_rec *r)
{
    const cJSON *dur = cJSON_GetObjectItemCaseSensitive(o, "durable");
    if (!dur)
        return true;
    if (!cJSON_IsArray(dur))
        return false;
    size_t n = (size_t)cJSON_GetArraySize(dur);
    r->durable = calloc(n ? n : 1, sizeof(*r->durable));
    if (!r->durable)
        return false;
    const cJSON *t;
    cJSON_ArrayForEach(t, dur)
    {
        const cJSON *pj = cJSON_GetArrayItem(t, 0), *ej = cJSON_GetArrayItem(t, 1),
                    *sj = cJSON_GetArrayItem(t, 2);
        if (!cJSON_IsNumber(pj) || !cJSON_IsNumber(ej) || !cJSON_IsNumber(sj) ||
            pj->valuedouble < 0 || pj->valuedouble >= nparts || !(ej->valuedouble >= 0) ||
            !(sj->valuedouble >= 0) || sj->valuedouble >= 9007199254740992.0 ||
            ej->valuedouble >= 9007199254740992.0)
            return false;
        r->durable[r->nd++] = (struct load_durable){(uint32_t)pj->valuedouble,
                                                    (uint64_t)ej->valuedouble,
                                                    (uint64_t)sj->valuedouble};
    }
    return true;
}

/* Parse {"node","rates":[[p, eps], ...],"durable":[[p, epoch, seq], ...]} into 'r' (id set by the caller). */
static bool load_parse(const char *json, size_t len, uint32_t nparts, struct load_rec *r)
{
    cJSON *o = cJSON_ParseWithLength(json, len);
    const cJSON *rates = cJSON_GetObjectItemCaseSensitive(o, "rates");
    size_t n = cJSON_IsArray(rates) ? (size_t)cJSON_GetArraySize(rates) : 0;
    bool ok = cJSON_IsArray(rates);
    r->parts = calloc(n ? n : 1, sizeof(*r->parts));
    r->rates = calloc(n ? n : 1, sizeof(*r->rates));
    r->n = 0;
    const cJSON *pair;
    cJSON_ArrayForEach(pair, rates)
    {
        const cJSON *pj = cJSON_GetArrayItem(pair, 0), *rj = cJSON_GetArrayItem(pair, 1);
        if (!r->parts || !r->rates || !cJSON_IsNumber(pj) || !cJSON_IsNumber(rj) ||
            pj->valuedouble < 0 || pj->valuedouble >= nparts || !(rj->valuedouble >= 0)) {
            ok = false;
            break;
        }
        r->parts[r->n] = (uint32_t)pj->valuedouble;
        r->rates[r->n++] = rj->valuedouble;
    }
    ok = ok && load_parse_durable(o, nparts, r);
    cJSON_Delete(o);
    if (!ok)
        load_rec_release(r);
    return ok;
}

/* Take one load/<id> record (PUT) or its deletion (the node's lease ended). */
static void load_event(leader *l, const struct etcd_kv *kv, bool put)
{
    const char *id = id_of(kv->key, l->k_load);
    if (!id || strlen(id) >= CLUSTER_ID_MAX)
        return;
    struct load_rec r = {{0}, 0, NULL, NULL, 0, NULL};
    snprintf(r.id, sizeof(r.id), "%s", id);
    if (put && !load_parse(kv->value, kv->value_len, l->nparts, &r)) {
        log_warn("msg=\"load record does not decode; ignored\" key=%s", kv->key);
        return;
    }
    pthread_mutex_lock(&l->load_mu);
    size_t i = 0;
    while (i < l->nloads && strcmp(l->loads[i].id, id) != 0)
        i++;
    if (i < l->nloads) {
        load_rec_release(&l->loads[i]);
        l->loads[i] = l->loads[--l->nloads];
    }
    struct load_rec *grown = put ? realloc(l->loads, (l->nloads + 1) * sizeof(*grown)) : NULL;
    if (grown) {
        l->loads = grown;
        l->loads[l->nloads++] = r;
    } else {
        load_rec_release(&r);
    }
    pthread_mutex_unlock(&l->load_mu);
}

static int64_t on_load(const struct etcd_event *ev, void *ud)
{
    leader *l = ud;
    if (ev->type == ETCD_EVENT_RESYNC) {
        log_warn("msg=\"load watch compacted; records refresh with the next publication\"");
        return 0;
    }
    load_event(l, &ev->kv, ev->type == ETCD_EVENT_PUT);
    return 0;
}

/* rates[p]: what the owner of p in 'map' last published (0 if nothing). */
static void load_rates(leader *l, const struct cluster_map *map, double *rates)
{
    memset(rates, 0, map->nparts * sizeof(*rates));
    pthread_mutex_lock(&l->load_mu);
    for (size_t i = 0; i < l->nloads; i++) {
        const struct load_rec *r = &l->loads[i];
        for (size_t k = 0; k < r->n; k++) {
            if (r->parts[k] < map->nparts && strcmp(map->parts[r->parts[k]].owner, r->id) == 0)
                rates[r->parts[k]] = r->rates[k];
        }
    }
    pthread_mutex_unlock(&l->load_mu);
}

/* durable[p * CLUSTER_REPLICAS_MAX + r]: the durable seq the follower map->parts[p].replicas[r]
 * last published for p at the map's epoch of p, else ASSIGNER_SEQ_UNKNOWN. */
static void load_durable(leader *l, const struct cluster_map *map, uint64_t *durable)
{
    for (size_t i = 0; i < (size_t)map->nparts * CLUSTER_REPLICAS_MAX; i++)
        durable[i] = ASSIGNER_SEQ_UNKNOWN;
    pthread_mutex_lock(&l->load_mu);
    for (size_t i = 0; i < l->nloads; i++) {
        const struct load_rec *r = &l->loads[i];
        for (size_t k = 0; k < r->nd; k++) {
            const struct load_durable *d = &r->durable[k];
            if (d->part >= map->nparts)
                continue;
            const struct cluster_part *part = &map->parts[d->part];
            for (uint32_t j = 1; j < part->nreplicas && j < CLUSTER_REPLICAS_MAX; j++) {
                if (part->epoch == d->epoch && strcmp(part->replicas[j], r->id) == 0)
                    durable[(size_t)d->part * CLUSTER_REPLICAS_MAX + j] = d->seq;
            }
        }
    }
    pthread_mutex_unlock(&l->load_mu);
}

/* Take one moves/<p> record (PUT) or its deletion. */
static void move_event(leader *l, const struct etcd_kv *kv, bool put)
{
    uint32_t p;
    if (!cluster_key_partition(kv->key, l->k_moves, l->nparts, &p))
        return;
    struct plan_rec r = {false, {0}, 0};
    if (put && cluster_move_from_json(kv->value, kv->value_len, &r.m) == EDDY_OK &&
        r.m.partition == p) {
        r.present = true;
        r.mod = kv->mod_revision;
    } else if (put) {
        log_warn("msg=\"move record does not decode; deleting it\" key=%s", kv->key);
        r.present = true; /* an undecodable record is cancelled by the planner */
        r.m.partition = (uint32_t)p;
        r.m.phase = MOVE_COPY;
        r.mod = kv->mod_revision;
    }
    pthread_mutex_lock(&l->moves_mu);
    l->moves[p] = r;
    pthread_mutex_unlock(&l->moves_mu);
}

static eddy_err load_moves(leader *l, int64_t *rev)
{
    struct etcd_kvs kvs;
    eddy_err err = etcd_range_prefix(l->o.etcd, l->k_moves, &kvs, rev);
    if (err != EDDY_OK)
        return err;
    pthread_mutex_lock(&l->moves_mu);
    memset(l->moves, 0, l->nparts * sizeof(*l->moves));
    pthread_mutex_unlock(&l->moves_mu);
    for (size_t i = 0; i < kvs.n; i++)
        move_event(l, &kvs.kvs[i], true);
    etcd_kvs_release(&kvs);
    atomic_fetch_add(&l->moves_gen, 1);
    return EDDY_OK;
}

static int64_t on_moves(const struct etcd_event *ev, void *ud)
{
    leader *l = ud;
    int64_t next = 0;
    if (ev->type == ETCD_EVENT_RESYNC) {
        int64_t rev = 0;
        while (!worker_stopping(&l->worker) && load_moves(l, &rev) != EDDY_OK)
            pause_ms(l, 200);
        next = rev + 1;
    } else {
        move_event(l, &ev->kv, ev->type == ETCD_EVENT_PUT);
        atomic_fetch_add(&l->moves_gen, 1);
    }
    registry_wake(l->reg);
    return next;
}

/* Take one isr/<p> record (PUT) or its deletion. A record that does not decode counts as
 * none (every replica in sync), with a warning. */
static void isr_event(leader *l, const struct etcd_kv *kv, bool put)
{
    uint32_t p;
    if (!cluster_key_partition(kv->key, l->k_isr, l->nparts, &p))
        return;
    struct cluster_isr r = {0};
    if (put && cluster_isr_from_json(kv->value, kv->value_len, &r) != EDDY_OK)
        log_warn("msg=\"isr record does not decode; ignored\" key=%s", kv->key);
    pthread_mutex_lock(&l->isr_mu);
    l->isr[p] = r;
    pthread_mutex_unlock(&l->isr_mu);
}

static eddy_err load_isr(leader *l, int64_t *rev)
{
    struct etcd_kvs kvs;
    eddy_err err = etcd_range_prefix(l->o.etcd, l->k_isr, &kvs, rev);
    if (err != EDDY_OK)
        return err;
    pthread_mutex_lock(&l->isr_mu);
    memset(l->isr, 0, l->nparts * sizeof(*l->isr));
    pthread_mutex_unlock(&l->isr_mu);
    for (size_t i = 0; i < kvs.n; i++)
        isr_event(l, &kvs.kvs[i], true);
    etcd_kvs_release(&kvs);
    atomic_fetch_add(&l->isr_gen, 1);
    return EDDY_OK;
}

static int64_t on_isr(const struct etcd_event *ev, void *ud)
{
    leader *l = ud;
    int64_t next = 0;
    if (ev->type == ETCD_EVENT_RESYNC) {
        int64_t rev = 0;
        while (!worker_stopping(&l->worker) && load_isr(l, &rev) != EDDY_OK)
            pause_ms(l, 200);
        next = rev + 1;
    } else {
        isr_event(l, &ev->kv, ev->type == ETCD_EVENT_PUT);
        atomic_fetch_add(&l->isr_gen, 1);
    }
    registry_wake(l->reg);
    return next;
}

static eddy_err setup(leader *l)
{
    eddy_err err = ensure_config(l);
    if (err == EDDY_OK)
        err = load_assignment(l);
    int64_t rn = 0, rd = 0, rm = 0;
    if (err == EDDY_OK)
        err = load_prefix(l, true, &rn);
    if (err == EDDY_OK)
        err = load_prefix(l, false, &rd);
    if (err == EDDY_OK && !l->moves && !(l->moves = calloc(l->nparts, sizeof(*l->moves))))
        err = EDDY_ERR_NOMEM;
    if (err == EDDY_OK)
        err = load_moves(l, &rm);
    if (err == EDDY_OK && !l->isr && !(l->isr = calloc(l->nparts, sizeof(*l->isr))))
        err = EDDY_ERR_NOMEM;
    int64_t ri = 0;
    if (err == EDDY_OK)
        err = load_isr(l, &ri);
    if (err != EDDY_OK)
        return err;
    l->w_nodes = etcd_watch_start(l->o.etcd, l->k_nodes, true, rn + 1, on_nodes, l);
    l->w_drain = etcd_watch_start(l->o.etcd, l->k_drain, true, rd + 1, on_drain, l);
    l->w_moves = etcd_watch_start(l->o.etcd, l->k_moves, true, rm + 1, on_moves, l);
    l->w_isr = etcd_watch_start(l->o.etcd, l->k_isr, true, ri + 1, on_isr, l);
    /* the load records as they are now, so that a new leader's first promotions know the
     * followers' durable seqs (an error only delays that to the next publication) */
    int64_t rl = 0;
    struct etcd_kvs loads;
    if (etcd_range_prefix(l->o.etcd, l->k_load, &loads, &rl) == EDDY_OK) {
        for (size_t i = 0; i < loads.n; i++)
            load_event(l, &loads.kvs[i], true);
        etcd_kvs_release(&loads);
    } else {
        rl = -1;
    }
    l->w_load = etcd_watch_start(l->o.etcd, l->k_load, true, rl + 1, on_load, l);
    if (!l->w_nodes || !l->w_drain || !l->w_moves || !l->w_load || !l->w_isr) {
        etcd_watch_stop(l->w_load);
        etcd_watch_stop(l->w_isr);
        l->w_load = l->w_isr = NULL;
        etcd_watch_stop(l->w_nodes);
        etcd_watch_stop(l->w_drain);
        etcd_watch_stop(l->w_moves);
        l->w_nodes = l->w_drain = l->w_moves = NULL;
        return EDDY_ERR_NOMEM;
    }
    log_info("msg=\"leading\" cluster=%s partitions=%u replication_factor=%u "
             "assignment_version=%llu nodes=%zu state_nodes=%zu drains=%zu",
             l->cluster, l->nparts, l->o.replication_factor, (unsigned long long)l->cur.version,
             registry_node_count(l->reg), registry_state_count(l->reg),
             registry_drain_count(l->reg));
    return EDDY_OK;
}

/* --- reassignment ----------------------------------------------------------------------- */

/* Write 'next' (version already bumped) if the stored map is still 'cur' and we still hold
 * the leader key. EDDY_ERR_CONFLICT: a compare failed ('cur' re-read, or 'fenced' set). */
static eddy_err write_map(leader *l, const struct cluster_map *next)
{
    char *json = cluster_map_to_json(next);
    if (!json)
        return EDDY_ERR_NOMEM;
    if (!etcd_session_alive(l->session)) {
        free(json);
        return EDDY_ERR_UNAVAILABLE; /* we may not be the leader any more: do not write */
    }
    struct etcd_txn t;
    etcd_txn_init(&t);
    etcd_txn_compare(&t, l->k_assign, ETCD_CMP_MOD, ETCD_CMP_EQUAL, l->cur_mod);
    etcd_txn_compare_value(&t, l->k_leader, ETCD_CMP_EQUAL, l->id, strlen(l->id));
    etcd_txn_put(&t, ETCD_ON_SUCCESS, l->k_assign, json, strlen(json), 0);
    etcd_txn_range(&t, ETCD_ON_FAILURE, l->k_assign, false);
    etcd_txn_range(&t, ETCD_ON_FAILURE, l->k_leader, false);
    struct etcd_txn_result r;
    eddy_err err = etcd_txn(l->o.etcd, &t, &r);
    free(json);
    if (err != EDDY_OK) {
        log_warn("msg=\"assignment write failed\" err=\"%s\"", etcd_last_error(l->o.etcd));
        return err;
    }
    if (r.succeeded) {
        l->cur_mod = r.revision;
        etcd_txn_result_release(&r);
        return EDDY_OK;
    }
    err = EDDY_ERR_CONFLICT;
    const struct etcd_kvs *a = r.n_ops == 2 ? &r.ops[0].kvs : NULL;
    const struct etcd_kvs *ld = r.n_ops == 2 ? &r.ops[1].kvs : NULL;
    if (!ld || ld->n == 0 || ld->kvs[0].value_len != strlen(l->id) ||
        memcmp(ld->kvs[0].value, l->id, ld->kvs[0].value_len) != 0) {
        log_warn("msg=\"leader key no longer ours; not writing the assignment\" id=%s "
                 "leader=%s",
                 l->id, ld && ld->n ? ld->kvs[0].value : "");
        l->fenced = true;
    } else {
        log_info("msg=\"assignment changed under us; re-reading\" expected_mod=%lld",
                 (long long)l->cur_mod);
        eddy_err e2 = take_assignment(l, a && a->n ? &a->kvs[0] : NULL);
        if (e2 != EDDY_OK)
            err = e2;
    }
    etcd_txn_result_release(&r);
    return err;
}

/* One move record write (create, delete, or the "flipped" phase), only while the leader
 * key is ours and the record is as the planner saw it. A lost compare is not an error:
 * the watch brings the new state and the next round plans again. */
static eddy_err move_write(leader *l, const struct plan_action *a)
{
    char key[CLUSTER_KEY_MAX], suffix[32];
    snprintf(suffix, sizeof(suffix), "moves/%u", a->m.partition);
    cluster_key(key, sizeof(key), l->cluster, suffix);
    char *json = a->op == PLAN_DELETE ? NULL : cluster_move_to_json(&a->m);
    if (a->op != PLAN_DELETE && !json)
        return EDDY_ERR_NOMEM;
    struct etcd_txn t;
    etcd_txn_init(&t);
    etcd_txn_compare(&t, key, ETCD_CMP_MOD, ETCD_CMP_EQUAL, a->op == PLAN_CREATE ? 0 : a->mod);
    etcd_txn_compare_value(&t, l->k_leader, ETCD_CMP_EQUAL, l->id, strlen(l->id));
    if (a->op == PLAN_DELETE)
        etcd_txn_delete(&t, ETCD_ON_SUCCESS, key, false);
    else
        etcd_txn_put(&t, ETCD_ON_SUCCESS, key, json, strlen(json), 0);
    struct etcd_txn_result r;
    eddy_err err = etcd_txn(l->o.etcd, &t, &r);
    free(json);
    if (err != EDDY_OK)
        return err;
    static const char *const ops[] = {"started", "ended", "flipped"};
    if (r.succeeded)
        log_info("msg=\"move %s\" partition=%u from=%s to=%s epoch=%llu phase=%s", ops[a->op],
                 a->m.partition, a->m.from, a->m.to, (unsigned long long)a->m.epoch,
                 cluster_move_phase_name(a->m.phase));
    etcd_txn_result_release(&r);
    return EDDY_OK;
}

static bool node_alive(const struct assign_node *nodes, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (nodes[i].state && strcmp(nodes[i].id, id) == 0)
            return true;
    }
    return false;
}

/* 'part' as it will be once a move to 'to' is done: 'to' leads, the others follow (the
 * assigner drops any above R or its shares). A move whose source is gone is not
 * projected: its partition fails over, by promotion when it can. */
static void project_move(struct cluster_part *part, const char *to)
{
    struct cluster_part was = *part;
    cluster_part_set_single(part, to);
    for (uint32_t r = 0; r < was.nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
        if (!cluster_part_has(part, was.replicas[r]) && part->nreplicas < CLUSTER_REPLICAS_MAX)
            snprintf(part->replicas[part->nreplicas++], CLUSTER_ID_MAX, "%s", was.replicas[r]);
    }
}

/* eddy_offline_partitions: partitions of the map whose leader is not a live state node
 * (nobody can write them until a follower is promoted or the node returns);
 * eddy_under_min_insync_partitions: partitions listed with fewer copies than min-insync
 * (R capped by the state nodes there are, a move's source listed alone) or whose
 * leader's last in-sync record names fewer live copies than it (their writes are
 * refused). */
static void report_health(leader *l, const struct assign_node *nodes, size_t n)
{
    uint32_t offline = 0, short_of_copies = 0;
    pthread_mutex_lock(&l->isr_mu);
    for (uint32_t p = 0; p < l->cur.nparts; p++) {
        const struct cluster_part *part = &l->cur.parts[p];
        if (!part->owner[0] || !node_alive(nodes, n, part->owner)) {
            offline++;
            continue;
        }
        const struct cluster_isr *r = &l->isr[p];
        uint32_t need = l->o.min_insync ? l->o.min_insync : 1;
        if (need < 2)
            continue; /* one copy acknowledges */
        if (part->nreplicas < need) {
            short_of_copies++; /* fewer copies listed than min-insync: never written */
            continue;
        }
        if (r->nisr == 0 || r->epoch != part->epoch)
            continue; /* no record of this epoch yet */
        uint32_t live = 0;
        for (uint32_t i = 0; i < r->nisr; i++)
            live += node_alive(nodes, n, r->isr[i]);
        short_of_copies += live < need;
    }
    pthread_mutex_unlock(&l->isr_mu);
    metric_gauge_set(l->o.offline, offline);
    metric_gauge_set(l->o.under_min_insync, short_of_copies);
}

static eddy_err reassign(leader *l)
{
    struct assign_node *nodes = NULL;
    size_t n = 0, nacts = 0;
    struct cluster_map target = {0}, next = {0};
    struct plan_rec *recs = calloc(l->nparts, sizeof(*recs));
    struct plan_action *acts = calloc(2 * (size_t)l->nparts, sizeof(*acts));
    eddy_err err = recs && acts ? registry_snapshot(l->reg, &nodes, &n, NULL) : EDDY_ERR_NOMEM;
    if (err != EDDY_OK)
        goto out;
    /* said here, on the nodes this map is made of, whichever way the loss was seen (at the
     * loop's check, in the settle, just after a settle for another change, or between the
     * loop's check and this snapshot: a map made for another reason) */
    if (l->seen_nodes && assigner_leader_lost(&l->cur, l->seen_nodes, l->nseen, nodes, n))
        log_info("msg=\"a partition leader is gone: map computed without settling\"");
    err = EDDY_ERR_NOMEM;
    if (cluster_map_init(&target, l->nparts) != EDDY_OK ||
        cluster_map_init(&next, l->nparts) != EDDY_OK)
        goto out;
    pthread_mutex_lock(&l->moves_mu);
    memcpy(recs, l->moves, l->nparts * sizeof(*recs));
    pthread_mutex_unlock(&l->moves_mu);
    /* The assigner sees the map as it will be once the moves in progress are done: a move
     * that completes before its partner (a load swap, or one of several) must not look
     * like an imbalance to correct. */
    struct cluster_map proj = {0};
    if (cluster_map_copy(&proj, &l->cur) != EDDY_OK) {
        err = EDDY_ERR_NOMEM;
        goto out;
    }
    for (uint32_t p = 0; p < l->nparts; p++) {
        const struct plan_rec *r = &recs[p];
        if (r->present && r->m.phase != MOVE_DONE && strcmp(proj.parts[p].owner, r->m.from) == 0 &&
            node_alive(nodes, n, r->m.from))
            project_move(&proj.parts[p], r->m.to);
    }
    struct cluster_isr *isr = calloc(l->nparts, sizeof(*isr));
    if (!isr) {
        cluster_map_release(&proj);
        err = EDDY_ERR_NOMEM;
        goto out;
    }
    pthread_mutex_lock(&l->isr_mu);
    memcpy(isr, l->isr, l->nparts * sizeof(*isr));
    pthread_mutex_unlock(&l->isr_mu);
    uint64_t *durable = calloc((size_t)l->nparts * CLUSTER_REPLICAS_MAX, sizeof(*durable));
    if (durable)
        load_durable(l, &proj, durable);
    struct assign_params ap = {.replication_factor = l->o.replication_factor, .isr = isr,
                               .unclean = l->o.unclean, .durable = durable};
    assigner_assign(nodes, n, &proj, &ap, &target);
    for (uint32_t p = 0; p < l->nparts; p++) {
        const struct cluster_part *was = &proj.parts[p];
        if (!was->owner[0] || node_alive(nodes, n, was->owner) ||
            strcmp(target.parts[p].owner, was->owner) == 0)
            continue;
        uint64_t seq = ASSIGNER_SEQ_UNKNOWN;
        for (uint32_t r = 1; durable && r < was->nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
            if (strcmp(was->replicas[r], target.parts[p].owner) == 0)
                seq = durable[(size_t)p * CLUSTER_REPLICAS_MAX + r];
        }
        char seqs[24] = "unknown";
        if (seq != ASSIGNER_SEQ_UNKNOWN)
            snprintf(seqs, sizeof(seqs), "%llu", (unsigned long long)seq);
        log_info("msg=\"leader gone; partition reassigned\" partition=%u from=%s to=%s "
                 "epoch=%llu durable_seq=%s",
                 p, was->owner, target.parts[p].owner, (unsigned long long)target.parts[p].epoch,
                 seqs);
    }
    free(durable);
    free(isr);
    cluster_map_release(&proj);
    double *rates = l->o.load_interval_ms > 0 ? calloc(l->nparts, sizeof(*rates)) : NULL;
    if (rates)
        load_rates(l, &l->cur, rates);
    int64_t now = clock_mono_ms();
    struct plan_params pp = {
        .max_moves = (size_t)(l->o.max_moves > 0 ? l->o.max_moves : 1),
        .move_timeout_ms = l->o.move_timeout_ms, .now_ms = clock_wall_ms(), .rates = rates,
        .load_imbalance = l->o.load_imbalance, .load_min_eps = l->o.load_min_eps,
        .load_due = now - l->last_load_ms >= l->o.load_interval_ms,
    };
    size_t moved = planner_plan(nodes, n, &l->cur, &target, recs, &pp, &next, acts, &nacts);
    free(rates);
    for (size_t i = 0; i < nacts; i++) {
        if (acts[i].load) {
            l->last_load_ms = now;
            log_info("msg=\"moving a partition for load balance\" partition=%u from=%s to=%s",
                     acts[i].m.partition, acts[i].m.from, acts[i].m.to);
        }
    }
    err = EDDY_OK;
    if (moved > 0 || l->fresh) {
        next.version = l->cur.version + 1;
        err = write_map(l, &next);
        if (err != EDDY_OK)
            goto out;
        size_t eligible = 0, unassigned = 0;
        for (size_t i = 0; i < n; i++)
            eligible += nodes[i].state && !nodes[i].draining;
        for (uint32_t p = 0; p < next.nparts; p++)
            unassigned += next.parts[p].owner[0] == '\0';
        log_info("msg=\"assignment written\" version=%llu moved=%zu partitions=%u nodes=%zu "
                 "eligible=%zu unassigned=%zu revision=%lld",
                 (unsigned long long)next.version, moved, next.nparts, n, eligible, unassigned,
                 (long long)l->cur_mod);
        if (eligible > 0 && eligible < l->o.min_insync)
            log_warn("msg=\"fewer eligible state nodes than min-insync: writes are refused "
                     "until more join (or run with a lower --min-insync-replicas)\" eligible=%zu "
                     "min_insync=%u",
                     eligible, l->o.min_insync);
        for (size_t i = 0; i < n; i++) {
            if (nodes[i].state)
                log_debug("msg=\"owner share\" node=%s partitions=%zu draining=%d",
                          nodes[i].id, assigner_count(&next, nodes[i].id), nodes[i].draining);
        }
        cluster_map_release(&l->cur);
        l->cur = next;
        next = (struct cluster_map){0};
        l->fresh = false;
    }
    /* the records after the map: "flipped" only once the map names the target */
    for (size_t i = 0; i < nacts && err == EDDY_OK; i++)
        err = move_write(l, &acts[i]);
    report_health(l, nodes, n);
    free(l->seen_nodes); /* what the next change is compared with (leader_lost) */
    l->seen_nodes = nodes;
    l->nseen = n;
    nodes = NULL;
out:
    cluster_map_release(&target);
    cluster_map_release(&next);
    free(nodes);
    free(recs);
    free(acts);
    return err;
}

/* Whether any move record exists (the loop then plans at least every second: timeouts). */
static bool moves_pending(leader *l)
{
    bool any = false;
    pthread_mutex_lock(&l->moves_mu);
    for (uint32_t p = 0; l->moves && p < l->nparts && !any; p++)
        any = l->moves[p].present;
    pthread_mutex_unlock(&l->moves_mu);
    return any;
}

/* Whether a node that leads partitions in the stored map is gone since the last reassign:
 * its partitions refuse writes until the next map, so that map is written without a
 * settle (a burst of changes after it just makes another map). */
static bool leader_lost(leader *l)
{
    struct assign_node *now = NULL;
    size_t n = 0;
    if (!l->seen_nodes || registry_snapshot(l->reg, &now, &n, NULL) != EDDY_OK)
        return false;
    bool lost = assigner_leader_lost(&l->cur, l->seen_nodes, l->nseen, now, n);
    free(now);
    return lost;
}

/* Wait until the registry has been quiet for settle_ms (bounded); returns its generation. */
static uint64_t settle(leader *l)
{
    int64_t start = clock_mono_ms(), cap = l->o.settle_ms * SETTLE_MAX_FACTOR;
    uint64_t g = registry_generation(l->reg);
    while (!worker_stopping(&l->worker) && l->o.settle_ms > 0) {
        uint64_t g2 = registry_wait(l->reg, g, l->o.settle_ms);
        if (g2 == g || clock_mono_ms() - start >= cap)
            return g2;
        g = g2;
        /* a leader lost during the wait (a load record's change began it) ends it */
        if (leader_lost(l))
            return g;
    }
    return g;
}

static void leader_main(struct worker *w, void *arg)
{
    leader *l = arg;
    int64_t backoff = 100;
    while (!worker_stopping(&l->worker)) {
        eddy_err err = setup(l);
        if (err == EDDY_OK)
            break;
        log_warn("msg=\"leader setup failed; retrying\" err=\"%s\" detail=\"%s\"",
                 eddy_strerror(err), etcd_last_error(l->o.etcd));
        pause_ms(l, backoff);
        backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
    }
    bool dirty = true, nodes_changed = true;
    int conflicts = 0;
    uint64_t seen = 0, mseen = 0, iseen = 0;
    backoff = 100;
    while (!worker_stopping(&l->worker) && !l->fenced) {
        if (!dirty) {
            uint64_t g = registry_wait(l->reg, seen, 1000);
            nodes_changed = g != seen;
            /* moves in progress (timeouts) and a due load check are looked at every second */
            dirty = nodes_changed || atomic_load(&l->moves_gen) != mseen ||
                    atomic_load(&l->isr_gen) != iseen || moves_pending(l) ||
                    (l->o.load_interval_ms > 0 &&
                     clock_mono_ms() - l->last_load_ms >= l->o.load_interval_ms);
            if (!dirty)
                continue;
        }
        /* also a leader lost while the last map was being made (dirty for another reason) */
        if ((nodes_changed || registry_generation(l->reg) != seen) && leader_lost(l))
            seen = registry_generation(l->reg);
        else if (nodes_changed) /* node changes come in bursts: wait for quiet */
            seen = settle(l);
        nodes_changed = false;
        mseen = atomic_load(&l->moves_gen);
        iseen = atomic_load(&l->isr_gen);
        if (worker_stopping(&l->worker))
            break;
        eddy_err err = reassign(l);
        if (err == EDDY_OK) {
            dirty = false;
            conflicts = 0;
            backoff = 100;
        } else if (err == EDDY_ERR_CONFLICT && ++conflicts < CAS_RETRIES) {
            /* re-read: compute again at once */
        } else {
            conflicts = 0;
            pause_ms(l, backoff);
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
        }
    }
}

leader *leader_start(const struct leader_opts *o, etcd_session *s)
{
    if (!o->etcd || !o->cluster || !o->id || o->partitions == 0 || o->settle_ms < 0 ||
        o->replication_factor < 1 || o->replication_factor > CLUSTER_REPLICAS_MAX ||
        o->min_insync < 1 || o->min_insync > o->replication_factor)
        return NULL;
    leader *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->o = *o;
    l->session = s;
    snprintf(l->cluster, sizeof(l->cluster), "%s", o->cluster);
    snprintf(l->id, sizeof(l->id), "%s", o->id);
    l->o.cluster = l->cluster;
    l->o.id = l->id;
    cluster_key(l->k_config, sizeof(l->k_config), o->cluster, "config");
    cluster_key(l->k_assign, sizeof(l->k_assign), o->cluster, "assignment");
    cluster_key(l->k_leader, sizeof(l->k_leader), o->cluster, "leader");
    cluster_key(l->k_nodes, sizeof(l->k_nodes), o->cluster, "nodes/");
    cluster_key(l->k_drain, sizeof(l->k_drain), o->cluster, "drain/");
    cluster_key(l->k_moves, sizeof(l->k_moves), o->cluster, "moves/");
    cluster_key(l->k_load, sizeof(l->k_load), o->cluster, "load/");
    cluster_key(l->k_isr, sizeof(l->k_isr), o->cluster, "isr/");
    pthread_mutex_init(&l->moves_mu, NULL);
    pthread_mutex_init(&l->isr_mu, NULL);
    pthread_mutex_init(&l->load_mu, NULL);
    l->last_load_ms = clock_mono_ms(); /* the first load move waits one interval of records */
    l->reg = registry_new();
    if (!l->reg || worker_start(&l->worker, "leader", leader_main, l) != EDDY_OK) {
        registry_free(l->reg);
        pthread_mutex_destroy(&l->moves_mu);
        pthread_mutex_destroy(&l->isr_mu);
        pthread_mutex_destroy(&l->load_mu);
        free(l);
        return NULL;
    }
    return l;
}

void leader_stop(leader *l)
{
    if (!l)
        return;
    worker_request_stop(&l->worker);
    registry_wake(l->reg);
    /* Join first: the thread may still be creating the watches. A RESYNC callback that is
     * retrying its range sees the stop and returns. */
    worker_stop(&l->worker);
    etcd_watch_stop(l->w_nodes);
    etcd_watch_stop(l->w_drain);
    etcd_watch_stop(l->w_moves);
    etcd_watch_stop(l->w_load);
    etcd_watch_stop(l->w_isr);
    cluster_map_release(&l->cur);
    free(l->seen_nodes);
    registry_free(l->reg);
    pthread_mutex_destroy(&l->moves_mu);
    pthread_mutex_destroy(&l->isr_mu);
    pthread_mutex_destroy(&l->load_mu);
    for (size_t i = 0; i < l->nloads; i++)
        load_rec_release(&l->loads[i]);
    free(l->loads);
    free(l->moves);
    free(l->isr);
    free(l);
}
