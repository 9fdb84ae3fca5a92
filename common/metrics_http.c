/* The metrics port on libmicrohttpd: /metrics, the web console's files and its JSON
 * endpoints (see metrics_http.h). */
#include "common/metrics_http.h"

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/clock.h"
#include "common/console_assets.h"
#include "common/log.h"
#include "common/netaddr.h"

#define RENDER_LIMIT (16u << 20) /* largest exposition we serve */
#define MAX_CONNECTIONS 64
#define CONNECTION_TIMEOUT_S 30
#define THREADS 2                /* a slow console lookup leaves one for the scrapes */
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define TEXT_TYPE "text/plain; charset=utf-8"
#define JSON_TYPE "application/json"
/* the page loads nothing from elsewhere: its own script, style and data */
#define CSP "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"

struct metrics_http {
    struct metrics_http_opts o; /* borrowed contents, see metrics_http_opts */
    struct MHD_Daemon *d;
};

struct metrics_http_req {
    struct MHD_Connection *conn;
};

const char *metrics_http_arg(const metrics_http_req *rq, const char *key)
{
    return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, key);
}

cJSON *metrics_http_overview(const struct metrics_http_process *p, cJSON *status)
{
    cJSON *o = cJSON_CreateObject(), *j = cJSON_AddObjectToObject(o, "process");
    if (!status || !j || !cJSON_AddStringToObject(j, "kind", p->kind) ||
        !cJSON_AddStringToObject(j, "mode", p->mode) || !cJSON_AddStringToObject(j, "id", p->id) ||
        !cJSON_AddStringToObject(j, "roles", p->roles) ||
        !cJSON_AddStringToObject(j, "version", p->version) ||
        !cJSON_AddNumberToObject(j, "started_ms", (double)p->started_ms) ||
        !cJSON_AddNumberToObject(j, "now_ms", (double)clock_wall_ms()) ||
        !cJSON_AddItemToObject(o, "status", status)) {
        cJSON_Delete(status);
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Queue 'body' ('len' bytes; freed by the server when 'owned', else static) with 'type'. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status, const char *type,
                             void *body, size_t len, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (strncmp(type, "text/html", 9) == 0)
        MHD_add_response_header(r, "Content-Security-Policy", CSP);
    if (strcmp(type, JSON_TYPE) == 0)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned int status,
                                  const char *text)
{
    return reply(conn, status, TEXT_TYPE, (void *)text, strlen(text), false);
}

/* Answer 'status' with {"error": msg}. */
static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned int status,
                                   const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    char *text = o && cJSON_AddStringToObject(o, "error", msg) ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return reply(conn, status, JSON_TYPE, text, strlen(text), true);
}

/* Answer 200 with 'json' (taken and freed). */
static enum MHD_Result reply_json(struct MHD_Connection *conn, cJSON *json)
{
    char *text = cJSON_PrintUnformatted(json);
    cJSON_Delete(json);
    if (!text)
        return reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    return reply(conn, MHD_HTTP_OK, JSON_TYPE, text, strlen(text), true);
}

static enum MHD_Result serve_metrics(struct metrics_http *h, struct MHD_Connection *conn)
{
    char *text = NULL;
    size_t len = 0;
    eddy_err err = metrics_render(h->o.reg, RENDER_LIMIT, &text, &len);
    if (err != EDDY_OK) {
        log_error("msg=\"cannot render metrics\" error=\"%s\"", eddy_strerror(err));
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render metrics\n");
    }
    return reply(conn, MHD_HTTP_OK, CONTENT_TYPE, text, len, true);
}

/* /api/metrics: the chart families and the wall clock they were read at. */
static enum MHD_Result serve_chart_metrics(struct metrics_http *h, struct MHD_Connection *conn)
{
    cJSON *families = NULL, *root = NULL;
    if (metrics_json(h->o.reg, h->o.chart_families, h->o.nchart_families, &families) != EDDY_OK ||
        !(root = cJSON_CreateObject()) ||
        !cJSON_AddNumberToObject(root, "time_ms", (double)clock_wall_ms()) ||
        !cJSON_AddItemToObject(root, "families", families)) {
        cJSON_Delete(families);
        cJSON_Delete(root);
        return reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot read the metrics");
    }
    return reply_json(conn, root);
}

