/* Registration of eddy-node's metrics. The meanings below are the contract the Helm
 * chart's dashboard and alerts rely on (docs: the HELP text of each metric). */
#include "node/metrics_node.h"

#include <grpc/grpc.h>
#include <string.h>

#include "node/state/window.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const double processing_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                            0.1,    0.25,  0.5,    1,     2.5,  5};
static const double commit_step_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.25,   1};
static const double result_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,  0.5,    1,     2.5,  5,     10,   30};
static const double serving_buckets[] = {0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,    0.1,    0.25,  0.5,    1,     2.5};
static const double phase_buckets[] = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
                                       0.001,   0.002,    0.005,   0.01,   0.025,   0.05,
                                       0.1,     0.25,     0.5,     1};
static const double checkpoint_buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,  2.5,
                                            5,    10,    30,   60,  120,  300, 600};
static const double group_buckets[] = {1,    2,    5,    10,    20,    50,    100,   200,
                                       500,  1000, 2000, 5000,  10000, 20000, 50000, 100000};

static double queue_depth(void *ud)
{
    return (double)engine_queue_depth(ud);
}

static double apply_lag_records(void *ud)
{
    uint64_t n;
    engine_apply_lag(ud, &n, NULL);
    return (double)n;
}

static double apply_lag_seconds(void *ud)
{
    double s;
    engine_apply_lag(ud, NULL, &s);
    return s;
}

static double leveldb_bytes(void *ud)
{
    return (double)store_approximate_size(engine_store(ud));
}

/* Max over partitions that have seen events of (newest event time - watermark), seconds. */
static double watermark_lag(void *ud)
{
    engine *e = ud;
    uint32_t parts = engine_options(e)->apply.partitions;
    int64_t lag = 0;
    for (uint32_t p = 0; p < parts; p++) {
        struct engine_partition_view v;
        engine_partition(e, p, &v);
        if (v.watermark == WATERMARK_NONE || v.max_ts == WATERMARK_NONE)
            continue;
        if (v.max_ts - v.watermark > lag)
            lag = v.max_ts - v.watermark;
    }
    return (double)lag / 1000.0;
}

static double read_barrier_waits(void *ud)
{
    uint64_t n;
    engine_read_barrier_counts(ud, &n, NULL);
    return (double)n;
}

static double read_barrier_timeouts(void *ud)
{
    uint64_t n;
    engine_read_barrier_counts(ud, NULL, &n);
    return (double)n;
}

/* See engine_event_time_lag; 0 before the first event. */
static double event_time_lag(void *ud)
{
    int64_t lag;
    engine_event_time_lag(ud, &lag);
    return (double)lag / 1000.0;
}

