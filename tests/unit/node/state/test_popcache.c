/* The neighbour cache of popcache: answers identical to the uncached read (bit for bit),
 * staleness, clock eviction, lists from a popcache_source (cluster mode), and Recommend
 * answers identical with and without the cache; popularity lists refreshed together in one
 * pass equal lists read alone; expired neighbour entries read again by the refresher while
 * they answer; a list not cached yet read once for concurrent callers. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "common/partition.h"
#include "node/state/engine.h"
#include "node/state/popcache.h"
#include "node/state/query.h"

#include "engine_fixture.h"


#define NPROD 24

static char pid[NPROD][16];

/* 30 users each view 6 products (overlapping windows of the catalogue) a few seconds
 * apart: every product gets co-occurrence neighbours with different scores and ties. */
static engine *fill(const char *dir, struct engine_opts *o)
{
    *o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(o, &e, err, sizeof(err)), EDDY_OK);
    static char ids[30 * 6][16], users[30][16];
    Eddy__V1__Event *ev[30 * 6];
    size_t n = 0;
    for (int i = 0; i < NPROD; i++)
        snprintf(pid[i], sizeof(pid[i]), "p%d", i);
    for (int u = 0; u < 30; u++) {
        snprintf(users[u], sizeof(users[u]), "u%d", u);
        for (int k = 0; k < 6; k++) {
            snprintf(ids[n], sizeof(ids[n]), "e%d-%d", u, k);
            int p = (u * 5 + k * (1 + u % 3)) % (NPROD - 2); /* p22, p23: no state */
            ev[n] = mk(ids[n], users[u], T0 + u * 60000LL + k * 1000LL + (u % 4) * 7, VIEW,
                       pid[p], p % 3 == 0 ? "books" : p % 3 == 1 ? "toys" : "");
            n++;
        }
    }
    ingest(e, ev, n);
    for (size_t i = 0; i < n; i++)
        free(ev[i]);
    return e;
}

/* Each test's engine, filled by fill() in its own directory (cmocka setup / teardown). */
struct filled {
    char *dir;
    struct engine_opts o;
    engine *e;
};

static int filled_setup(void **state)
{
    struct filled *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->dir = tmpdir_for("popcache");
    f->e = fill(f->dir, &f->o);
    *state = f;
    return 0;
}

