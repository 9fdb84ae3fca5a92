/* A node's wiring: what it is made of, in which order the parts start and stop. */
#include "node/node.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/cluster.h"
#include "common/etcd.h"
#include "common/health.h"
#include "common/netaddr.h"
#include "node/console_node.h"
#include "node/dev_status.h"
#include "common/log.h"
#include "common/metrics_http.h"
#include "common/partition.h"
#include "common/reflection.h"
#include "common/rpc_server.h"
#include "common/tls.h"
#include "node/cluster/ckptpub.h"
#include "node/cluster/forwarder.h"
#include "node/cluster/loadpub.h"
#include "node/cluster/membership.h"
#include "node/cluster/mover.h"
#include "node/cluster/peers.h"
#include "node/cluster/replica.h"
#include "node/cluster/reprocess_service.h"
#include "node/cluster/router.h"
#include "node/cluster/stage2_remote.h"
#include "node/cluster/state_service.h"
#include "node/ingest/ingest_service.h"
#include "node/metrics_node.h"
#include "node/state/checkpoint.h"
#include "node/state/ckptsched.h"
#include "node/state/engine.h"
#include "node/state/stage2cache.h"
#include "node/state/usercache.h"
#include "node/state/expreg.h"
#include "node/experiments_service.h"
#include "node/cluster/expsync.h"

#define DAY (24 * 3600 * 1000LL)
/* Methods only cluster members may call when TLS is on (State, ReplicaFetch, ...); a --dev
 * node serves them only to itself (in-process). */
#define INTERNAL_API_PREFIX "/eddy.state.v1."
/* The address of a --dev node in its static partition map: never dialled, its peers call
 * it in-process (peers_set_local). */
#define DEV_SELF_ADDR "in-process"

/* Who owns what: everything below is owned by the node and freed by node_free, except
 * the strings of 'cfg' (borrowed from the caller's config). 'mem', 'fwd' are set once the node joined; the engine's and the
 * scheduler's hooks read them through the node. One thread (the caller of
 * node_new/start/stop/free) changes the node; hooks run on the engine's and the
 * scheduler's threads. */
struct node {
    const struct node_config *cfg;   /* &own_cfg */
    struct node_config own_cfg;      /* the caller's, with a cluster's --partitions adopted */
    bool clustered;                  /* an etcd cluster; else --dev: a static map (all here) */
    unsigned roles;                  /* ROLE_* bits */
    struct node_metrics nm;
    bool metrics_ready;
    engine *eng;                     /* state role */
    stage2cache *pop;                /* this node's own stage 2 (state role) */
    stage2cache *pop_cluster;        /* cluster: Recommend reads stage 2 across the cluster */
    usercache *users;                /* Recommend's users (state role) */
    ckptsched *cks;
    char ckpt_dir[CHECKPOINT_PATH_MAX];
    struct ckptkey ckpt_key;         /* --checkpoint-key-file; the engine borrows it */
    peers *pe;
    membership *_Atomic mem;
    forwarder *_Atomic fwd;
    mover *mov;
    replica *rep;                    /* cluster state role: the replicated log */
    _Atomic bool following;          /* hook_change: the map goes to 'rep' */
    loadpub *lpub;
    struct stage2_remote s2;
    struct router router;
    struct state_service ss;
    struct reprocess_service rps;
    stage2_side *s2side;
    struct ingest_service svc;
    expreg *exps;                    /* the experiments (--dev: kept in the engine's store) */
    expsync *exsync;                 /* cluster: 'exps' kept in etcd (started by join) */
    struct experiments_service xs;
    struct dev_status ds;            /* --dev: ClusterStatus of a one-node cluster */
    rpc_server *srv;
    auth *auth;                      /* --token-file's gate of srv; NULL = tokens off */
    health *hl;
    reflection *refl;                /* server reflection of srv (grpcurl) */
    metrics_http *mh;
    struct console_node console;     /* what the console on the metrics port reads */
    metric_gauge *owned_gauge;       /* on_change: eddy_partitions_owned */
    _Atomic bool takeover;           /* on_change: take over partitions that moved here */
    int port, metrics_port;
    bool stopped;                    /* node_stop ran: node_free leaves gracefully */
    struct tls_config tls;           /* from cfg: the server and the peer channels */
    struct etcd_security etcd_sec;   /* from cfg: membership's etcd client */
};