/* Whether the request may call 'ep'; if not, the refusal has been queued in *ret. */
static bool allowed(struct metrics_http *h, struct MHD_Connection *conn,
                    const struct metrics_http_endpoint *ep, enum MHD_Result *ret)
{
    if (!h->o.auth || !ep->grpc_method)
        return true;
    const char *authz =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    struct rpc_gate_verdict v;
    memset(&v, 0, sizeof(v));
    auth_check(h->o.auth, ep->grpc_method, authz, authz ? strlen(authz) : 0, NULL, 0,
               clock_mono_ns(), &v);
    if (v.code == GRPC_STATUS_OK)
        return true;
    unsigned status = v.code == GRPC_STATUS_UNAUTHENTICATED        ? MHD_HTTP_UNAUTHORIZED
                      : v.code == GRPC_STATUS_RESOURCE_EXHAUSTED ? MHD_HTTP_TOO_MANY_REQUESTS
                                                                 : MHD_HTTP_FORBIDDEN;
    *ret = reply_error(conn, status, v.msg[0] ? v.msg : "not allowed");
    return false;
}

static enum MHD_Result serve_api(struct metrics_http *h, struct MHD_Connection *conn,
                                 const char *name)
{
    if (strcmp(name, "metrics") == 0)
        return serve_chart_metrics(h, conn);
    for (size_t i = 0; i < h->o.napi; i++) {
        const struct metrics_http_endpoint *ep = &h->o.api[i];
        if (strcmp(name, ep->name) != 0)
            continue;
        enum MHD_Result ret = MHD_NO;
        if (!allowed(h, conn, ep, &ret))
            return ret;
        struct metrics_http_req rq = {conn};
        cJSON *out = NULL;
        char msg[512] = "";
        unsigned status = ep->fn(h->o.api_ud, &rq, &out, msg, sizeof(msg));
        if (status == MHD_HTTP_OK && out)
            return reply_json(conn, out);
        cJSON_Delete(out);
        if (status == MHD_HTTP_OK)
            status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        return reply_error(conn, status, msg[0] ? msg : "failed");
    }
    return reply_error(conn, MHD_HTTP_NOT_FOUND, "no such endpoint");
}

/* Adds the length of one query argument to the size_t at 'cls'. */
static enum MHD_Result add_arg_len(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    *(size_t *)cls += strlen(key) + 2 + (value ? strlen(value) : 0);
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    struct metrics_http *h = cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    size_t target = strlen(url);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_arg_len, &target);
    if (target > METRICS_HTTP_URL_MAX)
        return reply_text(conn, MHD_HTTP_URI_TOO_LONG, "request target too long\n");
    if (strcmp(url, "/metrics") == 0)
        return serve_metrics(h, conn);
    if (strncmp(url, "/api/", 5) == 0)
        return serve_api(h, conn, url + 5);
    const char *file = strcmp(url, "/") == 0 ? "index.html" : url + 1;
    for (size_t i = 0; url[0] == '/' && i < console_nassets; i++)
        if (strcmp(file, console_assets[i].name) == 0)
            return reply(conn, MHD_HTTP_OK, console_assets[i].content_type,
                         (void *)console_assets[i].data, console_assets[i].len, false);
    return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found: the console is at /, metrics at "
                                                "/metrics\n");
}

/* libmicrohttpd's format and arguments (the attribute lets clang check the call). */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt,
                                                          va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '"')
            *p = '\'';
    log_warn("msg=\"metrics http\" detail=\"%s\"", msg);
}

eddy_err metrics_http_open(const struct metrics_http_opts *o, metrics_http **out, int *port)
{
    *out = NULL;
    char host[256], portstr[8];
    if (!o->reg || !o->listen ||
        !netaddr_split(o->listen, host, sizeof(host), portstr, sizeof(portstr)))
        return EDDY_ERR_INVALID;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0 || !ai) {
        log_error("msg=\"cannot resolve metrics address\" addr=%s error=\"%s\"", o->listen,
                  gai_strerror(rc));
        return EDDY_ERR_INVALID;
    }
    struct metrics_http *h = calloc(1, sizeof(*h));
    if (!h) {
        freeaddrinfo(ai);
        return EDDY_ERR_NOMEM;
    }
    h->o = *o;
    unsigned int flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first: see its doc */
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned int)MAX_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned int)CONNECTION_TIMEOUT_S, MHD_OPTION_THREAD_POOL_SIZE,
                            (unsigned int)THREADS, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        log_error("msg=\"cannot listen for metrics\" addr=%s", o->listen);
        free(h);
        return EDDY_ERR_NET;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    if (port)
        *port = info ? (int)info->port : 0;
    *out = h;
    return EDDY_OK;
}

void metrics_http_close(metrics_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
