/* The state engine end to end on a real LevelDB in a temp dir: dedup, late events,
 * windows, the user model, delete-user, byte-identical state for two arrival orders, a
 * failed synced write failing the group applied on top of it, and the state written behind
 * the log: read before it is flushed, and rebuilt exactly after a crash at each phase;
 * the flush thread gives the memory malloc holds free back to the OS. */
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/clock.h"
#include "common/completion.h"
#include "common/partition.h"
#include "node/state/engine.h"
#include "node/state/logrec.h"
#include "node/state/stage2cache.h"
#include "node/state/query.h"

#include "engine_fixture.h"

static void test_dedup_late_windows(void **state)
{
    char *dir = tmpdir_for("engine");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);

    Eddy__V1__Event *a[] = {mk("e1", "u1", T0 + 1000, VIEW, "p1", "books"),
                            mk("e2", "u1", T0 + 2000, VIEW, "p2", "books"),
                            mk("e1", "u1", T0 + 1000, VIEW, "p1", "books"), /* duplicate */
                            mk("e3", "u1", T0 + 70000, BUY, "p2", "books")};
    struct done d = ingest(e, a, 4);
    assert_int_equal(d.r.accepted, 3);
    assert_int_equal(d.r.duplicates, 1);
    assert_int_equal(d.r.late, 0);
    /* watermark is now T0+65 s: window [T0, T0+60 s) is closed; an event in it is late */
    Eddy__V1__Event *b[] = {mk("e4", "u1", T0 + 3000, VIEW, "p3", "toys")};
    d = ingest(e, b, 1);
    assert_int_equal(d.r.accepted, 1);
    assert_int_equal(d.r.late, 1);

    stage2cache *pc = stage2cache_new(engine_store(e), &engine_options(e)->product, 0, 50);
    struct query_ctx q = {e, pc, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    Eddy__V1__EventCountsRequest cr = EDDY__V1__EVENT_COUNTS_REQUEST__INIT;
    cr.user_id = "u1";
    Eddy__V1__EventCountsResponse *c = NULL;
    assert_int_equal(query_event_counts(&q, &cr, &c), EDDY_OK);
    assert_int_equal(c->n_windows, 1); /* only the closed window */
    assert_int_equal(c->windows[0]->window_start_ms, T0);
    assert_int_equal(c->windows[0]->counts->view, 2); /* the late view is not added */
    assert_true(c->windows[0]->closed);
    assert_int_equal(c->late_events, 1);
    query_free_response(&c->base);
    cr.include_open = true;
    assert_int_equal(query_event_counts(&q, &cr, &c), EDDY_OK);
    assert_int_equal(c->n_windows, 2);
    assert_false(c->windows[1]->closed);
    assert_int_equal(c->windows[1]->counts->purchase, 1);
    query_free_response(&c->base);

    /* the late event is in the model */
    Eddy__V1__GetUserProfileResponse *pr = NULL;
    assert_int_equal(query_profile(&q, "u1", &pr), EDDY_OK);
    assert_int_equal(pr->profile->event_count, 4);
    assert_int_equal(pr->profile->n_recent_purchases, 1);
    assert_string_equal(pr->profile->recent_purchases[0]->product_id, "p2");
    assert_int_equal(pr->profile->n_recent_views, 3);
    assert_string_equal(pr->profile->recent_views[0]->product_id, "p3"); /* newest by time? */
    query_free_response(&pr->base);
    assert_int_equal(query_profile(&q, "nobody", &pr), EDDY_ERR_NOT_FOUND);

    /* recommend: purchased p2 excluded; neighbours of p1 known */
    Eddy__V1__RecommendRequest rr = EDDY__V1__RECOMMEND_REQUEST__INIT;
    rr.user_id = "u1";
    Eddy__V1__RecommendResponse *rec = NULL;
    assert_int_equal(query_recommend(&q, &rr, &rec), EDDY_OK);
    assert_false(rec->cold_start);
    for (size_t i = 0; i < rec->n_items; i++)
        assert_string_not_equal(rec->items[i]->product_id, "p2");
    query_free_response(&rec->base);
    rr.user_id = "stranger";
    assert_int_equal(query_recommend(&q, &rr, &rec), EDDY_OK);
    assert_true(rec->cold_start);
    assert_true(rec->n_items > 0);
    assert_string_equal(rec->items[0]->reason, "trending now");
    query_free_response(&rec->base);

    stage2cache_free(pc);
    engine_close(e);
    /* reopen: everything acknowledged is still there, dedup included */
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    d = ingest(e, a, 2);
    assert_int_equal(d.r.duplicates, 2);
    assert_int_equal(d.r.accepted, 0);
    engine_close(e);
    for (int i = 0; i < 4; i++)
        free(a[i]);
    free(b[0]);
    rmrf(dir);
    free(dir);
}

/* The text dump of the tables 'tables' (a mask of enum store_table bits). */
static char *dump_tables(engine *e, uint32_t tables)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(store_dump(engine_store(e), tables, f), EDDY_OK);
    fclose(f);
    return buf;
}

/* The state every arrival order must leave alike (the log's seqs differ between orders). */
static char *dump(engine *e)
{
    return dump_tables(e, (1u << T_USER) | (1u << T_USER_WIN) | (1u << T_PART_WIN) |
                              (1u << T_PROD_WIN) | (1u << T_PRODUCT) | (1u << T_CAT_POP) |
                              (1u << T_COOC));
}

static void test_two_orders_same_bytes(void **state)
{
    enum { N = 400 };
    Eddy__V1__Event *evs[N];
    char ids[N][16], users[N][8], prods[N][8];
    static const char *cats[] = {"books", "toys", "garden"};
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "e%d", i);
        snprintf(users[i], sizeof(users[i]), "u%d", i % 9);
        snprintf(prods[i], sizeof(prods[i]), "p%d", (i * 7) % 23);
        Eddy__V1__EventType t = i % 11 == 0 ? BUY : i % 7 == 0 ? CART : VIEW;
        evs[i] = mk(ids[i], users[i], T0 + i * 900, t, prods[i], cats[i % 3]);
    }
    /* second order: swap neighbours (900 ms apart, within the 5 s bound); third: reverse
     * each run of 5 (different users: each user's own events keep their order); and
     * batches of different sizes. Stage 2 included: with 3 neighbours read per product,
     * lists truncated as the pairs arrived differed between the orders. */
    Eddy__V1__Event *alt[3][N];
    memcpy(alt[0], evs, sizeof(alt[0]));
    memcpy(alt[1], evs, sizeof(alt[1]));
    for (int i = 0; i + 1 < N; i += 2) {
        alt[1][i] = evs[i + 1];
        alt[1][i + 1] = evs[i];
    }
    for (int i = 0; i < N; i++)
        alt[2][i] = evs[i / 5 * 5 + 4 - i % 5];
    static const size_t steps[3] = {50, 7, 13};
    char *dumps[3];
    for (int run = 0; run < 3; run++) {
        char *dir = tmpdir_for("engine");
        struct engine_opts o = opts(dir);
        o.product.max_neighbours = 3;
        engine *e = NULL;
        char err[256];
        assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
        size_t step = steps[run];
        for (size_t i = 0; i < N; i += step) {
            size_t n = i + step <= N ? step : N - i;
            struct done d = ingest(e, alt[run] + i, n);
            assert_int_equal(d.r.late, 0);
        }
        dumps[run] = dump(e);
        engine_close(e);
        rmrf(dir);
        free(dir);
    }
    assert_true(strlen(dumps[0]) > 1000); /* not trivially equal */
    assert_string_equal(dumps[0], dumps[1]);
    assert_string_equal(dumps[0], dumps[2]);
    for (int run = 0; run < 3; run++)
        free(dumps[run]);
    for (int i = 0; i < N; i++)
        free(evs[i]);
}

struct del {
    int calls;
    bool model;
    uint64_t windows, log;
};

static void on_delete(void *ud, eddy_err err, bool model, uint64_t windows, uint64_t log)
{
    struct del *d = ud;
    assert_int_equal(err, EDDY_OK);
    d->calls++;
    d->model = model;
    d->windows = windows;
    d->log = log;
}