struct node_config node_config_defaults(void)
{
    return (struct node_config){
        .role = "", .etcd = "", .cluster = "eddy", .node_id = "", .advertise_addr = "", .zone = "",
        .lease_ttl = 10000, .route_retries = 8, .route_timeout = 5000, .join_timeout = 60000,
        .data_dir = "./eddy-data", .listen = "127.0.0.1:7070", .metrics_listen = "127.0.0.1:9464",
        .log_level = "info",
        .partitions = PARTITION_DEFAULT_COUNT, .grpc_threads = 1, .handler_threads = 4,
        .inline_reads = false, /* p99 1.7-2.5x at 5,000 QPS (docs/BENCHMARKS.md) */
        .internal_threads = 4, .max_queued_calls = 1024, .max_message_size = 4 << 20,
        .max_batch = 10000,
        .max_id_bytes = 128, .max_name_bytes = 128, .max_query_bytes = 512,
        .max_metadata_entries = 32, .max_metadata_bytes = 4096, .max_future_skew = 5 * 60000,
        .max_event_age = 0, .window = 60000, .out_of_orderness = 5000, .allowed_lateness = 0,
        .idle_timeout = 30000, .state_ttl = 30 * DAY, .window_retention = 7 * DAY,
        .log_retention = 7 * DAY, .dedup_window = DAY, .sweep_interval = 3600000,
        .affinity_half_life = 7 * DAY, .popularity_half_life = DAY, .neighbour_half_life = 3650 * DAY,
        .recent_items = 20, .max_affinities = 50, .max_cart = 50, .max_neighbours = 50, .max_purchased = 10000,
        .cooccurrence_span = 0, .cooccurrence_items = 10, .weight_popular = 1.0,
        .weight_neighbours = 1.5, .weight_context = 2.0, .weight_trending = 0, .diversity_cap = 3, .exclude_interacted = true,
        .attribution_window_click = 30 * 60000, .attribution_window_purchase = DAY,
        .default_recommendations = 10, .max_recommendations = 100, .candidates = 50,
        .stage2_staleness = 1000, .max_pending_events = 200000, .max_group_events = 20000,
        .cache_size = 32 << 20, .state_cache_size = 96 << 20,
        .pair_set_size = (int64_t)PRODUCT_PAIR_SET_DEFAULT,
        .key_set_size = (int64_t)APPLY_KEY_SET_DEFAULT, .shutdown_grace = 10000, .neighbour_cache = 20000,
        .user_cache_size = 32 << 20,
        .flush_interval = 1000, .trim_interval = 1000, .flush_bytes = 64 << 20, .flush_chunk = 128 << 10, .read_barrier_timeout = 10000,
        .compaction_nice = 0,
        .max_apply_lag = ENGINE_MAX_APPLY_LAG_DEFAULT,
        .checkpoint_interval = 60000, .checkpoint_min_pause = 30000,
        .checkpoint_timeout = 600000, .checkpoint_keep = 3,
        .checkpoint_threads = 2, .checkpoint_dir = "", .checkpoint_key_file = "",
        .move_lag = 1000, .move_freeze = 10000, .move_final_wait = 30000,
        .load_interval = 10000, .replica_lag_timeout = 10000,
        .replica_writable_wait = 500,
        .max_follower_lag_records = 10000, .max_follower_lag_ms = 5000,
        .sec = security_flags_defaults(),
    };
}

static void engine_options_from(const struct node_config *c, struct engine_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->data_dir = c->data_dir;
    o->cache_bytes = c->cache_size;
    o->state_cache_bytes = c->state_cache_size;
    o->flush_interval_ms = c->flush_interval;
    o->flush_bytes = c->flush_bytes;
    o->trim_interval_ms = c->trim_interval;
    o->flush_chunk_bytes = c->flush_chunk > 0 ? c->flush_chunk : -1;
    o->compaction_nice = (int)c->compaction_nice;
    o->read_barrier_timeout_ms = c->read_barrier_timeout;
    o->max_apply_lag = c->max_apply_lag;
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
    a->key_set_bytes = (size_t)c->key_set_size;
    o->product.partitions = (uint32_t)c->partitions;
    o->product.popularity = (struct decay_params){c->popularity_half_life, 8};
    o->product.neighbours = (struct decay_params){c->neighbour_half_life, 8};
    o->product.max_neighbours = (int)c->max_neighbours;
    o->product.pair_set_bytes = (size_t)c->pair_set_size;
    o->rec = (struct rec_params){c->weight_popular, c->weight_neighbours, c->weight_context,
                                 (int)c->diversity_cap, c->exclude_interacted,
                                 c->weight_trending};
    o->stage2_staleness_ms = c->stage2_staleness;
    o->candidates = (int)c->candidates;
    o->max_pending_events = c->max_pending_events;
    o->max_group_events = c->max_group_events;
}


/* ---- hooks: the engine, the scheduler and the membership call back into the node ---------- */

static bool hook_owns(void *ud, uint32_t p)
{
    node *n = ud;
    membership *mem = atomic_load(&n->mem);
    uint64_t epoch;
    return mem && membership_owns(mem, p, &epoch);
}

/* Partition p's log takes this node's own records now (OUTBOX deliveries, impressions,
 * idle watermarks): owned and taken over. Owned alone was not enough: a move's target owns
 * the partition from the flip and fetches the source's final tail after it, and a record
 * of its own appended meanwhile (its forwarder delivering the copy's OUTBOX) took the seq
 * of the tail's next record, which the tail then skipped: an acknowledged event lost
 * (integration.moves, SourceStopsMidMoveTest). */
static bool hook_leads(void *ud, uint32_t p)
{
    node *n = ud;
    return atomic_load(&n->mem) && state_service_ready(&n->ss, p);
}

/* Stage 2 of partition p is applied here now (owned, and not frozen by a move). */
static bool hook_stage2_local(void *ud, uint32_t p)
{
    node *n = ud;
    return atomic_load(&n->mem) && state_service_stage2_local(&n->ss, p);
}

static void hook_kick(void *ud)
{
    node *n = ud;
    forwarder *fwd = atomic_load(&n->fwd);
    if (fwd)
        forwarder_kick(fwd);
}

/* After a failed write LevelDB may drop later records when it reopens the database, or
 * fail every later write (store_write_failed_fn): nothing written after it may be
 * acknowledged, and only a reopen clears it. The node exits at once, like a kill -9 (the
 * failed jobs stay unanswered: their callers see an unknown outcome); the supervisor
 * restarts it, LevelDB's recovery drops the partial record, and replication brings the
 * partitions' copies back (docs/operations.md, "Disk full"). Reopening the store in the
 * process would mean rebuilding every module that holds it. */
static void hook_store_failed(void *ud, const char *why)
{
    (void)ud;
    log_error("msg=\"the store refused a write: exiting, a restart reopens it\" error=\"%s\" "
              "exit_code=%d", why, NODE_EXIT_STORE_FAILED);
    _exit(NODE_EXIT_STORE_FAILED);
}

static void purge_logged(void *ud, eddy_err err)
{
    (void)ud;
    if (err != EDDY_OK)
        log_warn("msg=\"purge after a replicated DeleteUser failed\" error=\"%s\"",
                 eddy_strerror(err));
}

/* A follower applied a DeleteUser: its LevelDB files and its older checkpoints of the
 * partition go too (ckptsched_purge; the leader's DeleteUser does not wait for this). */
