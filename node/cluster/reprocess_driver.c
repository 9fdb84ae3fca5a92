/* The driver of a cluster-wide stage-2 rebuild (see reprocess_driver.h). */
#include "node/cluster/reprocess_driver.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "node/cluster/reprocess_service.h"

struct driver_job {
    struct reprocess_service *svc;
    rpc_call *call;
    Eddy__V1__ReprocessRequest *req;   /* a copy: the handler's is freed when it returns */
    struct reprocess_request rq;
    struct cluster_node *nodes;
    size_t n;
    uint64_t id;
};

/* One phase on every state node at once; OK if all answered OK (else the first failure in
 * 'err'). 'resps' (may be NULL): the answers, caller frees. */
static grpc_status_code phase_all(struct driver_job *d,
                                  Eddy__State__V1__Stage2RebuildRequest__Phase phase,
                                  Eddy__State__V1__SourceCut **cuts, size_t ncuts, char *err,
                                  size_t errlen)
{
    Eddy__State__V1__Stage2RebuildRequest req = EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__INIT;
    req.phase = phase;
    req.rebuild_id = d->id;
    if (phase == EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__PREPARE) {
        req.set = d->req->set;
        req.n_set = d->req->n_set;
    }
    req.cuts = cuts;
    req.n_cuts = ncuts;
    const char **addrs = calloc(d->n, sizeof(*addrs));
    ProtobufCMessage **reqs = calloc(d->n, sizeof(*reqs));
    struct peer_call *calls = calloc(d->n, sizeof(*calls));
    grpc_status_code code = GRPC_STATUS_OK;
    if (!addrs || !reqs || !calls) {
        snprintf(err, errlen, "out of memory");
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        goto out;
    }
    for (size_t i = 0; i < d->n; i++) {
        addrs[i] = d->nodes[i].grpc_addr;
        reqs[i] = &req.base;
    }
    peers_fan(d->svc->router->peers, REPROCESS_METHOD_STAGE2,
              &eddy__state__v1__stage2_rebuild_response__descriptor, addrs, reqs, calls, d->n,
              REPROCESS_PHASE_TIMEOUT_MS);
    for (size_t i = 0; i < d->n; i++) {
        if (calls[i].res.code != GRPC_STATUS_OK && code == GRPC_STATUS_OK) {
            code = calls[i].res.code;
            snprintf(err, errlen, "state node %s: %s", d->nodes[i].id, calls[i].res.details);
        }
        if (calls[i].resp)
            protobuf_c_message_free_unpacked(calls[i].resp, NULL);
    }
out:
    free(addrs);
    free(reqs);
    free(calls);
    return code;
}

/* Wait for every State/Reprocess answer, renewing the freezes meanwhile. False if the
 * service stops first (the fan-out is then left to its last answer to free). */
static bool wait_rebuilds(struct driver_job *d, reprocess_fanout *f)
{
    int64_t every = d->svc->renew_ms > 0 ? d->svc->renew_ms : 1000;
    while (!reprocess_fanout_wait(f, every)) {
        if (atomic_load(&d->svc->cancel)) {
            if (reprocess_fanout_abandon(f))
                return false;
            continue; /* the last answer came meanwhile */
        }
        char err[512] = "";
        if (phase_all(d, EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__RENEW, NULL, 0, err,
                      sizeof(err)) != GRPC_STATUS_OK)
            log_warn("msg=\"reprocess: renewing the stage-2 freeze failed\" rebuild=%" PRIu64
                     " error=\"%s\"",
                     d->id, err);
    }
    return true;
}

/* Drop the rebuild on every state node (after any failure; each answers OK even if it
 * never opened it). */
static void abort_all(struct driver_job *d)
{
    char ignored[512];
    phase_all(d, EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__ABORT, NULL, 0, ignored,
              sizeof(ignored));
}

bool reprocess_collect_cuts(const struct reprocess_answer *a, size_t n, size_t total,
                            struct reprocess_cuts *c)
{
    c->n = 0;
    c->arr = calloc(total ? total : 1, sizeof(*c->arr));
    c->ptrs = calloc(total ? total : 1, sizeof(*c->ptrs));
    if (!c->arr || !c->ptrs)
        return false;
    for (size_t i = 0; i < n; i++) {
        const Eddy__V1__ReprocessResponse *r = a[i].resp;
        for (size_t k = 0; k < r->n_partitions && c->n < total; k++) {
            Eddy__State__V1__SourceCut *cut = &c->arr[c->n];
            eddy__state__v1__source_cut__init(cut);
            cut->partition = r->partitions[k]->partition;
            cut->next_seq = r->partitions[k]->next_seq;
            c->ptrs[c->n++] = cut;
        }
    }
    return true;
}

/* After every State/Reprocess answered: the swap with every partition's cut, or the
 * failure. Replies to the call. */
static void finish_rebuild(struct driver_job *d, reprocess_fanout *f, uint32_t P)
{
    size_t n, nparts, ok;
    const struct reprocess_answer *a = reprocess_fanout_answers(f, &n);
    if (reprocess_answers_failed(a, n, &nparts, &ok) || nparts != P) {
        abort_all(d);
        reprocess_fanout_reply(f); /* the failure, or the partitions missing */
        return;
    }
    char err[512] = "";
    struct reprocess_cuts c = {0};
    grpc_status_code code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    if (reprocess_collect_cuts(a, n, nparts, &c))
        code = phase_all(d, EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__SWAP, c.ptrs, c.n,
                         err, sizeof(err));
    else
        snprintf(err, sizeof(err), "out of memory");
    free(c.arr);
    free(c.ptrs);
    if (code != GRPC_STATUS_OK) {
        abort_all(d);
        rpc_reply_error(d->call, code, "reprocess: stage-2 swap: %s (the product state of the "
                                       "nodes that failed is unchanged; run it again)",
                        err);
        return;
    }
    reprocess_fanout_reply(f);
}