static void test_delete_user(void **state)
{
    char *dir = tmpdir_for("engine");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    Eddy__V1__Event *a[] = {mk("d1", "gone", T0 + 1000, VIEW, "p1", "books"),
                            mk("d2", "gone", T0 + 61000, BUY, "p2", "books"),
                            mk("d3", "stays", T0 + 2000, BUY, "p1", "books")};
    ingest(e, a, 3);
    char *bought = dump_tables(e, 1u << T_BOUGHT);
    assert_non_null(strstr(bought, "676f6e65")); /* "gone" bought p2 */
    free(bought);
    struct del d = {0};
    assert_int_equal(engine_delete_user(e, "gone", on_delete, &d), EDDY_OK);
    engine_flush(e);
    assert_int_equal(d.calls, 1);
    assert_true(d.model);
    assert_int_equal(d.windows, 2);
    assert_int_equal(d.log, 2);
    stage2cache *pc = stage2cache_new(engine_store(e), &engine_options(e)->product, 0, 50);
    struct query_ctx q = {e, pc, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    Eddy__V1__GetUserProfileResponse *pr = NULL;
    assert_int_equal(query_profile(&q, "gone", &pr), EDDY_ERR_NOT_FOUND);
    bought = dump_tables(e, 1u << T_BOUGHT);
    assert_null(strstr(bought, "676f6e65"));      /* its purchases are forgotten too */
    assert_non_null(strstr(bought, "7374617973")); /* "stays" keeps its own */
    free(bought);
    assert_int_equal(query_profile(&q, "stays", &pr), EDDY_OK);
    query_free_response(&pr->base);
    stage2cache_free(pc);
    engine_close(e);
    for (int i = 0; i < 3; i++)
        free(a[i]);
    rmrf(dir);
    free(dir);
}

/* Every purchased product stays excluded, not only the recent ones the profile shows;
 * every viewed one too unless the request lets them back. */
static void test_purchases_never_recommended(void **state)
{
    enum { N = 30 };
    char *dir = tmpdir_for("engine");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    Eddy__V1__Event *evs[2 * N];
    char ids[2 * N][16], prods[N][8];
    for (int i = 0; i < N; i++) {
        snprintf(prods[i], sizeof(prods[i]), "p%d", i);
        snprintf(ids[i], sizeof(ids[i]), "b%d", i);
        evs[i] = mk(ids[i], "buyer", T0 + i * 1000, BUY, prods[i], "books");
        /* another user makes every product popular */
        snprintf(ids[N + i], sizeof(ids[N + i]), "v%d", i);
        evs[N + i] = mk(ids[N + i], "fan", T0 + i * 1000, VIEW, prods[i], "books");
    }
    ingest(e, evs, 2 * N);
    stage2cache *pc = stage2cache_new(engine_store(e), &engine_options(e)->product, 0, 50);
    struct query_ctx q = {e, pc, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    Eddy__V1__RecommendRequest rr = EDDY__V1__RECOMMEND_REQUEST__INIT;
    rr.user_id = "buyer";
    rr.max_recommendations = 100;
    Eddy__V1__RecommendResponse *rec = NULL;
    assert_int_equal(query_recommend(&q, &rr, &rec), EDDY_OK);
    assert_int_equal(rec->n_items, 0); /* the buyer bought every product there is */
    query_free_response(&rec->base);
    rr.exclude = EDDY__V1__EXCLUSION__EXCLUSION_PURCHASED;
    assert_int_equal(query_recommend(&q, &rr, &rec), EDDY_OK);
    assert_int_equal(rec->n_items, 0); /* purchases stay out whatever the request asks */
    query_free_response(&rec->base);
    rr.user_id = "fan"; /* viewed, not bought: all may come back when asked */
    assert_int_equal(query_recommend(&q, &rr, &rec), EDDY_OK);
    assert_true(rec->n_items > 0);
    query_free_response(&rec->base);
    rr.exclude = EDDY__V1__EXCLUSION__EXCLUSION_DEFAULT; /* the node's: leave them out */
    assert_int_equal(query_recommend(&q, &rr, &rec), EDDY_OK);
    assert_int_equal(rec->n_items, 0);
    query_free_response(&rec->base);
    rr.exclude = EDDY__V1__EXCLUSION__EXCLUSION_INTERACTED;
    assert_int_equal(query_recommend(&q, &rr, &rec), EDDY_OK);
    assert_int_equal(rec->n_items, 0);
    query_free_response(&rec->base);
    stage2cache_free(pc);
    engine_close(e);
    for (int i = 0; i < 2 * N; i++)
        free(evs[i]);
    rmrf(dir);
    free(dir);
}

/* Holds the writer (an exclusive job) until 'ud', a completion, is signalled. */
static eddy_err gate_wait(void *ud, engine *e)
{
    return completion_wait(ud, EDDY_OK);
}

static void gate_done(void *ud, eddy_err err)
{
}

/* An exclusive job that records what it found: the events of partition 'p' in the store. */
struct probe {
    uint32_t p;
    int ran;
    uint64_t events;
    eddy_err err;
};

static eddy_err probe_fn(void *ud, engine *e)
{
    struct probe *pr = ud;
    struct part_meta m;
    pr->ran++;
    eddy_err err = apply_meta_load(engine_store(e), pr->p, &m);
    pr->events = m.events;
    return err;
}

static void probe_done(void *ud, eddy_err err)
{
    ((struct probe *)ud)->err = err;
}

static uint64_t events_committed(engine *e)
{
    uint64_t n = 0;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        struct engine_partition_view v;
        engine_partition(e, p, &v);
        n += v.events;
    }
    return n;
}

/* The group after a failed write was applied on top of it (while it was being written):
 * both fail, neither is visible, and the engine goes on from the store: the same events
 * are accepted again (not duplicates), the ones committed before stay duplicates. */
static bool has_neighbour(const struct product_neighbour *l, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(l[i].id, id) == 0)
            return true;
    }
    return false;
}

/* A new item pairs with the user's newest items by time, views and purchases merged, and
 * at any distance in time (span 0): a user with many views (here a day before) still
 * pairs a new view with the purchase just before it; the oldest views, past the ten
 * newest items, are not paired. */
static void test_pairs_with_newest_items(void **state)
{
    enum { V = 12 };
    char *dir = tmpdir_for("engine");
    struct engine_opts o = opts(dir);
    o.apply.cooccurrence_span_ms = 0;
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    Eddy__V1__Event *evs[V + 2];
    char ids[V][8], prods[V][8];
    for (int i = 0; i < V; i++) {
        snprintf(ids[i], sizeof(ids[i]), "e%d", i);
        snprintf(prods[i], sizeof(prods[i]), "v%d", i);
        evs[i] = mk(ids[i], "u", T0 + i * 1000, VIEW, prods[i], "c");
    }
    evs[V] = mk("buy", "u", T0 + 86400000, BUY, "bk", "c");
    evs[V + 1] = mk("new", "u", T0 + 86400000 + 1000, VIEW, "nw", "c");
    ingest(e, evs, V + 2);
    struct product_neighbour *l = NULL;
    size_t n = 0;
    assert_int_equal(product_neighbours(engine_store(e), &o.product, "nw", 100, 256, &l, &n),
                     EDDY_OK);
    assert_true(has_neighbour(l, n, "bk"));
    assert_true(has_neighbour(l, n, "v11")); /* a day older: no time limit */
    assert_true(has_neighbour(l, n, "v3"));  /* the ninth newest view, tenth item */
    assert_false(has_neighbour(l, n, "v2"));
    assert_int_equal(n, 10);
    product_neighbours_free(l, n);
    engine_close(e);
    for (int i = 0; i < V + 2; i++)
        free(evs[i]);
    rmrf(dir);
    free(dir);
}

/* Close 'e', free its 'n' events and remove its directory 'dir' (freed). */
static void finish_engine(engine *e, Eddy__V1__Event **evs, size_t n, char *dir)
{
    engine_close(e);
    for (size_t i = 0; i < n; i++)
        free(evs[i]);
    rmrf(dir);
    free(dir);
}

/* An acknowledgement held on the sync thread (its callback waits for the test): the batch's
 * log is durable and published, its apply is not (the writer may apply it, but only the
 * next write, which waits for this one, publishes it). */
struct held_ack {
    engine *e;
    uint32_t p;
    struct engine_partition_view at_ack; /* the partition as the callback found it */
    struct done d;
    struct completion acked, release;
};

static void on_held_ack(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    struct held_ack *h = ud;
    on_done(&h->d, err, r);
    engine_partition(h->e, h->p, &h->at_ack);
    completion_signal(&h->acked, err, 0);
    completion_wait(&h->release, EDDY_OK);
}

/* Log first, apply behind: the acknowledgement comes when the log is durable, before the
 * events are applied; a query after it waits for the apply (the read barrier), and past
 * --read-barrier-timeout answers EDDY_ERR_TIMEOUT rather than a state without them. */
