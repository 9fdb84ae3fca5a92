/* Apply-path microbenchmark: the state engine alone (no gRPC), fed the events of
 * eddy-bench's generator (client/bench/gen.h: its default population, 100,000 Zipf users
 * and 10,000 Zipf products, the e-commerce event mix, 2 s disorder) with the node's default
 * parameters, on a synthetic event-time clock (10,000 events per second of event time), so
 * the same arguments always apply the same events. Each group commit takes exactly
 * --inflight batches of --batch events (eddy-bench's 4 streams x 2 calls of 500: groups of
 * 4,000 events, as on a loaded node): the writer is held by an exclusive job while they
 * are queued, so the groups, and with them the instruction counts, do not depend on
 * thread timing.
 *
 *   eddy-apply-bench [N] [--inflight K] [--batch B] [--dump FILE] [--recommend R]
 *                    [--kept-bytes BYTES] [--lists-staleness MS] [--queued] [--warm W]
 *                    [--flush-interval MS] [--flush-bytes BYTES] [--flush-chunk BYTES]
 *                    [--pair-set-bytes BYTES] [--key-set-bytes BYTES] [--hold-apply]
 *                                                   (defaults 50000, 8, 500, 0, 0)
 *
 * --flush-interval writes the derived state behind the log (engine_opts.flush_interval_ms;
 * 0, the default: every group commit writes everything, synced); the dirty set left at the
 * end is flushed before the counts are printed, so they hold every byte written. Under
 * callgrind, --toggle-collect=store_flush counts the flushes' instructions (off the
 * acknowledgement's path). --flush-chunk sets the bytes per LevelDB write of a flush
 * (engine_opts.flush_chunk_bytes; -1: one write per flush, as before --flush-chunk).
 *
 * --queued queues every batch before the writer starts (and groups hold K x B events), so
 * the groups follow each other back to back, as on a node at its maximum rate: the writer
 * applies one while the previous one's synced write runs. Without it each group is
 * answered before the next is queued. Both apply the same groups: the same state.
 *
 * --warm W applies the first W of the N events as --queued does, in groups of 8 x 500,
 * before the groups of K x B, and measures only the rest (events/s and what was written):
 * one batch at a time on a node that holds W events already (full neighbour lists, users
 * seen before). Under callgrind, the instructions of the rest are those of the run minus
 * those of `W --queued` (the same groups).
 *
 * --hold-apply keeps the apply thread idle (engine_hold_apply): the writer applies each
 * group's events itself when it takes the next job (the drain before the bench's exclusive
 * job, or at the writer's idle pass, once a second of wall clock). Without it, how much the
 * apply thread applies while the writer waits, and so which write carries which state,
 * depends on thread timing: under callgrind the whole run's count moves by +-2 % from run
 * to run; with it, by well under 1 % (the idle passes), so the count of a change can be
 * told from noise. The state is the same.
 *
 * --dump writes every key and value of the state afterwards (store_dump): two builds that
 * apply the same events must write the same file. --kept-bytes sets the budget of the
 * values the writer's txn keeps between group commits (store_set_kept_bytes);
 * --pair-set-bytes the memory of the sets of co-occurrence pairs that exist
 * (product_params.pair_set_bytes, --pair-set-size of the node; 0: every new pair is read),
 * --key-set-bytes those of the USER, PRODUCT and IMPR rows (apply_params.key_set_bytes,
 * --key-set-size; 0: every new user or product is read).
 * Prints events/s and what the group commits wrote per event, by table (LevelDB records,
 * key and value bytes, decoded objects encoded: store_write_stats). Under `valgrind --tool=callgrind --toggle-collect=apply_event
 * --toggle-collect=store_txn_seal --toggle-collect=store_txn_write
 * --toggle-collect=store_txn_settle` (store_txn_commit before the writes were split) the
 * instruction count is the apply and the group commits alone (no event generation, no idle wait): divided by N, the instructions per
 * event, which the load of the machine does not move. */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "common/completion.h"
