/* eddy.v1.Eddy/Reprocess and eddy.state.v1.State/Reprocess (see reprocess_service.h). */
#include "node/cluster/reprocess_service.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/log.h"
#include "common/partition.h"
#include "common/thread.h"
#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/state.pb-c.h"
#include "node/cluster/reprocess_driver.h"
#include "node/cluster/reprocess_fanout.h"
#include "node/cluster/state_service.h"
#include "node/state/product.h"
#include "node/state/reprocess.h"

#define M_STATE_REBUILD_FORWARD "/eddy.state.v1.State/RebuildForward"
#define DELIVER_ROUND 2048        /* rebuilt stage-2 batches per RebuildForward round */
#define DELIVER_ROUND_BYTES (4 << 20)

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
    uint64_t stage2_id;         /* part of this cluster-wide stage-2 rebuild; 0: none */
};

/* ---- a state node's rebuilt stage-2 records to their owners ------------------------------ */

/* One round of rebuilt batches (decoded), sent to every owner of their partitions. */
struct delivery {
    struct rebuild_job *j;
    Eddy__Store__V1__Stage2Batch **batches;
    size_t n;
    size_t bytes;
    uint64_t next;              /* the seq after the last batch collected */
    uint64_t sent;
    eddy_err err;
};

static int collect_rebuilt(void *ud, const unsigned char *k, size_t klen, const char *v,
                           size_t vlen)
{
    struct delivery *d = ud;
    size_t off = 3;
    uint64_t seq;
    Eddy__Store__V1__Stage2Batch *b =
        key_get_u64(k, klen, &off, &seq)
            ? eddy__store__v1__stage2_batch__unpack(NULL, vlen, (const uint8_t *)v)
            : NULL;
    if (!b) {
        d->err = EDDY_ERR_CORRUPT;
        return 1;
    }
    d->batches[d->n++] = b;
    d->bytes += vlen;
    d->next = seq + 1;
    return d->n == DELIVER_ROUND || d->bytes >= DELIVER_ROUND_BYTES;
}

/* The batches bound for one owner: each batch goes to every owner of one of its records
 * (the receiver applies the records of its own partitions only). */
struct dest {
    char addr[CLUSTER_ADDR_MAX];
    Eddy__Store__V1__Stage2Batch **batches;
    size_t n;
};

static eddy_err add_to_dest(struct dest *dests, size_t *ndests, const char *addr,
                            Eddy__Store__V1__Stage2Batch *b, size_t round)
{
    size_t k = 0;
    while (k < *ndests && strcmp(dests[k].addr, addr) != 0)
        k++;
    if (k == *ndests) {
        if (k == REPROCESS_MAX_STATE_NODES)
            return EDDY_ERR_TOO_LARGE;
        snprintf(dests[k].addr, sizeof(dests[k].addr), "%s", addr);
        dests[k].batches = calloc(round, sizeof(*dests[k].batches));
        dests[k].n = 0;
        if (!dests[k].batches)
            return EDDY_ERR_NOMEM;
        (*ndests)++;
    }
    if (dests[k].n == 0 || dests[k].batches[dests[k].n - 1] != b)
        dests[k].batches[dests[k].n++] = b;
    return EDDY_OK;
}

