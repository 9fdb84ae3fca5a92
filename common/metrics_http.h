/* The /metrics endpoint: a tiny HTTP server (libmicrohttpd, one internal thread) that
 * renders a metrics registry for each GET /metrics. GET / answers a short pointer to
 * /metrics; anything else is 404 (405 for methods other than GET and HEAD).
 *
 * DESIGN: scrapes run on libmicrohttpd's own thread, never on a gRPC thread, and only take
 * the registry's mutex while rendering; the hot paths that update metrics never wait for a
 * scrape. */
#ifndef EDDY_METRICS_HTTP_H
#define EDDY_METRICS_HTTP_H

#include "common/err.h"
#include "common/metrics.h"

typedef struct metrics_http metrics_http;

/* Serve 'reg' (borrowed: it and everything its callbacks use must outlive the server) on
 * 'listen' ("127.0.0.1:9464", "0.0.0.0:9464", "[::1]:9464"; port 0 picks a free port),
 * binding only that address. On success *out is the running server and *port (if not
 * NULL) the bound port. Returns EDDY_ERR_INVALID for an unparsable address, EDDY_ERR_NET
 * if it cannot be bound. Caller owns *out; stop and free with metrics_http_close. */
eddy_err metrics_http_open(metrics *reg, const char *listen, metrics_http **out, int *port);

/* Stop serving (waits for the server thread; in-flight scrapes finish first) and free.
 * Accepts NULL. */
void metrics_http_close(metrics_http *h);

#endif
