/* libeddy: eddy_* calls as synchronous unary RPCs over common/rpc_client's channel. This
 * file only checks arguments, picks the method and converts the result to eddy_error. */
#include "eddy/client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/rpc_client.h"

#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_MSG_BYTES (64 << 20)

struct eddy_options {
    int64_t timeout_ms;
    bool wait_for_ready;
    int64_t max_recv_bytes;
    char *tls_ca, *tls_cert, *tls_key, *tls_server_name; /* owned; NULL = unset */
    char *token; /* owned; NULL = unset */
};

/* Immutable after eddy_client_new; the channel is thread-safe, so no locking. */
struct eddy_client {
    rpc_channel *ch;
    int64_t timeout_ms;
    char *endpoint;
};

static const char *const status_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *eddy_status_name(eddy_status code)
{
    if ((unsigned)code >= sizeof(status_names) / sizeof(status_names[0]))
        return "UNKNOWN_STATUS";
    return status_names[code];
}

eddy_options *eddy_options_new(void)
{
    eddy_options *o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->timeout_ms = DEFAULT_TIMEOUT_MS;
    o->max_recv_bytes = DEFAULT_MAX_MSG_BYTES;
    return o;
}

void eddy_options_free(eddy_options *opts)
{
    if (!opts)
        return;
    free(opts->tls_ca);
    free(opts->tls_cert);
    free(opts->tls_key);
    free(opts->tls_server_name);
    free(opts->token);
    free(opts);
}

/* Replace '*dst' by a copy of 'src' (NULL or "" clears it); false if out of memory. */
static bool set_str(char **dst, const char *src)
{
    char *copy = src && *src ? strdup(src) : NULL;
    if (src && *src && !copy)
        return false;
    free(*dst);
    *dst = copy;
    return true;
}

bool eddy_options_set_tls(eddy_options *opts, const char *ca_file, const char *cert_file,
                          const char *key_file)
{
    if (!(cert_file && *cert_file) != !(key_file && *key_file))
        return false;
    return set_str(&opts->tls_ca, ca_file) && set_str(&opts->tls_cert, cert_file) &&
           set_str(&opts->tls_key, key_file);
}

bool eddy_options_set_tls_server_name(eddy_options *opts, const char *name)
{
    return set_str(&opts->tls_server_name, name);
}

bool eddy_options_set_token(eddy_options *opts, const char *token)
{
    return set_str(&opts->token, token);
}

void eddy_options_set_timeout_ms(eddy_options *opts, int64_t timeout_ms)
{
    if (timeout_ms > 0)
        opts->timeout_ms = timeout_ms;
}

void eddy_options_set_wait_for_ready(eddy_options *opts, bool wait)
{
    opts->wait_for_ready = wait;
}

void eddy_options_set_max_recv_bytes(eddy_options *opts, int64_t bytes)
{
    if (bytes > 0)
        opts->max_recv_bytes = bytes;
}

eddy_client *eddy_client_new(const char *endpoint, const eddy_options *opts)
{
    if (!endpoint || !*endpoint)
        return NULL;
    eddy_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->endpoint = strdup(endpoint);
    if (!c->endpoint)
        goto fail;
    struct rpc_channel_opts co = {
        .max_recv_bytes = opts ? opts->max_recv_bytes : DEFAULT_MAX_MSG_BYTES,
        .max_send_bytes = DEFAULT_MAX_MSG_BYTES,
        .wait_for_ready = opts ? opts->wait_for_ready : false,
        .token = opts ? opts->token : NULL,
    };
    struct tls_config tls = {0};
    if (opts && opts->tls_ca) {
        tls = (struct tls_config){.ca = opts->tls_ca, .cert = opts->tls_cert,
                                  .key = opts->tls_key, .server_name = opts->tls_server_name};
        co.tls = &tls;
    }
    c->timeout_ms = opts ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->ch = rpc_channel_open(endpoint, &co);
    if (!c->ch)
        goto fail;
    return c;
fail:
    free(c->endpoint);
    free(c);
    return NULL;
}