/* Send the round: one RebuildForward per owner, all at once; every one must succeed. */
static eddy_err send_round(struct delivery *d, char *err, size_t errlen)
{
    struct reprocess_service *svc = d->j->svc;
    membership *mem = svc->router->mem;
    uint32_t P = membership_partitions(mem);
    struct dest *dests = calloc(REPROCESS_MAX_STATE_NODES, sizeof(*dests));
    size_t nd = 0;
    eddy_err r = dests ? EDDY_OK : EDDY_ERR_NOMEM;
    for (size_t i = 0; i < d->n && r == EDDY_OK; i++) {
        size_t total = product_records(d->batches[i]);
        for (size_t k = 0; k < total && r == EDDY_OK; k++) {
            uint32_t q = partition_of_product(product_record_key(d->batches[i], k), P);
            char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
            uint64_t epoch;
            if (!membership_owner(mem, q, owner, &epoch, addr)) {
                snprintf(err, errlen, "product partition %u has no live owner", q);
                r = EDDY_ERR_UNAVAILABLE;
            } else {
                r = add_to_dest(dests, &nd, addr, d->batches[i], d->n);
            }
        }
    }
    Eddy__State__V1__RebuildForwardRequest *reqs = calloc(nd ? nd : 1, sizeof(*reqs));
    ProtobufCMessage **req_ptrs = calloc(nd ? nd : 1, sizeof(*req_ptrs));
    const char **addrs = calloc(nd ? nd : 1, sizeof(*addrs));
    struct peer_call *calls = calloc(nd ? nd : 1, sizeof(*calls));
    if (r == EDDY_OK && (!reqs || !req_ptrs || !addrs || !calls))
        r = EDDY_ERR_NOMEM;
    if (r == EDDY_OK) {
        for (size_t k = 0; k < nd; k++) {
            eddy__state__v1__rebuild_forward_request__init(&reqs[k]);
            reqs[k].rebuild_id = d->j->stage2_id;
            reqs[k].batches = dests[k].batches;
            reqs[k].n_batches = dests[k].n;
            req_ptrs[k] = &reqs[k].base;
            addrs[k] = dests[k].addr;
        }
        peers_fan(svc->router->peers, M_STATE_REBUILD_FORWARD,
                  &eddy__state__v1__rebuild_forward_response__descriptor, addrs, req_ptrs,
                  calls, nd, REPROCESS_PHASE_TIMEOUT_MS);
        for (size_t k = 0; k < nd; k++) {
            if (calls[k].res.code != GRPC_STATUS_OK && r == EDDY_OK) {
                snprintf(err, errlen, "sending rebuilt stage-2 records to %s: %s", addrs[k],
                         calls[k].res.details);
                r = EDDY_ERR_UNAVAILABLE;
            }
            if (calls[k].resp)
                protobuf_c_message_free_unpacked(calls[k].resp, NULL);
        }
    }
    for (size_t k = 0; k < nd; k++)
        free(dests[k].batches);
    free(dests);
    free(reqs);
    free(req_ptrs);
    free(addrs);
    free(calls);
    return r;
}

static void free_round(struct delivery *d)
{
    for (size_t i = 0; i < d->n; i++)
        eddy__store__v1__stage2_batch__free_unpacked(d->batches[i], NULL);
    d->n = 0;
    d->bytes = 0;
}

/* User partition p's rebuilt batches, round after round, in seq order (the receivers'
 * exactly-once marks need it). */
static eddy_err deliver_partition(struct delivery *d, store *side, uint32_t p, char *err,
                                  size_t errlen)
{
    d->next = 0;
    for (;;) {
        struct store_key start, end;
        key_init(&start, p, T_OUTBOX);
        key_prefix_end(&start, &end);
        key_u64(&start, d->next);
        eddy_err r = store_scan(side, &start, &end, collect_rebuilt, d);
        if (r == EDDY_OK)
            r = d->err;
        if (r == EDDY_OK && d->n > 0)
            r = send_round(d, err, errlen);
        bool full = d->n == DELIVER_ROUND || d->bytes >= DELIVER_ROUND_BYTES;
        d->sent += d->n;
        free_round(d);
        if (r != EDDY_OK || !full)
            return r;
        if (atomic_load(&d->j->svc->cancel))
            return EDDY_ERR_UNAVAILABLE;
    }
}

/* reprocess_opts.deliver: every user partition's rebuilt stage-2 batches to the owners of
 * their product partitions. */
static eddy_err deliver_stage2(void *ud, store *side, char *err, size_t errlen)
{
    struct rebuild_job *j = ud;
    uint32_t P = engine_options(j->svc->eng)->apply.partitions;
    struct delivery d = {.j = j, .batches = calloc(DELIVER_ROUND, sizeof(*d.batches))};
    eddy_err r = d.batches ? EDDY_OK : EDDY_ERR_NOMEM;
    for (uint32_t p = 0; p < P && r == EDDY_OK; p++)
        r = deliver_partition(&d, side, p, err, errlen);
    free(d.batches);
    if (r == EDDY_OK)
        log_info("msg=\"reprocess: rebuilt stage-2 records sent\" rebuild=%" PRIu64
                 " batches=%" PRIu64,
                 j->stage2_id, d.sent);
    else if (!err[0])
        snprintf(err, errlen, "sending rebuilt stage-2 records: %s", eddy_strerror(r));
    return r;
}

/* A rebuild yields the CPU to live traffic: this thread runs at nice REBUILD_NICE (Linux
 * sets the niceness of a thread, not of its process). It cannot raise it back, so only
 * threads that do rebuild work alone call it. */
