/* The public eddy.v1.Experiments service of a node: A/B experiments on Recommend created,
 * changed, stopped, listed and read with their per-variant counts. Definitions live in
 * the node's registry (node/state/expreg.h: the store in --dev, etcd in a cluster); the
 * counts are the partitions' (node/state/attribution.h), summed by 'stats'. Handlers run
 * on the RPC handler threads; the admin role guards every method (common/auth.c). */
#ifndef EDDY_EXPERIMENTS_SERVICE_H
#define EDDY_EXPERIMENTS_SERVICE_H

#include <stdbool.h>

#include "common/worker.h"

#include "common/metrics.h"
#include "common/rpc_server.h"
#include "eddy/v1/eddy.pb-c.h"
#include "node/state/expreg.h"

/* The per-variant counts of experiment 'name' over every partition of the cluster (a
 * GetExperimentResponse with only 'stats', by variant name; caller owns it: free with
 * eddy__v1__get_experiment_response__free_unpacked). On an error, 'why' says it. */
typedef eddy_err experiments_stats_fn(void *ud, const char *name,
                                      Eddy__V1__GetExperimentResponse **out, char *why,
                                      size_t whylen);

#define EXPERIMENTS_METRICS_MAX 20 /* running experiments with Prometheus series */
#define EXPERIMENTS_FAMILIES 7     /* eddy_experiment_* */

struct experiments_service {
    expreg *reg;                 /* borrowed */
    experiments_stats_fn *stats; /* NULL: counts UNAVAILABLE */
    void *stats_ud;
    /* The counts of this node's share of the partitions (--dev: all; a cluster member: the
     * ones it leads), for the series: summed over the nodes they give the cluster's, each
     * partition once, wherever moves take it. NULL: no series (an ingest-only node). */
    experiments_stats_fn *local;
    void *local_ud;
    metrics *metrics;            /* borrowed; NULL: no series */
    int64_t refresh_ms;          /* how often the series are refreshed */

    /* DESIGN: the per-variant series (eddy_experiment_*{experiment, variant}) are sums over
     * the partitions' state, which only the apply changes (counting on the write path
     * would count replays too), so a thread of their own copies the node's sums ('local')
     * into gauges every refresh_ms, for the first EXPERIMENTS_METRICS_MAX running
     * experiments by name and their variants (bounded labels). Set by
     * experiments_service_start. */
    struct worker refresher;
    metric_family *fam[EXPERIMENTS_FAMILIES];
};

/* Register the five methods on 's'. 'svc' must outlive the server. */
eddy_err experiments_service_register(struct experiments_service *svc, rpc_server *s);

/* Start refreshing the series (a no-op without metrics or 'local'). */
eddy_err experiments_service_start(struct experiments_service *svc);

/* Stop the refresher (before whatever 'stats' reads goes). Accepts a service never
 * started. */
void experiments_service_stop(struct experiments_service *svc);

#endif