void eddy_client_free(eddy_client *c)
{
    if (!c)
        return;
    rpc_channel_close(c->ch);
    free(c->endpoint);
    free(c);
}

const char *eddy_client_endpoint(const eddy_client *c)
{
    return c->endpoint;
}

void eddy_response_free(void *resp)
{
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
}

static eddy_status local_error(eddy_error *err, eddy_status code, const char *msg)
{
    if (err) {
        err->code = code;
        err->retry_after_ms = 0;
        snprintf(err->message, sizeof(err->message), "%s", msg);
    }
    return code;
}

/* The one place that calls the transport: 'out' receives the response on OK, NULL else. */
static eddy_status invoke(eddy_client *c, const char *method, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *resp_desc, void **out,
                          eddy_error *err)
{
    struct rpc_result res = {0};
    ProtobufCMessage *resp = NULL;

    *out = NULL;
    int64_t start = clock_mono_ms();
    for (;;) {
        rpc_invoke(c->ch, method, req, resp_desc, c->timeout_ms, &resp, &res);
        int64_t waited = clock_mono_ms() - start;
        /* a quota's delay: wait and retry while the whole stays within the timeout */
        if (res.code != GRPC_STATUS_RESOURCE_EXHAUSTED || res.retry_after_ms <= 0 ||
            waited + res.retry_after_ms >= c->timeout_ms)
            break;
        struct timespec ts = {res.retry_after_ms / 1000, (res.retry_after_ms % 1000) * 1000000};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
    if (res.code != GRPC_STATUS_OK) {
        eddy_response_free(resp);
        local_error(err, (eddy_status)res.code, res.details);
        if (err)
            err->retry_after_ms = res.retry_after_ms;
        return (eddy_status)res.code;
    }
    if (!resp)
        return local_error(err, EDDY_STATUS_INTERNAL, "empty response");
    *out = resp;
    if (err) {
        err->code = EDDY_STATUS_OK;
        err->retry_after_ms = 0;
        err->message[0] = '\0';
    }
    return EDDY_STATUS_OK;
}

static bool bad_user(const char *user_id)
{
    return !user_id || !*user_id;
}

eddy_status eddy_ingest(eddy_client *c, Eddy__V1__Event *const *events, size_t n,
                        Eddy__V1__IngestResponse **out, eddy_error *err)
{
    Eddy__V1__IngestRequest req = EDDY__V1__INGEST_REQUEST__INIT;

    *out = NULL;
    if (n > 0 && !events)
        return local_error(err, EDDY_STATUS_INVALID_ARGUMENT, "events is NULL");
    /* The request only borrows the array: protobuf-c packs from it, never frees it. */
    req.n_events = n;
    req.events = (Eddy__V1__Event **)events;
    return invoke(c, "/eddy.v1.Eddy/Ingest", &req.base, &eddy__v1__ingest_response__descriptor,
                  (void **)out, err);
}

/* An eddy_ingest_async call between its start and its completion; freed by the latter. */
struct ingest_call {
    eddy_ingest_done_fn *done;
    void *ud;
};

static void ingest_done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct ingest_call *call = ud;
    eddy_error err = {.code = (eddy_status)res->code, .retry_after_ms = res->retry_after_ms};

    snprintf(err.message, sizeof(err.message), "%s", res->details);
    if (res->code == GRPC_STATUS_OK && !resp)
        local_error(&err, EDDY_STATUS_INTERNAL, "empty response");
    call->done(call->ud, err.code, &err, (Eddy__V1__IngestResponse *)resp);
    free(call);
}

