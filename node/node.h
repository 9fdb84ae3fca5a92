/* One Eddy node: the one place that wires the engine, the RPC servers, the membership, the
 * router, the forwarder, the mover, the checkpoints and the metrics of a node together,
 * and starts and stops them in order. node/main.c parses flags and waits for signals; tests
 * run several nodes in one process through the same calls.
 *
 * Modes: --dev (every role in one process, every partition, no etcd: the state backend is
 * the local engine) or a cluster member (roles ingest and/or state, partitions from the
 * coordinator's map in etcd: the state backend is the router). */
#ifndef EDDY_NODE_H
#define EDDY_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/security.h"


/* The exit code of a node whose store refused a write (a full disk, an I/O error): it
 * exits at once, before acknowledging anything written after the failure, and a restart
 * reopens the store (EX_TEMPFAIL; docs/operations.md, "Disk full"). */
#define NODE_EXIT_STORE_FAILED 75

/* Everything a node is configured with: node/main.c fills it from flags (every field is a
 * flag, see node_config_defaults for the defaults). Strings are borrowed for the node's
 * life. */
struct node_config {
    bool dev;
    const char *role, *etcd, *cluster, *node_id, *advertise_addr, *zone;
    int64_t lease_ttl, route_retries, route_timeout, join_timeout;
    const char *data_dir;
    const char *listen;
    const char *metrics_listen;
    const char *log_level;
    const char *dump_state;
    const char *verify_checkpoint;
    int64_t checkpoint_interval, checkpoint_min_pause, checkpoint_timeout, checkpoint_keep;
    int64_t checkpoint_threads;
    const char *checkpoint_dir;
    const char *checkpoint_key_file; /* "": plain checkpoints */
    int64_t partitions;
    int64_t grpc_threads, handler_threads, internal_threads, max_queued_calls;
    bool inline_reads;               /* --dev: per-user reads on the CQ thread when they can */
    int64_t max_message_size, max_batch, max_connection_age;
    int64_t max_id_bytes, max_name_bytes, max_query_bytes, max_metadata_entries,
        max_metadata_bytes, max_future_skew, max_event_age;
    int64_t window, out_of_orderness, allowed_lateness, idle_timeout;
    int64_t state_ttl, window_retention, log_retention, dedup_window, sweep_interval;
    int64_t affinity_half_life, popularity_half_life, neighbour_half_life;
    int64_t recent_items, max_affinities, max_cart, max_neighbours, max_purchased;
    int64_t cooccurrence_span, cooccurrence_items;
    double weight_popular, weight_neighbours, weight_context, weight_trending;
    int64_t diversity_cap, default_recommendations, max_recommendations, candidates;
    bool exclude_interacted;
    int64_t attribution_window_click, attribution_window_purchase; /* experiments' defaults */
    int64_t stage2_staleness, max_pending_events, max_group_events, cache_size, state_cache_size;
    int64_t flush_interval, flush_bytes, flush_chunk, read_barrier_timeout, max_apply_lag;
    int64_t trim_interval, compaction_nice;
    int64_t neighbour_cache, user_cache_size;
    int64_t pair_set_size, key_set_size;
    int64_t shutdown_grace;
    int64_t move_lag, move_freeze, move_final_wait, load_interval;
    int64_t replica_lag_timeout;
    int64_t replica_writable_wait;
    bool read_from_followers;    /* the router: reads may go to followers by default */
    int64_t max_follower_lag_records, max_follower_lag_ms; /* a follower's stale-read limits */
    struct security_flags sec;   /* TLS, protected mode, etcd security (docs/security.md) */
};

/* The defaults of every setting (those of eddy-node without flags). */
struct node_config node_config_defaults(void);

typedef struct node node;

/* Build a node from 'cfg' (borrowed for the node's life): open its state (the engine, the
 * caches, the checkpoint scheduler) and register its services, without listening yet.
 * Caller owns *out; free with node_free. On failure 'err' says why. */
eddy_err node_new(const struct node_config *cfg, node **out, char *err, size_t errlen);

/* Listen (gRPC and metrics), join the cluster (cluster mode: register in etcd, wait for the
 * coordinator's map, start the mover, the forwarder and the load publisher), start the
 * checkpoints and report SERVING. On failure 'err' says why; node_free cleans up. */
eddy_err node_start(node *n, char *err, size_t errlen);

/* The bound gRPC and metrics ports (0: not listening). */
int node_port(const node *n);
int node_metrics_port(const node *n);

/* The node's engine (NULL without the state role), for tests and tools: borrowed until
 * node_free. */
struct engine *node_engine(node *n);

/* Drain: health NOT_SERVING, stop taking calls, wait up to --shutdown-grace for the calls
 * in flight. After it, node_free also writes the final checkpoints (a graceful leave). */
void node_stop(node *n);

/* Stop everything still running, in order, and free the node. Accepts NULL. */
void node_free(node *n);

#endif
