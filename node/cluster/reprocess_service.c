/* eddy.v1.Eddy/Reprocess and eddy.state.v1.State/Reprocess (see reprocess_service.h). */
#include "node/cluster/reprocess_service.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "eddy/v1/eddy.pb-c.h"
#include "node/cluster/state_service.h"
#include "node/state/reprocess.h"

#define M_STATE_REPROCESS "/eddy.state.v1.State/Reprocess"
#define MAX_STATE_NODES 256

/* ---- request and response ---------------------------------------------------------------- */

static eddy_err request_from_pb(const Eddy__V1__ReprocessRequest *req,
                                struct reprocess_request *rq, char *err, size_t errlen)
{
    memset(rq, 0, sizeof(*rq));
    if (req->target_case == EDDY__V1__REPROCESS_REQUEST__TARGET_PARTITION) {
        rq->partition = req->partition;
    } else if (req->target_case == EDDY__V1__REPROCESS_REQUEST__TARGET_ALL && req->all) {
        rq->all = true;
    } else {
        snprintf(err, errlen, "give a partition or all");
        return EDDY_ERR_INVALID;
    }
    if (req->source_case == EDDY__V1__REPROCESS_REQUEST__SOURCE_FROM_CHECKPOINT) {
        size_t n = strlen(req->from_checkpoint);
        if (n == 0 || n >= sizeof(rq->checkpoint)) {
            snprintf(err, errlen, "from_checkpoint: a checkpoint id of 1 .. %zu bytes is "
                                  "required (a file name, a seq, or \"latest\")",
                     sizeof(rq->checkpoint) - 1);
            return EDDY_ERR_INVALID;
        }
        memcpy(rq->checkpoint, req->from_checkpoint, n + 1);
    }
    for (size_t i = 0; i < req->n_set; i++) {
        eddy_err r = reprocess_set_param(rq, req->set[i]->name, req->set[i]->value, err, errlen);
        if (r != EDDY_OK)
            return r;
    }
    return EDDY_OK;
}

/* Answer 'c' with 'r' (its strings are borrowed while packing). */
static void reply_result(rpc_call *c, const struct reprocess_result *r)
{
    Eddy__V1__ReprocessResponse resp = EDDY__V1__REPROCESS_RESPONSE__INIT;
    Eddy__V1__ReprocessParameter params[RP_PARAMS], *pp[RP_PARAMS];
    char values[RP_PARAMS][24];
    Eddy__V1__ReprocessedPartition *parts = calloc(r->n ? r->n : 1, sizeof(*parts));
    Eddy__V1__ReprocessedPartition **ptrs = calloc(r->n ? r->n : 1, sizeof(*ptrs));
    if (!parts || !ptrs) {
        free(parts);
        free(ptrs);
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "reprocess: out of memory");
        return;
    }
    for (size_t i = 0; i < r->n; i++) {
        const struct reprocess_part *p = &r->parts[i];
        eddy__v1__reprocessed_partition__init(&parts[i]);
        parts[i].partition = p->partition;
        parts[i].first_seq = p->first_seq;
        parts[i].records = p->records;
        parts[i].next_seq = p->next_seq;
        parts[i].checkpoint = (char *)p->checkpoint;
        parts[i].log_truncated = p->truncated;
        ptrs[i] = &parts[i];
    }
    for (int i = 0; i < RP_PARAMS; i++) {
        eddy__v1__reprocess_parameter__init(&params[i]);
        snprintf(values[i], sizeof(values[i]), "%" PRId64, r->params[i]);
        params[i].name = (char *)reprocess_param_names[i];
        params[i].value = values[i];
        pp[i] = &params[i];
    }
    resp.partitions = ptrs;
    resp.n_partitions = r->n;
    resp.records_replayed = r->records;
    resp.first_seq = r->first_seq;
    resp.duration_ms = r->duration_ms;
    resp.pause_ms = r->pause_ms;
    resp.stage2_rebuilt = r->stage2;
    resp.parameters = pp;
    resp.n_parameters = RP_PARAMS;
    rpc_reply(c, &resp.base);
    free(parts);
    free(ptrs);
}

/* ---- a rebuild on this node ----------------------------------------------------------------- */

