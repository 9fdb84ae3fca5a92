/* The web console's endpoints on a node (served on the metrics port by
 * common/metrics_http.c): the overview (--dev: its one-node status; a cluster member: its
 * view of the map), a user's profile and recommendations, and the top products, answered
 * through the same state backend as the public API (node/backend.h), so the console shows
 * what a client would read. Read-only. */
#ifndef EDDY_CONSOLE_NODE_H
#define EDDY_CONSOLE_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "common/metrics_http.h"
#include "node/backend.h"
#include "node/cluster/membership.h"
#include "node/dev_status.h"

/* What the endpoints read. Everything is borrowed and must outlive the metrics server;
 * the handlers run on its threads, several at once, and only read it. */
struct console_node {
    struct backend state;           /* the public API's backend */
    const struct dev_status *dev;   /* --dev: the overview; NULL in a cluster */
    /* a cluster member's view once it joined (NULL before): called at each request */
    membership *(*membership)(void *ud);
    void *membership_ud;
    const char *id;                 /* --node-id ("" : the gRPC address) */
    const char *roles;              /* "ingest,state" */
    const char *version;
    int64_t started_ms;             /* wall clock */
    size_t max_id_bytes, max_name_bytes; /* the public API's limits of an id, a category */
    uint32_t max_recommendations;
};

/* The endpoints (api_ud: a struct console_node) and the families /api/metrics returns. */
extern const struct metrics_http_endpoint console_node_endpoints[];
extern const size_t console_node_nendpoints;
extern const char *const console_node_chart_families[];
extern const size_t console_node_nchart_families;

#endif