#include "gen.h"
#include "node/state/engine.h"
#include "node/state/popcache.h"
#include "node/state/stage2cache.h"
#include "node/state/query.h"

struct progress {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
    uint64_t accepted, duplicates, failed;
};

/* Holds the writer (an exclusive job) until a group's batches are all queued: until 'ud',
 * a completion, is signalled. */
static eddy_err gate_wait(void *ud, engine *e)
{
    (void)e;
    return completion_wait(ud, EDDY_OK);
}

static void gate_done(void *ud, eddy_err err)
{
    (void)ud;
    (void)err;
}

static void on_done(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    struct progress *pg = ud;
    pthread_mutex_lock(&pg->mu);
    pg->outstanding--;
    if (err != EDDY_OK)
        pg->failed++;
    else {
        pg->accepted += r->accepted;
        pg->duplicates += r->duplicates;
    }
    pthread_cond_signal(&pg->cv);
    pthread_mutex_unlock(&pg->mu);
}

/* The node's defaults (node/main.c), --dev: one engine owns all 256 partitions. */
static void node_defaults(struct engine_opts *o, const char *dir)
{
    const int64_t day = 86400000;
    memset(o, 0, sizeof(*o));
    o->data_dir = dir;
    o->cache_bytes = 64 << 20;
    o->apply.partitions = 256;
    o->apply.window = (struct window_params){60000, 5000, 0, 30000};
    o->apply.model = (struct model_params){{7 * day, 8}, 20, 50, 50};
    o->apply.cooccurrence_span_ms = 30 * 60000;
    o->apply.cooccurrence_items = 10;
    o->apply.dedup_window_ms = day;
    o->apply.state_ttl_ms = 30 * day;
    o->apply.window_retention_ms = 7 * day;
    o->apply.log_retention_ms = 7 * day;
    o->apply.sweep_interval_ms = 3600000;
    o->apply.key_set_bytes = APPLY_KEY_SET_DEFAULT;
    o->product = (struct product_params){256, {day, 8}, {7 * day, 8}, 50,
                                         PRODUCT_PAIR_SET_DEFAULT};
    o->rec = (struct rec_params){1, 1.5, 2, 3, true, 0};
    o->candidates = 50;
    o->max_pending_events = 100000000;
    o->max_group_events = 20000;
}

/* R Recommend calls for the users of 'g' (a fresh stream per pass: the same users). */
static int recommend_pass(struct query_ctx *q, const struct gen_tables *tables, long r,
                          uint64_t *items, uint64_t *digest)
{
    struct gen g;
    gen_init(&g, tables, 1);
    for (long i = 0; i < r; i++) {
        char user[32];
        gen_user_id(gen_user_rank(&g), user, sizeof(user));
        Eddy__V1__RecommendRequest req = EDDY__V1__RECOMMEND_REQUEST__INIT;
        req.user_id = user;
        Eddy__V1__RecommendResponse *resp = NULL;
        if (query_recommend(q, &req, &resp) != EDDY_OK)
            return -1;
        *items += resp->n_items;
        for (size_t j = 0; j < resp->n_items; j++) {
            const Eddy__V1__Recommendation *it = resp->items[j];
            *digest = XXH64(it->product_id, strlen(it->product_id), *digest);
            *digest = XXH64(it->category, strlen(it->category), *digest);
            *digest = XXH64(it->reason, strlen(it->reason), *digest);
            *digest = XXH64(&it->score, sizeof(it->score), *digest);
        }
        query_free_response(&resp->base);
    }
    return 0;
}

__attribute__((noinline)) int measured_recommends(struct query_ctx *q,
                                                  const struct gen_tables *tables, long r,
                                                  uint64_t *items, uint64_t *digest);
__attribute__((noinline)) int measured_recommends(struct query_ctx *q,
                                                  const struct gen_tables *tables, long r,
                                                  uint64_t *items, uint64_t *digest)
{
    return recommend_pass(q, tables, r, items, digest);
}

