/* ClusterStatus: read the cluster's keys in one txn and describe them (see status.h). */
#include "coordinator/status.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/cluster.h"
#include "common/log.h"
#include "coordinator/assigner.h"
#include "coordinator/leader.h"

struct status_mem {
    struct cluster_map map;
    struct cluster_node *recs;
    Eddy__Cluster__V1__Node *nodes;
    Eddy__Cluster__V1__Node **node_ptrs;
    char *(*roles)[2];
    Eddy__Cluster__V1__Partition *parts;
    Eddy__Cluster__V1__Partition **part_ptrs;
    char **drains;
    char (*ckpt_nodes)[CLUSTER_ID_MAX]; /* [nparts] */
    char **replica_ptrs;                  /* [nparts * CLUSTER_REPLICAS_MAX] into 'map' */
    struct cluster_isr *isr;              /* [nparts] */
    char **isr_ptrs;                      /* [nparts * CLUSTER_REPLICAS_MAX] into 'isr' */
    char **promoted_ptrs;                 /* [nparts * CLUSTER_REPLICAS_MAX] into 'isr' */
    struct cluster_move *moves;           /* [n] */
    Eddy__Cluster__V1__Move *move_msgs;   /* [n] */
    Eddy__Cluster__V1__Move **move_ptrs;  /* [n] */
    char *strings; /* cluster, leader id, answered_by, drain ids: one block */
};

static char ROLE_INGEST_NAME[] = "ingest";
static char ROLE_STATE_NAME[] = "state";

/* The last part of 'key' under 'prefix', or NULL. */
static const char *id_of(const char *key, const char *prefix)
{
    size_t n = strlen(prefix);
    if (!key || strncmp(key, prefix, n) != 0 || !key[n] || strchr(key + n, '/'))
        return NULL;
    return key + n;
}

static bool in_list(char **list, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i], id) == 0)
            return true;
    }
    return false;
}

void status_release(struct status_reply *r)
{
    struct status_mem *m = r->mem;
    if (!m)
        return;
    cluster_map_release(&m->map);
    free(m->recs);
    free(m->nodes);
    free(m->node_ptrs);
    free(m->roles);
    free(m->parts);
    free(m->part_ptrs);
    free(m->drains);
    free(m->ckpt_nodes);
    free(m->replica_ptrs);
    free(m->isr);
    free(m->isr_ptrs);
    free(m->promoted_ptrs);
    free(m->moves);
    free(m->move_msgs);
    free(m->move_ptrs);
    free(m->strings);
    free(m);
    r->mem = NULL;
}

/* Fill the checkpoint fields of the partitions from the checkpoints/ records (records that
 * do not decode or name no partition of the map are skipped). */
static void add_checkpoints(const struct status_snapshot *snap, struct status_mem *m)
{
    char prefix[CLUSTER_KEY_MAX];
    cluster_key(prefix, sizeof(prefix), snap->cluster, "checkpoints/");
    struct cluster_checkpoint *rec = malloc(sizeof(*rec));
    if (!rec)
        return;
    for (size_t i = 0; snap->checkpoints && i < snap->checkpoints->n; i++) {
        const struct etcd_kv *kv = &snap->checkpoints->kvs[i];
        uint32_t p;
        if (!cluster_key_partition(kv->key, prefix, m->map.nparts, &p) ||
            cluster_checkpoint_from_json(kv->value, kv->value_len, rec) != EDDY_OK)
            continue;
        Eddy__Cluster__V1__Partition *pi = &m->parts[p];
        snprintf(m->ckpt_nodes[p], sizeof(m->ckpt_nodes[p]), "%s", rec->node);
        pi->checkpoint_node = m->ckpt_nodes[p];
        pi->checkpoint_seq = rec->seq;
        pi->checkpoint_bytes = rec->bytes;
        pi->checkpoint_age_ms = snap->now_ms > rec->created_ms ? snap->now_ms - rec->created_ms : 0;
    }
    free(rec);
}

