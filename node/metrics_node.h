/* The metrics of an eddy-node process: one registry with the process and build metrics,
 * the grpc_server_* series (filled by rpc_server), and the eddy_* series, handed to the
 * engine and the ingest service as small structs of series pointers. */
#ifndef EDDY_METRICS_NODE_H
#define EDDY_METRICS_NODE_H

#include <stdint.h>

#include "common/metrics.h"
#include "node/cluster/mover.h"
#include "node/cluster/replica.h"
#include "node/ingest/ingest_service.h"
#include "node/state/ckptsched.h"
#include "node/state/engine.h"
#include "node/state/query.h"
#include "node/state/stage2cache.h"
#include "node/state/usercache.h"

struct node_metrics {
    metrics *reg;                   /* owned */
    struct engine_metrics engine;   /* copy into engine_opts.metrics */
    struct ingest_metrics ingest;   /* copy into ingest_service.m */
    struct ckptsched_metrics checkpoint; /* copy into ckptsched_opts.metrics */
    struct mover_metrics move;      /* copy into mover_opts.metrics */
    struct replica_metrics replica; /* copy into replica_opts.metrics */
    metric_counter *rpc_busy;       /* for rpc_server_opts.busy_rejections */
    metric_gauge *partitions_owned;
    engine *eng;                    /* borrowed, for the scrape-time gauges */
    stage2cache *caches[2];         /* borrowed, for the neighbour cache counters */
    size_t ncaches;
    usercache *users;               /* borrowed, for the user cache counters */
    metric_histogram *recommend[QUERY_PHASES]; /* for query_ctx.recommend_seconds */
};

/* Create the registry and register every series. 'version' labels eddy_build_info. */
eddy_err node_metrics_init(struct node_metrics *nm, const char *version);

/* Register the gauges computed from 'eng' at scrape time (queue depth, LevelDB size,
 * watermark lag) and set eddy_partitions_owned. 'eng' must outlive every render of the
 * registry: stop the metrics endpoint before engine_close. */
eddy_err node_metrics_watch(struct node_metrics *nm, engine *eng, uint32_t partitions_owned);

/* Register the counters of the neighbour caches 'caches[0..n)' (n <= 2), summed, read at
 * scrape time: they must outlive every render (stop the metrics endpoint before
 * stage2cache_free). */
eddy_err node_metrics_watch_caches(struct node_metrics *nm, stage2cache *const *caches,
                                   size_t n);

/* Register the counters of the user cache 'uc' (may be NULL: none), read at scrape time: it
 * must outlive every render (stop the metrics endpoint before usercache_free). */
eddy_err node_metrics_watch_users(struct node_metrics *nm, usercache *uc);

/* Free the registry (after everything that updates or renders it has stopped). */
void node_metrics_release(struct node_metrics *nm);

#endif