struct rebuild_job {
    struct reprocess_service *svc;
    rpc_call *call;
    struct reprocess_request rq;
    struct reprocess_opts o;
};

static void *rebuild_main(void *arg)
{
    struct rebuild_job *j = arg;
    struct reprocess_service *svc = j->svc;
    struct reprocess_result res;
    char err[512] = "";
    eddy_err r = reprocess_run(&j->o, &j->rq, &res, err, sizeof(err));
    if (r == EDDY_OK)
        reply_result(j->call, &res);
    else
        rpc_reply_error(j->call, eddy_err_to_grpc(r), "reprocess: %s", err);
    reprocess_result_release(&res);
    free(j);
    pthread_mutex_lock(&svc->mu);
    svc->busy = false;
    pthread_mutex_unlock(&svc->mu);
    return NULL;
}

static bool owns_here(void *ud, uint32_t p)
{
    struct router *r = ud;
    return r->mem && state_service_owns(r->mem, p);
}

/* Check the request against this node and start its rebuild thread, which answers 'c'. */
static void start_local(struct reprocess_service *svc, rpc_call *c,
                        const Eddy__V1__ReprocessRequest *req)
{
    char err[512] = "";
    struct rebuild_job *j = calloc(1, sizeof(*j));
    if (!j) {
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "reprocess: out of memory");
        return;
    }
    j->svc = svc;
    j->call = c;
    j->o = (struct reprocess_opts){svc->eng, svc->work_dir, svc->ckpt_dir,
                                   svc->router ? owns_here : NULL, svc->router, &svc->cancel};
    eddy_err r = request_from_pb(req, &j->rq, err, sizeof(err));
    if (r == EDDY_OK)
        r = reprocess_check(&j->o, &j->rq, err, sizeof(err));
    if (r != EDDY_OK) {
        rpc_reply_error(c, eddy_err_to_grpc(r), "reprocess: %s", err);
        free(j);
        return;
    }
    if (svc->moving && svc->moving(svc->moving_ud)) {
        rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE,
                        "reprocess: a partition is moving into or out of this node; retry "
                        "when eddy status shows no move");
        free(j);
        return;
    }
    pthread_mutex_lock(&svc->mu);
    if (svc->busy) {
        pthread_mutex_unlock(&svc->mu);
        rpc_reply_error(c, GRPC_STATUS_ABORTED, "reprocess: a reprocess is already running "
                                                "on this node; retry when it has finished");
        free(j);
        return;
    }
    if (svc->joinable) /* the previous rebuild has finished: reap its thread */
        pthread_join(svc->thread, NULL);
    svc->joinable = pthread_create(&svc->thread, NULL, rebuild_main, j) == 0;
    svc->busy = svc->joinable;
    pthread_mutex_unlock(&svc->mu);
    if (!svc->busy) {
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "reprocess: cannot start a thread");
        free(j);
    }
}

/* ---- the ingest node: every state node's share --------------------------------------------- */

struct fan_out {
    pthread_mutex_t mu;
    size_t n, left;
    rpc_call *call;
    bool all;
    uint32_t partitions;
    struct fan_slot {
        struct fan_out *f;
        char node[CLUSTER_ID_MAX];
        struct rpc_result res;
        Eddy__V1__ReprocessResponse *resp;
    } slots[];
};

static int cmp_part(const void *a, const void *b)
{
    const Eddy__V1__ReprocessedPartition *x = *(Eddy__V1__ReprocessedPartition *const *)a;
    const Eddy__V1__ReprocessedPartition *y = *(Eddy__V1__ReprocessedPartition *const *)b;
    return (x->partition > y->partition) - (x->partition < y->partition);
}