static int filled_teardown(void **state)
{
    struct filled *f = *state;
    engine_close(f->e);
    rmrf(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* A cache of the filled engine's store: lists of 50, entries valid for 'staleness_ms'. */
/* The caches' clock: moved by hand (advance), so that expiry does not depend on how long
 * the test takes to get from one call to the next. */
static _Atomic int64_t fake_ms = 1000000;

static int64_t fake_clock(void)
{
    return atomic_load(&fake_ms);
}

static void advance(int64_t ms)
{
    atomic_fetch_add(&fake_ms, ms);
}

static popcache *cache_new(engine *e, int64_t staleness_ms)
{
    popcache *pc = popcache_new(engine_store(e), &engine_options(e)->product, staleness_ms, 50);
    assert_non_null(pc);
    popcache_set_clock(pc, fake_clock);
    return pc;
}

/* 'user' views 'p1' ('c1') at 'ts', then 'p2' ('c2') a second later: events "<prefix>-1"
 * and "<prefix>-2". */
static void view_pair(engine *e, const char *prefix, const char *user, int64_t ts,
                      const char *p1, const char *c1, const char *p2, const char *c2)
{
    char id1[32], id2[32];
    snprintf(id1, sizeof(id1), "%s-1", prefix);
    snprintf(id2, sizeof(id2), "%s-2", prefix);
    Eddy__V1__Event *ev[] = {mk(id1, user, ts, VIEW, p1, c1),
                             mk(id2, user, ts + 1000, VIEW, p2, c2)};
    ingest(e, ev, 2);
    free(ev[0]);
    free(ev[1]);
}

static void assert_same_list(const struct scored_product *a, size_t na,
                             const struct scored_product *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(a[i].product_id, b[i].product_id);
        assert_string_equal(a[i].category, b[i].category);
        assert_true(a[i].score == b[i].score); /* bit-identical, not approximately */
    }
}

/* The cache answers exactly what the uncached read answers, for every product (known or
 * not), several reference times and list lengths, on a miss and on a hit. */
static void test_cached_equals_uncached(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    popcache *plain = cache_new(e, 0);
    popcache *cached = cache_new(e, 60000);
    assert_int_equal(popcache_set_neighbour_cache(cached, 1000), EDDY_OK);
    static struct scored_product a[50], b[50];
    const int64_t ats[] = {T0 + 1800000, T0 + 1800000, T0 + 5 * 86400000LL, T0};
    const size_t maxes[] = {50, 3, 1, 0};
    size_t nonempty = 0;
    for (size_t r = 0; r < 2; r++) {
        for (size_t t = 0; t < sizeof(ats) / sizeof(ats[0]); t++) {
            for (size_t m = 0; m < sizeof(maxes) / sizeof(maxes[0]); m++) {
                for (int p = 0; p < NPROD; p++) {
                    size_t na = 99, nb = 99;
                    assert_int_equal(popcache_neighbours(plain, pid[p], ats[t], a, maxes[m], &na),
                                     EDDY_OK);
                    assert_int_equal(
                        popcache_neighbours(cached, pid[p], ats[t], b, maxes[m], &nb), EDDY_OK);
                    assert_same_list(a, na, b, nb);
                    nonempty += na > 1;
                }
            }
        }
    }
    assert_true(nonempty > 50); /* the data has real lists */
    struct popcache_stats st;
    popcache_stats(cached, &st);
    assert_int_equal(st.misses, NPROD); /* one read per product, the rest from the cache */
    assert_true(st.hits > 0);
    assert_int_equal(st.entries, NPROD);
    assert_int_equal(st.evictions, 0);
    popcache_free(plain);
    popcache_free(cached);
}

/* A cached list is served until --stage2-staleness, then read again. */
static void test_staleness(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    popcache *slow = cache_new(e, 3600000);
    popcache *fast = cache_new(e, 20);
    assert_int_equal(popcache_set_neighbour_cache(slow, 100), EDDY_OK);
    assert_int_equal(popcache_set_neighbour_cache(fast, 100), EDDY_OK);
    static struct scored_product a[50];
    size_t n;
    int64_t at = T0 + 3600000;
    assert_int_equal(popcache_neighbours(slow, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0); /* no state yet: an empty entry */
    assert_int_equal(popcache_neighbours(fast, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0);

    /* p22 and p23 viewed together: now they are neighbours */
    view_pair(e, "n", "new", T0 + 3000000, "p22", "books", "p23", "books");

    assert_int_equal(popcache_neighbours(slow, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0); /* within its staleness: the cached (empty) list */
    advance(40);
    assert_int_equal(popcache_neighbours(fast, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 1); /* expired: read again */
    assert_string_equal(a[0].product_id, "p23");
    assert_string_equal(a[0].category, "books");

    /* staleness 0 never caches */
    popcache *none = cache_new(e, 0);
    assert_int_equal(popcache_set_neighbour_cache(none, 100), EDDY_OK);
    assert_int_equal(popcache_neighbours(none, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 1);
    struct popcache_stats st;
    popcache_stats(none, &st);
    assert_int_equal(st.entries, 0);

    popcache_free(slow);
    popcache_free(fast);
    popcache_free(none);
}

/* A full cache evicts (clock) and still answers correctly. */
static void test_eviction(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    popcache *plain = cache_new(e, 0);
    popcache *small = cache_new(e, 3600000);
    assert_int_equal(popcache_set_neighbour_cache(small, 1), EDDY_OK); /* one per shard */
    static struct scored_product a[50], b[50];
    char other[64][16];
    for (int i = 0; i < 64; i++)
        snprintf(other[i], sizeof(other[i]), "x%d", i);
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 64 + NPROD; i++) {
            const char *id = i < NPROD ? pid[i] : other[i - NPROD];
            size_t na, nb;
            assert_int_equal(popcache_neighbours(plain, id, T0 + 3600000, a, 50, &na), EDDY_OK);
            assert_int_equal(popcache_neighbours(small, id, T0 + 3600000, b, 50, &nb), EDDY_OK);
            assert_same_list(a, na, b, nb);
        }
    }
    struct popcache_stats st;
    popcache_stats(small, &st);
    assert_true(st.entries <= 16);
    assert_true(st.evictions >= 3 * (64 + NPROD) - 16 - st.hits);
    assert_true(st.evictions > 0);
    /* one product asked over and over stays cached */
    uint64_t misses = st.misses;
    size_t nb;
    for (int r = 0; r < 10; r++)
        assert_int_equal(popcache_neighbours(small, "p3", T0 + 3600000, b, 50, &nb), EDDY_OK);
    popcache_stats(small, &st);
    assert_true(st.misses <= misses + 1);
    popcache_free(plain);
    popcache_free(small);
}

/* Cluster mode: lists from a popcache_source are cached too, refetched when a longer list
 * than the one fetched is asked for. */
struct fake_src {
    int calls;
    size_t have;
};

static eddy_err fake_top(void *ud, const char *category, int64_t at, struct scored_product *out,
                         size_t max, size_t *n)
{
    (void)ud, (void)category, (void)at, (void)out, (void)max;
    *n = 0;
    return EDDY_OK;
}

static eddy_err fake_neighbours(void *ud, const char *product_id, int64_t at,
                                struct scored_product *out, size_t max, size_t *n)
{
    struct fake_src *f = ud;
    f->calls++;
    *n = 0;
    if (strcmp(product_id, "down") == 0)
        return EDDY_ERR_UNAVAILABLE;
    for (size_t i = 0; i < f->have && i < max; i++) {
        snprintf(out[i].product_id, sizeof(out[i].product_id), "%s-n%zu", product_id, i);
        snprintf(out[i].category, sizeof(out[i].category), "c%zu", i % 2);
        out[i].score = (double)(at % 1000) + 100.0 - (double)i;
        (*n)++;
    }
    return EDDY_OK;
}

static void test_source_cached(void **state)
{
    (void)state;
    struct fake_src f = {0, 10};
    struct popcache_source src = {fake_top, fake_neighbours, &f};
    struct product_params pp = {8, {86400000, 8}, {7 * 86400000LL, 8}, 50};
    popcache *pc = popcache_new(NULL, &pp, 3600000, 50);
    popcache_set_source(pc, &src);
    assert_int_equal(popcache_set_neighbour_cache(pc, 100), EDDY_OK);
    static struct scored_product a[50];
    size_t n;
    assert_int_equal(popcache_neighbours(pc, "p1", 1001, a, 5, &n), EDDY_OK);
    assert_int_equal(n, 5);
    assert_int_equal(f.calls, 1);
    assert_int_equal(popcache_neighbours(pc, "p1", 1002, a, 3, &n), EDDY_OK);
    assert_int_equal(n, 3);
    assert_int_equal(f.calls, 1); /* a shorter list: from the cache, as fetched */
    assert_string_equal(a[2].product_id, "p1-n2");
    assert_true(a[0].score == 101.0);
    assert_int_equal(popcache_neighbours(pc, "p1", 1003, a, 8, &n), EDDY_OK);
    assert_int_equal(n, 8);
    assert_int_equal(f.calls, 2); /* longer than fetched (5 of maybe more): fetched again */
    assert_int_equal(popcache_neighbours(pc, "p1", 1004, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 10);
    assert_int_equal(f.calls, 3);
    assert_int_equal(popcache_neighbours(pc, "p1", 1005, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 10);
    assert_int_equal(f.calls, 3); /* the whole list (10 < 50) is known */
    assert_true(a[0].score == 104.0); /* scores as fetched (at 1004) */
    /* errors are returned, not cached */
    assert_int_equal(popcache_neighbours(pc, "down", 1, a, 5, &n), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(popcache_neighbours(pc, "down", 1, a, 5, &n), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(f.calls, 5);
    popcache_free(pc);
}

/* Recommend through a cached popcache gives the same answers as through an uncached one. */
static void test_recommend_same(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    popcache *plain = cache_new(e, 0);
    popcache *cached = cache_new(e, 3600000);
    assert_int_equal(popcache_set_neighbour_cache(cached, 1000), EDDY_OK);
    struct query_ctx q0 = {e, plain, 10, 100, NULL, NULL, 0};
    struct query_ctx q1 = {e, cached, 10, 100, NULL, NULL, 0};
    for (int r = 0; r < 2; r++) {
        for (int u = 0; u < 31; u++) {
            char user[16];
            snprintf(user, sizeof(user), "u%d", u);
            Eddy__V1__RecommendRequest rr = EDDY__V1__RECOMMEND_REQUEST__INIT;
            Eddy__V1__Context ctx = EDDY__V1__CONTEXT__INIT;
            char *cart[] = {pid[(u + 3) % NPROD], pid[(u + 9) % NPROD]};
            rr.user_id = user;
            rr.max_recommendations = (uint32_t)(u % 2 ? 50 : 0);
            if (u % 3 == 0) {
                ctx.current_product = pid[u % NPROD];
                ctx.shopping_cart = cart;
                ctx.n_shopping_cart = 2;
                rr.context = &ctx;
            }
            Eddy__V1__RecommendResponse *a = NULL, *b = NULL;
            assert_int_equal(query_recommend(&q0, &rr, &a), EDDY_OK);
            assert_int_equal(query_recommend(&q1, &rr, &b), EDDY_OK);
            assert_int_equal(a->cold_start, b->cold_start);
            assert_int_equal(a->n_items, b->n_items);
            for (size_t i = 0; i < a->n_items; i++) {
                assert_string_equal(a->items[i]->product_id, b->items[i]->product_id);
                assert_string_equal(a->items[i]->reason, b->items[i]->reason);
                assert_string_equal(a->items[i]->category, b->items[i]->category);
                assert_true(a->items[i]->score == b->items[i]->score);
            }
            query_free_response(&a->base);
            query_free_response(&b->base);
        }
    }
    popcache_free(plain);
    popcache_free(cached);
}

/* Every list of a fresh cache (each read alone, nothing else in use) for 'at'. */
static void fresh_lists(engine *e, const char *const *cats, size_t ncats, int64_t at,
                        struct scored_product (*out)[50], size_t *n)
{
    for (size_t c = 0; c < ncats; c++) {
        popcache *pc = cache_new(e, 0);
        assert_int_equal(popcache_top(pc, cats[c], at, out[c], 50, &n[c]), EDDY_OK);
        popcache_free(pc);
    }
}

/* 40 views of 'product' ('category') by 'user', event ids "<prefix>-<i>". */
static void forty_views(engine *e, const char *prefix, const char *user, const char *product,
                        const char *category)
{
    char ids[40][16];
    Eddy__V1__Event *ev[40];
    for (int i = 0; i < 40; i++) {
        snprintf(ids[i], sizeof(ids[i]), "%s-%d", prefix, i);
        ev[i] = mk(ids[i], user, T0 + 1800000 + i, VIEW, product, category);
    }
    ingest(e, ev, 40);
    for (int i = 0; i < 40; i++)
        free(ev[i]);
}

/* Lists in use expire together and come back from one pass over the index, run by the
 * refresher thread: the call that finds them expired answers the previous list, and
 * afterwards every list is the same (bit for bit) as each read alone from a fresh cache,
 * before and after more events change the popularity; a category read alone too. */
static void test_lists_refreshed_together(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    const char *cats[] = {"", "books", "toys", "none-such"};
    const int64_t at = T0 + 3600000;
    static struct scored_product want[4][50], old[4][50], got[50];
    size_t nwant[4], nold[4], n;
    popcache *pc = cache_new(e, 100);
    fresh_lists(e, cats, 4, at, want, nwant);
    assert_true(nwant[0] > nwant[1] && nwant[1] > 0 && nwant[2] > 0 && nwant[3] == 0);
    for (int round = 0; round < 2; round++) { /* the second round finds them cached: in use */
        for (size_t c = 0; c < 4; c++) {
            assert_int_equal(popcache_top(pc, cats[c], at, got, 50, &n), EDDY_OK);
            assert_same_list(want[c], nwant[c], got, n);
        }
    }

    /* p1 (toys) becomes the most popular product of all */
    forty_views(e, "more", "u99", pid[1], "toys");
    memcpy(old, want, sizeof(old));
    memcpy(nold, nwant, sizeof(nold));
    fresh_lists(e, cats, 4, at, want, nwant);
    assert_string_equal(want[0][0].product_id, "p1");
    assert_string_equal(want[2][0].product_id, "p1");
    assert_string_not_equal(old[0][0].product_id, "p1");
    advance(150); /* every list expired */
    assert_int_equal(popcache_top(pc, cats[0], at, got, 50, &n), EDDY_OK);
    assert_same_list(old[0], nold[0], got, n); /* the refresh is not this call's */
    popcache_sync(pc); /* the refresher read all four in use */
    for (size_t c = 0; c < 4; c++) {
        assert_int_equal(popcache_top(pc, cats[c], at, got, 50, &n), EDDY_OK);
        assert_same_list(want[c], nwant[c], got, n);
    }
    /* not read for more than twice the staleness: read again by the call itself */
    memcpy(old, want, sizeof(old));
    memcpy(nold, nwant, sizeof(nold));
    forty_views(e, "again", "u98", pid[3], "books");
    fresh_lists(e, cats, 4, at, want, nwant);
    assert_true(want[1][0].score != old[1][0].score); /* p3 leads "books" by more now */
    advance(250);
    assert_int_equal(popcache_top(pc, "books", at, got, 50, &n), EDDY_OK);
    assert_same_list(want[1], nwant[1], got, n);
    popcache_free(pc);
    /* a cache where only "books" is in use: refreshed alone, from its own key ranges */
    pc = cache_new(e, 100);
    for (int round = 0; round < 3; round++) {
        assert_int_equal(popcache_top(pc, "books", at, got, 3, &n), EDDY_OK);
        assert_same_list(want[1], nwant[1] < 3 ? nwant[1] : 3, got, n);
        advance(150);
    }
    popcache_free(pc);
}

/* An entry expired less than one period ago answers as it is while the neighbour
 * refresher reads it again; afterwards it is the uncached answer. One older than twice the
 * staleness is read by the call itself. */
static void test_neighbours_refreshed_in_background(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    popcache *plain = cache_new(e, 0);
    popcache *pc = cache_new(e, 300);
    assert_int_equal(popcache_set_neighbour_cache(pc, 100), EDDY_OK);
    static struct scored_product a[50], b[50];
    size_t n, nb;
    int64_t at = T0 + 3600000;
    assert_int_equal(popcache_neighbours(pc, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0); /* no state yet */

    view_pair(e, "b", "bg", T0 + 3000000, "p22", "books", "p23", "books");
    advance(350); /* past 300 ms, before 600 */
    assert_int_equal(popcache_neighbours(pc, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0); /* the expired entry answered; the refresher reads it */
    popcache_sync(pc);
    assert_int_equal(popcache_neighbours(pc, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(popcache_neighbours(plain, "p22", at, b, 50, &nb), EDDY_OK);
    assert_int_equal(n, 1);
    assert_same_list(b, nb, a, n);
    struct popcache_stats st;
    popcache_stats(pc, &st);
    assert_int_equal(st.misses, 1); /* only the first read was the caller's */
    assert_int_equal(st.revalidated, 0);

    /* expired again, nothing written to p22 since: the refresher keeps it without a read */
    advance(350);
    assert_int_equal(popcache_neighbours(pc, "p22", at, a, 50, &n), EDDY_OK);
    popcache_sync(pc);
    popcache_stats(pc, &st);
    assert_int_equal(st.revalidated, 1);
    assert_int_equal(popcache_neighbours(pc, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 1);
    assert_same_list(b, nb, a, n);

    /* p22 written: expired, the refresher reads it again */
    view_pair(e, "d", "bg3", T0 + 3001000, "p22", "books", "p5", "books");
    advance(350);
    assert_int_equal(popcache_neighbours(pc, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(n, 1); /* the expired entry answered */
    popcache_sync(pc);
    assert_int_equal(popcache_neighbours(pc, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(popcache_neighbours(plain, "p22", at, b, 50, &nb), EDDY_OK);
    assert_int_equal(n, 2);
    assert_same_list(b, nb, a, n);
    popcache_stats(pc, &st);
    assert_int_equal(st.revalidated, 1);

    /* more than twice the staleness: the call reads it itself */
    view_pair(e, "c", "bg2", T0 + 3002000, "p22", "toys", "p0", "books");
    advance(700);
    assert_int_equal(popcache_neighbours(pc, "p22", at, a, 50, &n), EDDY_OK);
    assert_int_equal(popcache_neighbours(plain, "p22", at, b, 50, &nb), EDDY_OK);
    assert_int_equal(n, 3);
    assert_same_list(b, nb, a, n);
    popcache_stats(pc, &st);
    assert_int_equal(st.misses, 2);
    popcache_free(plain);
    popcache_free(pc);
}

/* A source whose list reads block until released, counting the reads. */
struct gated_src {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    int calls;
};

static eddy_err gated_top(void *ud, const char *category, int64_t at,
                          struct scored_product *out, size_t max, size_t *n)
{
    struct gated_src *g = ud;
    (void)at;
    pthread_mutex_lock(&g->mu);
    g->calls++;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    *n = 0;
    if (strcmp(category, "down") == 0)
        return EDDY_ERR_UNAVAILABLE;
    for (size_t i = 0; i < 3 && i < max; i++) {
        snprintf(out[i].product_id, sizeof(out[i].product_id), "%s-%zu", category, i);
        snprintf(out[i].category, sizeof(out[i].category), "%s", category);
        out[i].score = 10.0 - (double)i;
        (*n)++;
    }
    return EDDY_OK;
}

struct top_call {
    popcache *pc;
    const char *category;
    struct scored_product out[50];
    size_t n;
    eddy_err err;
};

static void *top_thread(void *arg)
{
    struct top_call *c = arg;
    c->err = popcache_top(c->pc, c->category, 1000, c->out, 50, &c->n);
    return NULL;
}

/* Callers of a list not cached yet wait for the one thread reading it: one read, the same
 * answer for all. A read that fails is not cached: the next call reads again. */
static void test_cold_list_read_once(void **state)
{
    (void)state;
    struct gated_src g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};
    struct popcache_source src = {gated_top, fake_neighbours, &g};
    struct product_params pp = {8, {86400000, 8}, {7 * 86400000LL, 8}, 50};
    popcache *pc = popcache_new(NULL, &pp, 3600000, 50);
    popcache_set_source(pc, &src);
    static struct top_call calls[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        calls[i] = (struct top_call){.pc = pc, .category = "books"};
        if (i == 1) { /* the first caller is inside the read before the others start */
            pthread_mutex_lock(&g.mu);
            while (g.calls == 0)
                pthread_cond_wait(&g.cv, &g.mu);
            pthread_mutex_unlock(&g.mu);
        }
        assert_int_equal(pthread_create(&th[i], NULL, top_thread, &calls[i]), 0);
    }
    struct timespec pause = {0, 50 * 1000000L}; /* time for a second read, if one came */
    nanosleep(&pause, NULL);
    pthread_mutex_lock(&g.mu);
    assert_int_equal(g.calls, 1);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(calls[i].err, EDDY_OK);
        assert_same_list(calls[0].out, calls[0].n, calls[i].out, calls[i].n);
    }
    assert_int_equal(calls[0].n, 3);
    assert_string_equal(calls[0].out[0].product_id, "books-0");
    assert_int_equal(g.calls, 1);

    static struct scored_product out[50];
    size_t n;
    assert_int_equal(popcache_top(pc, "down", 1000, out, 50, &n), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(popcache_top(pc, "down", 1000, out, 50, &n), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(g.calls, 3);
    assert_int_equal(popcache_top(pc, "books", 1000, out, 50, &n), EDDY_OK);
    assert_int_equal(g.calls, 3); /* cached */
    popcache_free(pc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cached_equals_uncached, filled_setup, filled_teardown),
        cmocka_unit_test_setup_teardown(test_staleness, filled_setup, filled_teardown),
        cmocka_unit_test_setup_teardown(test_eviction, filled_setup, filled_teardown),
        cmocka_unit_test(test_source_cached),
        cmocka_unit_test_setup_teardown(test_recommend_same, filled_setup, filled_teardown),
        cmocka_unit_test_setup_teardown(test_lists_refreshed_together, filled_setup, filled_teardown),
        cmocka_unit_test_setup_teardown(test_neighbours_refreshed_in_background, filled_setup, filled_teardown),
        cmocka_unit_test(test_cold_list_read_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