static void hook_user_deleted(void *ud, uint32_t p, uint64_t next_seq)
{
    node *n = ud;
    if (n->cks && ckptsched_purge(n->cks, p, next_seq, purge_logged, NULL) != EDDY_OK)
        log_warn("msg=\"purge after a replicated DeleteUser not queued\" partition=%u", p);
}

static void hook_ckpt_written(void *ud, const struct checkpoint_info *ci)
{
    node *n = ud;
    membership *mem = atomic_load(&n->mem);
    if (mem)
        ckptpub_put(mem, n->cfg->cluster, ci);
}

static bool hook_rebuild_busy(void *ud)
{
    return reprocess_service_busy(ud);
}

static void hook_state_replaced(void *ud, uint32_t p)
{
    replica_invalidate(ud, p);
}

/* Readiness follows the etcd session: without it the node must not take traffic. */
static void hook_alive(void *ud, bool alive)
{
    health_set(ud, "readiness", alive ? HEALTH_SERVING : HEALTH_NOT_SERVING);
}

/* After every change of the partition map: eddy_partitions_owned, and the take-over of
 * partitions that moved here (state_service_takeover) once the mover runs. */
static void hook_change(void *ud, membership *m)
{
    node *n = ud;
    metric_gauge_set(n->owned_gauge, membership_owned_count(m));
    if (atomic_load(&n->following))
        replica_set_membership(n->rep, m);
    if (atomic_load(&n->takeover))
        state_service_takeover(&n->ss);
}

/* ---- building ------------------------------------------------------------------------------ */

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

/* 'err' = "what: detail" (detail NULL or "": e's text); returns 'e'. */
static eddy_err fail(char *err, size_t errlen, eddy_err e, const char *what, const char *detail)
{
    snprintf(err, errlen, "%s: %s", what, detail && detail[0] ? detail : eddy_strerror(e));
    return e;
}

/* The checkpoint directory (--checkpoint-dir, or DATA_DIR/checkpoints) into n->ckpt_dir. */
static const char *checkpoint_dir_of(const struct node_config *c, node *n)
{
    snprintf(n->ckpt_dir, sizeof(n->ckpt_dir), "%s", c->checkpoint_dir);
    if (!c->checkpoint_dir[0])
        snprintf(n->ckpt_dir, sizeof(n->ckpt_dir), "%s/checkpoints", c->data_dir);
    return n->ckpt_dir;
}

/* The state role: the engine, its caches and the checkpoint scheduler. */
/* --dev: users hash to partitions, so a data directory opened with another count than it
 * was made with would look for their state in the wrong partitions. The directory records
 * its count in PARTITIONS, written on the first start (a directory from before the record
 * gets the count it is opened with). Called with the store open: its lock keeps other
 * processes out. */
static eddy_err check_dev_partitions(const struct node_config *c, char *err, size_t errlen)
{
    char path[PATH_MAX], tmp[PATH_MAX + 4], buf[32] = "";
    snprintf(path, sizeof(path), "%s/PARTITIONS", c->data_dir);
    snprintf(tmp, sizeof(tmp), "%s/PARTITIONS.tmp", c->data_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        bool got = fgets(buf, sizeof(buf), f) != NULL;
        fclose(f);
        char *end = buf;
        long long made = got ? strtoll(buf, &end, 10) : 0;
        if (made <= 0 || (*end != '\n' && *end != '\0')) {
            snprintf(err, errlen, "%s does not hold a partition count", path);
            return EDDY_ERR_CORRUPT;
        }
        if (made != c->partitions) {
            snprintf(err, errlen, "data directory %s was made with --partitions %lld, not %" PRId64
                     ": start it with --partitions %lld, or use another --data-dir",
                     c->data_dir, made, c->partitions, made);
            return EDDY_ERR_INVALID;
        }
        return EDDY_OK;
    }
    if (errno != ENOENT)
        return fail(err, errlen, EDDY_ERR_IO, "cannot read the partition count", path);
    f = fopen(tmp, "w");
    bool ok = f && fprintf(f, "%" PRId64 "\n", c->partitions) > 0 && fflush(f) == 0 &&
              fsync(fileno(f)) == 0;
    if (f && fclose(f) != 0)
        ok = false;
    if (!ok || rename(tmp, path) != 0)
        return fail(err, errlen, EDDY_ERR_IO, "cannot record the partition count", path);
    return EDDY_OK;
}