/* Read the global list and every category's ("c0".."c<lists - 1>") from 'pop'. */
static int read_lists(popcache *pop, long lists)
{
    static struct scored_product out[50];
    for (long c = -1; c < lists; c++) {
        char cat[24] = "";
        if (c >= 0)
            snprintf(cat, sizeof(cat), "c%ld", c);
        size_t n = 0;
        if (popcache_top(pop, cat, out, NULL, 50, &n) != EDDY_OK || (c < 0 && n == 0))
            return -1;
    }
    return 0;
}

/* The refreshes that --stage2-staleness makes every period: the global list and every
 * category's, all in use and all expired, read once each (the calls answer the previous
 * lists and schedule the refresh), then the refresher's pass (its instructions:
 * --toggle-collect=refresher_main). */
__attribute__((noinline)) int measured_refreshes(popcache *pop, long lists, double *reads_s);
__attribute__((noinline)) int measured_refreshes(popcache *pop, long lists, double *reads_s)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = read_lists(pop, lists);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *reads_s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    popcache_sync(pop);
    return rc;
}

/* Warm-up pass, then the measured one; prints the mean time per call. */
static int run_recommends(engine *e, const struct gen_tables *tables, long r,
                          long staleness_ms)
{
    stage2cache *sc = stage2cache_new(engine_store(e), &engine_options(e)->product, 600000, 50);
    if (!sc || stage2cache_set_neighbour_cache(sc, 20000) != EDDY_OK) {
        stage2cache_free(sc);
        return -1;
    }
    struct query_ctx q = {e, sc, 10, 100, NULL, NULL, 10000, NULL, NULL, false};
    uint64_t items = 0, digest = 0;
    struct timespec t0, t1;
    int rc = recommend_pass(&q, tables, r, &items, &digest);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    items = 0;
    digest = 0;
    if (rc == 0)
        rc = measured_recommends(&q, tables, r, &items, &digest);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (rc == 0)
        printf("%ld Recommend calls in %.3f s = %.1f us per call (%.1f items per answer, "
               "digest %016llx)\n",
               r, s, s * 1e6 / (double)r, (double)items / (double)r,
               (unsigned long long)digest);
    stage2cache_free(sc);
    /* lists valid for 'staleness': read twice (in use), expired, then read again */
    popcache *pop = popcache_new(engine_store(e), &engine_options(e)->product, staleness_ms, 50);
    if (!pop || read_lists(pop, 50) != 0 || read_lists(pop, 50) != 0)
        rc = -1;
    struct timespec pause = {(staleness_ms + 100) / 1000, (staleness_ms + 100) % 1000 * 1000000};
    nanosleep(&pause, NULL);
    double reads_s = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (rc == 0)
        rc = measured_refreshes(pop, 50, &reads_s);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    popcache_free(pop);
    s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (rc == 0)
        printf("popularity lists refreshed (global + 50 categories) in %.1f ms; the 51 calls "
               "that found them expired took %.3f ms\n",
               s * 1e3, reads_s * 1e3);
    return rc;
}

/* What the group commits wrote per event, by table (store_write_stats): where the bytes
 * of the apply path go. */
static void print_writes(store *st, const struct store_write_stats *base, long n)
{
    static const char *const names[STORE_STAT_TABLES] = {
        [T_LOG] = "LOG", [T_DEDUP] = "DEDUP", [T_DEDUP_EXP] = "DEDUP_EXP", [T_USER] = "USER",
        [T_USER_WIN] = "USER_WIN", [T_USER_LOG] = "USER_LOG", [T_PART_WIN] = "PART_WIN",
        [T_PRODUCT] = "PRODUCT", [T_PROD_WIN] = "PROD_WIN", [T_CAT_POP] = "CAT_POP",
        [T_LATE] = "LATE", [T_S2_HW] = "S2_HW", [T_OUTBOX] = "OUTBOX", [T_BOUGHT] = "BOUGHT",
        [T_META] = "META", [T_SEEN] = "SEEN", [T_COOC] = "COOC",
        [T_PART_ACK] = "PART_ACK",
    };
    struct store_write_stats w;
    store_write_stats(st, &w);
    for (size_t i = 0; i < STORE_STAT_TABLES; i++) {
        w.keys[i] -= base->keys[i];
        w.bytes[i] -= base->bytes[i];
        w.packs[i] -= base->packs[i];
    }
    w.writes -= base->writes;
    double keys = 0, bytes = 0, packs = 0;
    printf("written per event (%llu group writes): table keys bytes encodes\n",
           (unsigned long long)w.writes);
    for (size_t i = 0; i < STORE_STAT_TABLES; i++) {
        if (!w.keys[i])
            continue;
        printf("  %-9s %7.2f %8.1f %7.2f\n", names[i] ? names[i] : "?",
               (double)w.keys[i] / (double)n, (double)w.bytes[i] / (double)n,
               (double)w.packs[i] / (double)n);
        keys += (double)w.keys[i];
        bytes += (double)w.bytes[i];
        packs += (double)w.packs[i];
    }
    printf("  %-9s %7.2f %8.1f %7.2f\n", "total", keys / (double)n, bytes / (double)n,
           packs / (double)n);
}