/* One answer from the merged answers of every state node (or the first failure). */
static void fan_reply(struct fan_out *f)
{
    Eddy__V1__ReprocessResponse m = EDDY__V1__REPROCESS_RESPONSE__INIT;
    size_t nparts = 0, ok = 0;
    const struct fan_slot *failed = NULL;
    for (size_t i = 0; i < f->n; i++) {
        if (f->slots[i].res.code != GRPC_STATUS_OK || !f->slots[i].resp)
            failed = failed ? failed : &f->slots[i];
        else
            nparts += f->slots[i].resp->n_partitions, ok++;
    }
    if (failed) {
        rpc_reply_error(f->call, failed->res.code, "state node %s: %s (%zu of %zu state nodes "
                                                    "finished their partitions)",
                        failed->node, failed->res.details, ok, f->n);
        return;
    }
    if (f->all && nparts < f->partitions) {
        rpc_reply_error(f->call, GRPC_STATUS_UNAVAILABLE,
                        "reprocess: only %zu of %u partitions were rebuilt (partitions moving "
                        "or unassigned); run it again",
                        nparts, f->partitions);
        return;
    }
    Eddy__V1__ReprocessedPartition **parts = calloc(nparts ? nparts : 1, sizeof(*parts));
    if (!parts) {
        rpc_reply_error(f->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "reprocess: out of memory");
        return;
    }
    m.first_seq = UINT64_MAX;
    for (size_t i = 0; i < f->n; i++) {
        const Eddy__V1__ReprocessResponse *r = f->slots[i].resp;
        for (size_t k = 0; k < r->n_partitions; k++)
            parts[m.n_partitions++] = r->partitions[k];
        m.records_replayed += r->records_replayed;
        if (r->records_replayed > 0 && r->first_seq < m.first_seq)
            m.first_seq = r->first_seq;
        m.duration_ms = r->duration_ms > m.duration_ms ? r->duration_ms : m.duration_ms;
        m.pause_ms = r->pause_ms > m.pause_ms ? r->pause_ms : m.pause_ms;
        if (!m.n_parameters) { /* every node answers its own values; the first one's */
            m.parameters = r->parameters;
            m.n_parameters = r->n_parameters;
        }
    }
    if (m.first_seq == UINT64_MAX)
        m.first_seq = 0;
    qsort(parts, m.n_partitions, sizeof(*parts), cmp_part);
    m.partitions = parts;
    rpc_reply(f->call, &m.base);
    free(parts);
}

static void fan_done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct fan_slot *s = ud;
    struct fan_out *f = s->f;
    s->res = *res;
    s->resp = (Eddy__V1__ReprocessResponse *)resp;
    pthread_mutex_lock(&f->mu);
    bool last = --f->left == 0;
    pthread_mutex_unlock(&f->mu);
    if (!last)
        return;
    fan_reply(f);
    for (size_t i = 0; i < f->n; i++)
        if (f->slots[i].resp)
            protobuf_c_message_free_unpacked(&f->slots[i].resp->base, NULL);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* Call State/Reprocess on the partition's owner, or on every state node (all). */
static void fan_out(struct reprocess_service *svc, rpc_call *c,
                    const Eddy__V1__ReprocessRequest *req, const struct reprocess_request *rq)
{
    membership *mem = svc->router->mem;
    struct cluster_node *nodes = calloc(MAX_STATE_NODES, sizeof(*nodes));
    size_t n = 0;
    if (nodes && rq->all) {
        n = membership_state_nodes(mem, nodes, MAX_STATE_NODES);
    } else if (nodes) {
        uint64_t epoch;
        n = membership_owner(mem, rq->partition, nodes[0].id, &epoch, nodes[0].grpc_addr);
    }
    struct fan_out *f = nodes && n ? calloc(1, sizeof(*f) + n * sizeof(f->slots[0])) : NULL;
    if (!f) {
        if (nodes && !n)
            rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE, "reprocess: no state node owns %s",
                            rq->all ? "any partition" : "the partition");
        else
            rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "reprocess: out of memory");
        free(nodes);
        return;
    }
    pthread_mutex_init(&f->mu, NULL);
    f->n = f->left = n;
    f->call = c;
    f->all = rq->all;
    f->partitions = membership_partitions(mem);
    int64_t left_ms = rpc_call_remaining_ms(c);
    int64_t timeout = left_ms == INT64_MAX ? 0 : (left_ms > 1 ? left_ms : 1);
    /* Every call is started before any answer can complete the fan-out: 'left' counts the
     * calls that have not answered, failures to start included. */
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < n; i++) {
        struct fan_slot *s = &f->slots[i];
        s->f = f;
        snprintf(s->node, sizeof(s->node), "%s", nodes[i].id);
        rpc_channel *ch = svc->router->peers ? peers_get(svc->router->peers, nodes[i].grpc_addr)
                                             : NULL;
        if (!ch || rpc_invoke_async(ch, M_STATE_REPROCESS, &req->base,
                                    &eddy__v1__reprocess_response__descriptor, timeout,
                                    fan_done, s) != EDDY_OK) {
            s->res.code = GRPC_STATUS_UNAVAILABLE;
            snprintf(s->res.details, sizeof(s->res.details), "cannot call %s",
                     nodes[i].grpc_addr);
            f->left--;
        }
    }
    bool none_started = f->left == 0;
    pthread_mutex_unlock(&f->mu);
    free(nodes);
    if (none_started) {
        f->left = 1; /* complete it here, as the last answer would */
        struct rpc_result res = f->slots[0].res;
        fan_done(&f->slots[0], &res, NULL);
    }
}