eddy_err node_metrics_init(struct node_metrics *nm, const char *version)
{
    memset(nm, 0, sizeof(*nm));
    metrics *m = nm->reg = metrics_new();
    if (!m)
        return EDDY_ERR_NOMEM;
    eddy_err err = metrics_add_process(m);
    if (err != EDDY_OK)
        return err;

    static const char *const build_labels[] = {"version", "grpc_version"};
    const char *build_values[] = {version, grpc_version_string()};
    metric_gauge_set(metric_family_gauge(metrics_family(m, METRIC_GAUGE, "eddy_build_info",
                                                        "Always 1; the labels describe the "
                                                        "build of this eddy-node.",
                                                        build_labels, 2, NULL, 0),
                                         build_values),
                     1);

    struct engine_metrics *em = &nm->engine;
    em->events_ingested = metrics_counter(
        m, "eddy_events_ingested_total",
        "Events accepted and committed (late events included; duplicates and rejected "
        "events not).");
    em->events_duplicate = metrics_counter(
        m, "eddy_events_duplicate_total",
        "Events dropped because their event_id was already seen within the dedup window.");
    em->events_late = metrics_counter(
        m, "eddy_late_events_total",
        "Accepted events whose event-time window had already closed (kept in the log, the "
        "user model and the late table, not added to the window).");
    em->replay_diverged = metrics_counter(
        m, "eddy_log_replay_diverged_total",
        "Records of another node's log (a move's tail) that differ from the record this node "
        "already held at their seq: the two logs diverged (an error is logged with the "
        "partition and seq).");
    em->batches = metrics_counter(m, "eddy_apply_jobs_total",
                                  "Writer jobs with events committed: one per partition of "
                                  "each Ingest batch this node applied.");
    em->processing_seconds = metrics_histogram(
        m, "eddy_processing_seconds",
        "Time to apply one group commit with events and write it to LevelDB with sync.",
        processing_buckets, N(processing_buckets));
    em->group_events = metrics_histogram(m, "eddy_group_commit_events",
                                         "Events per group commit (groups with events).",
                                         group_buckets, N(group_buckets));
    metric_family *steps = metrics_family(
        m, METRIC_HISTOGRAM, "eddy_group_commit_step_seconds",
        "The sync thread's steps of a group commit that acknowledges writes, which the "
        "acknowledgements wait for: phase=\"write\" the synced LevelDB write (the log and "
        "its dedup rows), phase=\"publish\" the group's write-behind rows put in the "
        "dirty set.",
        (const char *const[]){"phase"}, 1, commit_step_buckets, N(commit_step_buckets));
    em->commit_write_seconds = metric_family_histogram(steps, (const char *const[]){"write"});
    em->commit_publish_seconds =
        metric_family_histogram(steps, (const char *const[]){"publish"});
    em->event_to_result = metrics_histogram(
        m, "eddy_event_to_result_seconds",
        "Per event: elapsed time from the arrival of its Ingest call at the server to the "
        "moment it is committed and visible to queries (before the reply is sent).",
        result_buckets, N(result_buckets));

    struct ingest_metrics *im = &nm->ingest;
    static const char *const reason[] = {"reason"};
    metric_family *rej = metrics_family(
        m, METRIC_COUNTER, "eddy_events_rejected_total",
        "Events rejected by validation, by the field that was invalid (reason).", reason, 1,
        NULL, 0);
    for (size_t i = 0; i <= VALIDATE_FIELD_COUNT; i++) {
        const char *v[] = {i < VALIDATE_FIELD_COUNT ? validate_fields[i] : "other"};
        im->rejected[i] = metric_family_counter(rej, v);
    }
    static const char *const queue[] = {"queue"};
    metric_family *bp = metrics_family(
        m, METRIC_COUNTER, "eddy_backpressure_rejections_total",
        "Calls answered RESOURCE_EXHAUSTED because a bounded queue was full: the writer "
        "queue (queue=\"writer\", Ingest) or the RPC handler queue (queue=\"rpc\").",
        queue, 1, NULL, 0);
    im->backpressure = metric_family_counter(bp, (const char *const[]){"writer"});
    nm->rpc_busy = metric_family_counter(bp, (const char *const[]){"rpc"});
    im->batches = metrics_counter(m, "eddy_ingest_batches_total",
                                  "Ingest requests whose valid events were committed.");
    im->recommendations = metrics_counter(m, "eddy_recommendations_total",
                                          "Recommend calls answered with recommendations.");
    static const char *const method[] = {"method"};
    metric_family *serving = metrics_family(
        m, METRIC_HISTOGRAM, "eddy_serving_seconds",
        "Latency of the read methods, from the call's arrival to its answer (any status).",
        method, 1, serving_buckets, N(serving_buckets));
    for (int r = 0; r < INGEST_READS; r++)
        im->serving[r] = metric_family_histogram(serving, &ingest_read_names[r]);
    static const char *const phase[] = {"phase"};
    metric_family *rec = metrics_family(
        m, METRIC_HISTOGRAM, "eddy_recommend_seconds",
        "Time of a Recommend on the state node that answers it, by phase: user (model, "
        "purchases and interactions), popular (popularity lists), neighbours (neighbour "
        "lists), rank (ranking and the answer), total (the whole call).",
        phase, 1, phase_buckets, N(phase_buckets));
    for (int i = 0; i < QUERY_PHASES; i++)
        nm->recommend[i] = metric_family_histogram(rec, &query_phase_names[i]);

    nm->partitions_owned = metrics_gauge(m, "eddy_partitions_owned",
                                         "Partitions this node owns (all of them with --dev).");

    struct ckptsched_metrics *cm = &nm->checkpoint;
    cm->duration = metrics_histogram(
        m, "eddy_checkpoint_duration_seconds",
        "Time to write one partition checkpoint (snapshot scan, fsync, rename) and prune the "
        "partition's old ones; successful checkpoints only.",
        checkpoint_buckets, N(checkpoint_buckets));
    cm->bytes = metrics_gauge(m, "eddy_checkpoint_bytes",
                              "Size in bytes of the last checkpoint file this node wrote.");
    cm->failures = metrics_counter(
        m, "eddy_checkpoint_failures_total",
        "Checkpoint attempts that failed or gave up after --checkpoint-timeout (nothing "
        "published; the previous checkpoints stay).");
    cm->last_success = metrics_gauge(
        m, "eddy_checkpoint_last_success_timestamp_seconds",
        "Unix time of the last successful checkpoint written by this node (0: none yet).");
    struct mover_metrics *mm = &nm->move;
    mm->duration = metrics_histogram(
        m, "eddy_move_duration_seconds",
        "Live partition moves into this node: time from the start of the checkpoint copy to "
        "serving the partition (copy, log tail, flip, final tail).",
        checkpoint_buckets, N(checkpoint_buckets));
    mm->pause = metrics_histogram(
        m, "eddy_move_pause_seconds",
        "Live partition moves into this node: how long writes to the partition waited, from "
        "the flip of its owner to the final log tail applied here.",
        checkpoint_buckets, N(checkpoint_buckets));
    mm->active = metrics_gauge(m, "eddy_moves_active",
                               "Live partition moves into this node in progress.");
    mm->failures = metrics_counter(
        m, "eddy_move_failures_total",
        "Move steps into this node that failed and were retried (copy or tail), or final "
        "tails given up after --move-final-wait.");
    if (!mm->duration || !mm->pause || !mm->active || !mm->failures)
        return EDDY_ERR_NOMEM;
    struct replica_metrics *rm = &nm->replica;
    rm->lag_records = metrics_gauge(
        m, "eddy_replica_lag_records",
        "Log records the followers of the partitions this node leads still lack, summed "
        "(the leader's log end minus each follower's fetch position).");
    rm->under_replicated = metrics_gauge(
        m, "eddy_under_replicated_partitions",
        "Partitions this node leads with fewer in-sync copies than replicas.");
    rm->isr_shrinks = metrics_counter(
        m, "eddy_isr_shrinks_total",
        "Followers that left a partition's in-sync set (behind for --replica-lag-timeout).");
    rm->isr_expands = metrics_counter(
        m, "eddy_isr_expands_total",
        "Followers that joined (or rejoined) a partition's in-sync set once caught up.");
    rm->resyncs = metrics_counter(
        m, "eddy_replica_resyncs_total",
        "Copies of a partition on this node replaced by their leader's checkpoint: the copy "
        "had diverged from the leader's log (an old leader's unacknowledged records) or the "
        "leader's log no longer held its position.");
    if (!rm->lag_records || !rm->under_replicated || !rm->isr_shrinks || !rm->isr_expands ||
        !rm->resyncs)
        return EDDY_ERR_NOMEM;
    if (!em->events_ingested || !em->events_duplicate || !em->events_late || !em->batches ||
        !em->processing_seconds || !em->group_events || !em->event_to_result ||
        !em->commit_write_seconds || !em->commit_publish_seconds ||
        !em->replay_diverged || !im->backpressure || !nm->rpc_busy || !im->recommendations ||
        !im->batches || !nm->partitions_owned ||
        !cm->duration || !cm->bytes || !cm->failures || !cm->last_success)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i <= VALIDATE_FIELD_COUNT; i++)
        if (!im->rejected[i])
            return EDDY_ERR_NOMEM;
    for (int r = 0; r < INGEST_READS; r++)
        if (!im->serving[r])
            return EDDY_ERR_NOMEM;
    return EDDY_OK;
}

