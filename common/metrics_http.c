/* The /metrics HTTP endpoint on libmicrohttpd (see metrics_http.h). */
#include "common/metrics_http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"
#include "common/netaddr.h"

#define RENDER_LIMIT (16u << 20) /* largest exposition we serve */
#define MAX_CONNECTIONS 64
#define CONNECTION_TIMEOUT_S 30
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define INDEX_TEXT "Eddy metrics exporter: scrape /metrics (Prometheus text format 0.0.4).\n"

struct metrics_http {
    metrics *reg; /* borrowed */
    struct MHD_Daemon *d;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status, char *body,
                             size_t len, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            status == MHD_HTTP_OK && owned ? CONTENT_TYPE
                                                           : "text/plain; charset=utf-8");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    struct metrics_http *h = cls;
    static char not_allowed[] = "method not allowed\n";
    static char not_found[] = "not found: try /metrics\n";
    static char failed[] = "cannot render metrics\n";
    static char index_text[] = INDEX_TEXT;

    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed, strlen(not_allowed),
                     false);
    if (strcmp(url, "/") == 0)
        return reply(conn, MHD_HTTP_OK, index_text, strlen(index_text), false);
    if (strcmp(url, "/metrics") != 0)
        return reply(conn, MHD_HTTP_NOT_FOUND, not_found, strlen(not_found), false);
    char *text = NULL;
    size_t len = 0;
    eddy_err err = metrics_render(h->reg, RENDER_LIMIT, &text, &len);
    if (err != EDDY_OK) {
        log_error("msg=\"cannot render metrics\" error=\"%s\"", eddy_strerror(err));
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, failed, strlen(failed), false);
    }
    return reply(conn, MHD_HTTP_OK, text, len, true);
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

eddy_err metrics_http_open(metrics *reg, const char *listen, metrics_http **out, int *port)
{
    *out = NULL;
    char host[256], portstr[8];
    if (!reg || !listen || !netaddr_split(listen, host, sizeof(host), portstr, sizeof(portstr)))
        return EDDY_ERR_INVALID;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0 || !ai) {
        log_error("msg=\"cannot resolve metrics address\" addr=%s error=\"%s\"", listen,
                  gai_strerror(rc));
        return EDDY_ERR_INVALID;
    }
    struct metrics_http *h = calloc(1, sizeof(*h));
    if (!h) {
        freeaddrinfo(ai);
        return EDDY_ERR_NOMEM;
    }
    h->reg = reg;
    unsigned int flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first: see its doc */
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned int)MAX_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned int)CONNECTION_TIMEOUT_S, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        log_error("msg=\"cannot listen for metrics\" addr=%s", listen);
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
