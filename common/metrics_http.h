/* The metrics port: a tiny HTTP server (libmicrohttpd, a small thread pool) that renders a
 * metrics registry for each GET /metrics and serves the web console: its page (files of
 * console/, embedded at build time: common/console_assets.h) and its read-only JSON
 * endpoints under /api/ (docs/operations.md, "Web console"). Anything else is 404 (405 for
 * methods other than GET and HEAD).
 *
 * The JSON endpoints: /api/metrics (the chart families of the registry, metrics_json) is
 * answered here; every other /api/NAME by the process's handler of that name (the node's
 * or the coordinator's: this module knows none). An endpoint that names a gRPC method needs
 * a token with that method's role when the process runs with tokens (Authorization:
 * Bearer, checked by the same auth as the gRPC calls); the others stay open like /metrics.
 *
 * DESIGN: requests run on libmicrohttpd's own threads, never on a gRPC thread. A scrape
 * only takes the registry's mutex while rendering, so the hot paths that update metrics
 * never wait for it; a console lookup (a user's recommendations through the state
 * backend, which in a cluster may ask another node) holds one of the pool's threads, so
 * the others keep answering scrapes meanwhile. */
#ifndef EDDY_METRICS_HTTP_H
#define EDDY_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "common/auth.h"
#include "common/err.h"
#include "common/metrics.h"

typedef struct metrics_http metrics_http;

/* Longest request target (path and query) served; longer ones get 414. */
#define METRICS_HTTP_URL_MAX 2048

/* One console request as a handler sees it (borrowed for the call). */
typedef struct metrics_http_req metrics_http_req;

/* The value of query argument 'key' (percent-decoded; "" when given without a value), or
 * NULL when absent. Borrowed for the call. */
const char *metrics_http_arg(const metrics_http_req *rq, const char *key);

/* Answers GET /api/NAME. Returns the HTTP status: 200 with *out the JSON body (the server
 * takes it and frees it), anything else with a one-line reason in 'msg'. Runs on one of
 * the server's threads, several at once: it must be thread-safe. */
struct cJSON;
typedef unsigned metrics_http_api_fn(void *ud, const metrics_http_req *rq, struct cJSON **out,
                                     char *msg, size_t msglen);

struct metrics_http_endpoint {
    const char *name;         /* "user": GET /api/user */
    const char *grpc_method;  /* "/eddy.v1.Eddy/Recommend": the token role it needs (the
                                 method's, auth_method_roles); NULL: open */
    metrics_http_api_fn *fn;
};

/* Who answers a console's /api/overview (the page's header and first tiles). */
struct metrics_http_process {
    const char *kind;    /* "node" or "coordinator" */
    const char *mode;    /* "dev" or "cluster" */
    const char *id, *roles, *version;
    int64_t started_ms;  /* wall clock */
};

/* The body of /api/overview: {"process": {kind, mode, id, roles, version, started_ms,
 * now_ms}, "status": status}. Takes 'status' (freed on failure too); NULL on allocation
 * failure. */
struct cJSON *metrics_http_overview(const struct metrics_http_process *p, struct cJSON *status);

struct metrics_http_opts {
    metrics *reg;             /* borrowed: it and everything its callbacks use must outlive
                                 the server */
    const char *listen;       /* "127.0.0.1:9464", "0.0.0.0:9464", "[::1]:9464"; port 0
                                 picks a free port; only that address is bound */
    /* the console's endpoints (array borrowed for the server's life) and their 'ud' */
    const struct metrics_http_endpoint *api;
    size_t napi;
    void *api_ud;
    /* the families /api/metrics returns (borrowed for the server's life) */
    const char *const *chart_families;
    size_t nchart_families;
    auth *auth;               /* borrowed, must outlive the server; NULL: tokens off */
};

/* Serve 'o'. On success *out is the running server and *port (if not NULL) the bound port.
 * Returns EDDY_ERR_INVALID for an unparsable address, EDDY_ERR_NET if it cannot be bound.
 * Caller owns *out; stop and free with metrics_http_close. */
eddy_err metrics_http_open(const struct metrics_http_opts *o, metrics_http **out, int *port);

/* Stop serving (waits for the server's threads; requests in flight finish first) and free.
 * Accepts NULL. */
void metrics_http_close(metrics_http *h);

#endif