eddy_status eddy_ingest_async(eddy_client *c, Eddy__V1__Event *const *events, size_t n,
                              eddy_ingest_done_fn *done, void *ud, eddy_error *err)
{
    Eddy__V1__IngestRequest req = EDDY__V1__INGEST_REQUEST__INIT;

    if ((n > 0 && !events) || !done)
        return local_error(err, EDDY_STATUS_INVALID_ARGUMENT, "events or done is NULL");
    struct ingest_call *call = malloc(sizeof(*call));
    if (!call)
        return local_error(err, EDDY_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    *call = (struct ingest_call){done, ud};
    req.n_events = n;
    req.events = (Eddy__V1__Event **)events; /* borrowed: packed before the call returns */
    eddy_err e = rpc_invoke_async(c->ch, "/eddy.v1.Eddy/Ingest", &req.base,
                                  &eddy__v1__ingest_response__descriptor, c->timeout_ms,
                                  ingest_done, call);
    if (e != EDDY_OK) {
        free(call);
        return local_error(err, e == EDDY_ERR_NOMEM ? EDDY_STATUS_RESOURCE_EXHAUSTED
                                                     : EDDY_STATUS_UNAVAILABLE,
                           eddy_strerror(e));
    }
    return local_error(err, EDDY_STATUS_OK, "");
}

eddy_status eddy_recommend(eddy_client *c, const Eddy__V1__RecommendRequest *req,
                           Eddy__V1__RecommendResponse **out, eddy_error *err)
{
    *out = NULL;
    if (!req || bad_user(req->user_id))
        return local_error(err, EDDY_STATUS_INVALID_ARGUMENT, "user_id is required");
    return invoke(c, "/eddy.v1.Eddy/Recommend", &req->base,
                  &eddy__v1__recommend_response__descriptor, (void **)out, err);
}

eddy_status eddy_get_profile(eddy_client *c, const char *user_id,
                             Eddy__V1__GetUserProfileResponse **out, eddy_error *err)
{
    Eddy__V1__GetUserProfileRequest req = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;

    req.user_id = (char *)user_id;
    return eddy_get_user_profile(c, &req, out, err);
}

eddy_status eddy_get_user_profile(eddy_client *c, const Eddy__V1__GetUserProfileRequest *req,
                                  Eddy__V1__GetUserProfileResponse **out, eddy_error *err)
{
    *out = NULL;
    if (bad_user(req->user_id))
        return local_error(err, EDDY_STATUS_INVALID_ARGUMENT, "user_id is required");
    eddy_status st = invoke(c, "/eddy.v1.Eddy/GetUserProfile", &req->base,
                            &eddy__v1__get_user_profile_response__descriptor, (void **)out, err);
    if (st == EDDY_STATUS_OK && !(*out)->profile) {
        eddy_response_free(*out);
        *out = NULL;
        return local_error(err, EDDY_STATUS_INTERNAL, "response has no profile");
    }
    return st;
}

eddy_status eddy_top_products(eddy_client *c, const Eddy__V1__TopProductsRequest *req,
                              Eddy__V1__TopProductsResponse **out, eddy_error *err)
{
    *out = NULL;
    if (!req)
        return local_error(err, EDDY_STATUS_INVALID_ARGUMENT, "request is NULL");
    return invoke(c, "/eddy.v1.Eddy/TopProducts", &req->base,
                  &eddy__v1__top_products_response__descriptor, (void **)out, err);
}

eddy_status eddy_event_counts(eddy_client *c, const Eddy__V1__EventCountsRequest *req,
                              Eddy__V1__EventCountsResponse **out, eddy_error *err)
{
    *out = NULL;
    if (!req)
        return local_error(err, EDDY_STATUS_INVALID_ARGUMENT, "request is NULL");
    return invoke(c, "/eddy.v1.Eddy/EventCounts", &req->base,
                  &eddy__v1__event_counts_response__descriptor, (void **)out, err);
}

eddy_status eddy_delete_user(eddy_client *c, const char *user_id,
                             Eddy__V1__DeleteUserResponse **out, eddy_error *err)
{
    Eddy__V1__DeleteUserRequest req = EDDY__V1__DELETE_USER_REQUEST__INIT;

    *out = NULL;
    if (bad_user(user_id))
        return local_error(err, EDDY_STATUS_INVALID_ARGUMENT, "user_id is required");
    req.user_id = (char *)user_id;
    return invoke(c, "/eddy.v1.Eddy/DeleteUser", &req.base,
                  &eddy__v1__delete_user_response__descriptor, (void **)out, err);
}

static eddy_status put_experiment(eddy_client *c, const char *method, const Eddy__V1__Experiment *e,
                                  Eddy__V1__ExperimentResponse **out, eddy_error *err)
{
    /* Create and Update requests have the same shape: one field, the experiment */
    Eddy__V1__CreateExperimentRequest create = EDDY__V1__CREATE_EXPERIMENT_REQUEST__INIT;
    Eddy__V1__UpdateExperimentRequest update = EDDY__V1__UPDATE_EXPERIMENT_REQUEST__INIT;
    bool is_create = strstr(method, "/CreateExperiment") != NULL;
    create.experiment = update.experiment = (Eddy__V1__Experiment *)e;
    return invoke(c, method, is_create ? &create.base : &update.base,
                  &eddy__v1__experiment_response__descriptor, (void **)out, err);
}

eddy_status eddy_experiment_create(eddy_client *c, const Eddy__V1__Experiment *e,
                                   Eddy__V1__ExperimentResponse **out, eddy_error *err)
{
    return put_experiment(c, "/eddy.v1.Experiments/CreateExperiment", e, out, err);
}

eddy_status eddy_experiment_update(eddy_client *c, const Eddy__V1__Experiment *e,
                                   Eddy__V1__ExperimentResponse **out, eddy_error *err)
{
    return put_experiment(c, "/eddy.v1.Experiments/UpdateExperiment", e, out, err);
}

eddy_status eddy_experiment_stop(eddy_client *c, const char *name,
                                 Eddy__V1__ExperimentResponse **out, eddy_error *err)
{
    Eddy__V1__StopExperimentRequest req = EDDY__V1__STOP_EXPERIMENT_REQUEST__INIT;
    req.name = (char *)(name ? name : "");
    return invoke(c, "/eddy.v1.Experiments/StopExperiment", &req.base,
                  &eddy__v1__experiment_response__descriptor, (void **)out, err);
}

eddy_status eddy_experiment_list(eddy_client *c, Eddy__V1__ListExperimentsResponse **out,
                                 eddy_error *err)
{
    Eddy__V1__ListExperimentsRequest req = EDDY__V1__LIST_EXPERIMENTS_REQUEST__INIT;
    return invoke(c, "/eddy.v1.Experiments/ListExperiments", &req.base,
                  &eddy__v1__list_experiments_response__descriptor, (void **)out, err);
}

eddy_status eddy_experiment_get(eddy_client *c, const char *name,
                                Eddy__V1__GetExperimentResponse **out, eddy_error *err)
{
    Eddy__V1__GetExperimentRequest req = EDDY__V1__GET_EXPERIMENT_REQUEST__INIT;
    req.name = (char *)(name ? name : "");
    return invoke(c, "/eddy.v1.Experiments/GetExperiment", &req.base,
                  &eddy__v1__get_experiment_response__descriptor, (void **)out, err);
}

eddy_status eddy_health_check(eddy_client *c, const char *service,
                              Grpc__Health__V1__HealthCheckResponse__ServingStatus *status,
                              eddy_error *err)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *resp = NULL;

    *status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__UNKNOWN;
    if (service)
        req.service = (char *)service;
    eddy_status st = invoke(c, "/grpc.health.v1.Health/Check", &req.base,
                            &grpc__health__v1__health_check_response__descriptor,
                            (void **)&resp, err);
    if (st == EDDY_STATUS_OK)
        *status = resp->status;
    eddy_response_free(resp);
    return st;
}