/* Each partition's replicas (from the map), in-sync set and the set its leader was
 * promoted from (from the isr/ records that decode and name a partition of the map). */
static eddy_err add_replicas(const struct status_snapshot *snap, struct status_mem *m)
{
    uint32_t np = m->map.nparts;
    size_t slots = (size_t)(np ? np : 1) * CLUSTER_REPLICAS_MAX;
    m->replica_ptrs = calloc(slots, sizeof(*m->replica_ptrs));
    m->isr_ptrs = calloc(slots, sizeof(*m->isr_ptrs));
    m->promoted_ptrs = calloc(slots, sizeof(*m->promoted_ptrs));
    m->isr = calloc(np ? np : 1, sizeof(*m->isr));
    if (!m->replica_ptrs || !m->isr_ptrs || !m->promoted_ptrs || !m->isr)
        return EDDY_ERR_NOMEM;
    char prefix[CLUSTER_KEY_MAX];
    cluster_key(prefix, sizeof(prefix), snap->cluster, "isr/");
    for (size_t i = 0; snap->isr && i < snap->isr->n; i++) {
        const struct etcd_kv *kv = &snap->isr->kvs[i];
        uint32_t p;
        if (cluster_key_partition(kv->key, prefix, np, &p) &&
            cluster_isr_from_json(kv->value, kv->value_len, &m->isr[p]) != EDDY_OK)
            memset(&m->isr[p], 0, sizeof(m->isr[p]));
    }
    for (uint32_t p = 0; p < np; p++) {
        Eddy__Cluster__V1__Partition *pi = &m->parts[p];
        struct cluster_part *c = &m->map.parts[p];
        pi->replicas = &m->replica_ptrs[(size_t)p * CLUSTER_REPLICAS_MAX];
        for (uint32_t r = 0; r < c->nreplicas && r < CLUSTER_REPLICAS_MAX; r++)
            pi->replicas[pi->n_replicas++] = c->replicas[r];
        pi->in_sync = &m->isr_ptrs[(size_t)p * CLUSTER_REPLICAS_MAX];
        for (uint32_t r = 0; r < m->isr[p].nisr; r++)
            pi->in_sync[pi->n_in_sync++] = m->isr[p].isr[r];
        pi->in_sync_epoch = m->isr[p].epoch;
        pi->promoted_from = &m->promoted_ptrs[(size_t)p * CLUSTER_REPLICAS_MAX];
        for (uint32_t r = 0; r < m->isr[p].npromoted && r < CLUSTER_REPLICAS_MAX; r++)
            pi->promoted_from[pi->n_promoted_from++] = m->isr[p].promoted_from[r];
    }
    return EDDY_OK;
}

/* The moves/ records that decode, in partition order (etcd's key order is textual). */
static eddy_err add_moves(const struct status_snapshot *snap, struct status_mem *m,
                          Eddy__Cluster__V1__ClusterStatusResponse *msg)
{
    size_t n = snap->moves ? snap->moves->n : 0, k = 0;
    m->moves = calloc(n ? n : 1, sizeof(*m->moves));
    m->move_msgs = calloc(n ? n : 1, sizeof(*m->move_msgs));
    m->move_ptrs = calloc(n ? n : 1, sizeof(*m->move_ptrs));
    if (!m->moves || !m->move_msgs || !m->move_ptrs)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        const struct etcd_kv *kv = &snap->moves->kvs[i];
        struct cluster_move mv;
        if (cluster_move_from_json(kv->value, kv->value_len, &mv) != EDDY_OK)
            continue;
        size_t at = k++;
        while (at > 0 && m->moves[at - 1].partition > mv.partition) { /* insertion sort */
            m->moves[at] = m->moves[at - 1];
            at--;
        }
        m->moves[at] = mv;
    }
    for (size_t i = 0; i < k; i++) {
        Eddy__Cluster__V1__Move *x = &m->move_msgs[i];
        eddy__cluster__v1__move__init(x);
        x->partition = m->moves[i].partition;
        x->from = m->moves[i].from;
        x->to = m->moves[i].to;
        x->epoch = m->moves[i].epoch;
        x->phase = (char *)cluster_move_phase_name(m->moves[i].phase);
        x->age_ms = m->moves[i].started_ms > 0 && snap->now_ms > m->moves[i].started_ms
                        ? snap->now_ms - m->moves[i].started_ms
                        : 0;
        m->move_ptrs[i] = x;
    }
    msg->moves = m->move_ptrs;
    msg->n_moves = k;
    return EDDY_OK;
}