#define REBUILD_NICE 10
static void run_in_background(void)
{
    static _Thread_local bool done;
    if (!done && setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), REBUILD_NICE) != 0)
        log_warn("msg=\"cannot lower a rebuild thread's priority\" error=\"%s\"", strerror(errno));
    done = true;
}

static void *rebuild_main(void *arg)
{
    thread_name("rebuild");
    struct rebuild_job *j = arg;
    run_in_background();
    struct reprocess_service *svc = j->svc;
    struct reprocess_result res;
    char err[512] = "";
    eddy_err r = reprocess_run(&j->o, &j->rq, &res, err, sizeof(err));
    for (size_t i = 0; r == EDDY_OK && svc->replaced && i < res.n; i++)
        svc->replaced(svc->replaced_ud, res.parts[i].partition);
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

/* Check the request against this node and start its rebuild thread, which answers 'c'.
 * 'stage2_id': the cluster-wide stage-2 rebuild it is part of (0: none). */
static void start_local(struct reprocess_service *svc, rpc_call *c,
                        const Eddy__V1__ReprocessRequest *req, uint64_t stage2_id)
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
                                   svc->router ? owns_here : NULL, svc->router, &svc->cancel,
                                   stage2_id ? deliver_stage2 : NULL, j};
    j->stage2_id = stage2_id;
    eddy_err r = request_from_pb(req, &j->rq, err, sizeof(err));
    if (r == EDDY_OK && stage2_id && !reprocess_rebuilds_stage2(&j->rq)) {
        snprintf(err, sizeof(err), "a stage-2 rebuild replays every partition from the start");
        r = EDDY_ERR_INVALID;
    }
    if (r == EDDY_OK && stage2_id && (!svc->s2 || stage2_side_renew(svc->s2, stage2_id, err,
                                                                    sizeof(err)) != EDDY_OK)) {
        if (!svc->s2)
            snprintf(err, sizeof(err), "no stage-2 rebuild on this node");
        r = EDDY_ERR_NOT_OWNER; /* FAILED_PRECONDITION */
    }
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

/* ---- handlers ------------------------------------------------------------------------------ */

