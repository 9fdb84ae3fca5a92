/* eddy-node: flags, roles, signal handling, start and stop order.
 *
 * --dev runs every role in one process on one data directory with a static assignment of
 * all partitions to itself: the embedded default a newcomer starts with. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/etcd.h"
#include "common/health.h"
#include "common/log.h"
#include "common/metrics_http.h"
#include "common/partition.h"
#include "common/rpc_server.h"
#include "node/cluster/forwarder.h"
#include "node/cluster/loadpub.h"
#include "node/cluster/mover.h"
#include "node/cluster/membership.h"
#include "node/cluster/peers.h"
#include "node/cluster/reprocess_service.h"
#include "node/cluster/router.h"
#include "node/cluster/stage2_remote.h"
#include "node/cluster/replica.h"
#include "node/cluster/state_service.h"
#include "node/ingest/ingest_service.h"
#include "node/metrics_node.h"
#include "node/state/checkpoint.h"
#include "node/state/ckptsched.h"
#include "node/state/engine.h"
#include "node/state/popcache.h"

#define EDDY_VERSION "0.1.0"

struct node_config {
    bool dev;
    const char *role, *etcd, *cluster, *node_id, *advertise_addr;
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
    int64_t partitions;
    int64_t grpc_threads, handler_threads, internal_threads, max_queued_calls;
    int64_t max_message_size, max_batch, max_connection_age;
    int64_t max_id_bytes, max_name_bytes, max_query_bytes, max_metadata_entries,
        max_metadata_bytes, max_future_skew, max_event_age;
    int64_t window, out_of_orderness, allowed_lateness, idle_timeout;
    int64_t state_ttl, window_retention, log_retention, dedup_window, sweep_interval;
    int64_t affinity_half_life, popularity_half_life, neighbour_half_life;
    int64_t recent_items, max_affinities, max_cart, max_neighbours, max_purchased;
    int64_t cooccurrence_span, cooccurrence_items;
    double weight_popular, weight_neighbours, weight_context;
    int64_t diversity_cap, default_recommendations, max_recommendations, candidates;
    int64_t stage2_staleness, max_pending_events, max_group_events, cache_size, state_cache_size;
    int64_t neighbour_cache;
    int64_t shutdown_grace;
    int64_t move_lag, move_freeze, move_final_wait, load_interval;
    int64_t replica_lag_timeout;
};

#define DAY (24 * 3600 * 1000LL)

static struct node_config defaults(void)
{
    return (struct node_config){
        .role = "", .etcd = "", .cluster = "eddy", .node_id = "", .advertise_addr = "",
        .lease_ttl = 10000, .route_retries = 8, .route_timeout = 5000, .join_timeout = 60000,
        .data_dir = "./eddy-data", .listen = "127.0.0.1:7070", .metrics_listen = "127.0.0.1:9464",
        .log_level = "info",
        .partitions = PARTITION_DEFAULT_COUNT, .grpc_threads = 1, .handler_threads = 4,
        .internal_threads = 4, .max_queued_calls = 1024, .max_message_size = 4 << 20,
        .max_batch = 10000,
        .max_id_bytes = 128, .max_name_bytes = 128, .max_query_bytes = 512,
        .max_metadata_entries = 32, .max_metadata_bytes = 4096, .max_future_skew = 5 * 60000,
        .max_event_age = 0, .window = 60000, .out_of_orderness = 5000, .allowed_lateness = 0,
        .idle_timeout = 30000, .state_ttl = 30 * DAY, .window_retention = 7 * DAY,
        .log_retention = 7 * DAY, .dedup_window = DAY, .sweep_interval = 3600000,
        .affinity_half_life = 7 * DAY, .popularity_half_life = DAY, .neighbour_half_life = 7 * DAY,
        .recent_items = 20, .max_affinities = 50, .max_cart = 50, .max_neighbours = 50, .max_purchased = 10000,
        .cooccurrence_span = 30 * 60000, .cooccurrence_items = 10, .weight_popular = 1.0,
        .weight_neighbours = 1.5, .weight_context = 2.0, .diversity_cap = 3,
        .default_recommendations = 10, .max_recommendations = 100, .candidates = 50,
        .stage2_staleness = 1000, .max_pending_events = 200000, .max_group_events = 20000,
        .cache_size = 64 << 20, .state_cache_size = 256 << 20, .shutdown_grace = 10000, .neighbour_cache = 20000,
        .checkpoint_interval = 60000, .checkpoint_min_pause = 30000,
        .checkpoint_timeout = 600000, .checkpoint_keep = 3,
        .checkpoint_threads = 2, .checkpoint_dir = "",
        .move_lag = 1000, .move_freeze = 10000, .move_final_wait = 30000,
        .load_interval = 10000, .replica_lag_timeout = 10000,
    };
}

#define F(n, t, field, help, lo, hi) {n, t, &c->field, help, lo, hi}

static size_t node_flags(struct node_config *c, struct flag *out)
{
    const struct flag fl[] = {
        F("dev", FLAG_BOOL, dev, "run every role in one process, all partitions, no etcd", 0, 0),
        F("role", FLAG_STRING, role, "cluster mode: ingest, state or ingest,state", 0, 0),
        F("etcd", FLAG_STRING, etcd, "cluster mode: etcd endpoints (http://h:p[,http://h2:p2])", 0, 0),
        F("cluster", FLAG_STRING, cluster, "cluster name (etcd keys under /eddy/NAME/)", 0, 0),
        F("node-id", FLAG_STRING, node_id, "this node's id in the cluster (default: host-port)", 0, 0),
        F("advertise-addr", FLAG_STRING, advertise_addr,
          "host:port other nodes dial (default: the --listen host and bound port)", 0, 0),
        F("lease-ttl", FLAG_DURATION, lease_ttl,
          "etcd lease of the registration; writes stop before it could expire", 2000, 3600000),
        F("route-retries", FLAG_INT, route_retries,
          "rounds of retries of a partition whose owner refused or was unreachable", 0, 100),
        F("route-timeout", FLAG_DURATION, route_timeout, "deadline of one call to an owner", 1, 0),
        F("join-timeout", FLAG_DURATION, join_timeout,
          "how long to wait at start for the coordinator to create the cluster", 0, 0),
        F("data-dir", FLAG_STRING, data_dir, "directory of the node's LevelDB", 0, 0),
        F("listen", FLAG_STRING, listen, "gRPC address (host:port; port 0 picks one)", 0, 0),
        F("metrics-listen", FLAG_STRING, metrics_listen,
          "Prometheus /metrics address (host:port; port 0 picks one; empty disables)", 0, 0),
        F("log-level", FLAG_STRING, log_level, "debug, info, warn or error", 0, 0),
        F("dump-state", FLAG_STRING, dump_state,
          "print the tables (comma list, or 'all') of --data-dir as hex and exit", 0, 0),
        F("partitions", FLAG_INT, partitions, "partitions of the key space (fixed per cluster)",
          1, PARTITION_MAX_COUNT),
        F("grpc-threads", FLAG_INT, grpc_threads, "gRPC completion-queue threads", 1, 64),
        F("handler-threads", FLAG_INT, handler_threads,
          "handler threads of the public API (4: reads block on LevelDB and locks)", 1,
          256),
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
        F("weight-context", FLAG_DOUBLE, weight_context,
          "blend weight: neighbours of the current product and cart", 0, 0),
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
        F("max-pending-events", FLAG_INT, max_pending_events,
          "events queued for the writer before RESOURCE_EXHAUSTED", 1, 100000000),
        F("max-group-events", FLAG_INT, max_group_events, "events per group commit", 1, 10000000),
        F("cache-size", FLAG_SIZE, cache_size, "LevelDB block cache", 0, 0),
        F("state-cache-size", FLAG_SIZE, state_cache_size,
          "decoded state the writer keeps between group commits (estimated bytes)", 1 << 20,
          0),
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
        F("checkpoint-keep", FLAG_INT, checkpoint_keep, "checkpoints kept per partition", 1,
          1000),
        F("checkpoint-threads", FLAG_INT, checkpoint_threads,
          "checkpoints written at once (each is one partition's scan on one core)", 1, 64),
        F("move-lag", FLAG_INT, move_lag,
          "a move's target asks for the flip once this few log records behind the source", 0,
          100000000),
        F("move-freeze", FLAG_DURATION, move_freeze,
          "a move's source unfreezes a partition's stage 2 after this long without the "
          "target's FetchLog (the copy then starts again); likewise a cluster-wide "
          "reprocess's stage-2 freeze without its ingest node's renewal", 1000, 0),
        F("move-final-wait", FLAG_DURATION, move_final_wait,
          "a move's target retries the source's final log tail at least this long; once the "
          "source has left (or after 4 times this) it serves from its copy or the source's "
          "newer last checkpoint", 0, 0),
        F("replica-lag-timeout", FLAG_DURATION, replica_lag_timeout,
          "a follower whose log has not reached its leader's end for this long leaves the "
          "partition's in-sync set (writes need min-insync copies in it)", 100, 0),
        F("load-interval", FLAG_DURATION, load_interval,
          "publish this state node's per-partition event rates this often, for the "
          "coordinator's load balance (0 = never)", 0, 0),
        F("verify-checkpoint", FLAG_STRING, verify_checkpoint,
          "check the checkpoint file FILE, print what it holds as JSON and exit (1: bad)", 0, 0),
    };
    memcpy(out, fl, sizeof(fl));
    return sizeof(fl) / sizeof(fl[0]);
}

static void usage(FILE *out, const struct flag *fl, size_t n)
{
    fprintf(out, "eddy-node %s: Eddy's real-time analytics and personalization node\n\n"
                 "usage: eddy-node --dev [--data-dir DIR] [--listen HOST:PORT] [flags]\n"
                 "       eddy-node --data-dir DIR --dump-state user,user_win\n"
                 "       eddy-node --verify-checkpoint FILE\n\n"
                 "Every flag can also be set through its EDDY_* environment variable.\n\n",
            EDDY_VERSION);
    config_usage(out, fl, n);
}

static int dump_state(const struct node_config *c)
{
    static const struct {
        const char *name;
        enum store_table t;
    } names[] = {{"log", T_LOG}, {"dedup", T_DEDUP}, {"dedup_exp", T_DEDUP_EXP},
                 {"user", T_USER}, {"user_win", T_USER_WIN}, {"user_log", T_USER_LOG},
                 {"part_win", T_PART_WIN}, {"product", T_PRODUCT}, {"prod_win", T_PROD_WIN},
                 {"cat_pop", T_CAT_POP}, {"late", T_LATE}, {"s2_hw", T_S2_HW}, {"meta", T_META}};
    uint32_t mask = 0;
    char list[512];
    snprintf(list, sizeof(list), "%s", c->dump_state);
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i;
        if (strcmp(tok, "all") == 0) {
            mask = UINT32_MAX;
            continue;
        }
        for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            if (strcmp(tok, names[i].name) == 0)
                break;
        }
        if (i == sizeof(names) / sizeof(names[0])) {
            fprintf(stderr, "eddy-node: unknown table '%s' for --dump-state\n", tok);
            return 2;
        }
        mask |= UINT32_C(1) << names[i].t;
    }
    store *st = NULL;
    char err[256] = "";
    struct store_opts so = {c->data_dir, 8 << 20, 0};
    if (store_open(&so, &st, err, sizeof(err)) != EDDY_OK) {
        fprintf(stderr, "eddy-node: cannot open %s: %s\n", c->data_dir, err);
        return 1;
    }
    eddy_err e = store_dump(st, mask, stdout);
    store_close(st);
    return e == EDDY_OK ? 0 : 1;
}

/* --verify-checkpoint: 0 if FILE is a whole, valid checkpoint (printed as one JSON line),
 * 1 otherwise (the reason is logged). */
