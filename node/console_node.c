/* The node's console endpoints (see console_node.h). Each handler checks its query
 * arguments against the public API's limits (a bad one is 400 with the reason), asks the
 * backend and turns the answer into JSON (common/pbjson.c). */
#include "node/console_node.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/cluster.h"
#include "common/completion.h"
#include "common/config.h"
#include "common/pbjson.h"

#define DEFAULT_RECOMMENDATIONS 10
#define DEFAULT_TOP 20
#define MAX_TOP 100
#define MAX_STATE_NODES 256

/* ---- the backend's answers ------------------------------------------------------------------ */

/* One backend call waited for: its status and its answer as JSON. */
struct answer {
    struct completion done;
    struct backend_status st;
    cJSON *json; /* NULL unless st.code is OK (or on allocation failure) */
};

/* The answer of a per-user request (Eddy__State__V1__UserResponse): its inner response. */
static void user_done(void *ud, const struct backend_status *st, const ProtobufCMessage *msg)
{
    struct answer *a = ud;
    a->st = *st;
    const Eddy__State__V1__UserResponse *r = (const Eddy__State__V1__UserResponse *)msg;
    if (st->code == GRPC_STATUS_OK && r) {
        if (r->response_case == EDDY__STATE__V1__USER_RESPONSE__RESPONSE_RECOMMEND)
            a->json = pbjson_from(&r->recommend->base);
        else if (r->response_case == EDDY__STATE__V1__USER_RESPONSE__RESPONSE_PROFILE &&
                 r->profile->profile)
            a->json = pbjson_from(&r->profile->profile->base);
    }
    completion_signal(&a->done, EDDY_OK, 0);
}

static void global_done(void *ud, const struct backend_status *st, const ProtobufCMessage *msg)
{
    struct answer *a = ud;
    a->st = *st;
    if (st->code == GRPC_STATUS_OK && msg)
        a->json = pbjson_from(msg);
    completion_signal(&a->done, EDDY_OK, 0);
}

/* Ask 'user_id' the request 'req' and wait for the answer ('done' runs exactly once). */
static void ask_user(const struct console_node *c, const char *user_id,
                     Eddy__State__V1__UserRequest *req, struct answer *a)
{
    memset(a, 0, sizeof(*a));
    completion_init(&a->done);
    c->state.ops->user(c->state.impl, user_id, req, user_done, a);
    completion_wait(&a->done, EDDY_OK);
}

/* The HTTP status for a backend status other than OK, with its message in 'msg'. */
static unsigned failed(const struct backend_status *st, const char *what, char *msg,
                       size_t msglen)
{
    snprintf(msg, msglen, "%s: %s", what, st->message[0] ? st->message : "failed");
    switch (st->code) {
    case GRPC_STATUS_INVALID_ARGUMENT: return MHD_HTTP_BAD_REQUEST;
    case GRPC_STATUS_NOT_FOUND: return MHD_HTTP_NOT_FOUND;
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return MHD_HTTP_SERVICE_UNAVAILABLE;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return MHD_HTTP_GATEWAY_TIMEOUT;
    default: return MHD_HTTP_BAD_GATEWAY;
    }
}

/* Whether the backend can answer: a cluster member routes through the map it joined. */
static bool ready(const struct console_node *c, char *msg, size_t msglen)
{
    if (c->dev || c->membership(c->membership_ud))
        return true;
    snprintf(msg, msglen, "the node has not joined its cluster yet");
    return false;
}

/* ---- query arguments ------------------------------------------------------------------------ */

/* Argument 'key' as an integer in [lo, hi], 'def' when absent; false (reason in 'msg') when
 * it is not one. */
static bool arg_int(const metrics_http_req *rq, const char *key, long lo, long hi, long def,
                    long *out, char *msg, size_t msglen)
{
    const char *v = metrics_http_arg(rq, key);
    *out = def;
    if (!v)
        return true;
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (!v[0] || *end || n < lo || n > hi) {
        snprintf(msg, msglen, "%s: an integer from %ld to %ld", key, lo, hi);
        return false;
    }
    *out = n;
    return true;
}

