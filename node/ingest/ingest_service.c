/* eddy.v1.Eddy handlers. */
#include "node/ingest/ingest_service.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/pbutil.h"
#include "eddy/v1/state.pb-c.h"

const char *const ingest_read_names[INGEST_READS] = {"Recommend", "GetUserProfile",
                                                     "TopProducts", "EventCounts"};

static void reply_status(rpc_call *c, const struct backend_status *st, const char *what)
{
    rpc_reply_error(c, st->code, "%s: %s", what, st->message);
}

/* ---- the checks made before a request reaches the backend -------------------------------- */

static bool bad_range(int64_t start_ms, int64_t end_ms)
{
    return end_ms != 0 && end_ms <= start_ms;
}

bool ingest_request_refused(const struct ingest_service *svc, const ProtobufCMessage *msg,
                            char *why, size_t whylen)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    const char *user = NULL;
    int64_t start_ms = 0, end_ms = 0;
    if (d == &eddy__v1__ingest_request__descriptor) {
        size_t n = ((const Eddy__V1__IngestRequest *)msg)->n_events;
        if ((int64_t)n > svc->max_batch) {
            snprintf(why, whylen,
                     "batch of %zu events is larger than the limit of %" PRId64
                     " (--max-batch); split it",
                     n, svc->max_batch);
            return true;
        }
        return false;
    }
    if (d == &eddy__v1__recommend_request__descriptor)
        user = ((const Eddy__V1__RecommendRequest *)msg)->user_id;
    else if (d == &eddy__v1__get_user_profile_request__descriptor)
        user = ((const Eddy__V1__GetUserProfileRequest *)msg)->user_id;
    else if (d == &eddy__v1__delete_user_request__descriptor)
        user = ((const Eddy__V1__DeleteUserRequest *)msg)->user_id;
    if (user && pb_empty(user)) {
        snprintf(why, whylen, "user_id: required");
        return true;
    }
    if (d == &eddy__v1__top_products_request__descriptor) {
        start_ms = ((const Eddy__V1__TopProductsRequest *)msg)->start_ms;
        end_ms = ((const Eddy__V1__TopProductsRequest *)msg)->end_ms;
    } else if (d == &eddy__v1__event_counts_request__descriptor) {
        start_ms = ((const Eddy__V1__EventCountsRequest *)msg)->start_ms;
        end_ms = ((const Eddy__V1__EventCountsRequest *)msg)->end_ms;
    }
    if (bad_range(start_ms, end_ms)) {
        snprintf(why, whylen, "end_ms must be after start_ms");
        return true;
    }
    return false;
}

/* Answer INVALID_ARGUMENT and return true if ingest_request_refused refuses 'msg'. */
static bool refused(const struct ingest_service *svc, rpc_call *c, const ProtobufCMessage *msg)
{
    char why[160];
    if (!ingest_request_refused(svc, msg, why, sizeof(why)))
        return false;
    rpc_reply_error(c, GRPC_STATUS_INVALID_ARGUMENT, "%s", why);
    return true;
}

/* ---- Ingest -------------------------------------------------------------------------- */

struct pending_ingest {
    struct ingest_service *svc;
    rpc_call *call;
    Eddy__V1__IngestResponse resp;
    Eddy__V1__Rejection **rej;     /* owned, with their strings */
    size_t nrej;
    Eddy__V1__Event **valid;       /* borrowed from the request */
    size_t nvalid;
};

static void pending_free(struct pending_ingest *pi)
{
    for (size_t i = 0; i < pi->nrej; i++)
        protobuf_c_message_free_unpacked(&pi->rej[i]->base, NULL);
    free(pi->rej);
    free(pi->valid);
    free(pi);
}

static void ingest_done(void *ud, const struct backend_status *st,
                        const struct backend_counts *counts)
{
    struct pending_ingest *pi = ud;
    if (st->code == GRPC_STATUS_RESOURCE_EXHAUSTED)
        metric_counter_inc(pi->svc->m.backpressure);
    if (st->code != GRPC_STATUS_OK) {
        reply_status(pi->call, st, "ingest");
    } else {
        pi->resp.accepted = counts->accepted;
        pi->resp.duplicates = counts->duplicates;
        pi->resp.late = counts->late;
        metric_counter_inc(pi->svc->m.batches);
        rpc_reply(pi->call, &pi->resp.base);
    }
    pending_free(pi);
}