static int verify_checkpoint(const char *path)
{
    struct checkpoint_info ci;
    eddy_err e = checkpoint_verify(path, &ci);
    if (e != EDDY_OK) {
        fprintf(stderr, "eddy-node: %s: %s\n", path, eddy_strerror(e));
        return 1;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", ci.path);
    cJSON_AddNumberToObject(o, "partition", ci.partition);
    cJSON_AddNumberToObject(o, "version", ci.version);
    cJSON_AddNumberToObject(o, "seq", (double)ci.seq);
    cJSON_AddNumberToObject(o, "records", (double)ci.records);
    cJSON_AddNumberToObject(o, "bytes", (double)ci.bytes);
    cJSON_AddNumberToObject(o, "crc", ci.crc);
    cJSON_AddNumberToObject(o, "created_ms", (double)ci.created_ms);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text)
        return 1;
    printf("%s\n", text);
    free(text);
    return 0;
}

static void engine_options_from(const struct node_config *c, struct engine_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->data_dir = c->data_dir;
    o->cache_bytes = c->cache_size;
    o->state_cache_bytes = c->state_cache_size;
    struct apply_params *a = &o->apply;
    a->partitions = (uint32_t)c->partitions;
    a->window = (struct window_params){c->window, c->out_of_orderness, c->allowed_lateness,
                                       c->idle_timeout};
    a->model.affinity = (struct decay_params){c->affinity_half_life, 8};
    a->model.recent_items = (int)c->recent_items;
    a->model.max_affinities = (int)c->max_affinities;
    a->model.max_cart = (int)c->max_cart;
    a->cooccurrence_span_ms = c->cooccurrence_span;
    a->cooccurrence_items = (int)c->cooccurrence_items;
    a->dedup_window_ms = c->dedup_window;
    a->state_ttl_ms = c->state_ttl;
    a->window_retention_ms = c->window_retention;
    a->log_retention_ms = c->log_retention;
    a->sweep_interval_ms = c->sweep_interval;
    o->product.partitions = (uint32_t)c->partitions;
    o->product.popularity = (struct decay_params){c->popularity_half_life, 8};
    o->product.neighbours = (struct decay_params){c->neighbour_half_life, 8};
    o->product.max_neighbours = (int)c->max_neighbours;
    o->rec = (struct rec_params){c->weight_popular, c->weight_neighbours, c->weight_context,
                                 (int)c->diversity_cap};
    o->stage2_staleness_ms = c->stage2_staleness;
    o->candidates = (int)c->candidates;
    o->max_pending_events = c->max_pending_events;
    o->max_group_events = c->max_group_events;
}