/* The events/s a node's load record gives for the partitions 'map' says it owns; -1 if
 * it has no (decodable) record. */
static double node_rate(const struct status_snapshot *snap, const struct cluster_map *map,
                        const char *id)
{
    char prefix[CLUSTER_KEY_MAX];
    cluster_key(prefix, sizeof(prefix), snap->cluster, "load/");
    for (size_t i = 0; snap->loads && i < snap->loads->n; i++) {
        const struct etcd_kv *kv = &snap->loads->kvs[i];
        const char *who = id_of(kv->key, prefix);
        if (!who || strcmp(who, id) != 0)
            continue;
        cJSON *o = cJSON_ParseWithLength(kv->value, kv->value_len);
        const cJSON *rates = cJSON_GetObjectItemCaseSensitive(o, "rates"), *pair;
        double sum = cJSON_IsArray(rates) ? 0 : -1;
        cJSON_ArrayForEach(pair, rates)
        {
            const cJSON *pj = cJSON_GetArrayItem(pair, 0), *rj = cJSON_GetArrayItem(pair, 1);
            if (cJSON_IsNumber(pj) && cJSON_IsNumber(rj) && pj->valuedouble >= 0 &&
                pj->valuedouble < map->nparts &&
                strcmp(map->parts[(uint32_t)pj->valuedouble].owner, id) == 0)
                sum += rj->valuedouble;
        }
        cJSON_Delete(o);
        return sum;
    }
    return -1;
}

/* Copy 's' to the string block at '*at'. */
static char *put_str(char **at, const char *s, size_t len)
{
    char *d = *at;
    memcpy(d, s, len);
    d[len] = '\0';
    *at += len + 1;
    return d;
}

eddy_err status_build(const struct status_snapshot *snap, const char *answered_by,
                      struct status_reply *out)
{
    Eddy__Cluster__V1__ClusterStatusResponse init = EDDY__CLUSTER__V1__CLUSTER_STATUS_RESPONSE__INIT;
    out->msg = init;
    out->mem = NULL;
    struct status_mem *m = calloc(1, sizeof(*m));
    if (!m)
        return EDDY_ERR_NOMEM;
    out->mem = m;
    eddy_err err = EDDY_ERR_NOMEM;
    char nodes_prefix[CLUSTER_KEY_MAX], drain_prefix[CLUSTER_KEY_MAX];
    cluster_key(nodes_prefix, sizeof(nodes_prefix), snap->cluster, "nodes/");
    cluster_key(drain_prefix, sizeof(drain_prefix), snap->cluster, "drain/");

    size_t nn = snap->nodes ? snap->nodes->n : 0, nd = snap->drains ? snap->drains->n : 0;
    size_t leader_len = snap->leader && snap->leader->key ? snap->leader->value_len : 0;
    size_t strbytes = strlen(snap->cluster) + 1 + leader_len + 1 + strlen(answered_by) + 1;
    for (size_t i = 0; i < nd; i++)
        strbytes += strlen(snap->drains->kvs[i].key) + 1;
    m->strings = malloc(strbytes);
    m->recs = calloc(nn ? nn : 1, sizeof(*m->recs));
    m->nodes = calloc(nn ? nn : 1, sizeof(*m->nodes));
    m->node_ptrs = calloc(nn ? nn : 1, sizeof(*m->node_ptrs));
    m->roles = calloc(nn ? nn : 1, sizeof(*m->roles));
    m->drains = calloc(nd ? nd : 1, sizeof(*m->drains));
    if (!m->strings || !m->recs || !m->nodes || !m->node_ptrs || !m->roles || !m->drains)
        goto fail;
    char *at = m->strings;
    out->msg.cluster = put_str(&at, snap->cluster, strlen(snap->cluster));
    out->msg.leader_id = put_str(&at, leader_len ? snap->leader->value : "", leader_len);
    out->msg.answered_by = put_str(&at, answered_by, strlen(answered_by));
    out->msg.revision = snap->revision;