static void test_ack_before_apply(void **state)
{
    char *dir = tmpdir_for("engine");
    struct engine_opts o = opts(dir);
    o.read_barrier_timeout_ms = 200;
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    Eddy__V1__Event *a[] = {mk("h1", "uh", T0 + 1000, VIEW, "p1", "books"),
                            mk("h2", "uh", T0 + 2000, BUY, "p2", "books"),
                            mk("h1", "uh", T0 + 1000, VIEW, "p1", "books")};
    struct held_ack h = {.e = e, .p = partition_of_user("uh", FIXTURE_PARTITIONS)};
    completion_init(&h.acked);
    completion_init(&h.release);
    /* idle: nothing behind, no wait */
    assert_int_equal(engine_read_barrier(e, -1), EDDY_OK);
    assert_true(engine_caught_up(e));
    assert_int_equal(engine_ingest(e, a, 3, on_held_ack, &h), EDDY_OK);
    assert_int_equal(completion_wait(&h.acked, EDDY_OK), EDDY_OK);
    /* the answer is the apply's, decided at the append: one duplicate */
    assert_int_equal(h.d.r.accepted, 2);
    assert_int_equal(h.d.r.duplicates, 1);
    assert_int_equal(h.at_ack.next_seq, 2);
    assert_int_equal(h.at_ack.applied_seq, 0);
    assert_int_equal(h.at_ack.events, 0);
    uint64_t lag = 0;
    engine_apply_lag(e, &lag, NULL);
    assert_int_equal(lag, 2);
    assert_false(engine_caught_up(e)); /* a barrier would wait: --dev reads leave the CQ */

    stage2cache *pc = stage2cache_new(engine_store(e), &engine_options(e)->product, 0, 50);
    struct query_ctx q = {e, pc, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    Eddy__V1__GetUserProfileResponse *pr = NULL;
    assert_int_equal(engine_read_barrier(e, h.p), EDDY_ERR_TIMEOUT);
    assert_int_equal(query_profile(&q, "uh", &pr), EDDY_ERR_TIMEOUT);
    /* another partition has nothing behind */
    assert_int_equal(engine_read_barrier(e, (h.p + 1) % FIXTURE_PARTITIONS), EDDY_OK);

    completion_signal(&h.release, EDDY_OK, 0);
    assert_int_equal(query_profile(&q, "uh", &pr), EDDY_OK);
    assert_int_equal(pr->profile->event_count, 2);
    query_free_response(&pr->base);
    struct engine_partition_view v;
    engine_partition(e, h.p, &v);
    assert_int_equal(v.applied_seq, 2);
    assert_int_equal(v.events, 2);
    engine_apply_lag(e, &lag, NULL);
    assert_int_equal(lag, 0);
    assert_true(engine_caught_up(e));
    stage2cache_free(pc);
    finish_engine(e, a, 3, dir);
}

struct acked {
    struct completion done;
    struct engine_ingest_result r;
};

static void on_acked(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    struct acked *a = ud;
    a->r = *r;
    completion_signal(&a->done, err, 0);
}

/* An appended event's DEDUP row is written once, by its append, with the bytes its apply
 * would write: the apply, in a later write here, writes none (it wrote a second record for
 * the key, of other bytes, before). */
static void test_dedup_row_written_once(void **state)
{
    char *dir = tmpdir_for("engine");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    Eddy__V1__Event *a[] = {mk("w1", "uw", T0 + 1000, VIEW, "p1", "books"),
                            mk("w2", "uw", T0 + 2000, CART, "p2", "books"),
                            mk("w3", "uv", T0 + 3000, BUY, "p2", "books"),
                            mk("w1", "uw", T0 + 1000, VIEW, "p1", "books")};
    engine_hold_apply(e, true); /* the apply waits for the flush job, after the write */
    struct acked k;
    completion_init(&k.done);
    assert_int_equal(completion_wait(&k.done, engine_ingest(e, a, 4, on_acked, &k)), EDDY_OK);
    assert_int_equal(k.r.accepted, 3);
    assert_int_equal(k.r.duplicates, 1);
    struct store_write_stats before, after;
    store_write_stats(engine_store(e), &before);
    assert_int_equal(before.keys[T_DEDUP], 3);
    assert_int_equal(before.keys[T_USER_LOG], 0); /* nothing applied yet */
    engine_flush(e);
    store_write_stats(engine_store(e), &after);
    assert_int_equal(after.keys[T_USER_LOG], 3);
    assert_int_equal(after.keys[T_DEDUP], 3);
    struct engine_partition_view v;
    engine_partition(e, partition_of_user("uw", FIXTURE_PARTITIONS), &v);
    assert_int_equal(v.events, 2);
    assert_int_equal(v.duplicates, 1);
    /* the rows are the apply's: a retry of each is a duplicate */
    struct acked k2;
    completion_init(&k2.done);
    assert_int_equal(completion_wait(&k2.done, engine_ingest(e, a, 3, on_acked, &k2)), EDDY_OK);
    assert_int_equal(k2.r.duplicates, 3);
    engine_hold_apply(e, false);
    finish_engine(e, a, 4, dir);
}

static eddy_err wait_released(void *ud, engine *e)
{
    (void)e;
    return completion_wait(ud, EDDY_OK);
}

static void on_excl_done(void *ud, eddy_err err)
{
    (void)ud;
    assert_int_equal(err, EDDY_OK);
}

/* The jobs of an engine batch (one Apply's partitions) are queued at once, so the writer
 * takes them into one group: one synced write for all, however many partitions. Refused as
 * a whole (the queue full), every job is answered with the refusal. */
static void test_batch_is_one_group(void **state)
{
    char *dir = tmpdir_for("batch");
    struct engine_opts o = opts(dir);
    o.max_pending_events = 2;
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    engine_hold_apply(e, true); /* no write of applied state between the counts */
    const char *users[] = {"ua", "ub", "uc", "ud", "ue", "uf", "ug", "uh"};
    Eddy__V1__Event *ev[3];
    uint32_t parts[3];
    size_t n = 0;
    for (size_t i = 0; i < 8 && n < 3; i++) { /* three users of three partitions */
        uint32_t p = partition_of_user(users[i], FIXTURE_PARTITIONS);
        bool seen = false;
        for (size_t k = 0; k < n; k++)
            seen |= parts[k] == p;
        if (seen)
            continue;
        parts[n] = p;
        ev[n] = mk(users[i], users[i], T0 + 1000, VIEW, "p1", "books");
        n++;
    }
    assert_int_equal(n, 3);
    struct store_write_stats before, after;
    store_write_stats(engine_store(e), &before);
    struct engine_batch b = ENGINE_BATCH_INIT;
    struct acked k[3];
    for (size_t i = 0; i < 3; i++) {
        completion_init(&k[i].done);
        assert_int_equal(engine_apply_in(e, &b, parts[i], 1, &ev[i], 1, on_acked, &k[i]),
                         EDDY_OK);
    }
    engine_submit(e, &b);
    assert_null(b.head);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(completion_wait(&k[i].done, EDDY_OK), EDDY_OK);
        assert_int_equal(k[i].r.accepted, 1);
    }
    store_write_stats(engine_store(e), &after);
    assert_int_equal(after.writes - before.writes, 1);
    assert_int_equal(after.keys[T_LOG] - before.keys[T_LOG], 3);

    /* the writer held by an exclusive job, one event queued: a batch of 2 more is over
     * --max-pending-events (2) and every job of it is refused */
    struct completion release;
    completion_init(&release);
    assert_int_equal(engine_exclusive(e, wait_released, on_excl_done, &release), EDDY_OK);
    struct acked q;
    completion_init(&q.done);
    assert_int_equal(engine_apply(e, parts[0], 1, &ev[0], 1, on_acked, &q), EDDY_OK);
    struct acked r[2];
    for (size_t i = 0; i < 2; i++) {
        completion_init(&r[i].done);
        assert_int_equal(engine_apply_in(e, &b, parts[i], 1, &ev[i], 1, on_acked, &r[i]),
                         EDDY_OK);
    }
    engine_submit(e, &b);
    for (size_t i = 0; i < 2; i++) /* answered by engine_submit itself */
        assert_int_equal(completion_wait(&r[i].done, EDDY_OK), EDDY_ERR_FULL);
    completion_signal(&release, EDDY_OK, 0);
    assert_int_equal(completion_wait(&q.done, EDDY_OK), EDDY_OK);
    assert_int_equal(q.r.duplicates, 1);
    engine_hold_apply(e, false);
    finish_engine(e, ev, 3, dir);
}

static bool leads_nothing(void *ud, uint32_t p)
{
    (void)ud;
    (void)p;
    return false;
}

static Eddy__Store__V1__Impression impression_of(const char *user, const char *id)
{
    Eddy__Store__V1__Impression imp = EDDY__STORE__V1__IMPRESSION__INIT;
    imp.recommendation_id = (char *)id;
    imp.user_id = (char *)user;
    imp.experiment = "x";
    imp.variant = "A";
    imp.ts = T0;
    return imp;
}

/* A Recommend answered at epoch 1 on a move's source: its impression, queued before the
 * target's fence (epoch 2), is appended and so in the final tail the target fetches, even
 * though the source no longer leads the partition when the writer gets to it (it was
 * dropped then, and an exact experiment count through a live move came up one impression
 * short: integration.experiments_cluster). One queued after the fence is refused at once,
 * so that its answer is refused too (the router asks the new owner). */
static void test_impression_fenced_by_epoch(void **state)
{
    char *dir = tmpdir_for("impression");
    struct engine_opts o = opts(dir);
    o.cluster.leads = leads_nothing; /* the new map already seen, as on the source */
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    uint32_t p = partition_of_user("ui", FIXTURE_PARTITIONS);
    Eddy__V1__Event *ev[] = {mk("i0", "ui", T0, VIEW, "p1", "books")};
    struct acked first;
    completion_init(&first.done);
    assert_int_equal(engine_apply(e, p, 1, ev, 1, on_acked, &first), EDDY_OK);
    assert_int_equal(completion_wait(&first.done, EDDY_OK), EDDY_OK);

    struct completion release; /* the writer held: the jobs below queue in this order */
    completion_init(&release);
    assert_int_equal(engine_exclusive(e, wait_released, on_excl_done, &release), EDDY_OK);
    Eddy__Store__V1__Impression before = impression_of("ui", "r1");
    assert_int_equal(engine_impression(e, &before, 1), EDDY_OK);
    struct acked fence;
    completion_init(&fence.done);
    assert_int_equal(engine_apply(e, p, 2, NULL, 0, on_acked, &fence), EDDY_OK);
    Eddy__Store__V1__Impression after = impression_of("ui", "r2");
    assert_int_equal(engine_impression(e, &after, 1), EDDY_ERR_NOT_OWNER);
    assert_int_equal(engine_impression(e, &after, 2), EDDY_OK); /* the new epoch's owner */
    completion_signal(&release, EDDY_OK, 0);
    assert_int_equal(completion_wait(&fence.done, EDDY_OK), EDDY_OK);
    engine_flush(e);
    struct engine_partition_view v;
    engine_partition(e, p, &v);
    assert_int_equal(v.next_seq, 3); /* the event, the impression before the fence, r2 at 2 */
    finish_engine(e, ev, 1, dir);
}