/* The engine's cluster hooks reach the membership and the forwarder, which start after
 * the engine (the node must listen before it can register its address). */
struct cluster_hooks {
    membership *mem;
    forwarder *fwd;
    struct state_service *ss;
};

static bool hook_owns(void *ud, uint32_t p)
{
    struct cluster_hooks *h = ud;
    uint64_t epoch;
    return h->mem && membership_owns(h->mem, p, &epoch);
}

/* Stage 2 of partition p is applied here now (owned, and not frozen by a move). */
static bool hook_stage2_local(void *ud, uint32_t p)
{
    struct cluster_hooks *h = ud;
    return h->mem && state_service_stage2_local(h->ss, p);
}

static void hook_kick(void *ud)
{
    struct cluster_hooks *h = ud;
    if (h->fwd)
        forwarder_kick(h->fwd);
}

/* After each checkpoint in a cluster: /eddy/<cluster>/checkpoints/<p> = its metadata, a
 * plain put (no lease: the record outlives the node, so another node can restore from a
 * shared directory). Runs on the scheduler thread. */
struct ckpt_hook {
    struct cluster_hooks *hk;
    const char *cluster;
};

static void ckpt_written(void *ud, const struct checkpoint_info *ci)
{
    struct ckpt_hook *h = ud;
    membership *mem = h->hk->mem;
    if (!mem)
        return;
    struct cluster_checkpoint *rec = calloc(1, sizeof(*rec));
    char *json = NULL;
    if (!rec)
        goto out;
    const char *slash = strrchr(ci->path, '/');
    snprintf(rec->id, sizeof(rec->id), "%.127s", slash ? slash + 1 : ci->path);
    rec->seq = ci->seq;
    rec->bytes = ci->bytes;
    rec->crc = ci->crc;
    char abs[PATH_MAX];
    snprintf(rec->path, sizeof(rec->path), "%s", realpath(ci->path, abs) ? abs : ci->path);
    snprintf(rec->node, sizeof(rec->node), "%s", membership_self(mem));
    rec->created_ms = ci->created_ms;
    char suffix[64], key[CLUSTER_KEY_MAX];
    snprintf(suffix, sizeof(suffix), "checkpoints/%" PRIu32, ci->partition);
    cluster_key(key, sizeof(key), h->cluster, suffix);
    json = cluster_checkpoint_to_json(rec);
    if (!json)
        goto out;
    etcd_client *ec = membership_etcd(mem);
    if (etcd_put(ec, key, json, strlen(json), 0, NULL) != EDDY_OK)
        log_warn("msg=\"cannot record checkpoint in etcd\" key=%s error=\"%s\"", key,
                 etcd_last_error(ec));
out:
    free(json);
    free(rec);
}