eddy_err node_metrics_watch(struct node_metrics *nm, engine *eng, uint32_t partitions_owned)
{
    static const struct {
        enum metric_type type;
        const char *name, *help;
        metrics_value_fn *fn;
    } g[] = {
        {METRIC_GAUGE, "eddy_queue_depth", "Events queued for the writer thread, not yet applied.",
         queue_depth},
        {METRIC_GAUGE, "eddy_apply_lag_records",
         "Records of the durable (acknowledged) log not yet applied in what queries read.",
         apply_lag_records},
        {METRIC_GAUGE, "eddy_apply_lag_seconds",
         "How long some acknowledged records have been waiting for their apply, seconds (0: "
         "none).",
         apply_lag_seconds},
        {METRIC_COUNTER, "eddy_read_barrier_waits_total",
         "Queries that waited for the apply of events acknowledged before them "
         "(read-your-writes; --read-barrier-timeout).",
         read_barrier_waits},
        {METRIC_COUNTER, "eddy_read_barrier_timeouts_total",
         "Queries that gave up waiting after --read-barrier-timeout (answered with an error).",
         read_barrier_timeouts},
        {METRIC_GAUGE, "eddy_leveldb_bytes", "Approximate on-disk size of the node's LevelDB.",
         leveldb_bytes},
        {METRIC_GAUGE, "eddy_watermark_lag_seconds",
         "Max over partitions with events of (newest event time seen - watermark), seconds.",
         watermark_lag},
        {METRIC_GAUGE, "eddy_event_time_lag_seconds",
         "Wall clock minus the newest event time applied on this node, measured at each apply "
         "(a quiet node keeps its last value; 0 before the first event), seconds.",
         event_time_lag},
    };
    nm->eng = eng;
    for (size_t i = 0; i < N(g); i++) {
        eddy_err err = metrics_callback(nm->reg, g[i].type, g[i].name, g[i].help, g[i].fn, eng);
        if (err != EDDY_OK)
            return err;
    }
    metric_gauge_set(nm->partitions_owned, partitions_owned);
    return EDDY_OK;
}