static eddy_err add_rejection(struct pending_ingest *pi, uint32_t index, const char *field,
                              const char *reason)
{
    Eddy__V1__Rejection *r = malloc(sizeof(*r));
    if (!r)
        return EDDY_ERR_NOMEM;
    eddy__v1__rejection__init(r);
    r->index = index;
    pi->rej[pi->nrej++] = r;
    if (pb_set_str(&r->field, field) != EDDY_OK || pb_set_str(&r->reason, reason) != EDDY_OK)
        return EDDY_ERR_NOMEM;
    return EDDY_OK;
}

static void handle_ingest(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__IngestRequest *req = (const Eddy__V1__IngestRequest *)msg;
    if (refused(svc, c, msg))
        return;
    struct pending_ingest *pi = calloc(1, sizeof(*pi));
    size_t n = req->n_events;
    if (!pi || !(pi->rej = calloc(n ? n : 1, sizeof(*pi->rej))) ||
        !(pi->valid = calloc(n ? n : 1, sizeof(*pi->valid)))) {
        if (pi)
            pending_free(pi);
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "ingest: out of memory");
        return;
    }
    pi->svc = svc;
    pi->call = c;
    eddy__v1__ingest_response__init(&pi->resp);
    int64_t now = clock_wall_ms();
    for (size_t i = 0; i < n; i++) {
        char field[32], reason[256];
        if (validate_event(&svc->lim, req->events[i], now, field, sizeof(field), reason,
                           sizeof(reason))) {
            pi->valid[pi->nvalid++] = req->events[i];
            continue;
        }
        metric_counter_inc(svc->m.rejected[validate_field_index(field)]);
        if (add_rejection(pi, (uint32_t)i, field, reason) != EDDY_OK) {
            pending_free(pi);
            rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "ingest: out of memory");
            return;
        }
    }
    pi->resp.rejected = pi->rej;
    pi->resp.n_rejected = pi->nrej;
    if (pi->nvalid == 0) {
        rpc_reply(c, &pi->resp.base);
        pending_free(pi);
        return;
    }
    svc->state.ops->ingest(svc->state.impl, pi->valid, pi->nvalid, rpc_call_arrival_ns(c),
                           ingest_done, pi);
}

/* ---- reads and per-user requests ----------------------------------------------------------- */


/* The call being answered and what to call it in an error. */
struct answer_to {
    rpc_call *call;
    const char *what;
    metric_counter *ok; /* counts the answers with OK (may be NULL) */
};

/* Answer with the backend's reply (a global query's response as it is). */
static void answer(void *ud, const struct backend_status *st, const ProtobufCMessage *resp)
{
    const struct answer_to *a = ud;
    if (st->code != GRPC_STATUS_OK)
        reply_status(a->call, st, a->what);
    else if (!resp)
        rpc_reply_error(a->call, GRPC_STATUS_INTERNAL, "%s: empty answer", a->what);
    else
        rpc_reply(a->call, resp);
    if (st->code == GRPC_STATUS_OK && resp)
        metric_counter_inc(a->ok);
}

/* Answer with the inner response of a per-user reply (Eddy__State__V1__UserResponse). */
static void answer_user(void *ud, const struct backend_status *st, const ProtobufCMessage *msg)
{
    const Eddy__State__V1__UserResponse *resp = (const Eddy__State__V1__UserResponse *)msg;
    const ProtobufCMessage *inner = NULL;
    if (st->code == GRPC_STATUS_OK && resp) {
        switch (resp->response_case) {
        case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_RECOMMEND: inner = &resp->recommend->base; break;
        case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_PROFILE: inner = &resp->profile->base; break;
        case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_COUNTS: inner = &resp->counts->base; break;
        case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_DELETE_USER:
            inner = &resp->delete_user->base;
            break;
        default: break;
        }
    }
    answer(ud, st, inner);
}

static void answer_user_free(void *ud, const struct backend_status *st,
                             const ProtobufCMessage *msg)
{
    answer_user(ud, st, msg);
    free(ud);
}

/* Send a per-user request to the backend. Its answer may come later (DeleteUser on the
 * local engine), so what the callback needs lives with the call. */
static void ask_user(struct ingest_service *svc, rpc_call *c, const char *user_id,
                     Eddy__State__V1__UserRequest *ur, const char *what, metric_counter *ok)
{
    struct answer_to *a = malloc(sizeof(*a));
    if (!a) {
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s: out of memory", what);
        return;
    }
    *a = (struct answer_to){c, what, ok};
    svc->state.ops->user(svc->state.impl, user_id, ur, answer_user_free, a);
}