static bool rebuild_busy(void *ud)
{
    return reprocess_service_busy(ud);
}

/* Readiness follows the etcd session: without it the node must not take traffic. */
static void on_alive(void *ud, bool alive)
{
    health_set(ud, "readiness", alive ? HEALTH_SERVING : HEALTH_NOT_SERVING);
}

/* After every change of the partition map: eddy_partitions_owned, and the take-over of
 * partitions that moved here (state_service_takeover). */
struct change_hook {
    metric_gauge *owned;
    struct state_service *ss; /* NULL: no state role */
    replica *rep;             /* NULL: no state role */
};

static void on_change(void *ud, membership *m)
{
    struct change_hook *h = ud;
    metric_gauge_set(h->owned, membership_owned_count(m));
    if (h->rep)
        replica_set_membership(h->rep, m);
    if (h->ss)
        state_service_takeover(h->ss);
}

/* Graceful leave: a last checkpoint of every owned partition with events, written after
 * the RPC server and the scheduler stopped and before the lease is revoked, so the next
 * owner restores everything this node acknowledged (with a shared --checkpoint-dir). */
static void final_checkpoints(const char *dir, engine *eng, membership *mem,
                              struct state_service *ss)
{
    if (!dir || !eng || !mem)
        return;
    engine_flush(eng);
    for (uint32_t p = 0; p < membership_partitions(mem); p++) {
        uint64_t epoch;
        struct engine_partition_view v;
        struct checkpoint_info info;
        engine_partition(eng, p, &v);
        /* a partition moving away counts too: its new owner may not have the final tail
         * yet, and restores this checkpoint when it cannot get it from us */
        if ((!membership_owns(mem, p, &epoch) && !state_service_moving_out(ss, p)) ||
            v.next_seq == 0)
            continue;
        if (checkpoint_write_dir(engine_store(eng), p, dir, &info) != EDDY_OK)
            log_warn("msg=\"final checkpoint failed\" partition=%u", p);
    }
}