/* The writer's idle check (once a second) applies the records appended ahead only when an
 * idle watermark is due: it used to apply them all first, on the writer, every second,
 * delaying the acknowledgement of the group it ran with by their apply. No idle timeout
 * here, so nothing is ever due. */
static void test_idle_check_leaves_the_apply_behind(void **state)
{
    char *dir = tmpdir_for("idle");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    engine_hold_apply(e, true);
    Eddy__V1__Event *a[] = {mk("i1", "ui", T0 + 1000, VIEW, "p1", "books"),
                            mk("i2", "ui", T0 + 2000, VIEW, "p2", "books")};
    struct acked k;
    completion_init(&k.done);
    assert_int_equal(completion_wait(&k.done, engine_ingest(e, a, 2, on_acked, &k)), EDDY_OK);
    /* the check runs on the writer's one-second clock (a wait for a job times out after a
     * second): two of its periods pass, with nothing else for the writer to do */
    struct timespec two_periods = {2, 100000000};
    nanosleep(&two_periods, NULL);
    uint64_t lag = 0;
    engine_apply_lag(e, &lag, NULL);
    assert_int_equal(lag, 2);
    struct engine_partition_view v;
    engine_partition(e, partition_of_user("ui", FIXTURE_PARTITIONS), &v);
    assert_int_equal(v.next_seq, 2);
    assert_int_equal(v.applied_seq, 0);
    engine_hold_apply(e, false);
    engine_flush(e);
    engine_partition(e, partition_of_user("ui", FIXTURE_PARTITIONS), &v);
    assert_int_equal(v.applied_seq, 2);
    finish_engine(e, a, 2, dir);
}

/* A job that reads or replaces the store around the writer's txn (an exclusive job: moves,
 * checkpoint copies, reprocess swaps) runs on a store that holds the state of every event
 * acknowledged before it, not only their log. */
static void test_exclusive_after_apply(void **state)
{
    char *dir = tmpdir_for("engine");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    Eddy__V1__Event *a[] = {mk("x1", "ux", T0 + 1000, VIEW, "p1", "books"),
                            mk("x2", "ux", T0 + 2000, VIEW, "p2", "books")};
    struct completion g;
    struct done d = {0};
    struct probe pr = {partition_of_user("ux", FIXTURE_PARTITIONS), 0, 0, EDDY_OK};
    completion_init(&g);
    assert_int_equal(engine_exclusive(e, gate_wait, gate_done, &g), EDDY_OK);
    assert_int_equal(engine_ingest(e, a, 2, on_done, &d), EDDY_OK);
    assert_int_equal(engine_exclusive(e, probe_fn, probe_done, &pr), EDDY_OK);
    completion_signal(&g, EDDY_OK, 0);
    engine_flush(e);
    assert_int_equal(d.err, EDDY_OK);
    assert_int_equal(pr.ran, 1);
    assert_int_equal(pr.err, EDDY_OK);
    assert_int_equal(pr.events, 2);
    finish_engine(e, a, 2, dir);
}

static void test_failed_write_fails_the_next_group(void **state)
{
    char *dir = tmpdir_for("engine");
    struct engine_opts o = opts(dir);
    o.max_group_events = 2; /* one group per batch below */
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    Eddy__V1__Event *a[] = {mk("a1", "ua", T0 + 1000, VIEW, "p1", "books"),
                            mk("a2", "ua", T0 + 2000, VIEW, "p2", "books")};
    Eddy__V1__Event *b[] = {mk("b1", "ub", T0 + 3000, VIEW, "p1", "books"),
                            mk("b2", "ub", T0 + 4000, BUY, "p2", "books")};
    Eddy__V1__Event *c[] = {mk("c1", "uc", T0 + 5000, VIEW, "p1", "books"),
                            mk("c2", "uc", T0 + 6000, VIEW, "p3", "toys")};
    ingest(e, a, 2);

    struct completion g;
    struct done db = {0}, dc = {0};
    completion_init(&g);
    assert_int_equal(engine_exclusive(e, gate_wait, gate_done, &g), EDDY_OK);
    assert_int_equal(engine_ingest(e, b, 2, on_done, &db), EDDY_OK);
    assert_int_equal(engine_ingest(e, c, 2, on_done, &dc), EDDY_OK);
    store_fail_writes(engine_store(e), 1, EDDY_ERR_IO); /* b's write */
    completion_signal(&g, EDDY_OK, 0);
    engine_flush(e);
    assert_int_equal(db.calls, 1);
    assert_int_equal(db.err, EDDY_ERR_IO);
    assert_int_equal(dc.calls, 1);
    assert_int_equal(dc.err, EDDY_ERR_IO);
    assert_int_equal(events_committed(e), 2);
    stage2cache *pc = stage2cache_new(engine_store(e), &engine_options(e)->product, 0, 50);
    struct query_ctx q = {e, pc, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    Eddy__V1__GetUserProfileResponse *pr = NULL;
    assert_int_equal(query_profile(&q, "ub", &pr), EDDY_ERR_NOT_FOUND);
    assert_int_equal(query_profile(&q, "uc", &pr), EDDY_ERR_NOT_FOUND);

    /* an exclusive job right after a failed write runs, on the store without it */
    struct probe before = {partition_of_user("uc", FIXTURE_PARTITIONS), 0, 0, EDDY_OK};
    struct probe after = before;
    assert_int_equal(engine_exclusive(e, probe_fn, probe_done, &before), EDDY_OK);
    engine_flush(e);
    completion_init(&g);
    memset(&dc, 0, sizeof(dc));
    assert_int_equal(engine_exclusive(e, gate_wait, gate_done, &g), EDDY_OK);
    assert_int_equal(engine_ingest(e, c, 2, on_done, &dc), EDDY_OK);
    assert_int_equal(engine_exclusive(e, probe_fn, probe_done, &after), EDDY_OK);
    store_fail_writes(engine_store(e), 1, EDDY_ERR_IO);
    completion_signal(&g, EDDY_OK, 0);
    engine_flush(e);
    assert_int_equal(dc.err, EDDY_ERR_IO);
    assert_int_equal(after.ran, 1);
    assert_int_equal(after.err, EDDY_OK);
    assert_int_equal(after.events, before.events);

    struct done d = ingest(e, c, 2);
    assert_int_equal(d.r.accepted, 2);
    assert_int_equal(d.r.duplicates, 0);
    d = ingest(e, b, 2);
    assert_int_equal(d.r.accepted, 2);
    d = ingest(e, a, 2);
    assert_int_equal(d.r.duplicates, 2);
    assert_int_equal(events_committed(e), 6);
    assert_int_equal(query_profile(&q, "ub", &pr), EDDY_OK);
    assert_int_equal(pr->profile->event_count, 2);
    query_free_response(&pr->base);
    stage2cache_free(pc);
    engine_close(e);
    for (int i = 0; i < 2; i++) {
        free(a[i]);
        free(b[i]);
        free(c[i]);
    }
    rmrf(dir);
    free(dir);
}

/* A partition written by a newer layout (PartitionMeta.format above this binary's) is
 * refused with a message naming it, never read as if it were this layout; the current
 * one opens. */
static void test_newer_layout_refused(void **state)
{
    (void)state;
    char *dir = tmpdir_for("layout");
    struct store_key k;
    key_init(&k, 3, T_META);
    Eddy__Store__V1__PartitionMeta m = EDDY__STORE__V1__PARTITION_META__INIT;
    m.next_seq = 5;
    m.format = apply_meta_format() + 1;
    uint8_t buf[64];
    leave_store_row(dir, &k, buf, eddy__store__v1__partition_meta__pack(&m, buf));
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[512] = "";
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_ERR_TOO_LARGE);
    assert_null(e);
    assert_non_null(strstr(err, "partition 3 has a newer state layout"));

    m.format = apply_meta_format();
    leave_store_row(dir, &k, buf, eddy__store__v1__partition_meta__pack(&m, buf));
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    struct engine_partition_view v;
    engine_partition(e, 3, &v);
    assert_int_equal(v.next_seq, 5);
    engine_close(e);
    rmrf(dir);
    free(dir);
}

/* A partition of state format 2 keeps each product's neighbours in a list: the engine
 * converts it when it opens the store (rows, the list gone, META of the current format),
 * and the node answers from the rows. */
