/* The stage-2 handle: Recommend through cached lists and neighbours gives the same
 * answers as through uncached ones, and a source set on the handle serves both halves. */
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

/* Recommend through a cached stage2cache gives the same answers as through an uncached one. */
static void test_recommend_same(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    stage2cache *plain = cache_new(e, 0);
    stage2cache *cached = cache_new(e, 3600000);
    assert_int_equal(stage2cache_set_neighbour_cache(cached, 1000), EDDY_OK);
    struct query_ctx q0 = {e, plain, 10, 100, NULL, NULL, 0, NULL, NULL};
    struct query_ctx q1 = {e, cached, 10, 100, NULL, NULL, 0, NULL, NULL};
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
            assert_same_answer(a, b);
            query_free_response(&a->base);
            query_free_response(&b->base);
        }
    }
    stage2cache_free(plain);
    stage2cache_free(cached);
}
/* A source answering a fixed list: "top-<category>" and "nb-<product>", counting calls. */
struct counting_src {
    int tops, neighbours;
};

static eddy_err counting_top(void *ud, const char *category, int64_t at,
                             struct scored_product *out, size_t max, size_t *n)
{
    struct counting_src *s = ud;
    (void)at;
    s->tops++;
    *n = 0;
    if (max > 0) {
        snprintf(out[0].product_id, sizeof(out[0].product_id), "top-%s", category);
        snprintf(out[0].category, sizeof(out[0].category), "%s", category);
        out[0].score = 2.0;
        *n = 1;
    }
    return EDDY_OK;
}

static eddy_err counting_neighbours(void *ud, const char *product_id, int64_t at,
                                    struct scored_product *out, size_t max, size_t *n)
{
    struct counting_src *s = ud;
    (void)at;
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
        assert_int_equal(stage2cache_top(sc, "books", 1000, out, 50, &n), EDDY_OK);
        assert_int_equal(n, 1);
        assert_string_equal(out[0].product_id, "top-books");
        assert_int_equal(stage2cache_neighbours(sc, "p1", 1000, out, 50, &n), EDDY_OK);
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
        cmocka_unit_test(test_source_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