    if (snap->config && snap->config->key) {
        struct cluster_config cfg;
        if (cluster_config_from_json(snap->config->value, snap->config->value_len, &cfg) !=
            EDDY_OK) {
            err = EDDY_ERR_CORRUPT;
            goto fail;
        }
        out->msg.config_partitions = cfg.partitions;
        out->msg.replication_factor = cfg.replication_factor;
        out->msg.min_insync = cfg.min_insync;
    }
    if (snap->assignment && snap->assignment->key) {
        err = cluster_map_from_json(snap->assignment->value, snap->assignment->value_len,
                                    &m->map);
        if (err != EDDY_OK)
            goto fail;
        err = EDDY_ERR_NOMEM;
        m->parts = calloc(m->map.nparts, sizeof(*m->parts));
        m->part_ptrs = calloc(m->map.nparts, sizeof(*m->part_ptrs));
        m->ckpt_nodes = calloc(m->map.nparts ? m->map.nparts : 1, sizeof(*m->ckpt_nodes));
        if (!m->parts || !m->part_ptrs || !m->ckpt_nodes)
            goto fail;
        for (uint32_t p = 0; p < m->map.nparts; p++) {
            Eddy__Cluster__V1__Partition pi = EDDY__CLUSTER__V1__PARTITION__INIT;
            pi.partition = p;
            pi.owner = m->map.parts[p].owner;
            pi.epoch = m->map.parts[p].epoch;
            pi.checkpoint_age_ms = -1;
            m->parts[p] = pi;
            m->part_ptrs[p] = &m->parts[p];
        }
        add_checkpoints(snap, m);
        if ((err = add_replicas(snap, m)) != EDDY_OK)
            goto fail;
        err = EDDY_ERR_NOMEM;
        out->msg.n_partitions = m->map.nparts;
        out->msg.partitions = m->part_ptrs;
        out->msg.assignment_version = m->map.version;
    }

    size_t k = 0;
    for (size_t i = 0; i < nd; i++) {
        const char *id = id_of(snap->drains->kvs[i].key, drain_prefix);
        if (id && !in_list(m->drains, k, id))
            m->drains[k++] = put_str(&at, id, strlen(id));
    }
    out->msg.n_draining = k;
    out->msg.draining = m->drains;

    k = 0;
    for (size_t i = 0; i < nn; i++) {
        const struct etcd_kv *kv = &snap->nodes->kvs[i];
        const char *id = id_of(kv->key, nodes_prefix);
        struct cluster_node *rec = &m->recs[k];
        if (!id || cluster_node_from_json(kv->value, kv->value_len, rec) != EDDY_OK ||
            strcmp(rec->id, id) != 0)
            continue; /* not a node record: the leader ignores it too */
        Eddy__Cluster__V1__Node ni = EDDY__CLUSTER__V1__NODE__INIT;
        ni.id = rec->id;
        ni.grpc_addr = rec->grpc_addr;
        ni.metrics_addr = rec->metrics_addr;
        ni.started_ms = rec->started_ms;
        ni.roles = m->roles[k];
        if (rec->roles & ROLE_INGEST)
            ni.roles[ni.n_roles++] = ROLE_INGEST_NAME;
        if (rec->roles & ROLE_STATE)
            ni.roles[ni.n_roles++] = ROLE_STATE_NAME;
        ni.partitions_owned = m->map.parts ? (uint32_t)assigner_count(&m->map, rec->id) : 0;
        ni.partitions_followed =
            m->map.parts ? (uint32_t)assigner_count_followers(&m->map, rec->id) : 0;
        ni.zone = rec->zone;
        ni.draining = in_list(m->drains, out->msg.n_draining, rec->id);
        ni.events_per_second = m->map.parts ? node_rate(snap, &m->map, rec->id) : -1;
        m->nodes[k] = ni;
        m->node_ptrs[k] = &m->nodes[k];
        k++;
    }
    out->msg.n_nodes = k; /* etcd returns keys in order: nodes are sorted by id */
    out->msg.nodes = m->node_ptrs;
    if ((err = add_moves(snap, m, &out->msg)) != EDDY_OK)
        goto fail;
    return EDDY_OK;
fail:
    status_release(out);
    out->msg = init;
    return err;
}