static eddy_err open_state(node *n, char *err, size_t errlen)
{
    const struct node_config *c = n->cfg;
    struct engine_opts eo;
    engine_options_from(c, &eo);
    eo.metrics = n->nm.engine;
    eo.store_failed = hook_store_failed;
    /* --dev owns every partition for ever: stage 2 is applied in the events' own write
     * (no OUTBOX, no forwarder); a cluster member routes it through the OUTBOX */
    if (n->clustered)
        eo.cluster = (struct engine_cluster){hook_stage2_local, n, hook_kick, n, hook_leads, n,
                                             hook_user_deleted, n};
    char why[512] = "";
    eddy_err e;
    if (c->checkpoint_key_file[0]) {
        if ((e = ckptkey_load(c->checkpoint_key_file, &n->ckpt_key, why, sizeof(why))) !=
            EDDY_OK) {
            snprintf(err, errlen, "--checkpoint-key-file %s: %s", c->checkpoint_key_file, why);
            return e;
        }
        eo.checkpoint_key = &n->ckpt_key;
    }
    if ((e = checkpoint_check_dir(eo.checkpoint_key, checkpoint_dir_of(c, n), why,
                                  sizeof(why))) != EDDY_OK)
        return fail(err, errlen, e, "checkpoints not readable with this node's key (all nodes "
                    "of a cluster share one --checkpoint-key-file)", why);
    e = engine_open(&eo, &n->eng, why, sizeof(why));
    if (e != EDDY_OK)
        return fail(err, errlen, e, "cannot open state", why);
    if (!n->clustered && (e = check_dev_partitions(c, err, errlen)) != EDDY_OK)
        return e;
    n->pop = stage2cache_new(engine_store(n->eng), &engine_options(n->eng)->product,
                             c->stage2_staleness, (size_t)c->candidates);
    if (!n->pop ||
        stage2cache_set_neighbour_cache(n->pop, (size_t)c->neighbour_cache) != EDDY_OK)
        return fail(err, errlen, EDDY_ERR_NOMEM, "cannot create the caches", NULL);
    if (!(n->users = usercache_new(engine_store(n->eng), (size_t)c->user_cache_size)))
        return fail(err, errlen, EDDY_ERR_NOMEM, "cannot create the caches", NULL);
    if ((e = expreg_new(n->clustered ? NULL : engine_store(n->eng), &n->exps)) != EDDY_OK)
        return fail(err, errlen, e, "cannot read the experiments", NULL);
    if (n->clustered) {
        /* Recommend reads stage 2 across the cluster; CategoryTop serves the local part */
        n->pop_cluster = stage2cache_new(engine_store(n->eng),
                                         &engine_options(n->eng)->product,
                                         c->stage2_staleness, (size_t)c->candidates);
        if (!n->pop_cluster ||
            stage2cache_set_neighbour_cache(n->pop_cluster, (size_t)c->neighbour_cache) !=
                EDDY_OK)
            return fail(err, errlen, EDDY_ERR_NOMEM, "cannot create the caches", NULL);
        /* CategoryTop answers for the partitions this node owns (once joined) */
        stage2cache_set_owns(n->pop, hook_owns, n);
        stage2_remote_init(&n->s2, NULL, n->pe, c->route_timeout);
        stage2cache_set_source(n->pop_cluster, &n->s2.source);
    }
    /* --dev: every product partition is here for ever, so Recommend reads this node's own
     * stage 2 (the engine applied it in the events' write), not through CategoryTop and
     * Neighbours calls to itself */
    n->ss.eng = n->eng;
    n->ss.local = n->pop;
    n->ss.exps = n->exps;
    n->ss.click_window_ms = c->attribution_window_click;
    n->ss.purchase_window_ms = c->attribution_window_purchase;
    n->ss.q = (struct query_ctx){n->eng, n->clustered ? n->pop_cluster : n->pop,
                                 (int)c->default_recommendations, (int)c->max_recommendations,
                                 state_service_owns, NULL, (size_t)c->max_purchased,
                                 n->users, n->nm.recommend, false};
    if (c->checkpoint_interval > 0) {
        /* before any event can arrive: the log floors come from the files on disk */
        struct ckptsched_opts co = {
            .dir = n->ckpt_dir, .interval_ms = c->checkpoint_interval,
            .min_pause_ms = c->checkpoint_min_pause, .timeout_ms = c->checkpoint_timeout,
            .keep = (int)c->checkpoint_keep, .threads = (int)c->checkpoint_threads,
            .metrics = n->nm.checkpoint,
            .owns = n->clustered ? hook_owns : NULL, .owns_ud = n,
            .written = n->clustered ? hook_ckpt_written : NULL, .written_ud = n,
        };
        if ((e = ckptsched_new(n->eng, &co, &n->cks)) != EDDY_OK)
            return fail(err, errlen, e, "cannot start checkpoints", NULL);
        n->ss.cks = n->cks;
    }
    return EDDY_OK;
}

/* A cluster: an experiment's counts are every partition's, asked of their leaders. */
static eddy_err cluster_stats(void *ud, const char *name, Eddy__V1__GetExperimentResponse **out,
                              char *why, size_t whylen)
{
    struct backend_status res = {0};
    router_experiment(ud, name, out, &res);
    if (res.code == GRPC_STATUS_OK)
        return EDDY_OK;
    snprintf(why, whylen, "counts: %s", res.message[0] ? res.message : "the owners did not answer");
    return res.code == GRPC_STATUS_RESOURCE_EXHAUSTED ? EDDY_ERR_NOMEM : EDDY_ERR_UNAVAILABLE;
}

/* An experiment's counts in the partitions this node serves: --dev all of them; a cluster
 * member those it leads and has taken over (its store also holds followed copies). */
static eddy_err local_stats(void *ud, const char *name, Eddy__V1__GetExperimentResponse **out,
                            char *why, size_t whylen)
{
    struct state_service *ss = ud;
    struct query_ctx q = ss->q;
    if (ss->repl) { /* a cluster member */
        q.owns = state_service_ready;
        q.owns_ud = ss;
    }
    eddy_err err = query_experiment_stats(&q, name, out);
    if (err != EDDY_OK)
        snprintf(why, whylen, "%s", eddy_strerror(err));
    return err;
}

/* --dev: a per-user read is an in-process call answered at once, unless the engine's
 * apply is behind (its read barrier would wait): ingest_service.reads_now. A cold read
 * still reads LevelDB (a user's rows, a product's neighbours, a popularity list read for
 * the first time, which concurrent callers of that list wait for): milliseconds at most,
 * as on a handler thread, but the CQ thread's other calls wait meanwhile. */
static bool dev_reads_now(void *ud)
{
    return engine_caught_up(ud);
}