static void handle_public(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct reprocess_service *svc = ud;
    const Eddy__V1__ReprocessRequest *req = (const Eddy__V1__ReprocessRequest *)msg;
    if (!svc->router) {
        start_local(svc, c, req, 0);
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
        r = reprocess_check_request(&rq, membership_partitions(svc->router->mem), err,
                                    sizeof(err));
    if (r != EDDY_OK) {
        rpc_reply_error(c, eddy_err_to_grpc(r), "reprocess: %s", err);
        return;
    }
    if (reprocess_rebuilds_stage2(&rq))
        reprocess_driver_start(svc, c, req, &rq);
    else
        reprocess_fanout_call(svc->router->mem, svc->router->peers, c, req, &rq);
}

static void handle_state(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    const Eddy__State__V1__StateReprocessRequest *req =
        (const Eddy__State__V1__StateReprocessRequest *)msg;
    if (!req->request) {
        rpc_reply_error(c, GRPC_STATUS_INVALID_ARGUMENT, "reprocess: no request");
        return;
    }
    start_local(ud, c, req->request, req->stage2_rebuild_id);
}

static void handle_stage2(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct reprocess_service *svc = ud;
    const Eddy__State__V1__Stage2RebuildRequest *req =
        (const Eddy__State__V1__Stage2RebuildRequest *)msg;
    Eddy__State__V1__Stage2RebuildResponse resp = EDDY__STATE__V1__STAGE2_REBUILD_RESPONSE__INIT;
    char err[512] = "";
    eddy_err r = EDDY_OK;
    struct reprocess_request rq = {.all = true};
    uint32_t *swapped = NULL;
    struct stage2_cut *cuts = NULL;
    switch (req->phase) {
    case EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__PREPARE:
        for (size_t i = 0; i < req->n_set && r == EDDY_OK; i++)
            r = reprocess_set_param(&rq, req->set[i]->name, req->set[i]->value, err, sizeof(err));
        if (r == EDDY_OK)
            r = stage2_side_prepare(svc->s2, req->rebuild_id, rq.set, err, sizeof(err));
        break;
    case EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__RENEW:
        r = stage2_side_renew(svc->s2, req->rebuild_id, err, sizeof(err));
        break;
    case EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__SWAP: {
        size_t nswapped = 0;
        uint64_t batches = 0;
        uint32_t P = engine_options(svc->eng)->apply.partitions;
        swapped = calloc(P, sizeof(*swapped));
        cuts = calloc(req->n_cuts ? req->n_cuts : 1, sizeof(*cuts));
        if (!swapped || !cuts) {
            r = EDDY_ERR_NOMEM;
            break;
        }
        for (size_t i = 0; i < req->n_cuts; i++)
            cuts[i] = (struct stage2_cut){req->cuts[i]->partition, req->cuts[i]->next_seq};
        r = stage2_side_swap(svc->s2, req->rebuild_id, cuts, req->n_cuts, swapped, &nswapped,
                             &batches, err, sizeof(err));
        for (size_t i = 0; r == EDDY_OK && svc->replaced && i < nswapped; i++)
            svc->replaced(svc->replaced_ud, swapped[i]);
        resp.partitions = swapped;
        resp.n_partitions = nswapped;
        resp.batches = batches;
        break;
    }
    case EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__ABORT:
        stage2_side_abort(svc->s2, req->rebuild_id);
        break;
    default:
        snprintf(err, sizeof(err), "unknown phase %d", (int)req->phase);
        r = EDDY_ERR_INVALID;
    }
    if (r == EDDY_OK)
        rpc_reply(c, &resp.base);
    else if (r == EDDY_ERR_NOT_FOUND) /* not the open rebuild: the caller's state is stale */
        rpc_reply_error(c, GRPC_STATUS_FAILED_PRECONDITION, "%s", err);
    else
        rpc_reply_error(c, eddy_err_to_grpc(r), "%s", err[0] ? err : eddy_strerror(r));
    free(swapped);
    free(cuts);
}

static void handle_rebuild_forward(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct reprocess_service *svc = ud;
    const Eddy__State__V1__RebuildForwardRequest *req =
        (const Eddy__State__V1__RebuildForwardRequest *)msg;
    char err[512] = "";
    run_in_background(); /* a thread of the rebuild lane */
    eddy_err r = stage2_side_apply(svc->s2, req->rebuild_id, req->batches, req->n_batches, err,
                                   sizeof(err));
    Eddy__State__V1__RebuildForwardResponse resp = EDDY__STATE__V1__REBUILD_FORWARD_RESPONSE__INIT;
    resp.applied = (uint32_t)req->n_batches;
    if (r == EDDY_OK)
        rpc_reply(c, &resp.base);
    else
        rpc_reply_error(c, r == EDDY_ERR_NOT_FOUND ? GRPC_STATUS_FAILED_PRECONDITION
                                                   : eddy_err_to_grpc(r),
                        "%s", err);
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
        err = rpc_server_add_unary_lane(s, REPROCESS_METHOD_STATE,
                                        &eddy__state__v1__state_reprocess_request__descriptor,
                                        handle_state, svc, STATE_LANE_REBUILD);
    if (err == EDDY_OK && svc->router && svc->eng && svc->s2)
        err = rpc_server_add_unary_lane(s, REPROCESS_METHOD_STAGE2,
                                        &eddy__state__v1__stage2_rebuild_request__descriptor,
                                        handle_stage2, svc, STATE_LANE_REBUILD);
    if (err == EDDY_OK && svc->router && svc->eng && svc->s2)
        err = rpc_server_add_unary_lane(s, M_STATE_REBUILD_FORWARD,
                                        &eddy__state__v1__rebuild_forward_request__descriptor,
                                        handle_rebuild_forward, svc, STATE_LANE_REBUILD);
    return err;
}

bool reprocess_service_busy(struct reprocess_service *svc)
{
    if (!svc->data_dir)
        return false; /* never registered */
    pthread_mutex_lock(&svc->mu);
    bool busy = svc->busy;
    pthread_mutex_unlock(&svc->mu);
    return busy || stage2_side_busy(svc->s2);
}

void reprocess_service_stop(struct reprocess_service *svc)
{
    if (!svc->data_dir)
        return; /* never registered */
    atomic_store(&svc->cancel, true);
    pthread_mutex_lock(&svc->mu);
    bool join = svc->joinable, join_driver = svc->driver_joinable;
    svc->joinable = svc->driver_joinable = false;
    pthread_mutex_unlock(&svc->mu);
    if (join)
        pthread_join(svc->thread, NULL);
    if (join_driver)
        pthread_join(svc->driver, NULL);
    pthread_mutex_destroy(&svc->mu);
}
