/* The neighbour cache: answers identical to the uncached read (bit for bit), staleness,
 * clock eviction, lists from an nbcache_source (cluster mode), and expired entries read
 * again by the refresher while they answer (or kept when their product was not written). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "node/state/nbcache.h"

#include "cache_fixture.h"

/* A neighbour cache of the filled engine's store, entries valid for 'staleness_ms', aged by
 * the fake clock; no entries until nbcache_set_entries (0 staleness: never cached). */
static nbcache *cache_new(engine *e, int64_t staleness_ms)
{
    nbcache *nc = nbcache_new(engine_store(e), &engine_options(e)->product, staleness_ms);
    assert_non_null(nc);
    nbcache_set_clock(nc, fake_clock);
    return nc;
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

/* The cache answers exactly what the uncached read answers, for every product (known or
 * not) and several list lengths, on a miss and on hits. */
static void test_cached_equals_uncached(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    nbcache *plain = cache_new(e, 0);
    nbcache *cached = cache_new(e, 60000);
    assert_int_equal(nbcache_set_entries(cached, 1000), EDDY_OK);
    static struct scored_product a[50], b[50];
    const size_t maxes[] = {50, 3, 1, 0, 50};
    size_t nonempty = 0;
    for (size_t r = 0; r < 2; r++) {
        for (size_t m = 0; m < sizeof(maxes) / sizeof(maxes[0]); m++) {
            for (int p = 0; p < NPROD; p++) {
                size_t na = 99, nb = 99;
                assert_int_equal(nbcache_neighbours(plain, pid[p], a, maxes[m], &na), EDDY_OK);
                assert_int_equal(nbcache_neighbours(cached, pid[p], b, maxes[m], &nb), EDDY_OK);
                assert_same_list(a, na, b, nb);
                nonempty += na > 1;
            }
        }
    }
    assert_true(nonempty > 50); /* the data has real lists */
    struct nbcache_stats st;
    nbcache_stats(cached, &st);
    assert_int_equal(st.misses, NPROD); /* one read per product, the rest from the cache */
    assert_true(st.hits > 0);
    assert_int_equal(st.entries, NPROD);
    assert_int_equal(st.evictions, 0);
    nbcache_free(plain);
    nbcache_free(cached);
}

/* A cached list is served until --stage2-staleness, then read again. */
static void test_staleness(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    nbcache *slow = cache_new(e, 3600000);
    nbcache *fast = cache_new(e, 20);
    assert_int_equal(nbcache_set_entries(slow, 100), EDDY_OK);
    assert_int_equal(nbcache_set_entries(fast, 100), EDDY_OK);
    static struct scored_product a[50];
    size_t n;
    assert_int_equal(nbcache_neighbours(slow, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0); /* no state yet: an empty entry */
    assert_int_equal(nbcache_neighbours(fast, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0);

    /* p22 and p23 viewed together: now they are neighbours */
    view_pair(e, "n", "new", T0 + 3000000, "p22", "books", "p23", "books");

    assert_int_equal(nbcache_neighbours(slow, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0); /* within its staleness: the cached (empty) list */
    advance(40);
    assert_int_equal(nbcache_neighbours(fast, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 1); /* expired: read again */
    assert_string_equal(a[0].product_id, "p23");
    assert_string_equal(a[0].category, "books");

    /* staleness 0 never caches */
    nbcache *none = cache_new(e, 0);
    assert_int_equal(nbcache_set_entries(none, 100), EDDY_OK);
    assert_int_equal(nbcache_neighbours(none, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 1);
    struct nbcache_stats st;
    nbcache_stats(none, &st);
    assert_int_equal(st.entries, 0);

    nbcache_free(slow);
    nbcache_free(fast);
    nbcache_free(none);
}

/* A full cache evicts (clock) and still answers correctly. */
static void test_eviction(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    nbcache *plain = cache_new(e, 0);
    nbcache *small = cache_new(e, 3600000);
    assert_int_equal(nbcache_set_entries(small, 1), EDDY_OK); /* one per shard */
    static struct scored_product a[50], b[50];
    char other[64][16];
    for (int i = 0; i < 64; i++)
        snprintf(other[i], sizeof(other[i]), "x%d", i);
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 64 + NPROD; i++) {
            const char *id = i < NPROD ? pid[i] : other[i - NPROD];
            size_t na, nb;
            assert_int_equal(nbcache_neighbours(plain, id, a, 50, &na), EDDY_OK);
            assert_int_equal(nbcache_neighbours(small, id, b, 50, &nb), EDDY_OK);
            assert_same_list(a, na, b, nb);
        }
    }
    struct nbcache_stats st;
    nbcache_stats(small, &st);
    assert_true(st.entries <= 16);
    assert_true(st.evictions >= 3 * (64 + NPROD) - 16 - st.hits);
    assert_true(st.evictions > 0);
    /* one product asked over and over stays cached */
    uint64_t misses = st.misses;
    size_t nb;
    for (int r = 0; r < 10; r++)
        assert_int_equal(nbcache_neighbours(small, "p3", b, 50, &nb), EDDY_OK);
    nbcache_stats(small, &st);
    assert_true(st.misses <= misses + 1);
    nbcache_free(plain);
    nbcache_free(small);
}


/* Cluster mode: lists from an nbcache_source are cached too, refetched when a longer list
 * than the one fetched is asked for. */
struct fake_src {
    int calls;
    size_t have;
};


static eddy_err fake_neighbours(void *ud, const char *product_id, struct scored_product *out,
                                size_t max, size_t *n)
{
    struct fake_src *f = ud;
    f->calls++;
    *n = 0;
    if (strcmp(product_id, "down") == 0)
        return EDDY_ERR_UNAVAILABLE;
    for (size_t i = 0; i < f->have && i < max; i++) {
        snprintf(out[i].product_id, sizeof(out[i].product_id), "%s-n%zu", product_id, i);
        snprintf(out[i].category, sizeof(out[i].category), "c%zu", i % 2);
        out[i].score = (double)f->calls + 100.0 - (double)i;
        (*n)++;
    }
    return EDDY_OK;
}

static void test_source_cached(void **state)
{
    (void)state;
    struct fake_src f = {0, 10};
    struct nbcache_source src = {fake_neighbours, &f};
    struct product_params pp = {8, {86400000, 8}, {7 * 86400000LL, 8}, 50, 0};
    nbcache *pc = nbcache_new(NULL, &pp, 3600000);
    nbcache_set_source(pc, &src);
    assert_int_equal(nbcache_set_entries(pc, 100), EDDY_OK);
    static struct scored_product a[50];
    size_t n;
    assert_int_equal(nbcache_neighbours(pc, "p1", a, 5, &n), EDDY_OK);
    assert_int_equal(n, 5);
    assert_int_equal(f.calls, 1);
    assert_int_equal(nbcache_neighbours(pc, "p1", a, 3, &n), EDDY_OK);
    assert_int_equal(n, 3);
    assert_int_equal(f.calls, 1); /* a shorter list: from the cache, as fetched */
    assert_string_equal(a[2].product_id, "p1-n2");
    assert_true(a[0].score == 101.0);
    assert_int_equal(nbcache_neighbours(pc, "p1", a, 8, &n), EDDY_OK);
    assert_int_equal(n, 8);
    assert_int_equal(f.calls, 2); /* longer than fetched (5 of maybe more): fetched again */
    assert_int_equal(nbcache_neighbours(pc, "p1", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 10);
    assert_int_equal(f.calls, 3);
    assert_int_equal(nbcache_neighbours(pc, "p1", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 10);
    assert_int_equal(f.calls, 3); /* the whole list (10 < 50) is known */
    assert_true(a[0].score == 103.0); /* scores as fetched (by the third call) */
    /* errors are returned, not cached */
    assert_int_equal(nbcache_neighbours(pc, "down", a, 5, &n), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(nbcache_neighbours(pc, "down", a, 5, &n), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(f.calls, 5);
    nbcache_free(pc);
}


/* An entry expired less than one period ago answers as it is while the neighbour
 * refresher reads it again; afterwards it is the uncached answer. One whose product was
 * not written since answers at any age without a read; one older than twice the staleness
 * and written since is read by the call itself. */
static void test_neighbours_refreshed_in_background(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    nbcache *plain = cache_new(e, 0);
    nbcache *pc = cache_new(e, 300);
    assert_int_equal(nbcache_set_entries(pc, 100), EDDY_OK);
    static struct scored_product a[50], b[50];
    size_t n, nb;
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0); /* no state yet */

    view_pair(e, "b", "bg", T0 + 3000000, "p22", "books", "p23", "books");
    advance(350); /* past 300 ms, before 600 */
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 0); /* the expired entry answered; the refresher reads it */
    nbcache_sync(pc);
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(nbcache_neighbours(plain, "p22", b, 50, &nb), EDDY_OK);
    assert_int_equal(n, 1);
    assert_same_list(b, nb, a, n);
    struct nbcache_stats st;
    nbcache_stats(pc, &st);
    assert_int_equal(st.misses, 1); /* only the first read was the caller's */
    assert_int_equal(st.revalidated, 0);

    /* expired again, nothing written to p22 since: the refresher keeps it without a read */
    advance(350);
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    nbcache_sync(pc);
    nbcache_stats(pc, &st);
    assert_int_equal(st.revalidated, 1);
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 1);
    assert_same_list(b, nb, a, n);

    /* unused for far longer than twice the staleness, nothing written: still no read */
    advance(5000);
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    assert_same_list(b, nb, a, n);
    nbcache_stats(pc, &st);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.revalidated, 2);

    /* p22 written: expired, the refresher reads it again */
    view_pair(e, "d", "bg3", T0 + 3001000, "p22", "books", "p5", "books");
    advance(350);
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(n, 1); /* the expired entry answered */
    nbcache_sync(pc);
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(nbcache_neighbours(plain, "p22", b, 50, &nb), EDDY_OK);
    assert_int_equal(n, 2);
    assert_same_list(b, nb, a, n);
    nbcache_stats(pc, &st);
    assert_int_equal(st.revalidated, 2);

    /* more than twice the staleness: the call reads it itself */
    view_pair(e, "c", "bg2", T0 + 3002000, "p22", "toys", "p0", "books");
    advance(700);
    assert_int_equal(nbcache_neighbours(pc, "p22", a, 50, &n), EDDY_OK);
    assert_int_equal(nbcache_neighbours(plain, "p22", b, 50, &nb), EDDY_OK);
    assert_int_equal(n, 3);
    assert_same_list(b, nb, a, n);
    nbcache_stats(pc, &st);
    assert_int_equal(st.misses, 2);
    nbcache_free(plain);
    nbcache_free(pc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cached_equals_uncached, filled_setup, filled_teardown),
        cmocka_unit_test_setup_teardown(test_staleness, filled_setup, filled_teardown),
        cmocka_unit_test_setup_teardown(test_eviction, filled_setup, filled_teardown),
        cmocka_unit_test(test_source_cached),
        cmocka_unit_test_setup_teardown(test_neighbours_refreshed_in_background, filled_setup, filled_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