/* The RPC server and every service on it. */
static eddy_err register_services(node *n, char *err, size_t errlen)
{
    const struct node_config *c = n->cfg;
    n->svc = (struct ingest_service){
        .state = router_backend_of(&n->router),
        .lim = {c->max_id_bytes, c->max_name_bytes, c->max_query_bytes, c->max_metadata_entries,
                c->max_metadata_bytes, c->max_future_skew, c->max_event_age},
        .max_batch = c->max_batch,
        .m = n->nm.ingest,
        .reads_now = !n->clustered && n->eng && c->inline_reads ? dev_reads_now : NULL,
        .reads_now_ud = n->eng,
    };
    struct rpc_server_opts so = {
        .listen = c->listen, .cq_threads = (int)c->grpc_threads,
        .handler_threads = (int)c->handler_threads, .max_queued_calls = (int)c->max_queued_calls,
        .lane_threads = {[STATE_LANE_USER] = (int)c->internal_threads,
                         [STATE_LANE_LEAF] = (int)c->internal_threads},
        .max_recv_bytes = c->max_message_size, .max_send_bytes = 64 << 20,
        .max_connection_age_ms = c->max_connection_age,
        .metrics = n->nm.reg, .busy_rejections = n->nm.rpc_busy,
        .tls = &n->tls, .peer_only_prefix = INTERNAL_API_PREFIX,
        .local_only_prefix = n->clustered ? NULL : INTERNAL_API_PREFIX,
    };
    char why[512];
    if (security_auth_new(&c->sec, n->nm.reg, &n->auth, why, sizeof(why)) != EDDY_OK)
        return fail(err, errlen, EDDY_ERR_INVALID, "bad --token-file", why);
    security_gate_server(n->auth, &so);
    n->srv = rpc_server_new(&so);
    n->hl = health_new();
    n->refl = reflection_new(eddy_descriptor_set, eddy_descriptor_set_len, why, sizeof(why));
    if (!n->srv || !n->hl || !n->refl)
        return fail(err, errlen, EDDY_ERR_NOMEM, "cannot create the server",
                    n->refl ? NULL : why);
    eddy_err e = ingest_service_register(&n->svc, n->srv);
    /* a cluster: every node serves the experiments (an ingest node too), kept in etcd */
    if (e == EDDY_OK && n->clustered && !n->exps)
        e = expreg_new(NULL, &n->exps);
    if (e == EDDY_OK && n->clustered)
        e = expsync_new(n->exps, c->cluster, &n->exsync);
    if (e == EDDY_OK && n->exps) {
        n->xs = (struct experiments_service){.reg = n->exps,
                                             .stats = n->clustered ? cluster_stats : local_stats,
                                             .stats_ud = n->clustered ? (void *)&n->router
                                                                      : (void *)&n->ss,
                                             .local = n->eng ? local_stats : NULL,
                                             .local_ud = &n->ss,
                                             .metrics = n->nm.reg, .refresh_ms = 5000};
        e = experiments_service_register(&n->xs, n->srv);
    }
    if (e == EDDY_OK)
        e = health_register(n->hl, n->srv);
    if (e == EDDY_OK && n->eng)
        e = state_service_register(&n->ss, n->srv);
    if (e == EDDY_OK && !n->clustered) {
        n->ds = (struct dev_status){c->cluster, c->node_id, c->listen, c->metrics_listen,
                                    (uint32_t)c->partitions, clock_wall_ms(), &n->port,
                                    &n->metrics_port};
        e = dev_status_register(&n->ds, n->srv);
    }
    if (e != EDDY_OK)
        return fail(err, errlen, e, "cannot register the services", NULL);
    if (n->clustered && n->eng) { /* the replicated log: ReplicaFetch is served from the start */
        struct replica_opts ro = {.eng = n->eng, .peers = n->pe,
                                  .partitions = (uint32_t)c->partitions,
                                  .lag_timeout_ms = c->replica_lag_timeout,
                                  .writable_wait_ms = c->replica_writable_wait,
                                  .rpc_timeout_ms = c->route_timeout, .cluster = c->cluster,
                                  .ready = state_service_ready, .ready_ud = &n->ss,
                                  .metrics = n->nm.replica};
        if (!(n->rep = replica_new(&ro)) || replica_register(n->rep, n->srv) != EDDY_OK)
            return fail(err, errlen, EDDY_ERR_NOMEM, "cannot start replication", NULL);
        n->ss.repl = n->rep;
        n->ss.max_lag_records = (uint64_t)c->max_follower_lag_records;
        n->ss.max_lag_ms = (uint64_t)c->max_follower_lag_ms;
    }
    if (n->clustered && n->eng) { /* the product half of a cluster-wide rebuild (reprocess) */
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/reprocess-s2.tmp", c->data_dir);
        struct stage2_side_opts s2o = {n->eng, dir, hook_owns, n, c->move_freeze};
        if (!(n->s2side = stage2_side_new(&s2o)))
            return fail(err, errlen, EDDY_ERR_NOMEM, "cannot create the rebuild side", NULL);
        n->ss.s2 = n->s2side;
    }
    n->rps.eng = n->eng;
    /* --dev rebuilds in one pass over its own store (stage 2 is applied in the events'
     * write there, not forwarded); a cluster member drives or joins the cluster's rebuild */
    n->rps.router = n->clustered ? &n->router : NULL;
    n->rps.data_dir = c->data_dir;
    n->rps.checkpoint_dir = c->checkpoint_dir;
    n->rps.s2 = n->s2side;
    n->rps.renew_ms = c->move_freeze / 3 > 0 ? c->move_freeze / 3 : 1;
    if (n->rep) { /* a rebuilt state is not in the log: the followers copy it again */
        n->rps.replaced = hook_state_replaced;
        n->rps.replaced_ud = n->rep;
    }
    if (n->clustered && n->eng) { /* a rebuild and a live move of this node exclude each other */
        n->rps.moving = state_service_moving;
        n->rps.moving_ud = &n->ss;
        n->ss.rebuild_busy = hook_rebuild_busy;
        n->ss.rebuild_ud = &n->rps;
    }
    if ((e = reprocess_service_register(&n->rps, n->srv, n->roles & ROLE_INGEST)) != EDDY_OK)
        return fail(err, errlen, e, "cannot register the services", NULL);
    /* last: whatever the server serves, reflection lists it (and describes itself) */
    if ((e = reflection_register(n->refl, n->srv)) != EDDY_OK)
        return fail(err, errlen, e, "cannot register the services", NULL);
    return EDDY_OK;
}