static void test_format2_partition_converted(void **state)
{
    (void)state;
    char *dir = tmpdir_for("layout2");
    struct engine_opts o = opts(dir);
    uint32_t q = partition_of_product("x", o.product.partitions);
    Eddy__Store__V1__Decayed d = EDDY__STORE__V1__DECAYED__INIT;
    Eddy__Store__V1__Neighbour nb = EDDY__STORE__V1__NEIGHBOUR__INIT, *nbp = &nb;
    Eddy__Store__V1__ProductState ps = EDDY__STORE__V1__PRODUCT_STATE__INIT;
    d.cur = 65536;
    nb.product_id = "y";
    nb.category = "cat";
    nb.score = &d;
    ps.neighbours = &nbp;
    ps.n_neighbours = 1;
    struct store_key k;
    product_key(&k, o.product.partitions, "x");
    uint8_t buf[256];
    leave_store_row(dir, &k, buf, eddy__store__v1__product_state__pack(&ps, buf));
    Eddy__Store__V1__PartitionMeta m = EDDY__STORE__V1__PARTITION_META__INIT;
    m.next_seq = 9;
    m.format = 2;
    key_init(&k, q, T_META);
    leave_store_row(dir, &k, buf, eddy__store__v1__partition_meta__pack(&m, buf));

    engine *e = NULL;
    char err[512] = "";
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    struct product_neighbour *l = NULL;
    size_t n = 0;
    assert_int_equal(product_neighbours(engine_store(e), &o.product, "x", 10, 256, &l, &n),
                     EDDY_OK);
    assert_int_equal(n, 1);
    assert_string_equal(l[0].id, "y");
    assert_int_equal(l[0].cur, 65536);
    product_neighbours_free(l, n);
    Eddy__Store__V1__ProductState *got = NULL;
    assert_int_equal(product_get(engine_store(e), o.product.partitions, "x", &got), EDDY_OK);
    assert_non_null(got);
    assert_int_equal(got->n_neighbours, 0);
    eddy__store__v1__product_state__free_unpacked(got, NULL);
    struct part_meta pm;
    assert_int_equal(apply_meta_load(engine_store(e), q, &pm), EDDY_OK);
    assert_int_equal(pm.format, apply_meta_format());
    assert_int_equal(pm.next_seq, 9);
    engine_close(e);
    rmrf(dir);
    free(dir);
}

/* The value at 'k' in the closed store at 'dir' (malloc'd; NULL if absent). */
static char *read_store_row(const char *dir, const struct store_key *k, size_t *len)
{
    struct store_opts so = {dir, 0, 0};
    store *s = NULL;
    char err[256], *v = NULL;
    assert_int_equal(store_open(&so, &s, err, sizeof(err)), EDDY_OK);
    assert_int_equal(store_get(s, k, &v, len), EDDY_OK);
    store_close(s);
    return v;
}

/* Change the closed store at 'dir': fn writes into a txn of it, committed after. */
static void change_store(const char *dir, void (*fn)(store *s, store_txn *t, const void *ud),
                         const void *ud)
{
    struct store_opts so = {dir, 0, 0};
    store *s = NULL;
    char err[256];
    assert_int_equal(store_open(&so, &s, err, sizeof(err)), EDDY_OK);
    store_txn *t = store_txn_new(s);
    assert_non_null(t);
    fn(s, t, ud);
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    store_txn_free(t);
    store_close(s);
}

static void del_row(store *s, store_txn *t, const void *k)
{
    (void)s;
    assert_int_equal(store_txn_del(t, k), EDDY_OK);
}

/* Remove the row at 'k' from the closed store at 'dir'. */
static void drop_store_row(const char *dir, const struct store_key *k)
{
    change_store(dir, del_row, k);
}

/* A partition of state format 4 keeps event ids in its user models (the tie-break of the
 * recent lists and the cart) and a Dedup message in each DEDUP row: the engine converts
 * the models when it opens the store, to the very bytes format 5 writes for the same
 * events (the lists reordered where the ids ordered a tie), META takes the current format,
 * and the old DEDUP rows still refuse their duplicates (new ones are empty). */
static void test_format4_partition_converted(void **state)
{
    (void)state;
    char *dir = tmpdir_for("layout4");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[512] = "";
    /* p1 and p2 viewed at the same time: format 4 ordered them by event id (e9 first),
     * format 5 by product id (p2 first) */
    Eddy__V1__Event *a[] = {mk("e9", "u1", T0 + 1000, VIEW, "p1", "books"),
                            mk("e1", "u1", T0 + 1000, VIEW, "p2", "books"),
                            mk("e5", "u1", T0 + 2000, CART, "p4", "toys"),
                            mk("e3", "u1", T0 + 3000, BUY, "p3", "toys")};
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    assert_int_equal(ingest(e, a, 4).r.accepted, 4);
    engine_close(e);

    uint32_t p = partition_of_user("u1", FIXTURE_PARTITIONS);
    struct store_key uk, mk_, dk;
    key_init(&uk, p, T_USER);
    key_str(&uk, "u1");
    size_t len5, len;
    char *v5 = read_store_row(dir, &uk, &len5); /* what format 5 writes */
    assert_non_null(v5);
    Eddy__Store__V1__UserModel *um =
        eddy__store__v1__user_model__unpack(NULL, len5, (const uint8_t *)v5);
    assert_non_null(um);
    assert_int_equal(um->n_views, 2);
    assert_string_equal(um->views[0]->id, "p2");
    assert_string_equal(um->views[0]->event_id, "");
    /* the model as format 4 wrote it */
    Eddy__Store__V1__Recent *t = um->views[0];
    um->views[0] = um->views[1];
    um->views[1] = t;
    char e9[] = "e9", e1[] = "e1", e3[] = "e3", e5[] = "e5";
    um->views[0]->event_id = e9;
    um->views[1]->event_id = e1;
    um->purchases[0]->event_id = e3;
    assert_int_equal(um->n_cart, 2);
    for (size_t i = 0; i < um->n_cart; i++)
        um->cart[i]->event_id = strcmp(um->cart[i]->product_id, "p3") == 0 ? e3 : e5;
    uint8_t buf[1024];
    size_t n4 = eddy__store__v1__user_model__get_packed_size(um);
    assert_true(n4 < sizeof(buf) && n4 > len5);
    eddy__store__v1__user_model__pack(um, buf);
    leave_store_row(dir, &uk, buf, n4);
    for (size_t i = 0; i < 2; i++)
        um->views[i]->event_id = (char *)protobuf_c_empty_string;
    um->purchases[0]->event_id = (char *)protobuf_c_empty_string;
    for (size_t i = 0; i < um->n_cart; i++)
        um->cart[i]->event_id = (char *)protobuf_c_empty_string;
    eddy__store__v1__user_model__free_unpacked(um, NULL);
    Eddy__Store__V1__Dedup dd = EDDY__STORE__V1__DEDUP__INIT;
    dd.seq = 1;
    dd.ts = T0 + 1000;
    apply_dedup_key(&dk, p, "e1", 2);
    drop_store_row(dir, &dk);
    key_init(&dk, p, T_DEDUP_ID);
    key_str(&dk, "e1");
    leave_store_row(dir, &dk, buf, eddy__store__v1__dedup__pack(&dd, buf));
    key_init(&mk_, p, T_META);
    char *mv = read_store_row(dir, &mk_, &len);
    Eddy__Store__V1__PartitionMeta *m =
        eddy__store__v1__partition_meta__unpack(NULL, len, (const uint8_t *)mv);
    assert_non_null(m);
    assert_int_equal(m->format, apply_meta_format());
    m->format = 4;
    leave_store_row(dir, &mk_, buf, eddy__store__v1__partition_meta__pack(m, buf));
    eddy__store__v1__partition_meta__free_unpacked(m, NULL);
    free(mv);

    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    struct part_meta pm;
    assert_int_equal(apply_meta_load(engine_store(e), p, &pm), EDDY_OK);
    assert_int_equal(pm.format, apply_meta_format());
    struct done d = ingest(e, a, 2); /* e9 (a format-5 row) and e1 (a format-4 one) */
    assert_int_equal(d.r.duplicates, 2);
    assert_int_equal(d.r.accepted, 0);
    engine_close(e);
    apply_dedup_key(&dk, p, "e1", 2);
    char *v = read_store_row(dir, &dk, &len);
    assert_non_null(v);
    assert_int_equal(len, 0); /* format 5: the key alone */
    free(v);
    key_init(&dk, p, T_DEDUP_ID);
    key_str(&dk, "e1");
    assert_null(read_store_row(dir, &dk, &len)); /* format 6: keyed by the id's hash */
    v = read_store_row(dir, &uk, &len);
    assert_non_null(v);
    assert_int_equal(len, len5);
    assert_memory_equal(v, v5, len5);
    free(v);
    free(v5);
    for (int i = 0; i < 4; i++)
        free(a[i]);
    rmrf(dir);
    free(dir);
}

/* Every row of the closed store at 'dir', as store_dump prints them (malloc'd). */
static char *dump_store(const char *dir)
{
    struct store_opts so = {dir, 0, 0};
    store *s = NULL;
    char err[256], *buf = NULL;
    size_t len = 0;
    assert_int_equal(store_open(&so, &s, err, sizeof(err)), EDDY_OK);
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(store_dump(s, UINT32_MAX, f), EDDY_OK);
    fclose(f);
    store_close(s);
    return buf;
}

/* Format 5's rows of one partition's log record: the protobuf LogRecord, and for an event
 * a DEDUP_ID row keyed by its id in place of the DEDUP row keyed by its hash. */