/* The neighbour caches' counters, summed (nbcache_stats). */
static struct nbcache_stats cache_stats(const struct node_metrics *nm)
{
    struct nbcache_stats sum = {0}, one;
    for (size_t i = 0; i < nm->ncaches; i++) {
        stage2cache_neighbour_stats(nm->caches[i], &one);
        sum.hits += one.hits;
        sum.misses += one.misses;
        sum.evictions += one.evictions;
        sum.revalidated += one.revalidated;
    }
    return sum;
}

static double cache_hits(void *ud)
{
    return (double)cache_stats(ud).hits;
}

static double cache_misses(void *ud)
{
    return (double)cache_stats(ud).misses;
}

static double cache_evictions(void *ud)
{
    return (double)cache_stats(ud).evictions;
}

static double cache_revalidated(void *ud)
{
    return (double)cache_stats(ud).revalidated;
}

static struct usercache_stats user_stats(const struct node_metrics *nm)
{
    struct usercache_stats st = {0};
    if (nm->users)
        usercache_stats(nm->users, &st);
    return st;
}

static double user_hits(void *ud)
{
    return (double)user_stats(ud).hits;
}

static double user_misses(void *ud)
{
    return (double)user_stats(ud).misses;
}

static double user_evictions(void *ud)
{
    return (double)user_stats(ud).evictions;
}

static double user_bytes(void *ud)
{
    return (double)user_stats(ud).bytes;
}

static double user_entries(void *ud)
{
    return (double)user_stats(ud).entries;
}

eddy_err node_metrics_watch_users(struct node_metrics *nm, usercache *uc)
{
    static const struct {
        enum metric_type type;
        const char *name, *help;
        metrics_value_fn *fn;
    } c[] = {
        {METRIC_COUNTER, "eddy_user_cache_hits_total",
         "Recommend calls that found the user in the user cache, as stored.", user_hits},
        {METRIC_COUNTER, "eddy_user_cache_misses_total",
         "Recommend calls that read the user from the store (absent, or written since).",
         user_misses},
        {METRIC_COUNTER, "eddy_user_cache_evictions_total", "User cache entries evicted for room.",
         user_evictions},
        {METRIC_GAUGE, "eddy_user_cache_bytes",
         "Estimated memory of the user cache's entries (at most --user-cache-size).", user_bytes},
        {METRIC_GAUGE, "eddy_user_cache_entries", "Users in the user cache.", user_entries},
    };
    nm->users = uc;
    for (size_t i = 0; i < N(c); i++) {
        eddy_err err = metrics_callback(nm->reg, c[i].type, c[i].name, c[i].help, c[i].fn, nm);
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}

eddy_err node_metrics_watch_caches(struct node_metrics *nm, stage2cache *const *caches,
                                   size_t n)
{
    static const struct {
        const char *name, *help;
        metrics_value_fn *fn;
    } c[] = {
        {"eddy_neighbour_cache_hits_total",
         "Recommend neighbour lookups answered from the neighbour cache.", cache_hits},
        {"eddy_neighbour_cache_misses_total",
         "Neighbour lookups read by the calling thread (absent, or written since and expired "
         "too long).",
         cache_misses},
        {"eddy_neighbour_cache_evictions_total", "Neighbour cache entries evicted for room.",
         cache_evictions},
        {"eddy_neighbour_cache_revalidated_total",
         "Expired neighbour entries kept without a read: their product was not written since.",
         cache_revalidated},
    };
    for (size_t i = 0; i < n && nm->ncaches < N(nm->caches); i++)
        if (caches[i])
            nm->caches[nm->ncaches++] = caches[i];
    for (size_t i = 0; i < N(c); i++) {
        eddy_err err = metrics_callback(nm->reg, METRIC_COUNTER, c[i].name, c[i].help, c[i].fn,
                                        nm);
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}

void node_metrics_release(struct node_metrics *nm)
{
    metrics_free(nm->reg);
    memset(nm, 0, sizeof(*nm));
}