/* TLS, protected mode and etcd security from the flags (usage errors: EDDY_ERR_INVALID). */
static eddy_err security_from(node *n, char *err, size_t errlen)
{
    if (security_configure(&n->cfg->sec, n->cfg->listen, &n->tls, &n->etcd_sec, err, errlen) !=
        EDDY_OK)
        return EDDY_ERR_INVALID;
    if (tls_server_enabled(&n->tls) && n->clustered &&
        n->tls.client_auth == TLS_CLIENT_AUTH_NONE) {
        snprintf(err, errlen, "a cluster node with TLS needs --tls-ca (the cluster CA) and "
                              "--tls-client-auth request or require: nodes call each other's "
                              "State API with their certificates");
        return EDDY_ERR_INVALID;
    }
    return EDDY_OK;
}

/* A cluster's partition count is fixed when the coordinator creates it: --partitions is
 * only the count of a new cluster, and a state node must open its store with the
 * cluster's, so it reads the config first (waiting for it as joining would). */
static eddy_err adopt_partitions(node *n, char *err, size_t errlen)
{
    struct node_config *c = &n->own_cfg;
    struct membership_opts mo = {.etcd = c->etcd, .cluster = c->cluster,
                                 .etcd_timeout_ms = 5000, .etcd_sec = &n->etcd_sec};
    struct cluster_config cc;
    char why[512] = "";
    eddy_err e = membership_read_config(&mo, c->join_timeout, &cc, why, sizeof(why));
    if (e != EDDY_OK)
        return fail(err, errlen, e, "cannot join the cluster", why);
    if ((int64_t)cc.partitions != c->partitions) {
        log_info("msg=\"using the cluster's partition count; --partitions applies to new "
                 "clusters only\" cluster=%s partitions=%u flag=%" PRId64,
                 c->cluster, cc.partitions, c->partitions);
        c->partitions = cc.partitions;
    }
    return EDDY_OK;
}

eddy_err node_new(const struct node_config *cfg, node **out, char *err, size_t errlen)
{
    *out = NULL;
    node *n = calloc(1, sizeof(*n));
    if (!n)
        return fail(err, errlen, EDDY_ERR_NOMEM, "cannot create the node", NULL);
    n->own_cfg = *cfg;
    n->cfg = &n->own_cfg;
    n->clustered = !cfg->dev;
    n->roles = ROLE_INGEST | ROLE_STATE;
    eddy_err e = EDDY_ERR_INVALID;
    if (n->clustered) {
        int rr = cfg->role[0] ? cluster_parse_roles(cfg->role) : -1;
        if (rr < 0 || !cfg->etcd[0]) {
            snprintf(err, errlen, "give --dev, or --role ingest|state|ingest,state with --etcd "
                                  "URL (see --help)");
            goto fail;
        }
        n->roles = (unsigned)rr;
    }
    if ((e = security_from(n, err, errlen)) != EDDY_OK)
        goto fail;
    if (n->clustered && (n->roles & ROLE_STATE) &&
        (e = adopt_partitions(n, err, errlen)) != EDDY_OK)
        goto fail;
    n->router = (struct router){NULL, NULL, cfg->route_timeout, (int)cfg->route_retries,
                                {cfg->window, cfg->out_of_orderness, cfg->allowed_lateness,
                                 cfg->idle_timeout},
                                cfg->read_from_followers, 0};
    if ((e = node_metrics_init(&n->nm, EDDY_VERSION)) != EDDY_OK) {
        fail(err, errlen, e, "cannot register metrics", NULL);
        goto fail;
    }
    n->metrics_ready = true;
    n->owned_gauge = n->nm.partitions_owned;
    if (!(n->router.peers = n->pe = peers_new(64 << 20))) {
        e = fail(err, errlen, EDDY_ERR_NOMEM, "cannot create the peers", NULL);
        goto fail;
    }
    if (n->pe && tls_server_enabled(&n->tls))
        peers_set_tls(n->pe, &n->tls); /* mTLS: the cluster CA and this node's certificate */
    if ((n->roles & ROLE_STATE) && (e = open_state(n, err, errlen)) != EDDY_OK)
        goto fail;
    if ((e = register_services(n, err, errlen)) != EDDY_OK)
        goto fail;
    /* partitions owned: all in --dev; in a cluster hook_change follows the map */
    if (n->eng &&
        (e = node_metrics_watch(&n->nm, n->eng, n->clustered ? 0 : (uint32_t)n->cfg->partitions)) !=
            EDDY_OK) {
        fail(err, errlen, e, "cannot register metrics", NULL);
        goto fail;
    }
    stage2cache *const caches[] = {n->pop, n->pop_cluster};
    if (n->eng && ((e = node_metrics_watch_caches(&n->nm, caches, 2)) != EDDY_OK ||
                   (e = node_metrics_watch_users(&n->nm, n->users)) != EDDY_OK)) {
        fail(err, errlen, e, "cannot register metrics", NULL);
        goto fail;
    }
    *out = n;
    return EDDY_OK;
fail:
    node_free(n);
    return e;
}

/* ---- starting ------------------------------------------------------------------------------ */

