/* eddy.v1.Eddy handlers. */
#include "node/ingest/ingest_service.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "node/state/pbutil.h"

const char *const ingest_read_names[INGEST_READS] = {"Recommend", "GetUserProfile",
                                                     "TopProducts", "EventCounts"};

static void reply_err(rpc_call *c, eddy_err err, const char *what)
{
    rpc_reply_error(c, eddy_err_to_grpc(err), "%s: %s", what, eddy_strerror(err));
}

/* ---- cluster mode: the same requests, routed to the partition owners --------------------- */

static void reply_routed(rpc_call *c, const struct router_result *res, const char *what)
{
    rpc_reply_error(c, res->code, "%s: %s", what, res->message);
}

/* Send a per-user request to the user's owner and answer with the inner response. */
static void route_user(struct ingest_service *svc, rpc_call *c, const char *user_id,
                       Eddy__State__V1__UserRequest *ur, const char *what)
{
    Eddy__State__V1__UserResponse *resp = NULL;
    struct router_result res;
    router_user(svc->router, user_id, ur, &resp, &res);
    if (res.code != GRPC_STATUS_OK || !resp) {
        reply_routed(c, &res, what);
    } else {
        const ProtobufCMessage *inner = NULL;
        switch (resp->response_case) {
        case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_RECOMMEND: inner = &resp->recommend->base; break;
        case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_PROFILE: inner = &resp->profile->base; break;
        case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_COUNTS: inner = &resp->counts->base; break;
        case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_DELETE_USER:
            inner = &resp->delete_user->base;
            break;
        default: break;
        }
        if (inner)
            rpc_reply(c, inner);
        else
            rpc_reply_error(c, GRPC_STATUS_INTERNAL, "%s: empty answer from the owner", what);
    }
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* ---- Ingest -------------------------------------------------------------------------- */

struct pending_ingest {
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

static void ingest_done(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    struct pending_ingest *pi = ud;
    if (err != EDDY_OK) {
        reply_err(pi->call, err, "ingest not recorded");
    } else {
        pi->resp.accepted = r->accepted;
        pi->resp.duplicates = r->duplicates;
        pi->resp.late = r->late;
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
    if ((int64_t)req->n_events > svc->max_batch) {
        rpc_reply_error(c, GRPC_STATUS_INVALID_ARGUMENT,
                        "batch of %zu events is larger than the limit of %" PRId64
                        " (--max-batch); split it",
                        req->n_events, svc->max_batch);
        return;
    }
    struct pending_ingest *pi = calloc(1, sizeof(*pi));
    size_t n = req->n_events;
    if (!pi || !(pi->rej = calloc(n ? n : 1, sizeof(*pi->rej))) ||
        !(pi->valid = calloc(n ? n : 1, sizeof(*pi->valid)))) {
        if (pi)
            pending_free(pi);
        reply_err(c, EDDY_ERR_NOMEM, "ingest");
        return;
    }
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
            reply_err(c, EDDY_ERR_NOMEM, "ingest");
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
    if (svc->router) {
        struct route_counts rc;
        struct router_result res;
        router_ingest(svc->router, pi->valid, pi->nvalid, &rc, &res);
        if (res.code != GRPC_STATUS_OK) {
            reply_routed(c, &res, "ingest");
        } else {
            pi->resp.accepted = rc.accepted;
            pi->resp.duplicates = rc.duplicates;
            pi->resp.late = rc.late;
            rpc_reply(c, &pi->resp.base);
        }
        pending_free(pi);
        return;
    }
    eddy_err err = engine_ingest_timed(svc->eng, pi->valid, pi->nvalid, rpc_call_arrival_ns(c),
                                       ingest_done, pi);
    if (err != EDDY_OK) {
        if (err == EDDY_ERR_FULL) {
            metric_counter_inc(svc->m.backpressure);
            rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
                            "ingest queue full (%" PRId64 " events waiting); retry with backoff",
                            engine_queue_depth(svc->eng));
        } else {
            reply_err(c, err, "ingest");
        }
        pending_free(pi);
    }
}

/* ---- reads ----------------------------------------------------------------------------- */

static bool require_user(rpc_call *c, const char *user_id)
{
    if (pb_empty(user_id)) {
        rpc_reply_error(c, GRPC_STATUS_INVALID_ARGUMENT, "user_id: required");
        return false;
    }
    return true;
}

static void answer(rpc_call *c, eddy_err err, ProtobufCMessage *resp, const char *what)
{
    if (err == EDDY_OK)
        rpc_reply(c, resp);
    else
        reply_err(c, err, what);
    query_free_response(resp);
}

static void handle_recommend(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__RecommendRequest *req = (const Eddy__V1__RecommendRequest *)msg;
    Eddy__V1__RecommendResponse *resp = NULL;
    if (!require_user(c, req->user_id))
        return;
    if (svc->router) {
        Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
        ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_RECOMMEND;
        ur.recommend = (Eddy__V1__RecommendRequest *)req;
        metric_counter_inc(svc->m.recommendations);
        route_user(svc, c, req->user_id, &ur, "recommend");
        return;
    }
    eddy_err err = query_recommend(&svc->q, req, &resp);
    if (err == EDDY_OK)
        metric_counter_inc(svc->m.recommendations);
    answer(c, err, resp ? &resp->base : NULL, "recommend");
}

static void handle_profile(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__GetUserProfileRequest *req = (const Eddy__V1__GetUserProfileRequest *)msg;
    Eddy__V1__GetUserProfileResponse *resp = NULL;
    if (!require_user(c, req->user_id))
        return;
    if (svc->router) {
        Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
        ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_PROFILE;
        ur.profile = (Eddy__V1__GetUserProfileRequest *)req;
        route_user(svc, c, req->user_id, &ur, "profile");
        return;
    }
    eddy_err err = query_profile(&svc->q, req->user_id, &resp);
    if (err == EDDY_ERR_NOT_FOUND) {
        rpc_reply_error(c, GRPC_STATUS_NOT_FOUND, "no state for user %s", req->user_id);
        return;
    }
    answer(c, err, resp ? &resp->base : NULL, "profile");
}

static void handle_top(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__TopProductsRequest *req = (const Eddy__V1__TopProductsRequest *)msg;
    Eddy__V1__TopProductsResponse *resp = NULL;
    if (req->end_ms != 0 && req->end_ms <= req->start_ms) {
        rpc_reply_error(c, GRPC_STATUS_INVALID_ARGUMENT, "end_ms must be after start_ms");
        return;
    }
    if (svc->router) {
        struct router_result res;
        router_top(svc->router, req, &resp, &res);
        if (res.code != GRPC_STATUS_OK)
            reply_routed(c, &res, "top products");
        else
            rpc_reply(c, &resp->base);
        query_free_response(resp ? &resp->base : NULL);
        return;
    }
    eddy_err err = query_top_products(&svc->q, req, &resp);
    answer(c, err, resp ? &resp->base : NULL, "top products");
}

static void handle_counts(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__EventCountsRequest *req = (const Eddy__V1__EventCountsRequest *)msg;
    Eddy__V1__EventCountsResponse *resp = NULL;
    if (req->end_ms != 0 && req->end_ms <= req->start_ms) {
        rpc_reply_error(c, GRPC_STATUS_INVALID_ARGUMENT, "end_ms must be after start_ms");
        return;
    }
    if (svc->router && !pb_empty(req->user_id)) {
        Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
        ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_COUNTS;
        ur.counts = (Eddy__V1__EventCountsRequest *)req;
        route_user(svc, c, req->user_id, &ur, "event counts");
        return;
    }
    if (svc->router) {
        struct router_result res;
        router_counts(svc->router, req, &resp, &res);
        if (res.code != GRPC_STATUS_OK)
            reply_routed(c, &res, "event counts");
        else
            rpc_reply(c, &resp->base);
        query_free_response(resp ? &resp->base : NULL);
        return;
    }
    eddy_err err = query_event_counts(&svc->q, req, &resp);
    answer(c, err, resp ? &resp->base : NULL, "event counts");
}

static void delete_done(void *ud, eddy_err err, bool model_deleted, uint64_t windows,
                        uint64_t log)
{
    rpc_call *c = ud;
    if (err != EDDY_OK) {
        reply_err(c, err, "delete user");
        return;
    }
    if (!model_deleted && windows == 0 && log == 0) {
        rpc_reply_error(c, GRPC_STATUS_NOT_FOUND, "no state for this user");
        return;
    }
    Eddy__V1__DeleteUserResponse r = EDDY__V1__DELETE_USER_RESPONSE__INIT;
    r.model_deleted = model_deleted;
    r.windows_deleted = windows;
    r.log_entries_deleted = log;
    rpc_reply(c, &r.base);
}

static void handle_delete(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct ingest_service *svc = ud;
    const Eddy__V1__DeleteUserRequest *req = (const Eddy__V1__DeleteUserRequest *)msg;
    if (!require_user(c, req->user_id))
        return;
    if (svc->router) {
        Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
        ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_DELETE_USER;
        ur.delete_user = (Eddy__V1__DeleteUserRequest *)req;
        route_user(svc, c, req->user_id, &ur, "delete user");
        return;
    }
    eddy_err err = engine_delete_user(svc->eng, req->user_id, delete_done, c);
    if (err != EDDY_OK)
        reply_err(c, err, "delete user");
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
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}