/* --- the RPC ------------------------------------------------------------------------------ */

enum { OP_NODES, OP_DRAINS, OP_CONFIG, OP_LEADER, OP_ASSIGN, OP_CKPTS, OP_MOVES, OP_LOADS,
       OP_ISR, OP_COUNT };

eddy_err status_read(struct status_service *svc, struct status_reply *out, char *why,
                     size_t whylen)
{
    memset(out, 0, sizeof(*out));
    char k[OP_COUNT][CLUSTER_KEY_MAX];
    cluster_key(k[OP_NODES], sizeof(k[0]), svc->cluster, "nodes/");
    cluster_key(k[OP_DRAINS], sizeof(k[0]), svc->cluster, "drain/");
    cluster_key(k[OP_CONFIG], sizeof(k[0]), svc->cluster, "config");
    cluster_key(k[OP_LEADER], sizeof(k[0]), svc->cluster, "leader");
    cluster_key(k[OP_ASSIGN], sizeof(k[0]), svc->cluster, "assignment");
    cluster_key(k[OP_CKPTS], sizeof(k[0]), svc->cluster, "checkpoints/");
    cluster_key(k[OP_MOVES], sizeof(k[0]), svc->cluster, "moves/");
    cluster_key(k[OP_LOADS], sizeof(k[0]), svc->cluster, "load/");
    cluster_key(k[OP_ISR], sizeof(k[0]), svc->cluster, "isr/");
    /* No compares: the success branch always runs, and etcd reads every range at the same
     * revision. */
    struct etcd_txn t;
    etcd_txn_init(&t);
    for (int i = 0; i < OP_COUNT; i++)
        etcd_txn_range(&t, ETCD_ON_SUCCESS, k[i],
                       i == OP_NODES || i == OP_DRAINS || i == OP_CKPTS || i == OP_MOVES ||
                           i == OP_LOADS || i == OP_ISR);
    struct etcd_txn_result r;
    eddy_err err = etcd_txn(svc->etcd, &t, &r);
    if (err != EDDY_OK) {
        snprintf(why, whylen, "etcd: %s", etcd_last_error(svc->etcd));
        return EDDY_ERR_UNAVAILABLE;
    }
    if (!r.succeeded || r.n_ops != OP_COUNT) {
        etcd_txn_result_release(&r);
        snprintf(why, whylen, "etcd: unexpected txn answer");
        return EDDY_ERR_UNAVAILABLE;
    }
    struct etcd_kv none = {0};
#define ONE(i) (r.ops[i].kvs.n ? &r.ops[i].kvs.kvs[0] : &none)
    struct status_snapshot snap = {
        .cluster = svc->cluster, .revision = r.revision,
        .nodes = &r.ops[OP_NODES].kvs, .drains = &r.ops[OP_DRAINS].kvs,
        .config = ONE(OP_CONFIG), .leader = ONE(OP_LEADER), .assignment = ONE(OP_ASSIGN),
        .checkpoints = &r.ops[OP_CKPTS].kvs, .moves = &r.ops[OP_MOVES].kvs,
        .loads = &r.ops[OP_LOADS].kvs, .isr = &r.ops[OP_ISR].kvs,
        .now_ms = clock_wall_ms(),
    };
#undef ONE
    err = status_build(&snap, svc->id, out);
    if (err != EDDY_OK)
        snprintf(why, whylen, "cannot describe the cluster: %s", eddy_strerror(err));
    etcd_txn_result_release(&r);
    return err;
}

