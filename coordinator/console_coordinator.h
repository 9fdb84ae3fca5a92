/* The web console's endpoints on a coordinator (served on its metrics port by
 * common/metrics_http.c): the overview is the cluster as ClusterStatus describes it,
 * read from etcd at each request (coordinator/status.c). Read-only. */
#ifndef EDDY_CONSOLE_COORDINATOR_H
#define EDDY_CONSOLE_COORDINATOR_H

#include <stdint.h>

#include "common/metrics_http.h"
#include "coordinator/status.h"

/* What the endpoints read; borrowed, must outlive the metrics server. */
struct console_coordinator {
    struct status_service *status;
    const char *version;
    int64_t started_ms; /* wall clock */
};

/* The endpoints (api_ud: a struct console_coordinator) and the families /api/metrics
 * returns. */
extern const struct metrics_http_endpoint console_coordinator_endpoints[];
extern const size_t console_coordinator_nendpoints;
extern const char *const console_coordinator_chart_families[];
extern const size_t console_coordinator_nchart_families;

#endif