/* Cluster mode: register in etcd, wait for the map, then the parts that follow it. */
static eddy_err join(node *n, char *err, size_t errlen)
{
    const struct node_config *c = n->cfg;
    char addr[CLUSTER_ADDR_MAX], id[CLUSTER_ID_MAX], maddr[CLUSTER_ADDR_MAX] = "";
    advertise(c, n->port, addr, sizeof(addr));
    if (c->node_id[0])
        snprintf(id, sizeof(id), "%s", c->node_id);
    else
        snprintf(id, sizeof(id), "%.127s", addr);
    if (n->mh)
        metrics_advertise(n->metrics_port, addr, maddr, sizeof(maddr));
    eddy_err e;
    if (n->eng && (e = state_service_takeover_init(&n->ss, (uint32_t)c->partitions)) != EDDY_OK)
        return fail(err, errlen, e, "cannot start the take-over", NULL);
    n->ss.checkpoint_dir = n->cks ? n->ckpt_dir : NULL;
    n->ss.freeze_ms = c->move_freeze;
    struct membership_opts mo = {c->etcd, c->cluster, id, n->roles, addr, maddr, c->zone,
                                 (c->lease_ttl + 999) / 1000, 5000, hook_alive, n->hl,
                                 hook_change, n, &n->etcd_sec};
    char why[512] = "";
    membership *mem = NULL;
    if ((e = membership_start(&mo, c->join_timeout, &mem, why, sizeof(why))) != EDDY_OK)
        return fail(err, errlen, e, "cannot join the cluster", why);
    atomic_store(&n->mem, mem);
    /* its own partitions without a loopback connection, as a --dev node (join_static) */
    if ((e = peers_set_local(n->pe, addr, rpc_server_invoke_local, n->srv)) != EDDY_OK)
        return fail(err, errlen, e, "cannot join the cluster", NULL);
    if ((uint32_t)c->partitions != membership_partitions(mem) && n->eng) {
        snprintf(err, errlen, "--partitions %" PRId64 " differs from the cluster's %u",
                 c->partitions, membership_partitions(mem));
        return EDDY_ERR_INVALID;
    }
    n->router.mem = mem;
    n->s2.mem = mem;
    /* the experiments before the partitions: a user's first Recommend here follows them */
    if ((e = expsync_start(n->exsync, membership_etcd(mem), why, sizeof(why))) != EDDY_OK)
        return fail(err, errlen, e, "cannot join the cluster", why);
    state_service_joined(&n->ss, mem);
    if (n->eng) {
        /* the moves in progress first: a partition moving here is the mover's to make
         * ready, not the take-over's */
        struct mover_opts mvo = {
            .eng = n->eng, .mem = mem, .peers = n->pe, .ss = &n->ss, .cks = n->cks,
            .rep = n->rep,
            .cluster = c->cluster, .lag_records = c->move_lag,
            .rpc_timeout_ms = c->route_timeout, .copy_timeout_ms = 600000,
            .final_wait_ms = c->move_final_wait, .metrics = n->nm.move,
        };
        if ((e = mover_start(&mvo, &n->mov)) != EDDY_OK)
            return fail(err, errlen, e, "cannot start the mover", NULL);
        if (c->load_interval > 0 &&
            (e = loadpub_start(n->eng, mem, c->cluster, c->load_interval, &n->lpub)) != EDDY_OK)
            return fail(err, errlen, e, "cannot start the load publisher", NULL);
        /* from now on every map change takes over new partitions and follows the replica
         * sets */
        replica_set_membership(n->rep, mem);
        if ((e = replica_start(n->rep)) != EDDY_OK)
            return fail(err, errlen, e, "cannot start the replica threads", NULL);
        atomic_store(&n->following, true);
        atomic_store(&n->takeover, true);
        state_service_takeover(&n->ss);
        forwarder *fwd = forwarder_start(n->eng, mem, n->pe, n->rep, c->route_timeout);
        if (!fwd)
            return fail(err, errlen, EDDY_ERR_NOMEM, "cannot start the forwarder", NULL);
        atomic_store(&n->fwd, fwd);
    }
    log_info("msg=\"joined cluster\" cluster=%s node=%s roles=%s advertise=%s partitions=%u",
             c->cluster, id, c->role, addr, membership_partitions(mem));
    return EDDY_OK;
}

/* --dev: a static map that gives every partition to this node (membership_start_static),
 * served by the same router, State service and take-over as a cluster member's, its calls
 * to itself made in-process. No etcd, so none of what follows it: no moves, no replicas,
 * no load or checkpoint records; and no forwarder: the engine applies stage 2 in the
 * events' own write (open_state). */
static eddy_err join_static(node *n, char *err, size_t errlen)
{
    const struct node_config *c = n->cfg;
    eddy_err e;
    if ((e = state_service_takeover_init(&n->ss, (uint32_t)c->partitions)) != EDDY_OK)
        return fail(err, errlen, e, "cannot start the take-over", NULL);
    n->ss.checkpoint_dir = NULL; /* nobody else wrote its partitions: its state is the newest */
    n->ss.freeze_ms = c->move_freeze;
    if ((e = peers_set_local(n->pe, DEV_SELF_ADDR, rpc_server_invoke_local, n->srv)) != EDDY_OK)
        return fail(err, errlen, e, "cannot start the router", NULL);
    struct membership_opts mo = {.node_id = c->node_id[0] ? c->node_id : "dev",
                                 .roles = n->roles, .grpc_addr = DEV_SELF_ADDR,
                                 .on_change = hook_change, .change_ud = n};
    membership *mem = NULL;
    if ((e = membership_start_static(&mo, (uint32_t)c->partitions, &mem)) != EDDY_OK)
        return fail(err, errlen, e, "cannot assign the partitions", NULL);
    atomic_store(&n->mem, mem);
    n->router.mem = mem;
    state_service_joined(&n->ss, mem);
    atomic_store(&n->takeover, true);
    state_service_takeover(&n->ss); /* every partition ready at epoch 1, synchronously */
    return EDDY_OK;
}

static membership *console_membership(void *ud)
{
    node *n = ud;
    return atomic_load(&n->mem);
}

/* The console's view of the node: the public API's backend and limits, its status. */
static void console_setup(node *n)
{
    const struct node_config *c = n->cfg;
    n->console = (struct console_node){
        .state = n->svc.state, .dev = n->clustered ? NULL : &n->ds,
        .membership = console_membership, .membership_ud = n,
        .id = c->node_id, .roles = n->clustered ? c->role : "ingest,state",
        .version = EDDY_VERSION, .started_ms = clock_wall_ms(),
        .max_id_bytes = (size_t)c->max_id_bytes, .max_name_bytes = (size_t)c->max_name_bytes,
        .max_recommendations = (uint32_t)c->max_recommendations,
    };
}