/* The metrics address other processes scrape: the advertised host with the metrics port. */
static void metrics_advertise(int port, const char *grpc_addr, char *out, size_t len)
{
    const char *colon = strrchr(grpc_addr, ':');
    int hostlen = colon ? (int)(colon - grpc_addr) : (int)strlen(grpc_addr);
    snprintf(out, len, "%.*s:%d", hostlen, grpc_addr, port);
}

/* --advertise-addr, or the --listen host with the bound port. */
static void advertise(const struct node_config *c, int port, char *out, size_t len)
{
    if (c->advertise_addr[0]) {
        snprintf(out, len, "%s", c->advertise_addr);
        return;
    }
    const char *colon = strrchr(c->listen, ':');
    int hostlen = colon ? (int)(colon - c->listen) : (int)strlen(c->listen);
    snprintf(out, len, "%.*s:%d", hostlen, c->listen, port);
}

int main(int argc, char **argv)
{
    struct node_config cfg = defaults(), *c = &cfg;
    struct flag flags[80];
    size_t nflags = node_flags(c, flags);
    char err[512] = "";
    int rc = config_main("eddy-node", flags, nflags, argc, argv, usage, &c->log_level);
    if (rc >= 0)
        return rc;
    if (c->dump_state)
        return dump_state(c);
    if (c->verify_checkpoint)
        return verify_checkpoint(c->verify_checkpoint);
    bool clustered = !c->dev;
    unsigned roles = ROLE_INGEST | ROLE_STATE;
    if (clustered) {
        int rr = c->role[0] ? cluster_parse_roles(c->role) : -1;
        if (rr < 0 || !c->etcd[0]) {
            fprintf(stderr, "eddy-node: give --dev, or --role ingest|state|ingest,state with "
                            "--etcd URL (see --help)\n");
            return 2;
        }
        roles = (unsigned)rr;
    }

    /* Block the stop signals before any thread exists, so every thread inherits the mask
     * and main receives them in sigwait. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct engine_opts eo;
    engine_options_from(c, &eo);
    engine *eng = NULL;
    popcache *pop = NULL, *pop_cluster = NULL;
    struct cluster_hooks hk = {0};
    struct ckpt_hook ckh = {&hk, c->cluster};
    struct change_hook chh = {NULL, NULL, NULL};
    ckptsched *cks = NULL;
    char ckpt_dir[CHECKPOINT_PATH_MAX];
    peers *pe = NULL;
    membership *mem = NULL;
    forwarder *fwd = NULL;
    mover *mov = NULL;
    replica *rep = NULL;
    loadpub *lpub = NULL;
    struct stage2_remote s2;
    struct router router = {NULL, NULL, c->route_timeout, (int)c->route_retries,
                            {c->window, c->out_of_orderness, c->allowed_lateness, c->idle_timeout}};
    struct state_service ss;
    memset(&ss, 0, sizeof(ss));
    struct reprocess_service rps;
    memset(&rps, 0, sizeof(rps));
    stage2_side *s2side = NULL;
    rpc_server *srv = NULL;
    health *hl = NULL;
    metrics_http *mh = NULL;
    struct node_metrics nm;
    int status = 1;
    eddy_err e = node_metrics_init(&nm, EDDY_VERSION);
    if (e != EDDY_OK) {
        log_error("msg=\"cannot register metrics\" error=\"%s\"", eddy_strerror(e));
        goto out;
    }
    eo.metrics = nm.engine;
    if (clustered) {
        eo.cluster = (struct engine_cluster){hook_stage2_local, &hk, hook_kick, &hk,
                                             hook_owns, &hk};
        pe = peers_new(64 << 20);
        router.peers = pe;
        if (!pe)
            goto out;
    }
    if (roles & ROLE_STATE) {
        e = engine_open(&eo, &eng, err, sizeof(err));
        if (e != EDDY_OK) {
            log_error("msg=\"cannot open state\" data_dir=%s error=\"%s\"", c->data_dir,
                      err[0] ? err : eddy_strerror(e));
            goto out;
        }
        pop = popcache_new(engine_store(eng), &engine_options(eng)->product, c->stage2_staleness,
                           (size_t)c->candidates);
        if (!pop || popcache_set_neighbour_cache(pop, (size_t)c->neighbour_cache) != EDDY_OK)
            goto out;
        if (clustered) {
            /* Recommend reads stage 2 across the cluster; CategoryTop serves the local part */
            pop_cluster = popcache_new(engine_store(eng), &engine_options(eng)->product,
                                       c->stage2_staleness, (size_t)c->candidates);
            if (!pop_cluster ||
                popcache_set_neighbour_cache(pop_cluster, (size_t)c->neighbour_cache) != EDDY_OK)
                goto out;
            /* CategoryTop answers for the partitions this node owns (hk.mem once joined) */
            popcache_set_owns(pop, hook_owns, &hk);
            stage2_remote_init(&s2, NULL, pe, c->route_timeout);
            popcache_set_source(pop_cluster, &s2.source);
            ss.eng = eng;
            ss.local = pop;
            ss.q = (struct query_ctx){eng, pop_cluster, (int)c->default_recommendations,
                                      (int)c->max_recommendations, state_service_owns, NULL,
                                      (size_t)c->max_purchased};
        }
        if (c->checkpoint_interval > 0) {
            /* before any event can arrive: the log floors come from the files on disk */
            snprintf(ckpt_dir, sizeof(ckpt_dir), "%s", c->checkpoint_dir);
            if (!c->checkpoint_dir[0])
                snprintf(ckpt_dir, sizeof(ckpt_dir), "%s/checkpoints", c->data_dir);
            struct ckptsched_opts co = {
                .dir = ckpt_dir, .interval_ms = c->checkpoint_interval,
                .min_pause_ms = c->checkpoint_min_pause, .timeout_ms = c->checkpoint_timeout,
                .keep = (int)c->checkpoint_keep, .threads = (int)c->checkpoint_threads,
                .metrics = nm.checkpoint,
                .owns = clustered ? hook_owns : NULL, .owns_ud = &hk,
                .written = clustered ? ckpt_written : NULL, .written_ud = &ckh,
            };
            if ((e = ckptsched_new(eng, &co, &cks)) != EDDY_OK) {
                log_error("msg=\"cannot start checkpoints\" checkpoint_dir=%s error=\"%s\"",
                          ckpt_dir, eddy_strerror(e));
                goto out;
            }
        }
    }
    struct ingest_service svc = {
        .eng = eng,
        .router = clustered ? &router : NULL,
        .q = {eng, pop, (int)c->default_recommendations, (int)c->max_recommendations, NULL, NULL,
              (size_t)c->max_purchased},
        .lim = {c->max_id_bytes, c->max_name_bytes, c->max_query_bytes, c->max_metadata_entries,
                c->max_metadata_bytes, c->max_future_skew, c->max_event_age},
        .max_batch = c->max_batch,
        .m = nm.ingest,
    };
    struct rpc_server_opts so = {
        .listen = c->listen, .cq_threads = (int)c->grpc_threads,
        .handler_threads = (int)c->handler_threads, .max_queued_calls = (int)c->max_queued_calls,
        .lane_threads = {[STATE_LANE_USER] = (int)c->internal_threads,
                         [STATE_LANE_LEAF] = (int)c->internal_threads},
        .max_recv_bytes = c->max_message_size, .max_send_bytes = 64 << 20,
        .max_connection_age_ms = c->max_connection_age,
        .metrics = nm.reg, .busy_rejections = nm.rpc_busy,
    };
    srv = rpc_server_new(&so);
    hl = health_new();
    if (!srv || !hl) {
        log_error("msg=\"out of memory at start\"");
        goto out;
    }
    if (ingest_service_register(&svc, srv) != EDDY_OK || health_register(hl, srv) != EDDY_OK)
        goto out;
    if (clustered && (roles & ROLE_STATE) && state_service_register(&ss, srv) != EDDY_OK)
        goto out;
    if (clustered && eng) { /* the replicated log: ReplicaFetch is served from the start */
        struct replica_opts ro = {.eng = eng, .peers = pe, .partitions = (uint32_t)c->partitions,
                                  .lag_timeout_ms = c->replica_lag_timeout,
                                  .rpc_timeout_ms = c->route_timeout, .cluster = c->cluster,
                                  .metrics = nm.replica};
        if (!(rep = replica_new(&ro)) || replica_register(rep, srv) != EDDY_OK)
            goto out;
        ss.repl = rep;
    }
    if (clustered && eng) { /* the product half of a cluster-wide rebuild (reprocess) */
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/reprocess-s2.tmp", c->data_dir);
        struct stage2_side_opts s2o = {eng, dir, hook_owns, &hk, c->move_freeze};
        if (!(s2side = stage2_side_new(&s2o)))
            goto out;
        ss.s2 = s2side;
    }
    rps.eng = eng;
    rps.router = clustered ? &router : NULL;
    rps.data_dir = c->data_dir;
    rps.checkpoint_dir = c->checkpoint_dir;
    rps.s2 = s2side;
    rps.renew_ms = c->move_freeze / 3 > 0 ? c->move_freeze / 3 : 1;
    if (clustered && eng) { /* a rebuild and a live move of this node exclude each other */
        rps.moving = state_service_moving;
        rps.moving_ud = &ss;
        ss.rebuild_busy = rebuild_busy;
        ss.rebuild_ud = &rps;
    }
    if (reprocess_service_register(&rps, srv, roles & ROLE_INGEST) != EDDY_OK)
        goto out;
    /* partitions owned: all in --dev; in a cluster on_change follows the map */
    if (eng && node_metrics_watch(&nm, eng, clustered ? 0 : (uint32_t)c->partitions) != EDDY_OK)
        goto out;
    popcache *const caches[] = {pop, pop_cluster};
    if (eng && node_metrics_watch_caches(&nm, caches, 2) != EDDY_OK)
        goto out;
    int metrics_port = 0;
    if (c->metrics_listen[0] != '\0') {
        if ((e = metrics_http_open(nm.reg, c->metrics_listen, &mh, &metrics_port)) != EDDY_OK) {
            log_error("msg=\"cannot serve metrics\" metrics_listen=%s error=\"%s\"",
                      c->metrics_listen, eddy_strerror(e));
            goto out;
        }
        log_info("msg=\"metrics listening\" metrics_listen=%s metrics_port=%d",
                 c->metrics_listen, metrics_port);
    }
    int port = 0;
    if ((e = rpc_server_start(srv, &port)) != EDDY_OK) {
        log_error("msg=\"cannot listen\" listen=%s error=\"%s\"", c->listen, eddy_strerror(e));
        goto out;
    }
    if (clustered) {
        char addr[CLUSTER_ADDR_MAX], id[CLUSTER_ID_MAX];
        advertise(c, port, addr, sizeof(addr));
        if (c->node_id[0])
            snprintf(id, sizeof(id), "%s", c->node_id);
        else
            snprintf(id, sizeof(id), "%.127s", addr);
        char maddr[CLUSTER_ADDR_MAX] = "";
        if (mh)
            metrics_advertise(metrics_port, addr, maddr, sizeof(maddr));
        if (eng && state_service_takeover_init(&ss, (uint32_t)c->partitions) != EDDY_OK)
            goto out;
        ss.checkpoint_dir = cks ? ckpt_dir : NULL;
        ss.freeze_ms = c->move_freeze;
        hk.ss = &ss;
        chh = (struct change_hook){nm.partitions_owned, NULL, NULL};
        struct membership_opts mo = {c->etcd, c->cluster, id, roles, addr, maddr,
                                     (c->lease_ttl + 999) / 1000, 5000, on_alive, hl,
                                     on_change, &chh};
        if ((e = membership_start(&mo, c->join_timeout, &mem, err, sizeof(err))) != EDDY_OK) {
            log_error("msg=\"cannot join the cluster\" error=\"%s\"", err);
            rpc_server_shutdown(srv, 0);
            goto out;
        }
        if ((uint32_t)c->partitions != membership_partitions(mem) && eng) {
            log_error("msg=\"--partitions differs from the cluster's\" flag=%" PRId64
                      " cluster=%u",
                      c->partitions, membership_partitions(mem));
            rpc_server_shutdown(srv, 0);
            goto out;
        }
        router.mem = mem;
        s2.mem = mem;
        state_service_joined(&ss, mem);
        hk.mem = mem;
        if (eng) {
            /* the moves in progress first: a partition moving here is the mover's to make
             * ready, not the take-over's */
            struct mover_opts mvo = {
                .eng = eng, .mem = mem, .peers = pe, .ss = &ss, .cks = cks,
                .cluster = c->cluster, .lag_records = c->move_lag,
                .rpc_timeout_ms = c->route_timeout, .copy_timeout_ms = 600000,
                .final_wait_ms = c->move_final_wait, .metrics = nm.move,
            };
            if ((e = mover_start(&mvo, &mov)) != EDDY_OK) {
                log_error("msg=\"cannot start the mover\" error=\"%s\"", eddy_strerror(e));
                rpc_server_shutdown(srv, 0);
                goto out;
            }
            if (c->load_interval > 0 &&
                (e = loadpub_start(eng, mem, c->cluster, c->load_interval, &lpub)) != EDDY_OK) {
                log_error("msg=\"cannot start the load publisher\" error=\"%s\"",
                          eddy_strerror(e));
                rpc_server_shutdown(srv, 0);
                goto out;
            }
            /* from now on every map change takes over new partitions and follows the
             * replica sets */
            replica_set_membership(rep, mem);
            if ((e = replica_start(rep)) != EDDY_OK) {
                log_error("msg=\"cannot start the replica threads\" error=\"%s\"",
                          eddy_strerror(e));
                rpc_server_shutdown(srv, 0);
                goto out;
            }
            chh.rep = rep;
            chh.ss = &ss;
            state_service_takeover(&ss);
        }
        if (eng && !(fwd = forwarder_start(eng, mem, pe, c->route_timeout))) {
            rpc_server_shutdown(srv, 0);
            goto out;
        }
        hk.fwd = fwd;
        log_info("msg=\"joined cluster\" cluster=%s node=%s roles=%s advertise=%s partitions=%u",
                 c->cluster, id, c->role, addr, membership_partitions(mem));
    }
    /* after the membership: the scheduler asks it which partitions this node owns */
    if (cks && (e = ckptsched_start(cks)) != EDDY_OK) {
        log_error("msg=\"cannot start the checkpoint scheduler\" error=\"%s\"",
                  eddy_strerror(e));
        rpc_server_shutdown(srv, 0);
        goto out;
    }
    health_set(hl, "", HEALTH_SERVING);
    health_set(hl, "liveness", HEALTH_SERVING);
    /* in a cluster, readiness follows the etcd session (on_alive) */
    health_set(hl, "readiness",
               !clustered || membership_alive(mem) ? HEALTH_SERVING : HEALTH_NOT_SERVING);
    health_set(hl, "eddy.v1.Eddy", HEALTH_SERVING);
    log_info("msg=\"eddy-node ready\" mode=%s listen=%s port=%d data_dir=%s partitions=%" PRId64,
             clustered ? "cluster" : "dev", c->listen, port, c->data_dir, c->partitions);
    /* a line for scripts: the bound port (useful with :0) */
    printf("listening on %d\n", port);
    if (mh)
        printf("metrics on %d\n", metrics_port);
    fflush(stdout);

    int sig = 0;
    sigwait(&stop, &sig);
    log_info("msg=\"shutting down\" signal=%d", sig);
    health_set_all(hl, HEALTH_NOT_SERVING);
    health_shutdown(hl);
    /* writes waiting for their copies fail UNAVAILABLE (never acknowledged with fewer) and
     * the followers' parked fetches end, before the server drains */
    replica_stop(rep);
    rpc_server_shutdown(srv, c->shutdown_grace);
    status = 0;