static int make_format5_row(void *ud, const unsigned char *k, size_t klen, const char *v,
                            size_t vlen)
{
    store_txn *t = ud;
    if (klen < 3 || k[2] != T_LOG)
        return 0;
    Eddy__Store__V1__LogRecord *r = logrec_unpack((const uint8_t *)v, vlen);
    assert_non_null(r);
    struct store_key x;
    uint32_t p = (uint32_t)k[0] << 8 | k[1];
    x.len = klen;
    memcpy(x.buf, k, klen);
    assert_int_equal(store_txn_put_msg(t, &x, &r->base), EDDY_OK);
    if (r->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_EVENT) {
        const char *id = r->event->event_id;
        apply_dedup_key(&x, p, id, strlen(id));
        assert_int_equal(store_txn_del(t, &x), EDDY_OK);
        key_init(&x, p, T_DEDUP_ID);
        key_str(&x, id);
        assert_int_equal(store_txn_put(t, &x, "", 0), EDDY_OK);
    }
    eddy__store__v1__log_record__free_unpacked(r, NULL);
    return 0;
}

static int make_format5_meta(void *ud, const unsigned char *k, size_t klen, const char *v,
                             size_t vlen)
{
    store_txn *t = ud;
    if (klen != 3 || k[2] != T_META)
        return 0;
    Eddy__Store__V1__PartitionMeta *m =
        eddy__store__v1__partition_meta__unpack(NULL, vlen, (const uint8_t *)v);
    assert_non_null(m);
    assert_int_equal(m->format, 6);
    m->format = 5;
    struct store_key x;
    x.len = klen;
    memcpy(x.buf, k, klen);
    assert_int_equal(store_txn_put_msg(t, &x, &m->base), EDDY_OK);
    eddy__store__v1__partition_meta__free_unpacked(m, NULL);
    return 0;
}

/* Every partition's rows as format 5 wrote the same events. */
static void format5_rows(store *s, store_txn *t, const void *ud)
{
    (void)ud;
    struct store_key start, end;
    key_init(&start, 0, T_LOG);
    key_init(&end, EXP_DEF_PARTITION, T_LOG);
    assert_int_equal(store_scan(s, &start, &end, make_format5_row, t), EDDY_OK);
    assert_int_equal(store_scan(s, &start, &end, make_format5_meta, t), EDDY_OK);
}

/* A data directory of format 5 (protobuf event records, DEDUP rows keyed by the ids, the
 * old encodings written here as format 5 wrote them) converts when the engine opens it,
 * to the very bytes format 6 writes for the same events, every table; and its ids still
 * refuse their duplicates. */
static void test_format5_partition_converted(void **state)
{
    (void)state;
    char *dir = tmpdir_for("layout5");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[512] = "";
    Eddy__V1__Event *a[] = {
        mk("e1", "u1", T0 + 1000, VIEW, "p1", "books"),
        mk("0f8fad5b-d9cb-469f-a165-70867728950e", "u1", T0 + 2000, CART, "p2", "toys"),
        mk("ORDER-000123", "u2", T0 + 3000, BUY, "p3", "toys"),
        mk("e4", "user with spaces", T0 + 4000, VIEW, "p1", "books")};
    a[2]->price = 19.99;
    a[3]->price = 0.1 + 0.2; /* no exact cents: the double's bytes */
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    assert_int_equal(ingest(e, a, 4).r.accepted, 4);
    engine_close(e);
    char *v6 = dump_store(dir);
    change_store(dir, format5_rows, NULL);
    char *v5 = dump_store(dir);
    assert_string_not_equal(v5, v6);

    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    engine_close(e);
    char *got = dump_store(dir);
    assert_string_equal(got, v6);
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    struct done d = ingest(e, a, 4);
    assert_int_equal(d.r.duplicates, 4);
    assert_int_equal(d.r.accepted, 0);
    engine_close(e);
    free(got);
    free(v5);
    free(v6);
    for (int i = 0; i < 4; i++)
        free(a[i]);
    rmrf(dir);
    free(dir);
}

/* ---- write-behind -------------------------------------------------------------------- */

enum { WB_BATCHES = 12, WB_BATCH = 20, WB_N = WB_BATCHES * WB_BATCH };

struct wb_events {
    Eddy__V1__Event *ev[WB_N];
    char ids[WB_N][16], users[WB_N][8], prods[WB_N][8];
};

static void wb_events_init(struct wb_events *w)
{
    static const char *cats[] = {"books", "toys", "garden"};
    for (int i = 0; i < WB_N; i++) {
        snprintf(w->ids[i], sizeof(w->ids[i]), "e%d", i);
        snprintf(w->users[i], sizeof(w->users[i]), "u%d", (i * 5) % 13);
        snprintf(w->prods[i], sizeof(w->prods[i]), "p%d", (i * 7) % 17);
        Eddy__V1__EventType t = i % 11 == 0 ? BUY : i % 7 == 0 ? CART : VIEW;
        /* a product has one category (a PROD_WIN row keeps the last one it saw) */
        w->ev[i] = mk(w->ids[i], w->users[i], T0 + i * 700, t, w->prods[i],
                      cats[(i * 7) % 17 % 3]);
    }
}

static void wb_events_free(struct wb_events *w)
{
    for (int i = 0; i < WB_N; i++)
        free(w->ev[i]);
}

static int count_rows(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    atomic_fetch_add((_Atomic uint64_t *)ud, 1);
    return 0;
}

/* Acknowledged events are read from the dirty set before any flush: a user's model, its
 * windows (a scan), the partition metadata; the state then flushed equals a write-through
 * engine's byte for byte. */
static void test_behind_reads_acknowledged(void **state)
{
    struct wb_events w;
    wb_events_init(&w);
    char *dumps[2];
    for (int run = 0; run < 2; run++) {
        char *dir = tmpdir_for("behind");
        struct engine_opts o = opts(dir);
        o.flush_interval_ms = run == 0 ? 0 : 3600000; /* run 1: never flushed by time */
        engine *e = NULL;
        char err[256];
        assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
        for (int b = 0; b < WB_BATCHES; b++)
            ingest(e, w.ev + b * WB_BATCH, WB_BATCH);
        store *st = engine_store(e);
        if (run == 1) {
            assert_true(store_dirty_bytes(st) > 0);
            assert_int_equal(store_flush_count(st), 0);
        } else {
            assert_int_equal(store_dirty_bytes(st), 0);
        }
        /* the last event's user: model and windows */
        const char *user = w.users[WB_N - 1];
        uint32_t p = partition_of_user(user, FIXTURE_PARTITIONS);
        struct store_key k;
        key_init(&k, p, T_USER);
        key_str(&k, user);
        Eddy__Store__V1__UserModel *m = NULL;
        assert_int_equal(store_get_msg(st, &k, &eddy__store__v1__user_model__descriptor,
                                       (ProtobufCMessage **)&m),
                         EDDY_OK);
        assert_non_null(m);
        protobuf_c_message_free_unpacked(&m->base, NULL);
        _Atomic uint64_t wins = 0;
        struct store_key start, end;
        key_init(&start, p, T_USER_WIN);
        key_lstr(&start, user);
        key_prefix_end(&start, &end);
        assert_int_equal(store_scan(st, &start, &end, count_rows, &wins), EDDY_OK);
        assert_true(atomic_load(&wins) > 0);
        assert_int_equal(events_committed(e), WB_N);
        dumps[run] = dump_tables(e, UINT32_MAX);
        if (run == 1)
            assert_int_equal(store_dirty_bytes(st), 0); /* the dump flushed */
        engine_close(e);
        rmrf(dir);
        free(dir);
    }
    assert_true(strlen(dumps[0]) > 1000);
    assert_string_equal(dumps[0], dumps[1]);
    free(dumps[0]);
    free(dumps[1]);
    wb_events_free(&w);
}

struct wb_acks {
    int fd; /* the pipe to the parent: one byte per acknowledged batch */
    int acked;
    struct completion done; /* per batch */
};

static void on_wb_ack(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    struct wb_acks *a = ud;
    if (err == EDDY_OK && r->accepted == WB_BATCH) {
        char c = 1;
        if (write(a->fd, &c, 1) == 1)
            a->acked++;
    }
    completion_signal(&a->done, err, 0);
}

#define WB_DELETED "u4" /* has events in every batch */

/* Delete WB_DELETED and wait for it. */
static void wb_delete(engine *e)
{
    struct del d = {0};
    assert_int_equal(engine_delete_user(e, WB_DELETED, on_delete, &d), EDDY_OK);
    engine_flush(e);
    assert_int_equal(d.calls, 1);
    assert_true(d.log > 0);
}

/* The child (this binary run again with "--wb-child DIR FLUSH_BYTES FD DELETE_AT BARRIER",
 * a fresh process: LevelDB's background thread does not survive a fork): ingest the
 * batches one at a time (deleting WB_DELETED before batch DELETE_AT; -1: never), telling
 * the parent of each acknowledged batch, until EDDY_TEST_CRASH_AT _exits it (status 86); 0
 * if it never did. Each batch is acknowledged before the flush that waits for its apply is
 * queued, so each batch's log and its applied state are two writes. BARRIER 1: a read
 * barrier instead of the flush, so that the apply thread alone applies each batch (the
 * flush would drain what it has not reached on the writer): its "applied" crash point is
 * passed once per batch. */