/* ---- handlers ------------------------------------------------------------------------------ */

static void handle_public(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct reprocess_service *svc = ud;
    const Eddy__V1__ReprocessRequest *req = (const Eddy__V1__ReprocessRequest *)msg;
    if (!svc->router) {
        start_local(svc, c, req);
        return;
    }
    char err[512] = "";
    struct reprocess_request rq;
    eddy_err r = request_from_pb(req, &rq, err, sizeof(err));
    if (r == EDDY_OK && !svc->router->mem) {
        rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE, "reprocess: not joined to the cluster yet");
        return;
    }
    if (r == EDDY_OK)
        r = reprocess_check_request(&rq, membership_partitions(svc->router->mem), true, err,
                                    sizeof(err));
    if (r != EDDY_OK) {
        rpc_reply_error(c, eddy_err_to_grpc(r), "reprocess: %s", err);
        return;
    }
    fan_out(svc, c, req, &rq);
}

static void handle_state(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    start_local(ud, c, (const Eddy__V1__ReprocessRequest *)msg);
}

eddy_err reprocess_service_register(struct reprocess_service *svc, rpc_server *s, bool public_api)
{
    pthread_mutex_init(&svc->mu, NULL);
    atomic_init(&svc->cancel, false);
    const char *ck = svc->checkpoint_dir && svc->checkpoint_dir[0] ? svc->checkpoint_dir : NULL;
    if (snprintf(svc->work_dir, sizeof(svc->work_dir), "%s/reprocess.tmp", svc->data_dir) >=
            (int)sizeof(svc->work_dir) ||
        (ck ? snprintf(svc->ckpt_dir, sizeof(svc->ckpt_dir), "%s", ck)
            : snprintf(svc->ckpt_dir, sizeof(svc->ckpt_dir), "%s/checkpoints", svc->data_dir)) >=
            (int)sizeof(svc->ckpt_dir))
        return EDDY_ERR_TOO_LARGE;
    eddy_err err = EDDY_OK;
    if (public_api)
        err = rpc_server_add_unary(s, "/eddy.v1.Eddy/Reprocess",
                                   &eddy__v1__reprocess_request__descriptor, handle_public, svc);
    if (err == EDDY_OK && svc->router && svc->eng)
        err = rpc_server_add_unary_lane(s, M_STATE_REPROCESS,
                                        &eddy__v1__reprocess_request__descriptor, handle_state,
                                        svc, STATE_LANE_LEAF);
    return err;
}

bool reprocess_service_busy(struct reprocess_service *svc)
{
    if (!svc->data_dir)
        return false; /* never registered */
    pthread_mutex_lock(&svc->mu);
    bool busy = svc->busy;
    pthread_mutex_unlock(&svc->mu);
    return busy;
}

void reprocess_service_stop(struct reprocess_service *svc)
{
    if (!svc->data_dir)
        return; /* never registered */
    atomic_store(&svc->cancel, true);
    pthread_mutex_lock(&svc->mu);
    bool join = svc->joinable;
    svc->joinable = false;
    pthread_mutex_unlock(&svc->mu);
    if (join)
        pthread_join(svc->thread, NULL);
    pthread_mutex_destroy(&svc->mu);
}