static void handle_status(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct status_reply out;
    char why[512] = "";
    eddy_err err = status_read(ud, &out, why, sizeof(why));
    if (err == EDDY_OK) {
        rpc_reply(call, &out.msg.base);
        status_release(&out);
    } else {
        rpc_reply_error(call,
                        err == EDDY_ERR_CORRUPT ? GRPC_STATUS_DATA_LOSS : eddy_err_to_grpc(err),
                        "%s", why);
    }
}

/* Drain: the drain/<id> key is the request; the leader acts on it through its watch. */
static void handle_drain(void *ud, rpc_call *call, const ProtobufCMessage *msg)
{
    struct status_service *svc = ud;
    const Eddy__Cluster__V1__DrainRequest *req = (const Eddy__Cluster__V1__DrainRequest *)msg;
    size_t len = req->node_id ? strlen(req->node_id) : 0;
    if (len == 0 || len >= CLUSTER_ID_MAX || strchr(req->node_id, '/')) {
        rpc_reply_error(call, GRPC_STATUS_INVALID_ARGUMENT,
                        "node_id must be 1..%d bytes without '/'", CLUSTER_ID_MAX - 1);
        return;
    }
    char suffix[CLUSTER_ID_MAX + 16], key[CLUSTER_KEY_MAX], nkey[CLUSTER_KEY_MAX],
        akey[CLUSTER_KEY_MAX];
    snprintf(suffix, sizeof(suffix), "drain/%s", req->node_id);
    cluster_key(key, sizeof(key), svc->cluster, suffix);
    snprintf(suffix, sizeof(suffix), "nodes/%s", req->node_id);
    cluster_key(nkey, sizeof(nkey), svc->cluster, suffix);
    cluster_key(akey, sizeof(akey), svc->cluster, "assignment");
    struct etcd_txn t;
    etcd_txn_init(&t);
    if (req->undo)
        etcd_txn_delete(&t, ETCD_ON_SUCCESS, key, false);
    else
        etcd_txn_put(&t, ETCD_ON_SUCCESS, key, "", 0, 0);
    etcd_txn_range(&t, ETCD_ON_SUCCESS, nkey, false);
    etcd_txn_range(&t, ETCD_ON_SUCCESS, akey, false);
    struct etcd_txn_result r;
    if (etcd_txn(svc->etcd, &t, &r) != EDDY_OK) {
        rpc_reply_error(call, GRPC_STATUS_UNAVAILABLE, "etcd: %s", etcd_last_error(svc->etcd));
        return;
    }
    Eddy__Cluster__V1__DrainResponse resp = EDDY__CLUSTER__V1__DRAIN_RESPONSE__INIT;
    if (r.succeeded && r.n_ops == 3) {
        resp.registered = r.ops[1].kvs.n > 0;
        struct cluster_map map = {0};
        if (r.ops[2].kvs.n &&
            cluster_map_from_json(r.ops[2].kvs.kvs[0].value, r.ops[2].kvs.kvs[0].value_len,
                                  &map) == EDDY_OK)
            resp.partitions_owned = (uint32_t)assigner_count(&map, req->node_id);
        cluster_map_release(&map);
    }
    etcd_txn_result_release(&r);
    log_info("msg=\"drain %s\" node=%s partitions_owned=%u", req->undo ? "cancelled" : "requested",
             req->node_id, resp.partitions_owned);
    rpc_reply(call, &resp.base);
}

eddy_err status_register(struct status_service *svc, rpc_server *s)
{
    eddy_err err = rpc_server_add_unary(s, "/eddy.cluster.v1.Coordinator/ClusterStatus",
                                        &eddy__cluster__v1__cluster_status_request__descriptor,
                                        handle_status, svc);
    if (err == EDDY_OK)
        err = rpc_server_add_unary(s, "/eddy.cluster.v1.Coordinator/Drain",
                                   &eddy__cluster__v1__drain_request__descriptor, handle_drain,
                                   svc);
    return err;
}