static void driver_run(struct driver_job *d)
{
    struct reprocess_service *svc = d->svc;
    char err[512] = "";
    int64_t t0 = clock_mono_ms();
    uint32_t P = membership_partitions(svc->router->mem);
    grpc_status_code code =
        phase_all(d, EDDY__STATE__V1__STAGE2_REBUILD_REQUEST__PHASE__PREPARE, NULL, 0, err,
                  sizeof(err));
    if (code != GRPC_STATUS_OK) {
        abort_all(d);
        rpc_reply_error(d->call, code, "reprocess: freezing stage 2: %s", err);
        return;
    }
    log_info("msg=\"reprocess: stage 2 frozen on every state node\" rebuild=%" PRIu64
             " state_nodes=%zu",
             d->id, d->n);
    reprocess_fanout *f = reprocess_fanout_drive(d->call, d->nodes, d->n, &d->rq, P, t0);
    Eddy__State__V1__StateReprocessRequest sreq = EDDY__STATE__V1__STATE_REPROCESS_REQUEST__INIT;
    sreq.request = d->req;
    sreq.stage2_rebuild_id = d->id;
    if (!f || !reprocess_fanout_start(f, svc->router->peers, &sreq)) {
        size_t n;
        abort_all(d);
        rpc_reply_error(d->call, f ? GRPC_STATUS_UNAVAILABLE : GRPC_STATUS_RESOURCE_EXHAUSTED,
                        "reprocess: %s",
                        f ? reprocess_fanout_answers(f, &n)[0].res.details : "out of memory");
        reprocess_fanout_free(f);
        return;
    }
    if (!wait_rebuilds(d, f)) { /* the fan-out now belongs to its last answer */
        abort_all(d);
        rpc_reply_error(d->call, GRPC_STATUS_UNAVAILABLE, "reprocess: the node is stopping");
        return;
    }
    finish_rebuild(d, f, P);
    reprocess_fanout_free(f);
}

static void *driver_main(void *arg)
{
    thread_name("reprocess");
    struct driver_job *d = arg;
    struct reprocess_service *svc = d->svc;
    driver_run(d);
    eddy__v1__reprocess_request__free_unpacked(d->req, NULL);
    free(d->nodes);
    free(d);
    pthread_mutex_lock(&svc->mu);
    svc->driving = false;
    pthread_mutex_unlock(&svc->mu);
    return NULL;
}

/* A copy of 'req' that outlives the handler. */
static Eddy__V1__ReprocessRequest *copy_request(const Eddy__V1__ReprocessRequest *req)
{
    size_t len = eddy__v1__reprocess_request__get_packed_size(req);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return NULL;
    eddy__v1__reprocess_request__pack(req, buf);
    Eddy__V1__ReprocessRequest *copy = eddy__v1__reprocess_request__unpack(NULL, len, buf);
    free(buf);
    return copy;
}

void reprocess_driver_start(struct reprocess_service *svc, rpc_call *c,
                            const Eddy__V1__ReprocessRequest *req,
                            const struct reprocess_request *rq)
{
    struct driver_job *d = calloc(1, sizeof(*d));
    if (d) {
        d->nodes = calloc(REPROCESS_MAX_STATE_NODES, sizeof(*d->nodes));
        d->req = copy_request(req);
    }
    if (!d || !d->nodes || !d->req) {
        if (d) {
            free(d->nodes);
            if (d->req)
                eddy__v1__reprocess_request__free_unpacked(d->req, NULL);
        }
        free(d);
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "reprocess: out of memory");
        return;
    }
    d->svc = svc;
    d->call = c;
    d->rq = *rq;
    d->n = membership_state_nodes(svc->router->mem, d->nodes, REPROCESS_MAX_STATE_NODES);
    /* unique per rebuild: an id left over from a lapsed one is never reused */
    d->id = ((uint64_t)clock_wall_ms() << 12) ^ (uint64_t)(clock_mono_ns() & 0xfff);
    const char *why = d->n == 0 ? "reprocess: no state node" : NULL;
    pthread_mutex_lock(&svc->mu);
    if (!why && svc->driving)
        why = "reprocess: a cluster-wide rebuild is already running from this node; retry when "
              "it has finished";
    if (!why) {
        if (svc->driver_joinable) /* the previous driver has finished: reap it */
            pthread_join(svc->driver, NULL);
        svc->driver_joinable = pthread_create(&svc->driver, NULL, driver_main, d) == 0;
        svc->driving = svc->driver_joinable;
        if (!svc->driving)
            why = "reprocess: cannot start a thread";
    }
    pthread_mutex_unlock(&svc->mu);
    if (why) {
        rpc_reply_error(c, d->n == 0 ? GRPC_STATUS_UNAVAILABLE : GRPC_STATUS_ABORTED, "%s", why);
        eddy__v1__reprocess_request__free_unpacked(d->req, NULL);
        free(d->nodes);
        free(d);
    }
}