static void handle_recommend(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__RecommendRequest *req = (const Eddy__V1__RecommendRequest *)msg;
    if (refused(svc, c, msg))
        return;
    Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
    ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_RECOMMEND;
    ur.recommend = (Eddy__V1__RecommendRequest *)req;
    ask_user(svc, c, req->user_id, &ur, "recommend", svc->m.recommendations);
}

static void handle_profile(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__GetUserProfileRequest *req = (const Eddy__V1__GetUserProfileRequest *)msg;
    if (refused(svc, c, msg))
        return;
    Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
    ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_PROFILE;
    ur.profile = (Eddy__V1__GetUserProfileRequest *)req;
    ask_user(svc, c, req->user_id, &ur, "profile", NULL);
}

static void handle_top(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__TopProductsRequest *req = (const Eddy__V1__TopProductsRequest *)msg;
    if (refused(svc, c, msg))
        return;
    struct answer_to a = {c, "top products", NULL};
    svc->state.ops->top(svc->state.impl, req, answer, &a);
}

static void handle_counts(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__EventCountsRequest *req = (const Eddy__V1__EventCountsRequest *)msg;
    if (refused(svc, c, msg))
        return;
    if (!pb_empty(req->user_id)) { /* one user's windows: the user's partition alone */
        Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
        ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_COUNTS;
        ur.counts = (Eddy__V1__EventCountsRequest *)req;
        ask_user(svc, c, req->user_id, &ur, "event counts", NULL);
        return;
    }
    struct answer_to a = {c, "event counts", NULL};
    svc->state.ops->counts(svc->state.impl, req, answer, &a);
}

static void handle_delete(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__DeleteUserRequest *req = (const Eddy__V1__DeleteUserRequest *)msg;
    if (refused(svc, c, msg))
        return;
    Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
    ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_DELETE_USER;
    ur.delete_user = (Eddy__V1__DeleteUserRequest *)req;
    ask_user(svc, c, req->user_id, &ur, "delete user", NULL);
}

/* A read handler, timed from the call's arrival to its answer (reads answer before their
 * handler returns; the call is gone by then, so its arrival is read first). */
static void handle_read(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    const struct ingest_read_route *r = ud;
    int64_t arrival = rpc_call_arrival_ns(c);
    r->fn(r->svc, c, msg);
    metric_histogram_observe(r->svc->m.serving[r->read], (double)(clock_mono_ns() - arrival) / 1e9);
}

/* rpc_inline_fn of the per-user reads: the service's reads_now ('ud' is the read's route). */
static bool read_now(void *ud, const ProtobufCMessage *msg)
{
    (void)msg;
    const struct ingest_service *svc = ((const struct ingest_read_route *)ud)->svc;
    return svc->reads_now(svc->reads_now_ud);
}

eddy_err ingest_service_register(struct ingest_service *svc, rpc_server *s)
{
    static const struct {
        const char *path;
        const ProtobufCMessageDescriptor *desc;
        rpc_handler_fn *fn;
    } methods[] = {
        {"/eddy.v1.Eddy/Ingest", &eddy__v1__ingest_request__descriptor, handle_ingest},
        {"/eddy.v1.Eddy/Recommend", &eddy__v1__recommend_request__descriptor, handle_recommend},
        {"/eddy.v1.Eddy/GetUserProfile", &eddy__v1__get_user_profile_request__descriptor,
         handle_profile},
        {"/eddy.v1.Eddy/TopProducts", &eddy__v1__top_products_request__descriptor, handle_top},
        {"/eddy.v1.Eddy/EventCounts", &eddy__v1__event_counts_request__descriptor, handle_counts},
        {"/eddy.v1.Eddy/DeleteUser", &eddy__v1__delete_user_request__descriptor, handle_delete},
    };
    static rpc_handler_fn *const reads[INGEST_READS] = {handle_recommend, handle_profile,
                                                              handle_top, handle_counts};
    for (int r = 0; r < INGEST_READS; r++)
        svc->routes[r] = (struct ingest_read_route){svc, (enum ingest_read)r, reads[r]};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        rpc_handler_fn *fn = methods[i].fn;
        void *ud = svc;
        for (int r = 0; r < INGEST_READS; r++) {
            if (fn == reads[r]) {
                fn = handle_read;
                ud = &svc->routes[r];
            }
        }
        eddy_err err = rpc_server_add_unary(s, methods[i].path, methods[i].desc, fn, ud);
        /* the global reads fan out over partitions (threads and waits): never inline */
        bool per_user = methods[i].fn == handle_recommend || methods[i].fn == handle_profile;
        if (err == EDDY_OK && per_user && svc->reads_now)
            err = rpc_server_set_inline(s, methods[i].path, read_now);
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}
