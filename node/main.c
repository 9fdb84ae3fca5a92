/* eddy-node: flags and signals. The node itself (what it is made of, the start and stop
 * order) is node/node.c.
 *
 * --dev runs every role in one process on one data directory with all partitions: the
 * embedded default a newcomer starts with. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/partition.h"
#include "node/node.h"
#include "node/offline.h"
#include "node/state/recommend.h"

#define F(n, t, field, help, lo, hi) {n, t, &c->field, help, lo, hi}

/* Every flag of eddy-node, pointing into 'c'. Caller frees the array; *n: its length. */
static struct flag *node_flags(struct node_config *c, size_t *n)
{
    const struct flag fl[] = {
        F("dev", FLAG_BOOL, dev, "run every role in one process, all partitions, no etcd", 0, 0),
        F("role", FLAG_STRING, role, "cluster mode: ingest, state or ingest,state", 0, 0),
        F("etcd", FLAG_STRING, etcd, "cluster mode: etcd endpoints (http://h:p[,http://h2:p2])", 0, 0),
        F("cluster", FLAG_STRING, cluster, "cluster name (etcd keys under /eddy/NAME/)", 0, 0),
        F("node-id", FLAG_STRING, node_id, "this node's id in the cluster (default: host-port)", 0, 0),
        F("advertise-addr", FLAG_STRING, advertise_addr,
          "host:port other nodes dial (default: the --listen host and bound port)", 0, 0),
        F("zone", FLAG_STRING, zone,
          "this node's failure domain (rack, availability zone): the replicas of a partition "
          "go to distinct zones when there are enough", 0, 0),
        F("lease-ttl", FLAG_DURATION, lease_ttl,
          "etcd lease of the registration; writes stop before it could expire", 2000, 3600000),
        F("route-retries", FLAG_INT, route_retries,
          "rounds of retries of a partition whose owner refused or was unreachable", 0, 100),
        F("route-timeout", FLAG_DURATION, route_timeout, "deadline of one call to an owner", 1, 0),
        F("read-from-followers", FLAG_BOOL, read_from_followers,
          "every per-user read (Recommend, GetUserProfile, a user's EventCounts) may be "
          "answered by a follower of the partition, as if it said allow_stale", 0, 0),
        F("max-follower-lag-records", FLAG_INT, max_follower_lag_records,
          "a follower refuses stale reads when it lacks more of its leader's records than "
          "this", 0, 0),
        F("max-follower-lag-ms", FLAG_DURATION, max_follower_lag_ms,
          "a follower refuses stale reads when its leader's last answer is older than this",
          0, 0),
        F("join-timeout", FLAG_DURATION, join_timeout,
          "how long to wait at start for the coordinator to create the cluster", 0, 0),
        F("data-dir", FLAG_STRING, data_dir, "directory of the node's LevelDB", 0, 0),
        F("listen", FLAG_STRING, listen, "gRPC address (host:port; port 0 picks one)", 0, 0),
        F("metrics-listen", FLAG_STRING, metrics_listen,
          "Prometheus /metrics address (host:port; port 0 picks one; empty disables)", 0, 0),
        F("log-level", FLAG_STRING, log_level, "debug, info, warn or error", 0, 0),
        F("dump-state", FLAG_STRING, dump_state,
          "print the tables (comma list, or 'all') of --data-dir as hex and exit", 0, 0),
        F("partitions", FLAG_INT, partitions,
          "partitions of --dev (a cluster node uses the cluster's count)", 1,
          PARTITION_MAX_COUNT),
        F("grpc-threads", FLAG_INT, grpc_threads, "gRPC completion-queue threads", 1, 64),
        F("handler-threads", FLAG_INT, handler_threads,
          "handler threads of the public API (4: reads block on LevelDB and locks)", 1,
          256),
        F("inline-reads", FLAG_BOOL, inline_reads,
          "--dev: Recommend and GetUserProfile run on the completion-queue thread while "
          "nothing acknowledged waits to be applied (no hand-off to a handler thread)", 0, 0),
        F("internal-threads", FLAG_INT, internal_threads,
          "cluster mode: handler threads of each internal lane (State/User; other State calls)",
          1, 256),
        F("max-queued-calls", FLAG_INT, max_queued_calls,
          "calls waiting for a handler (per lane) before RESOURCE_EXHAUSTED", 1, 1000000),
        F("max-message-size", FLAG_SIZE, max_message_size,
          "largest request message (RESOURCE_EXHAUSTED above)", 1024, 1 << 30),
        F("max-batch", FLAG_INT, max_batch, "events per Ingest request (INVALID_ARGUMENT above)",
          1, 1000000),
        F("max-connection-age", FLAG_DURATION, max_connection_age,
          "close client connections after this age so load spreads (0 = never)", 0, 0),
        F("max-id-bytes", FLAG_INT, max_id_bytes, "longest event/user/session/product id", 1,
          REC_ID_CAP),
        F("max-name-bytes", FLAG_INT, max_name_bytes, "longest category or brand", 1, REC_ID_CAP),
        F("max-query-bytes", FLAG_INT, max_query_bytes, "longest search query", 1, 65536),
        F("max-metadata-entries", FLAG_INT, max_metadata_entries, "metadata entries per event",
          0, 10000),
        F("max-metadata-bytes", FLAG_SIZE, max_metadata_bytes, "metadata bytes per event", 0,
          1 << 20),
        F("max-future-skew", FLAG_DURATION, max_future_skew,
          "how far ahead of the node's clock an event may be", 0, 0),
        F("max-event-age", FLAG_DURATION, max_event_age,
          "how old an event may be (0 = any age, e.g. backfills)", 0, 0),
        F("window", FLAG_DURATION, window, "event-time tumbling window length", 1, 0x7fffffffLL * 1000),
        F("out-of-orderness", FLAG_DURATION, out_of_orderness,
          "watermark = max event time minus this", 0, 0),
        F("allowed-lateness", FLAG_DURATION, allowed_lateness,
          "windows stay open this long after the watermark passes them", 0, 0),
        F("idle-timeout", FLAG_DURATION, idle_timeout,
          "quiet partitions advance their watermark by processing time after this (0 = never)",
          0, 0),
        F("state-ttl", FLAG_DURATION, state_ttl, "user models expire after this inactivity (0 = never)", 0, 0),
        F("window-retention", FLAG_DURATION, window_retention, "windows kept after they end (0 = forever)", 0, 0),
        F("log-retention", FLAG_DURATION, log_retention, "log entries kept (0 = forever; at least --dedup-window)", 0, 0),
        F("dedup-window", FLAG_DURATION, dedup_window, "event ids remembered for dedup", 0, 0),
        F("sweep-interval", FLAG_DURATION, sweep_interval, "event time between TTL sweeps", 0, 0),
        F("affinity-half-life", FLAG_DURATION, affinity_half_life,
          "half-life of category/brand affinities", 1, 0),
        F("popularity-half-life", FLAG_DURATION, popularity_half_life,
          "half-life of product popularity", 1, 0),
        F("neighbour-half-life", FLAG_DURATION, neighbour_half_life,
          "half-life of co-occurrence scores", 1, 0),
        F("recent-items", FLAG_INT, recent_items, "recent views/searches/purchases kept", 1, 1000),
        F("max-affinities", FLAG_INT, max_affinities, "categories/brands kept per user", 1, 10000),
        F("max-cart", FLAG_INT, max_cart, "cart entries kept per user", 1, 10000),
        F("max-purchased", FLAG_INT, max_purchased,
          "purchased products a Recommend reads to exclude them (a user's first N by id)", 1,
          10000000),
        F("max-neighbours", FLAG_INT, max_neighbours, "co-occurrence neighbours per product", 1,
          10000),
        F("cooccurrence-span", FLAG_DURATION, cooccurrence_span,
          "two items of one user within this time are a pair", 0, 0),
        F("cooccurrence-items", FLAG_INT, cooccurrence_items,
          "recent items paired with each new item", 0, 64),
        F("weight-popular", FLAG_DOUBLE, weight_popular, "blend weight: popular in your categories", 0, 0),
        F("weight-neighbours", FLAG_DOUBLE, weight_neighbours,
          "blend weight: neighbours of your recent items", 0, 0),
        F("weight-trending", FLAG_DOUBLE, weight_trending,
          "blend weight: popular now overall (0 = only fills the answer's tail)", 0, 0),
        F("weight-context", FLAG_DOUBLE, weight_context,
          "blend weight: neighbours of the current product and cart", 0, 0),
        F("exclude-interacted", FLAG_BOOL, exclude_interacted,
          "Recommend leaves out what the user viewed, clicked or carted (requests may ask "
          "otherwise; purchases always)", 0, 0),
        F("attribution-window-click", FLAG_DURATION, attribution_window_click,
          "an experiment's clicks without a recommendation_id count for the latest answer "
          "that listed the product this long before (experiments may set their own)",
          1, 30 * 86400000LL),
        F("attribution-window-purchase", FLAG_DURATION, attribution_window_purchase,
          "the same for adds to cart and purchases", 1, 30 * 86400000LL),
        F("diversity-cap", FLAG_INT, diversity_cap, "items per category in one answer (0 = no cap)",
          0, 1000),
        F("default-recommendations", FLAG_INT, default_recommendations,
          "items when the request asks for 0", 1, 1000),
        F("max-recommendations", FLAG_INT, max_recommendations, "most items per request", 1, 1000),
        F("candidates", FLAG_INT, candidates, "candidates per source list", 1, 1000),
        F("stage2-staleness", FLAG_DURATION, stage2_staleness,
          "popularity and neighbour lists may be this old", 0, 0),
        F("neighbour-cache", FLAG_INT, neighbour_cache,
          "products whose neighbour lists Recommend caches (~3 kB each; 0 = none)", 0,
          100000000),
        F("user-cache-size", FLAG_SIZE, user_cache_size,
          "what Recommend reads of users, kept in memory (estimated bytes; 0 = none)", 0, 0),
        F("max-pending-events", FLAG_INT, max_pending_events,
          "events queued for the writer before RESOURCE_EXHAUSTED", 1, 100000000),
        F("max-group-events", FLAG_INT, max_group_events, "events per group commit", 1, 10000000),
        F("cache-size", FLAG_SIZE, cache_size, "LevelDB block cache", 0, 0),
        F("state-cache-size", FLAG_SIZE, state_cache_size,
          "decoded state the writer keeps between group commits, its table included (bytes)",
          1 << 20, 0),
        F("pair-set-size", FLAG_SIZE, pair_set_size,
          "memory for the sets of co-occurrence pairs that exist, which spare a new pair a "
          "LevelDB read (16-32 bytes a pair; a product partition past it reads; 0 = none)",
          0, 0),
        F("key-set-size", FLAG_SIZE, key_set_size,
          "memory for the sets of the user, product and impression rows that exist, which "
          "spare a new user or product, and a user without impressions, a LevelDB read "
          "(16-32 bytes a row; a partition's table past it reads; 0 = none)",
          0, 0),
        F("flush-interval", FLAG_DURATION, flush_interval,
          "write derived state behind the log this often (0 = every group commit, synced)", 0,
          0),
        F("flush-bytes", FLAG_SIZE, flush_bytes,
          "flush derived state sooner past this much unwritten (twice: acks wait)", 1 << 20, 0),
        F("trim-interval", FLAG_DURATION, trim_interval,
          "after a flush, give the memory malloc holds free back to the OS at most this often "
          "(0 = never)",
          0, 0),
        F("flush-chunk", FLAG_SIZE, flush_chunk,
          "bytes per LevelDB write of a flush, whole partitions each: an acknowledgement's "
          "write waits for at most one (0 = one write per flush)",
          0, 0),
        F("compaction-nice", FLAG_INT, compaction_nice,
          "nice value of LevelDB's compaction thread (10: below the acknowledgements' "
          "threads, for oversubscribed cores; 0 = the node's)",
          0, 19),
        F("read-barrier-timeout", FLAG_DURATION, read_barrier_timeout,
          "a query waits this long at most for the events acknowledged before it to be "
          "applied (0 = no wait)",
          0, 0),
        F("max-apply-lag", FLAG_INT, max_apply_lag,
          "acknowledged records not applied yet past which no more events are taken until "
          "the apply catches up",
          1, 100000000),
        F("shutdown-grace", FLAG_DURATION, shutdown_grace,
          "on SIGTERM, wait this long for in-flight calls", 0, 0),
        F("checkpoint-interval", FLAG_DURATION, checkpoint_interval,
          "write a checkpoint of each owned partition this often, staggered (0 = never)", 0, 0),
        F("checkpoint-min-pause", FLAG_DURATION, checkpoint_min_pause,
          "at least this long between the end of a partition's checkpoint and its next", 0, 0),
        F("checkpoint-timeout", FLAG_DURATION, checkpoint_timeout,
          "give up a checkpoint (counted as a failure) after this (0 = never)", 0, 0),
        F("checkpoint-dir", FLAG_STRING, checkpoint_dir,
          "checkpoint files (default DATA_DIR/checkpoints; may be shared by nodes)", 0, 0),
        F("checkpoint-key-file", FLAG_STRING, checkpoint_key_file,
          "encrypt checkpoints (and a move's checkpoint stream) with AES-256-GCM under the key "
          "in FILE: 32 raw bytes or 64 hex digits, the same on every node of the cluster; "
          "also the key --verify-checkpoint reads with",
          0, 0),
        F("checkpoint-keep", FLAG_INT, checkpoint_keep, "checkpoints kept per partition", 1,
          1000),
        F("checkpoint-threads", FLAG_INT, checkpoint_threads,
          "checkpoints written at once (each is one partition's scan on one core)", 1, 64),
        F("move-lag", FLAG_INT, move_lag,
          "a move's target asks for the flip once this few log records behind the source", 0,
          100000000),
        F("move-freeze", FLAG_DURATION, move_freeze,
          "a move's source unfreezes a partition's stage 2 after this long without the "
          "target's FetchLog once the target has taken the checkpoint's stream, or "
          "without the target reading it (the copy then starts again); likewise a cluster-wide "
          "reprocess's stage-2 freeze without its ingest node's renewal", 1000, 0),
        F("move-final-wait", FLAG_DURATION, move_final_wait,
          "a move's target retries the source's final log tail at least this long; once the "
          "source has left (or after 4 times this) it serves from its copy or the source's "
          "newer last checkpoint", 0, 0),
        F("replica-lag-timeout", FLAG_DURATION, replica_lag_timeout,
          "a follower whose log has not reached its leader's end for this long leaves the "
          "partition's in-sync set (writes need min-insync copies in it)", 100, 0),
        F("replica-writable-wait", FLAG_DURATION, replica_writable_wait,
          "a write of a partition short of min-insync copies (a new follower catching up) is "
          "held this long and applied once it has them, before it is refused (0 = refused at "
          "once)", 0, 0),
        F("load-interval", FLAG_DURATION, load_interval,
          "publish this state node's per-partition event rates this often, for the "
          "coordinator's load balance (0 = never)", 0, 0),
        F("verify-checkpoint", FLAG_STRING, verify_checkpoint,
          "check the checkpoint file FILE, print what it holds as JSON and exit (1: bad)", 0, 0),
    };
    struct flag *out = malloc(sizeof(fl) + SECURITY_NFLAGS * sizeof(struct flag));
    if (!out)
        return NULL;
    memcpy(out, fl, sizeof(fl));
    *n = sizeof(fl) / sizeof(fl[0]);
    *n += security_flags_list(&c->sec,
                              "PEM certificate of the gRPC port (TLS on; reloaded when the file "
                              "changes); in a cluster also the certificate this node presents "
                              "to the other nodes",
                              out + *n);
    return out;
}