static const char *arg(int argc, char **argv, const char *name)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return NULL;
}

static long arg_int(int argc, char **argv, const char *name, long def)
{
    const char *v = arg(argc, argv, name);
    return v ? strtol(v, NULL, 10) : def;
}

static bool has_flag(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return true;
    return false;
}

/* Queue the batches of events [i, i + count) (count a multiple of 'batch', or the rest). */
static int queue_batches(engine *e, Eddy__V1__Event **ptrs, long n, long i, long count,
                         long batch, struct progress *pg)
{
    for (long end = i + count < n ? i + count : n; i < end; i += batch) {
        size_t len = (size_t)(n - i < batch ? n - i : batch);
        pthread_mutex_lock(&pg->mu);
        pg->outstanding++;
        pthread_mutex_unlock(&pg->mu);
        if (engine_ingest(e, ptrs + i, len, on_done, pg) != EDDY_OK) {
            fprintf(stderr, "engine_ingest refused a batch\n");
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 && argv[1][0] != '-' ? strtol(argv[1], NULL, 10) : 50000;
    long inflight = arg_int(argc, argv, "--inflight", 8);
    long batch = arg_int(argc, argv, "--batch", 500);
    long warm = arg_int(argc, argv, "--warm", 0);
    if (n < 1 || inflight < 1 || batch < 1 || warm < 0 || warm >= n) {
        fprintf(stderr, "usage: eddy-apply-bench [N] [--inflight K] [--batch B] [--dump FILE] "
                        "[--recommend R] [--kept-bytes BYTES] [--lists-staleness MS] "
                        "[--queued] [--warm W] [--dedup-window MS] [--sweep-interval MS] "
                        "[--flush-interval MS] [--flush-bytes BYTES] [--flush-chunk BYTES] "
                        "[--pair-set-bytes BYTES] [--key-set-bytes BYTES] [--hold-apply]\n");
        return 2;
    }

    struct gen_config cfg = {
        .seed = 1, .run_id = "ab", .users = 100000, .products = 10000, .categories = 50,
        .brands = 200, .zipf_users = 0.9, .zipf_products = 1.0, .disorder_ms = 2000,
        .late_age_ms = 120000, .start_ms = 1800000000000LL, .time_rate = 10000,
    };
    struct gen_tables *tables = gen_tables_new(&cfg);
    struct gen_event *events = calloc((size_t)n, sizeof(*events));
    Eddy__V1__Event **ptrs = calloc((size_t)n, sizeof(*ptrs));
    if (!tables || !events || !ptrs) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    struct gen g;
    gen_init(&g, tables, 0);
    gen_batch(&g, 0, events, ptrs, (size_t)n);

    char dir[] = "/tmp/applybench-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    struct engine_opts o;
    node_defaults(&o, dir);
    o.apply.window.idle_timeout_ms = 0; /* no idle partitions on the synthetic clock: the
                                         * wall clock (valgrind's too) decides nothing */
    o.apply.dedup_window_ms = arg_int(argc, argv, "--dedup-window", o.apply.dedup_window_ms);
    o.apply.sweep_interval_ms = arg_int(argc, argv, "--sweep-interval", o.apply.sweep_interval_ms);
    o.flush_interval_ms = arg_int(argc, argv, "--flush-interval", 0);
    o.flush_bytes = arg_int(argc, argv, "--flush-bytes", 0);
    o.flush_chunk_bytes = arg_int(argc, argv, "--flush-chunk", 0);
    o.product.pair_set_bytes =
        (size_t)arg_int(argc, argv, "--pair-set-bytes", (long)o.product.pair_set_bytes);
    o.apply.key_set_bytes =
        (size_t)arg_int(argc, argv, "--key-set-bytes", (long)o.apply.key_set_bytes);
    bool queued = has_flag(argc, argv, "--queued");
    if (queued)
        o.max_group_events = inflight * batch;
    if (warm > 0)
        o.max_group_events = 8 * 500 > inflight * batch ? 8 * 500 : inflight * batch;
    engine *e;
    char err[256];
    if (engine_open(&o, &e, err, sizeof err) != EDDY_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }

    if (has_flag(argc, argv, "--hold-apply"))
        engine_hold_apply(e, true); /* the writer applies each group at the next one */
    long kept = arg_int(argc, argv, "--kept-bytes", 0);
    if (kept > 0)
        store_set_kept_bytes(engine_store(e), (size_t)kept);

    struct progress pg = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};
    struct timespec t0, t1;
    struct store_write_stats base = {0};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct completion gate;
    for (long i = 0; i < n;) {
        long count = i < warm ? warm - i : queued ? n : inflight * batch;
        completion_init(&gate);
        if (engine_exclusive(e, gate_wait, gate_done, &gate) != EDDY_OK) {
            fprintf(stderr, "engine_exclusive refused\n");
            return 1;
        }
        if (queue_batches(e, ptrs, n, i, count, batch, &pg) != 0)
            return 1;
        i += count;
        completion_signal(&gate, EDDY_OK, 0);
        pthread_mutex_lock(&pg.mu);
        while (pg.outstanding > 0)
            pthread_cond_wait(&pg.cv, &pg.mu);
        pthread_mutex_unlock(&pg.mu);
        if (warm > 0 && i == warm) { /* measure the rest only, the warm events applied */
            if (engine_read_barrier(e, -1) != EDDY_OK)
                pg.failed++;
            if (o.flush_interval_ms > 0 && store_flush(engine_store(e)) != EDDY_OK)
                pg.failed++;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            store_write_stats(engine_store(e), &base);
        }
    }
    engine_flush(e);
    if (o.flush_interval_ms > 0 && store_flush(engine_store(e)) != EDDY_OK)
        pg.failed++;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    long measured = n - warm;
    printf("%ld events in %.2f s = %.0f events/s (accepted %llu, duplicates %llu, failed "
           "batches %llu; groups of %ld x %ld",
           measured, s, (double)measured / s, (unsigned long long)pg.accepted,
           (unsigned long long)pg.duplicates, (unsigned long long)pg.failed, inflight, batch);
    if (warm > 0)
        printf("; after %ld events in groups of 8 x 500)\n", warm);
    else
        printf(")\n");
    print_writes(engine_store(e), &base, measured);
    long recs = arg_int(argc, argv, "--recommend", 0);
    long staleness = arg_int(argc, argv, "--lists-staleness", 2000);
    if (recs > 0 && run_recommends(e, tables, recs, staleness) != 0) {
        fprintf(stderr, "Recommend failed\n");
        pg.failed++;
    }
    const char *dump = arg(argc, argv, "--dump");
    if (dump) {
        FILE *f = fopen(dump, "w");
        if (!f || store_dump(engine_store(e), UINT32_MAX, f) != EDDY_OK) {
            fprintf(stderr, "cannot dump the state to %s\n", dump);
            pg.failed++;
        }
        if (f)
            fclose(f);
    }
    engine_close(e);
    gen_tables_free(tables);
    free(events);
    free(ptrs);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) != 0 || pg.failed != 0;
}
