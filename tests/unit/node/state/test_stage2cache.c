/* The stage-2 handle: Recommend through cached lists and neighbours gives the same
 * answers as through uncached ones, and the same answers whatever the node's newest event
 * time; a source set on the handle serves both halves. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "node/state/query.h"
#include "node/state/stage2cache.h"

#include "cache_fixture.h"

static stage2cache *cache_new(engine *e, int64_t staleness_ms)
{
    stage2cache *sc = stage2cache_new(engine_store(e), &engine_options(e)->product, staleness_ms,
                                      50);
    assert_non_null(sc);
    return sc;
}

#define USERS 31 /* u0..u29 of the fill, and u30, unknown: a cold start */

/* The answer to user 'u' (every third with a current product and a cart: neighbour lists
 * of the context too). */
static Eddy__V1__RecommendResponse *recommend(struct query_ctx *q, int u)
{
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
    Eddy__V1__RecommendResponse *r = NULL;
    assert_int_equal(query_recommend(q, &rr, &r), EDDY_OK);
    assert_non_null(r);
    return r;
}

/* Recommend through a cached stage2cache gives the same answers as through an uncached one. */
static void test_recommend_same(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    stage2cache *plain = cache_new(e, 0);
    stage2cache *cached = cache_new(e, 3600000);
    assert_int_equal(stage2cache_set_neighbour_cache(cached, 1000), EDDY_OK);
    struct query_ctx q0 = {e, plain, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    struct query_ctx q1 = {e, cached, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    for (int r = 0; r < 2; r++) {
        for (int u = 0; u < USERS; u++) {
            Eddy__V1__RecommendResponse *a = recommend(&q0, u), *b = recommend(&q1, u);
            assert_same_answer(a, b);
            query_free_response(&a->base);
            query_free_response(&b->base);
        }
    }
    stage2cache_free(plain);
    stage2cache_free(cached);
}

/* The answers rest on the state they read, never on the node's newest event time: an
 * event that changes nothing Recommend reads (a product that leaves the cart of a user of
 * its own, weight 0: no popularity, no pair) a month after the others moves that time,
 * and every answer, uncached, stays the same bit for bit. A cluster member's newest event
 * time is that of the partitions it holds: this is why it answers as --dev does. */
static void test_answers_ignore_newest_event_time(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    stage2cache *plain = cache_new(e, 0);
    struct query_ctx q = {e, plain, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    Eddy__V1__RecommendResponse *before[USERS];
    size_t items = 0;
    for (int u = 0; u < USERS; u++) {
        before[u] = recommend(&q, u);
        items += before[u]->n_items;
    }
    int64_t newest, later;
    engine_global(e, NULL, &newest, NULL);
    Eddy__V1__Event *ev = mk("late", "u-late", T0 + 30 * 86400000LL + 12345,
                             EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART, "p-late", "");
    ingest(e, &ev, 1);
    free(ev);
    engine_global(e, NULL, &later, NULL);
    assert_true(later - newest > 29 * 86400000LL);
    assert_true(items > 10 * USERS);
    for (int u = 0; u < USERS; u++) {
        Eddy__V1__RecommendResponse *after = recommend(&q, u);
        assert_same_answer(before[u], after);
        query_free_response(&before[u]->base);
        query_free_response(&after->base);
    }
    stage2cache_free(plain);
}
/* A source answering a fixed list: "top-<category>" and "nb-<product>", counting calls. */
struct counting_src {
    int tops, neighbours;
};

static eddy_err counting_top(void *ud, const char *category, struct topk *out)
{
    struct counting_src *s = ud;
    char id[64];
    struct decay_sum v = {3, 2, 0};
    s->tops++;
    snprintf(id, sizeof(id), "top-%s", category);
    topk_offer_sum(out, id, strlen(id), category, strlen(category), &v);
    return EDDY_OK;
}

static eddy_err counting_neighbours(void *ud, const char *product_id, struct scored_product *out,
                                    size_t max, size_t *n)
{
    struct counting_src *s = ud;
    s->neighbours++;
    *n = 0;
    if (max > 0) {
        snprintf(out[0].product_id, sizeof(out[0].product_id), "nb-%s", product_id);
        snprintf(out[0].category, sizeof(out[0].category), "c");
        out[0].score = 1.0;
        *n = 1;
    }
    return EDDY_OK;
}

/* The source given to the handle reaches both caches (its top to the lists, its
 * neighbours to the neighbour cache), both cache what it answered, and the
 * handle's neighbour counters are the neighbour cache's. */
static void test_source_split(void **state)
{
    (void)state;
    struct counting_src s = {0, 0};
    struct stage2cache_source src = {{counting_top, &s}, {counting_neighbours, &s}};
    struct product_params pp = {8, {86400000, 8}, {7 * 86400000LL, 8}, 50, 0};
    stage2cache *sc = stage2cache_new(NULL, &pp, 3600000, 50);
    assert_non_null(sc);
    assert_int_equal(stage2cache_set_neighbour_cache(sc, 100), EDDY_OK);
    stage2cache_set_source(sc, &src);
    static struct scored_product out[50];
    size_t n = 0;
    for (int r = 0; r < 2; r++) {
        assert_int_equal(stage2cache_top(sc, "books", out, NULL, 50, &n), EDDY_OK);
        assert_int_equal(n, 1);
        assert_string_equal(out[0].product_id, "top-books");
        assert_int_equal(stage2cache_neighbours(sc, "p1", out, 50, &n), EDDY_OK);
        assert_int_equal(n, 1);
        assert_string_equal(out[0].product_id, "nb-p1");
    }
    assert_int_equal(s.tops, 1);       /* the second round from the caches */
    assert_int_equal(s.neighbours, 1);
    struct nbcache_stats st;
    stage2cache_neighbour_stats(sc, &st);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.entries, 1);
    stage2cache_free(sc);
    stage2cache_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_recommend_same, filled_setup, filled_teardown),
        cmocka_unit_test_setup_teardown(test_answers_ignore_newest_event_time, filled_setup,
                                        filled_teardown),
        cmocka_unit_test(test_source_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