eddy_err node_start(node *n, char *err, size_t errlen)
{
    const struct node_config *c = n->cfg;
    char what[300];
    eddy_err e;
    char why[256] = "";
    if (c->metrics_listen[0] != '\0') {
        snprintf(what, sizeof(what), "cannot serve metrics on %s", c->metrics_listen);
        if ((e = netaddr_check_bind(c->metrics_listen, "--metrics-listen", why, sizeof(why))) !=
            EDDY_OK)
            return fail(err, errlen, e, what, why);
        console_setup(n);
        struct metrics_http_opts mo = {
            .reg = n->nm.reg, .listen = c->metrics_listen,
            .api = console_node_endpoints, .napi = console_node_nendpoints,
            .api_ud = &n->console, .chart_families = console_node_chart_families,
            .nchart_families = console_node_nchart_families, .auth = n->auth,
        };
        e = metrics_http_open(&mo, &n->mh, &n->metrics_port);
        if (e != EDDY_OK)
            return fail(err, errlen, e, what, NULL);
        log_info("msg=\"metrics listening\" metrics_listen=%s metrics_port=%d",
                 c->metrics_listen, n->metrics_port);
    }
    snprintf(what, sizeof(what), "cannot listen on %s", c->listen);
    if ((e = netaddr_check_bind(c->listen, "--listen", why, sizeof(why))) != EDDY_OK ||
        (e = rpc_server_start(n->srv, &n->port)) != EDDY_OK)
        return fail(err, errlen, e, what, why);
    if ((e = n->clustered ? join(n, err, errlen) : join_static(n, err, errlen)) != EDDY_OK) {
        rpc_server_shutdown(n->srv, 0);
        return e;
    }
    /* after the membership: the scheduler asks it which partitions this node owns */
    if (n->cks && (e = ckptsched_start(n->cks)) != EDDY_OK) {
        rpc_server_shutdown(n->srv, 0);
        return fail(err, errlen, e, "cannot start the checkpoint scheduler", NULL);
    }
    /* after the membership too: its refresher sums the partitions this node owns */
    if (n->exps && (e = experiments_service_start(&n->xs)) != EDDY_OK) {
        rpc_server_shutdown(n->srv, 0);
        return fail(err, errlen, e, "cannot start the experiments' metrics", NULL);
    }
    health_set(n->hl, "", HEALTH_SERVING);
    health_set(n->hl, "liveness", HEALTH_SERVING);
    /* in a cluster, readiness follows the etcd session (hook_alive) */
    membership *mem = atomic_load(&n->mem);
    health_set(n->hl, "readiness",
               !n->clustered || membership_alive(mem) ? HEALTH_SERVING : HEALTH_NOT_SERVING);
    health_set(n->hl, "eddy.v1.Eddy", HEALTH_SERVING);
    log_info("msg=\"eddy-node ready\" mode=%s listen=%s port=%d data_dir=%s partitions=%" PRId64,
             n->clustered ? "cluster" : "dev", c->listen, n->port, c->data_dir, c->partitions);
    return EDDY_OK;
}

int node_port(const node *n)
{
    return n->port;
}

engine *node_engine(node *n)
{
    return n->eng;
}

int node_metrics_port(const node *n)
{
    return n->metrics_port;
}

/* ---- stopping ------------------------------------------------------------------------------ */

void node_stop(node *n)
{
    health_set_all(n->hl, HEALTH_NOT_SERVING);
    health_shutdown(n->hl);
    /* writes waiting for their copies fail UNAVAILABLE (never acknowledged with fewer) and
     * the followers' parked fetches end, before the server drains */
    replica_stop(n->rep);
    rpc_server_shutdown(n->srv, n->cfg->shutdown_grace);
    n->stopped = true;
}

void node_free(node *n)
{
    if (!n)
        return;
    replica_stop(n->rep); /* before the membership its map changes come from */
    atomic_store(&n->following, false);
    /* stopped now, freed only after the peers: the threads stopped below (caches, mover,
     * forwarder, replica) may still call this node in-process (peers_set_local), and such a
     * call to a stopped server answers UNAVAILABLE instead of touching freed memory */
    rpc_server_shutdown(n->srv, 0);
    metrics_http_close(n->mh); /* after the RPC server (scrapes see the drain to the end),
                                * before the caches and the engine its scrapes and the
                                * console read */
    auth_free(n->auth); /* after the servers whose calls it gates and audits */
    /* their refresher threads read the store and call the peers: stop them first */
    experiments_service_stop(&n->xs);
    stage2cache_free(n->pop);
    stage2cache_free(n->pop_cluster);
    usercache_free(n->users);
    bool checkpoints = n->cks != NULL;
    ckptsched_free(n->cks); /* before the membership its hooks use and the engine */
    membership *mem = atomic_load(&n->mem);
    if (n->stopped && checkpoints && n->clustered)
        ckptpub_final(n->ckpt_dir, n->eng, mem, &n->ss);
    loadpub_stop(n->lpub);
    mover_stop(n->mov);                /* a move in progress resumes at the next start */
    reprocess_service_stop(&n->rps);   /* a rebuild still running gives up, swapping nothing */
    forwarder_stop(atomic_load(&n->fwd)); /* unsent stage-2 records stay in the OUTBOX */
    expsync_free(n->exsync);           /* before the membership whose etcd client it uses */
    membership_stop(mem);              /* revokes the lease: the coordinator reassigns at once */
    atomic_store(&n->mem, NULL);
    engine_close(n->eng);              /* finishes queued writes, closes LevelDB */
    expreg_free(n->exps);              /* after the server and the engine's last impressions */
    stage2_side_free(n->s2side);       /* after the engine: its owns() hook asks it */
    state_service_takeover_release(&n->ss);
    replica_free(n->rep); /* after the server and the membership that call into it */
    peers_free(n->pe);
    rpc_server_free(n->srv);
    health_free(n->hl);
    reflection_free(n->refl); /* after the server */
    if (n->metrics_ready)
        node_metrics_release(&n->nm); /* last: late answers from the writer still count */
    ckptkey_release(&n->ckpt_key);     /* after the engine that borrowed it */
    free(n);
}