static void usage(FILE *out, const struct flag *fl, size_t n)
{
    fprintf(out, "eddy-node %s: Eddy's real-time analytics and personalization node\n\n"
                 "usage: eddy-node --dev [--data-dir DIR] [--listen HOST:PORT] [flags]\n"
                 "       eddy-node --data-dir DIR --dump-state user,user_win\n"
                 "       eddy-node --verify-checkpoint FILE [--checkpoint-key-file KEY]\n"
                 "       eddy-node --version\n\n"
                 "Every flag can also be set through its EDDY_* environment variable.\n\n",
            EDDY_VERSION);
    config_usage(out, fl, n);
}

int main(int argc, char **argv)
{
    struct node_config cfg = node_config_defaults(), *c = &cfg;
    size_t nflags = 0;
    struct flag *flags = node_flags(c, &nflags);
    if (!flags) {
        fprintf(stderr, "eddy-node: out of memory\n");
        return 1;
    }
    int rc = config_main("eddy-node", flags, nflags, argc, argv, usage, &c->log_level);
    free(flags);
    if (rc >= 0)
        return rc;
    if (c->dump_state)
        return offline_dump_state(c->data_dir, c->dump_state);
    if (c->verify_checkpoint)
        return offline_verify_checkpoint(c->verify_checkpoint, c->checkpoint_key_file);

    /* Block the stop signals before any thread exists, so every thread inherits the mask
     * and main receives them in sigwait. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[1024] = "";
    node *n = NULL;
    eddy_err e = node_new(c, &n, err, sizeof(err));
    if (e == EDDY_ERR_INVALID) { /* a usage error */
        fprintf(stderr, "eddy-node: %s\n", err);
        return 2;
    }
    if (e != EDDY_OK) {
        log_error("msg=\"cannot start\" error=\"%s\"", err);
        return 1;
    }
    if (node_start(n, err, sizeof(err)) != EDDY_OK) {
        log_error("msg=\"cannot start\" error=\"%s\"", err);
        node_free(n);
        return 1;
    }
    /* a line for scripts: the bound ports (useful with :0) */
    printf("listening on %d\n", node_port(n));
    if (node_metrics_port(n))
        printf("metrics on %d\n", node_metrics_port(n));
    fflush(stdout);

    int sig = 0;
    sigwait(&stop, &sig);
    log_info("msg=\"shutting down\" signal=%d", sig);
    node_stop(n);
    node_free(n);
    log_info("msg=\"stopped cleanly\"");
    return 0;
}