/* Argument 'key' as a string of at most 'max' bytes ("" when absent). */
static bool arg_str(const metrics_http_req *rq, const char *key, size_t max, const char **out,
                    char *msg, size_t msglen)
{
    const char *v = metrics_http_arg(rq, key);
    *out = v ? v : "";
    if (strlen(*out) > max) {
        snprintf(msg, msglen, "%s: at most %zu bytes", key, max);
        return false;
    }
    return true;
}

/* ---- /api/overview -------------------------------------------------------------------------- */

static bool add_roles(cJSON *o, unsigned roles)
{
    cJSON *a = cJSON_AddArrayToObject(o, "roles");
    bool ok = a != NULL;
    if (ok && (roles & ROLE_INGEST))
        ok = cJSON_AddItemToArray(a, cJSON_CreateString("ingest"));
    if (ok && (roles & ROLE_STATE))
        ok = cJSON_AddItemToArray(a, cJSON_CreateString("state"));
    return ok;
}

/* A cluster member's view as ClusterStatus names it: the registered state nodes and the
 * map's partitions (owner, epoch, replicas). Checkpoint ages, moves and loads are the
 * coordinator's to show. */
static cJSON *membership_view(membership *m)
{
    uint32_t parts = membership_partitions(m);
    struct cluster_node *nodes = calloc(MAX_STATE_NODES, sizeof(*nodes));
    uint32_t *owned = calloc(MAX_STATE_NODES, sizeof(*owned));
    cJSON *o = cJSON_CreateObject(), *jn = NULL, *jp = NULL;
    bool ok = nodes && owned && o && (jn = cJSON_AddArrayToObject(o, "nodes")) &&
              (jp = cJSON_AddArrayToObject(o, "partitions")) &&
              cJSON_AddNumberToObject(o, "config_partitions", parts) &&
              cJSON_AddStringToObject(o, "answered_by", membership_self(m)) &&
              cJSON_AddNumberToObject(o, "min_insync", membership_min_insync(m));
    size_t nn = ok ? membership_state_nodes(m, nodes, MAX_STATE_NODES) : 0;
    for (uint32_t p = 0; ok && p < parts; p++) {
        struct cluster_part cp;
        if (!membership_part(m, p, &cp))
            continue;
        for (size_t i = 0; i < nn; i++)
            if (strcmp(nodes[i].id, cp.owner) == 0)
                owned[i]++;
        cJSON *j = cJSON_CreateObject(), *reps = cJSON_AddArrayToObject(j, "replicas");
        ok = reps && cJSON_AddNumberToObject(j, "partition", p) &&
             cJSON_AddStringToObject(j, "owner", cp.owner) &&
             cJSON_AddNumberToObject(j, "epoch", (double)cp.epoch) &&
             cJSON_AddNumberToObject(j, "checkpoint_age_ms", -1);
        for (uint32_t r = 0; ok && r < cp.nreplicas; r++)
            ok = cJSON_AddItemToArray(reps, cJSON_CreateString(cp.replicas[r]));
        if (!ok || !cJSON_AddItemToArray(jp, j)) {
            cJSON_Delete(j);
            ok = false;
        }
    }
    for (size_t i = 0; ok && i < nn; i++) {
        cJSON *j = cJSON_CreateObject();
        ok = j && cJSON_AddStringToObject(j, "id", nodes[i].id) && add_roles(j, nodes[i].roles) &&
             cJSON_AddStringToObject(j, "grpc_addr", nodes[i].grpc_addr) &&
             cJSON_AddStringToObject(j, "metrics_addr", nodes[i].metrics_addr) &&
             cJSON_AddNumberToObject(j, "started_ms", (double)nodes[i].started_ms) &&
             cJSON_AddStringToObject(j, "zone", nodes[i].zone) &&
             cJSON_AddNumberToObject(j, "partitions_owned", owned[i]);
        if (!ok || !cJSON_AddItemToArray(jn, j)) {
            cJSON_Delete(j);
            ok = false;
        }
    }
    free(nodes);
    free(owned);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static unsigned api_overview(void *ud, const metrics_http_req *rq, cJSON **out, char *msg,
                             size_t msglen)
{
    const struct console_node *c = ud;
    cJSON *status = NULL;
    const char *mode = c->dev ? "dev" : "cluster";
    if (c->dev) {
        struct dev_status_reply r;
        if (dev_status_build(c->dev, &r) == EDDY_OK) {
            status = pbjson_from(&r.msg.base);
            dev_status_release(&r);
        }
    } else {
        membership *m = c->membership(c->membership_ud);
        status = m ? membership_view(m) : cJSON_CreateNull(); /* null: not joined yet */
    }
    struct metrics_http_process p = {"node", mode, c->id, c->roles, c->version,
                                     c->started_ms};
    cJSON *o = metrics_http_overview(&p, status);
    if (!o) {
        snprintf(msg, msglen, "out of memory");
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    *out = o;
    return MHD_HTTP_OK;
}

/* ---- /api/user?id=U[&n=N] ------------------------------------------------------------------- */

static unsigned api_user(void *ud, const metrics_http_req *rq, cJSON **out, char *msg,
                         size_t msglen)
{
    const struct console_node *c = ud;
    const char *id;
    long n;
    if (!arg_str(rq, "id", c->max_id_bytes, &id, msg, msglen) ||
        !arg_int(rq, "n", 1, c->max_recommendations, DEFAULT_RECOMMENDATIONS, &n, msg, msglen))
        return MHD_HTTP_BAD_REQUEST;
    if (!id[0]) {
        snprintf(msg, msglen, "id: required (the user id)");
        return MHD_HTTP_BAD_REQUEST;
    }
    if (!ready(c, msg, msglen))
        return MHD_HTTP_SERVICE_UNAVAILABLE;
    Eddy__V1__GetUserProfileRequest preq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    preq.user_id = (char *)id;
    Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
    ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_PROFILE;
    ur.profile = &preq;
    struct answer prof, rec;
    ask_user(c, id, &ur, &prof);
    if (prof.st.code != GRPC_STATUS_OK && prof.st.code != GRPC_STATUS_NOT_FOUND)
        return failed(&prof.st, "profile", msg, msglen);

    Eddy__V1__RecommendRequest rreq = EDDY__V1__RECOMMEND_REQUEST__INIT;
    rreq.user_id = (char *)id;
    rreq.max_recommendations = (uint32_t)n;
    ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_RECOMMEND;
    ur.recommend = &rreq;
    ask_user(c, id, &ur, &rec);
    if (rec.st.code != GRPC_STATUS_OK) {
        cJSON_Delete(prof.json);
        return failed(&rec.st, "recommend", msg, msglen);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *profile = prof.json ? prof.json : cJSON_CreateNull(); /* null: no state yet */
    if (!o || !rec.json || !profile || !cJSON_AddStringToObject(o, "user_id", id) ||
        !cJSON_AddItemToObject(o, "profile", profile)) {
        cJSON_Delete(profile);
        cJSON_Delete(rec.json);
        cJSON_Delete(o);
        snprintf(msg, msglen, "out of memory");
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (!cJSON_AddItemToObject(o, "recommendations", rec.json)) {
        cJSON_Delete(rec.json);
        cJSON_Delete(o);
        snprintf(msg, msglen, "out of memory");
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    *out = o;
    return MHD_HTTP_OK;
}

/* ---- /api/top?window=W[&type=T][&category=C][&limit=N] -------------------------------------- */

/* "view" -> EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW (the proto's value name without its
 * prefix, lower case); "" or "all": unspecified (every type). */
static bool parse_type(const char *s, Eddy__V1__EventType *out)
{
    *out = EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
    if (!s[0] || strcmp(s, "all") == 0)
        return true;
    char name[64] = "EVENT_TYPE_";
    size_t n = strlen(name);
    for (; *s && n + 1 < sizeof(name); s++)
        name[n++] = (char)toupper((unsigned char)*s);
    name[n] = '\0';
    const ProtobufCEnumValue *v =
        *s ? NULL : protobuf_c_enum_descriptor_get_value_by_name(&eddy__v1__event_type__descriptor, name);
    if (!v || v->value == EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED)
        return false;
    *out = (Eddy__V1__EventType)v->value;
    return true;
}

static unsigned api_top(void *ud, const metrics_http_req *rq, cJSON **out, char *msg,
                        size_t msglen)
{
    const struct console_node *c = ud;
    const char *window, *type, *category;
    long limit;
    if (!arg_str(rq, "window", 32, &window, msg, msglen) ||
        !arg_str(rq, "type", 32, &type, msg, msglen) ||
        !arg_str(rq, "category", c->max_name_bytes, &category, msg, msglen) ||
        !arg_int(rq, "limit", 1, MAX_TOP, DEFAULT_TOP, &limit, msg, msglen))
        return MHD_HTTP_BAD_REQUEST;
    Eddy__V1__TopProductsRequest req = EDDY__V1__TOP_PRODUCTS_REQUEST__INIT;
    int64_t span = 0;
    if (window[0] && strcmp(window, "all") != 0 &&
        (config_parse_value(FLAG_DURATION, window, &span) != 0 || span <= 0)) {
        snprintf(msg, msglen, "window: \"all\" or a duration such as 5m, 1h, 1d");
        return MHD_HTTP_BAD_REQUEST;
    }
    if (!parse_type(type, &req.event_type)) {
        snprintf(msg, msglen, "type: all, view, click, add_to_cart, remove_from_cart, "
                              "purchase or search");
        return MHD_HTTP_BAD_REQUEST;
    }
    if (!ready(c, msg, msglen))
        return MHD_HTTP_SERVICE_UNAVAILABLE;
    /* the event-time windows that started in the last 'span' (wall clock), open ones too:
     * the console is live */
    req.start_ms = span > 0 ? clock_wall_ms() - span : 0;
    req.category = (char *)category;
    req.limit = (uint32_t)limit;
    req.include_open = true;
    struct answer a;
    memset(&a, 0, sizeof(a));
    completion_init(&a.done);
    c->state.ops->top(c->state.impl, &req, global_done, &a);
    completion_wait(&a.done, EDDY_OK);
    if (a.st.code != GRPC_STATUS_OK)
        return failed(&a.st, "top products", msg, msglen);
    if (!a.json || !cJSON_AddNumberToObject(a.json, "start_ms", (double)req.start_ms)) {
        cJSON_Delete(a.json);
        snprintf(msg, msglen, "out of memory");
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    *out = a.json;
    return MHD_HTTP_OK;
}

const struct metrics_http_endpoint console_node_endpoints[] = {
    {"overview", NULL, api_overview},
    {"user", "/eddy.v1.Eddy/Recommend", api_user},
    {"top", "/eddy.v1.Eddy/TopProducts", api_top},
};
const size_t console_node_nendpoints =
    sizeof(console_node_endpoints) / sizeof(console_node_endpoints[0]);

/* events/s, acknowledgement latency (the Ingest call), Recommend latency, lag */
const char *const console_node_chart_families[] = {
    "eddy_events_ingested_total", "grpc_server_handling_seconds", "eddy_serving_seconds",
    "eddy_watermark_lag_seconds", "eddy_queue_depth", "eddy_partitions_owned",
    "process_resident_memory_bytes", "process_cpu_seconds_total",
};
const size_t console_node_nchart_families =
    sizeof(console_node_chart_families) / sizeof(console_node_chart_families[0]);