static int wb_child(const char *dir, int64_t flush_bytes, int fd, int delete_at, bool barrier)
{
    struct wb_events ws, *w = &ws;
    wb_events_init(w);
    store_crash_rearm();
    struct engine_opts o = opts(dir);
    o.flush_interval_ms = 3600000;
    o.flush_bytes = flush_bytes;
    o.flush_chunk_bytes = 1; /* a write per partition and kind: crashes between them */
    o.read_barrier_timeout_ms = 60000;
    engine *e = NULL;
    char err[256];
    if (engine_open(&o, &e, err, sizeof(err)) != EDDY_OK)
        return 1;
    struct wb_acks a = {.fd = fd};
    for (int b = 0; b < WB_BATCHES; b++) {
        if (b == delete_at)
            wb_delete(e);
        completion_init(&a.done);
        if (completion_wait(&a.done, engine_ingest(e, w->ev + b * WB_BATCH, WB_BATCH,
                                                   on_wb_ack, &a)) != EDDY_OK)
            return 1;
        if (!barrier)
            engine_flush(e);
        else if (engine_read_barrier(e, -1) != EDDY_OK)
            return 1;
    }
    _exit(0); /* no crash: the parent fails the test (no close: it would flush) */
}

/* The dump of 'tables' after the first 'batches' batches of 'w' went through a
 * write-through engine, uninterrupted (WB_DELETED deleted before batch 'delete_at'; -1:
 * never): the reference the other runs must equal. Caller frees. */
static char *wb_reference(struct wb_events *w, int batches, int delete_at, uint32_t tables)
{
    char *dir = tmpdir_for("behind-ref");
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    for (int b = 0; b < batches; b++) {
        if (b == delete_at)
            wb_delete(e);
        ingest(e, w->ev + b * WB_BATCH, WB_BATCH);
    }
    char *want = dump_tables(e, tables);
    engine_close(e);
    rmrf(dir);
    free(dir);
    assert_true(strlen(want) > 1000);
    return want;
}

/* Crash at each phase of the write path, restart (the log after the flushed state is
 * replayed), send the batches not durable, and compare with an uninterrupted write-through
 * run: every acknowledged event is there once, and the state is the same byte for byte.
 * Every table is compared, stage 2 included: in --dev a user partition's events update
 * products of other partitions in line, and the restart replays the partitions' tails one
 * partition after the other, not interleaved as they arrived, which stage 2's order
 * independence (COOC rows) makes no difference. */
struct wb_case {
    const char *at;
    int64_t flush_bytes; /* 1: a flush after every group, on the sync thread */
    bool barrier;        /* the child waits with a read barrier (see wb_child) */
};

static void crash_cases(const struct wb_case *cases, size_t ncases, int delete_at)
{
    uint32_t tables = UINT32_MAX;
    if (delete_at >= 0)
        tables &= ~(1u << T_LOG); /* a DELETE_USER record is salted at random: the runs'
                                   * differ; the LOG is compared without a DeleteUser */
    struct wb_events w;
    wb_events_init(&w);
    char *want = wb_reference(&w, WB_BATCHES, delete_at, tables);
    char err[256];

    for (size_t c = 0; c < ncases; c++) {
        char *dir = tmpdir_for("behind-crash");
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            char fb[32], fd[16], da[16];
            snprintf(fb, sizeof(fb), "%lld", (long long)cases[c].flush_bytes);
            snprintf(fd, sizeof(fd), "%d", fds[1]);
            snprintf(da, sizeof(da), "%d", delete_at);
            setenv("EDDY_TEST_CRASH_AT", cases[c].at, 1);
            execl("/proc/self/exe", "test_engine", "--wb-child", dir, fb, fd, da,
                  cases[c].barrier ? "1" : "0", (char *)NULL);
            _exit(2);
        }
        close(fds[1]);
        int acked = 0;
        char buf[64];
        ssize_t got;
        while ((got = read(fds[0], buf, sizeof(buf))) > 0)
            acked += (int)got;
        close(fds[0]);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        print_message("crash at %s: %d batches acknowledged\n", cases[c].at, acked);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 86); /* the crash point was reached */

        struct engine_opts o = opts(dir);
        o.flush_interval_ms = 3600000;
        engine *e = NULL;
        assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
        uint64_t durable = events_committed(e);
        /* every acknowledged event, whole groups only */
        assert_true(durable >= (uint64_t)acked * WB_BATCH);
        assert_true(durable <= (uint64_t)(acked + 1) * WB_BATCH);
        assert_int_equal(durable % WB_BATCH, 0);
        for (int b = (int)(durable / WB_BATCH); b < WB_BATCHES; b++) {
            if (b == delete_at)
                wb_delete(e);
            struct done d = ingest(e, w.ev + b * WB_BATCH, WB_BATCH);
            assert_int_equal(d.r.accepted, WB_BATCH);
        }
        char *got_dump = dump_tables(e, tables);
        assert_string_equal(got_dump, want);
        free(got_dump);
        /* and each acknowledged event once: sent again, all are duplicates */
        for (int b = delete_at >= 0 ? delete_at : 0; b < acked; b++) {
            struct done d = ingest(e, w.ev + b * WB_BATCH, WB_BATCH);
            assert_int_equal(d.r.duplicates, WB_BATCH);
        }
        assert_int_equal(events_committed(e), WB_N);
        engine_close(e);
        rmrf(dir);
        free(dir);
    }
    free(want);
    wb_events_free(&w);
}

static void test_behind_crash_phases(void **state)
{
    /* each batch is two writes (and two groups): its log, then its applied state; or one
     * when the apply thread ran before the seal, while the writer waited for the write
     * before it (the batch numbers below are the usual ones) */
    static const struct wb_case cases[] = {
        {"log:5", 0, false},                 /* batch 3's log durable, not acknowledged */
        {"log:6", 0, false},                 /* batch 3's applied state written, not flushed */
        {"acked:5", 0, false},               /* three batches acknowledged, none flushed */
        {"appended:5", 0, false},            /* five batches acknowledged, the fifth not applied */
        {"flush-before-write:5", 1, false},  /* four writes flushed, the fifth's flush lost */
        {"flush-after-write:5", 1, false},   /* five flushed, the drop not done */
        {"acked:9", 1, false},               /* after a flush, with more behind it */
        {"appended:9", 1, false},            /* after a flush, the ninth batch not applied */
        /* a flush cut between two of its writes (one per partition and kind, the stage-2
         * rows first): some partitions flushed, others not */
        {"flush-chunk:1", 1, false},
        {"flush-chunk:4", 1, false},
        {"flush-chunk:9", 1, false},
        {"flush-chunk:23", 1, false},
        {"flush-chunk:40", 1, false},
    };
    crash_cases(cases, sizeof(cases) / sizeof(cases[0]), -1);
}

/* The apply thread's phase: a batch applied in the txn, its state not written (its log
 * acknowledged, or not yet sealed when the apply ran while the writer waited for the
 * write before it); with and without the state of earlier batches flushed. */
static void test_behind_crash_applied(void **state)
{
    static const struct wb_case cases[] = {
        {"applied:1", 0, true},  /* the first batch applied, nothing written but its log */
        {"applied:4", 0, true},  /* three batches' state written, not flushed */
        {"applied:7", 1, true},  /* after flushes, the seventh batch's state in the txn */
        {"appended:6", 0, true}, /* acknowledged, applied only by the apply thread */
    };
    crash_cases(cases, sizeof(cases) / sizeof(cases[0]), -1);
}

/* The process's own resident memory (RssAnon), kB. */
static long rss_anon_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    assert_non_null(f);
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "RssAnon:", 8) == 0)
            kb = strtol(line + 8, NULL, 10);
    fclose(f);
    assert_true(kb >= 0);
    return kb;
}

/* With trim_interval_ms, the flush thread gives what malloc holds free back to the OS:
 * 64 MB freed below a live block (which malloc alone keeps, resident) leave the process's
 * resident memory within a few flushes. */
static void test_flush_gives_freed_memory_back(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip(); /* ASan's allocator is not glibc's */
#endif
    enum { BLOCKS = 65536, BLOCK = 1024 };
    char *dir = tmpdir_for("trim");
    struct engine_opts o = opts(dir);
    o.flush_interval_ms = 10;
    o.trim_interval_ms = 1;
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    char **blocks = malloc(BLOCKS * sizeof(*blocks));
    assert_non_null(blocks);
    for (int i = 0; i < BLOCKS; i++) {
        assert_non_null(blocks[i] = malloc(BLOCK));
        memset(blocks[i], 1, BLOCK);
    }
    char *live = malloc(BLOCK); /* above them: the freed blocks are not the heap's top */
    assert_non_null(live);
    long before = rss_anon_kb();
    for (int i = 0; i < BLOCKS; i++)
        free(blocks[i]);
    free(blocks);
    long now;
    int64_t deadline = clock_mono_ms() + 10000;
    while ((now = rss_anon_kb()) > before - 48 * 1024 && clock_mono_ms() < deadline)
        sched_yield();
    assert_true(now <= before - 48 * 1024);
    free(live);
    engine_close(e);
    rmrf(dir);
    free(dir);
}

/* --max-apply-lag: with the apply thread held, the writer appends up to the limit and then
 * takes no more events (their acknowledgement waits); released, the apply catches up and
 * the events held back are appended and acknowledged, with the state they would have had
 * without the wait. */