out:
    replica_stop(rep);       /* before the membership its map changes come from */
    chh.rep = NULL;
    rpc_server_free(srv);
    metrics_http_close(mh); /* after the RPC server (scrapes see the drain to the end), before
                             * the caches and the engine its scrapes read */
    /* their refresher threads read the store and call the peers: stop them first */
    popcache_free(pop);
    popcache_free(pop_cluster);
    bool checkpoints = cks != NULL;
    ckptsched_free(cks);     /* before the membership its hooks use and the engine */
    if (status == 0 && checkpoints)
        final_checkpoints(ckpt_dir, eng, mem, &ss);
    loadpub_stop(lpub);
    mover_stop(mov);         /* a move in progress resumes at the next start */
    reprocess_service_stop(&rps); /* a rebuild still running gives up, swapping nothing */
    forwarder_stop(fwd);     /* unsent stage-2 records stay in the OUTBOX for next time */
    membership_stop(mem);    /* revokes the lease: the coordinator reassigns at once */
    hk.mem = NULL;
    engine_close(eng); /* finishes queued writes, closes LevelDB */
    stage2_side_free(s2side); /* after the engine: its owns() hook asks it */
    state_service_takeover_release(&ss);
    replica_free(rep);       /* after the server and the membership that call into it */
    peers_free(pe);
    health_free(hl);
    node_metrics_release(&nm); /* last: late answers from the writer still count */
    if (status == 0)
        log_info("msg=\"stopped cleanly\"");
    return status;
}