static void test_apply_lag_backpressure(void **state)
{
    struct wb_events w;
    wb_events_init(&w);
    for (int i = 0; i < WB_N; i++) /* no sweep point crossed: the apply thread's alone */
        w.ev[i]->timestamp_ms += 60000;
    char *dir = tmpdir_for("lag");
    struct engine_opts o = opts(dir);
    o.max_apply_lag = 2 * WB_BATCH - 5; /* two batches pass, the third waits */
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    engine_hold_apply(e, true);
    struct wb_acks a[3] = {{.fd = -1}, {.fd = -1}, {.fd = -1}};
    for (int b = 0; b < 2; b++) {
        completion_init(&a[b].done);
        assert_int_equal(completion_wait(&a[b].done, engine_ingest(e, w.ev + b * WB_BATCH,
                                                                   WB_BATCH, on_wb_ack, &a[b])),
                         EDDY_OK);
    }
    completion_init(&a[2].done);
    assert_int_equal(engine_ingest(e, w.ev + 2 * WB_BATCH, WB_BATCH, on_wb_ack, &a[2]), EDDY_OK);
    /* the writer took the third batch and waits for the apply (a condition, bounded) */
    for (int i = 0; i < 10000 && !engine_apply_lag_full(e); i++)
        usleep(1000);
    assert_true(engine_apply_lag_full(e));
    uint64_t lag = 0, logged = 0;
    engine_apply_lag(e, &lag, NULL);
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        struct engine_partition_view v;
        engine_partition(e, p, &v);
        logged += v.next_seq;
    }
    assert_int_equal(logged, 2 * WB_BATCH); /* nothing of the third batch appended */
    assert_int_equal(lag, 2 * WB_BATCH);
    assert_int_equal(events_committed(e), 0);

    engine_hold_apply(e, false);
    assert_int_equal(completion_wait(&a[2].done, EDDY_OK), EDDY_OK);
    engine_flush(e);
    assert_false(engine_apply_lag_full(e));
    assert_int_equal(events_committed(e), 3 * WB_BATCH);
    engine_apply_lag(e, &lag, NULL);
    assert_int_equal(lag, 0);
    char *got = dump_tables(e, UINT32_MAX);
    engine_close(e);
    rmrf(dir);
    free(dir);

    char *want = wb_reference(&w, 3, -1, UINT32_MAX); /* no limit, no hold */
    assert_string_equal(got, want);
    free(got);
    free(want);
    wb_events_free(&w);
}

/* A DeleteUser erases the user's earlier log records: its group writes through (the
 * earlier groups' state is flushed first), or a replay from an older META would skip the
 * erased events and lose what they added to the partition's windows and products. The
 * DeleteUser comes before the fifth batch; the crash follows that batch's
 * acknowledgement, before its apply is written. */
static void test_behind_crash_after_delete(void **state)
{
    static const struct wb_case cases[] = {{"appended:5", 0, false}};
    crash_cases(cases, 1, 4);
}

/* Partition p's log records of 'e' (up to 4), copied: entries[i].data are the caller's to
 * free. */
struct log_copy {
    struct engine_log_entry entries[4];
    size_t n;
};

static int copy_log_record(void *ud, const unsigned char *k, size_t klen, const char *v,
                           size_t vlen)
{
    struct log_copy *c = ud;
    size_t off = 3; /* partition u16, table byte */
    uint64_t seq = 0;
    assert_true(key_get_u64(k, klen, &off, &seq));
    assert_true(c->n < 4);
    uint8_t *data = malloc(vlen);
    memcpy(data, v, vlen);
    c->entries[c->n++] = (struct engine_log_entry){seq, data, vlen};
    return 0;
}

static struct log_copy log_of(engine *e, uint32_t p)
{
    struct log_copy c = {.n = 0};
    struct store_key start, end;
    key_init(&start, p, T_LOG);
    key_prefix_end(&start, &end);
    assert_int_equal(store_scan(engine_store(e), &start, &end, copy_log_record, &c), EDDY_OK);
    return c;
}

static void replayed_to(void *ud, eddy_err err, uint64_t next_seq)
{
    assert_int_equal(err, EDDY_OK);
    *(uint64_t *)ud = next_seq;
}

static uint64_t replay(engine *e, uint32_t p, const struct engine_log_entry *le, size_t n)
{
    uint64_t next = UINT64_MAX;
    assert_int_equal(engine_replay(e, p, le, n, replayed_to, &next), EDDY_OK);
    engine_flush(e);
    assert_int_not_equal(next, UINT64_MAX);
    return next;
}

/* A move's tail that overlaps the copy (a page fetched again) is skipped record by record;
 * a skipped record that differs from the one held at its seq is a divergence, counted
 * (eddy_log_replay_diverged_total): compared decoded, so the same event in layout 5's
 * protobuf form is none. The copy keeps its records either way. */
static void test_replay_counts_a_diverging_record(void **state)
{
    (void)state;
    char *da = tmpdir_for("replay-src"), *db = tmpdir_for("replay-dst"),
         *dc = tmpdir_for("replay-other");
    const char *user = "u-replay";
    uint32_t p = partition_of_user(user, FIXTURE_PARTITIONS);
    engine *src = open_test_engine(da), *other = open_test_engine(dc);
    Eddy__V1__Event *e1 = mk("r-1", user, T0 + 1000, VIEW, "p1", "books");
    Eddy__V1__Event *e2 = mk("r-2", user, T0 + 2000, VIEW, "p2", "books");
    Eddy__V1__Event *x = mk("x-1", user, T0 + 1500, BUY, "p3", "books");
    Eddy__V1__Event *evs[] = {e1, e2};
    ingest(src, evs, 1);
    ingest(src, evs + 1, 1);
    ingest(other, &x, 1);
    struct log_copy a = log_of(src, p), c = log_of(other, p);
    assert_int_equal(a.n, 2);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.entries[0].seq, a.entries[0].seq);
    assert_true(logrec_is_compact(a.entries[0].data, a.entries[0].len));

    metrics *reg = metrics_new();
    struct engine_opts o = opts(db);
    o.metrics.replay_diverged = metrics_counter(reg, "eddy_log_replay_diverged_total", "t");
    engine *dst = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &dst, err, sizeof(err)), EDDY_OK);
    uint64_t next = replay(dst, p, a.entries, 2);
    assert_int_equal(next, a.entries[1].seq + 1);
    assert_int_equal(replay(dst, p, a.entries, 2), next); /* the same page again */
    assert_int_equal(metric_counter_value(o.metrics.replay_diverged), 0);

    /* the first record in layout 5's protobuf form: the same record */
    Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
    r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_EVENT;
    r.event = e1;
    size_t len = eddy__store__v1__log_record__get_packed_size(&r);
    uint8_t *pb = malloc(len);
    eddy__store__v1__log_record__pack(&r, pb);
    struct engine_log_entry layout5 = {a.entries[0].seq, pb, len};
    assert_false(logrec_is_compact(pb, len));
    assert_int_equal(replay(dst, p, &layout5, 1), next);
    assert_int_equal(metric_counter_value(o.metrics.replay_diverged), 0);

    /* another node's record at that seq: the logs diverged there */
    assert_int_equal(replay(dst, p, c.entries, 1), next);
    assert_int_equal(metric_counter_value(o.metrics.replay_diverged), 1);
    struct log_copy kept = log_of(dst, p);
    assert_int_equal(kept.n, 2);
    assert_memory_equal(kept.entries[0].data, a.entries[0].data, a.entries[0].len);

    for (size_t i = 0; i < 2; i++) {
        free((void *)a.entries[i].data);
        free((void *)kept.entries[i].data);
    }
    free((void *)c.entries[0].data);
    free(pb);
    free(e1);
    free(e2);
    free(x);
    engine_close(src);
    engine_close(other);
    engine_close(dst);
    metrics_free(reg);
    rmrf(da);
    rmrf(db);
    rmrf(dc);
    free(da);
    free(db);
    free(dc);
}

int main(int argc, char **argv)
{
    if (argc == 7 && strcmp(argv[1], "--wb-child") == 0)
        return wb_child(argv[2], strtoll(argv[3], NULL, 10), (int)strtol(argv[4], NULL, 10),
                        (int)strtol(argv[5], NULL, 10), strcmp(argv[6], "1") == 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format2_partition_converted),
        cmocka_unit_test(test_format4_partition_converted),
        cmocka_unit_test(test_format5_partition_converted),
        cmocka_unit_test(test_dedup_late_windows),
        cmocka_unit_test(test_two_orders_same_bytes),
        cmocka_unit_test(test_delete_user),
        cmocka_unit_test(test_newer_layout_refused),
        cmocka_unit_test(test_purchases_never_recommended),
        cmocka_unit_test(test_pairs_with_newest_items),
        cmocka_unit_test(test_failed_write_fails_the_next_group),
        cmocka_unit_test(test_ack_before_apply),
        cmocka_unit_test(test_exclusive_after_apply),
        cmocka_unit_test(test_dedup_row_written_once),
        cmocka_unit_test(test_behind_reads_acknowledged),
        cmocka_unit_test(test_behind_crash_phases),
        cmocka_unit_test(test_behind_crash_applied),
        cmocka_unit_test(test_apply_lag_backpressure),
        cmocka_unit_test(test_batch_is_one_group),
        cmocka_unit_test(test_impression_fenced_by_epoch),
        cmocka_unit_test(test_idle_check_leaves_the_apply_behind),
        cmocka_unit_test(test_flush_gives_freed_memory_back),
        cmocka_unit_test(test_behind_crash_after_delete),
        cmocka_unit_test(test_replay_counts_a_diverging_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
