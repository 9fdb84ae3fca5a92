/* Ranking: blend, exclusions, diversity cap, reasons, cold start. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "node/state/recommend.h"

static struct scored_product sp(const char *id, const char *cat, double score)
{
    struct scored_product p;
    snprintf(p.product_id, sizeof(p.product_id), "%s", id);
    snprintf(p.category, sizeof(p.category), "%s", cat);
    p.score = score;
    return p;
}

static const struct rec_params W = {1.0, 1.5, 2.0, 2, true, 0};

/* One working memory for every test, as a handler thread keeps one: each ranking reuses
 * what the ones before it left (larger or smaller inputs). */
static struct rec_mem mem;

static int find(const struct rec_item *it, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(it[i].product_id, id) == 0)
            return (int)i;
    }
    return -1;
}

static void test_blend_and_reasons(void **state)
{
    struct scored_product books[] = {sp("b1", "books", 10), sp("b2", "books", 5)};
    struct scored_product toys[] = {sp("t1", "toys", 10)};
    struct scored_product nb[] = {sp("n1", "games", 4), sp("b2", "books", 2)};
    struct rec_category cats[] = {{"books", 1.0, books, 2}, {"toys", 0.1, toys, 1}};
    struct rec_anchor anchors[] = {{"x", 1.0, false, false, nb, 2}};
    struct rec_input in = {cats, 2, anchors, 1, NULL, 0, NULL, 0};
    struct rec_item out[10];
    size_t n = rec_rank(&in, &W, &mem, out, 10);
    assert_int_equal(n, 4);
    /* n1: 1.5 * 1 = 1.5 (neighbour); b1: 1.0 (popular); b2: 0.5 + 0.75 = 1.25 */
    assert_string_equal(out[0].product_id, "n1");
    assert_string_equal(out[0].reason, "viewed together with x");
    assert_string_equal(out[1].product_id, "b2");
    assert_string_equal(out[1].reason, "viewed together with x"); /* its largest part */
    assert_string_equal(out[2].product_id, "b1");
    assert_string_equal(out[2].reason, "popular in books");
    assert_string_equal(out[3].product_id, "t1"); /* weak affinity, still a candidate */
    for (size_t i = 1; i < n; i++)
        assert_true(out[i - 1].score >= out[i].score);
}

/* An anchor found in its own neighbour list (a recent item, not excluded) is no candidate
 * of that list: rec_rank skips it by hash and id. */
static void test_anchor_not_its_own_neighbour(void **state)
{
    (void)state;
    struct scored_product nb[] = {sp("r1", "a", 10), sp("n1", "a", 5)};
    struct rec_anchor anchors[] = {{"r1", 1.0, false, false, nb, 2}};
    struct rec_input in = {NULL, 0, anchors, 1, NULL, 0, NULL, 0};
    struct rec_item out[10];
    size_t n = rec_rank(&in, &W, &mem, out, 10);
    assert_int_equal(n, 1);
    assert_string_equal(out[0].product_id, "n1");
    assert_string_equal(out[0].reason, "viewed together with r1");
}

static void test_exclusions_and_context(void **state)
{
    struct scored_product nb[] = {sp("c1", "a", 10), sp("c2", "a", 5), sp("cur", "a", 5)};
    struct scored_product cart_nb[] = {sp("k1", "b", 10), sp("c1", "a", 1)};
    struct rec_anchor anchors[] = {{"cur", 1.0, true, false, nb, 3},
                                   {"cart1", 0.8, true, true, cart_nb, 2}};
    const char *exclude[] = {"cur", "cart1", "c2"};
    struct rec_input in = {NULL, 0, anchors, 2, NULL, 0, exclude, 3};
    struct rec_item out[10];
    struct rec_params nocap = W;
    nocap.diversity_cap = 0;
    size_t n = rec_rank(&in, &nocap, &mem, out, 10);
    assert_int_equal(n, 2);
    assert_int_equal(find(out, n, "c2"), -1);  /* excluded (e.g. purchased) */
    assert_int_equal(find(out, n, "cur"), -1); /* the current product itself */
    assert_string_equal(out[0].product_id, "c1");
    assert_string_equal(out[0].reason, "related to cur");
    assert_string_equal(out[1].product_id, "k1");
    assert_string_equal(out[1].reason, "goes with cart1 in your cart");
}

static void test_diversity_cap(void **state)
{
    struct scored_product books[] = {sp("b1", "books", 9), sp("b2", "books", 8),
                                     sp("b3", "books", 7), sp("b4", "books", 6)};
    struct scored_product toys[] = {sp("t1", "toys", 1)};
    struct rec_category cats[] = {{"books", 1.0, books, 4}, {"toys", 0.5, toys, 1}};
    struct rec_input in = {cats, 2, NULL, 0, NULL, 0, NULL, 0};
    struct rec_item out[10];
    size_t n = rec_rank(&in, &W, &mem, out, 10); /* cap 2 per category */
    assert_int_equal(n, 3);
    assert_string_equal(out[0].product_id, "b1");
    assert_string_equal(out[1].product_id, "b2");
    assert_string_equal(out[2].product_id, "t1");
}

/* The cap holds popularity back, never what the user's own items point at: neighbours of a
 * recent item all come, even past the cap, and a category they filled gets no more
 * popular items. */
static void test_cap_spares_neighbours(void **state)
{
    struct scored_product nb[] = {sp("n1", "books", 9), sp("n2", "books", 8),
                                  sp("n3", "books", 7)};
    struct scored_product books[] = {sp("b1", "books", 9)};
    struct scored_product toys[] = {sp("t1", "toys", 9)};
    struct rec_category cats[] = {{"books", 1.0, books, 1}, {"toys", 1.0, toys, 1}};
    struct rec_anchor anchors[] = {{"x", 1.0, false, false, nb, 3}};
    struct rec_input in = {cats, 2, anchors, 1, NULL, 0, NULL, 0};
    struct rec_item out[10];
    size_t n = rec_rank(&in, &W, &mem, out, 10); /* cap 2 per category */
    assert_int_equal(n, 4);
    assert_string_equal(out[0].product_id, "n1");
    assert_string_equal(out[1].product_id, "n2");
    assert_string_equal(out[2].product_id, "n3"); /* third book: a neighbour, not capped */
    assert_string_equal(out[3].product_id, "t1");
    assert_int_equal(find(out, n, "b1"), -1);     /* popular book: books are full */
}

static void test_cold_start_and_fill(void **state)
{
    struct scored_product global[] = {sp("g1", "a", 100), sp("g2", "a", 50), sp("g3", "b", 10),
                                      sp("g4", "a", 5)};
    const char *exclude[] = {"g3"};
    struct rec_input in = {NULL, 0, NULL, 0, global, 4, exclude, 1};
    struct rec_item out[10];
    size_t n = rec_rank(&in, &W, &mem, out, 10);
    /* cap 2 of category a, g3 excluded */
    assert_int_equal(n, 2);
    assert_string_equal(out[0].product_id, "g1");
    assert_string_equal(out[0].reason, "trending now");
    assert_string_equal(out[1].product_id, "g2");
    /* blended items stay above the fill */
    struct scored_product books[] = {sp("b1", "books", 1)};
    struct rec_category cats[] = {{"books", 1.0, books, 1}};
    struct rec_input in2 = {cats, 1, NULL, 0, global, 4, NULL, 0};
    n = rec_rank(&in2, &W, &mem, out, 3);
    assert_int_equal(n, 3);
    assert_string_equal(out[0].product_id, "b1");
    assert_true(out[0].score > out[1].score);
    assert_int_equal(rec_rank(&in2, &W, &mem, out, 0), 0);
}

/* An excluded candidate (checked when picked) neither shows nor uses up its category's
 * cap; a long id and category come out truncated like the buffers they fit in. */
static void test_excluded_top_candidates_keep_the_cap(void **state)
{
    struct scored_product books[] = {sp("b1", "books", 9), sp("b2", "books", 8),
                                     sp("b3", "books", 7)};
    struct rec_category cats[] = {{"books", 1.0, books, 3}};
    const char *exclude[] = {"b1", "b2"};
    struct rec_input in = {cats, 1, NULL, 0, NULL, 0, exclude, 2};
    struct rec_params cap1 = W;
    cap1.diversity_cap = 1;
    struct rec_item out[10];
    size_t n = rec_rank(&in, &cap1, &mem, out, 10);
    assert_int_equal(n, 1);
    assert_string_equal(out[0].product_id, "b3");
    assert_string_equal(out[0].reason, "popular in books");

    char id[REC_ID_CAP + 1];
    memset(id, 'x', REC_ID_CAP);
    id[REC_ID_CAP] = '\0';
    struct scored_product cart_nb[] = {sp(id, id, 3)};
    struct rec_anchor anchors[] = {{id, 1.0, true, true, cart_nb, 1},
                                   {"k", 1.0, true, true, cart_nb, 1}};
    struct rec_input in2 = {NULL, 0, anchors, 2, NULL, 0, NULL, 0};
    n = rec_rank(&in2, &cap1, &mem, out, 10);
    assert_int_equal(n, 1);
    assert_int_equal(strlen(out[0].product_id), REC_ID_CAP);
    assert_int_equal(strlen(out[0].category), REC_ID_CAP);
    assert_string_equal(out[0].reason, "goes with k in your cart");
}

/* With a trending weight, global popularity is a source of the blend: it adds to what a
 * personal source gives the same item, can rank above a weak neighbour, names its reason
 * and stays under the diversity cap; the fill still tops the answer up below it. */
static void test_trending_blended(void **state)
{
    struct scored_product global[] = {sp("g1", "a", 100), sp("n2", "b", 50), sp("g3", "a", 40),
                                      sp("g4", "a", 30), sp("g5", "c", 1)};
    struct scored_product nb[] = {sp("n1", "b", 10), sp("n2", "b", 2)};
    struct rec_anchor anchors[] = {{"x", 1.0, false, false, nb, 2}};
    struct rec_input in = {NULL, 0, anchors, 1, global, 5, NULL, 0};
    struct rec_params tw = W;
    tw.w_trending = 1.0;
    struct rec_item out[10];
    size_t n = rec_rank(&in, &tw, &mem, out, 10);
    /* n1 1.5; g1 1.0; n2 0.3 + 0.5 = 0.8; g3 0.4; g4 capped (2 of a); g5 0.01 */
    assert_int_equal(n, 5);
    assert_string_equal(out[0].product_id, "n1");
    assert_string_equal(out[1].product_id, "g1");
    assert_string_equal(out[1].reason, "trending now");
    assert_string_equal(out[2].product_id, "n2");
    assert_float_equal(out[2].score, 0.8, 1e-12);
    assert_string_equal(out[2].reason, "trending now"); /* 0.5 > 0.3 */
    assert_string_equal(out[3].product_id, "g3");
    assert_string_equal(out[4].product_id, "g5");
    assert_int_equal(find(out, n, "g4"), -1);
    /* without the weight, the same global list only fills below the neighbours */
    n = rec_rank(&in, &W, &mem, out, 10);
    assert_string_equal(out[0].product_id, "n1");
    assert_string_equal(out[1].product_id, "n2");
    assert_string_equal(out[1].reason, "viewed together with x");
    assert_string_equal(out[2].product_id, "g1");
    assert_true(out[2].score < out[1].score);
}

/* A list read while its decay parameters change (a stage-2 rebuild with other half-lives
 * swapping in) may carry a value scaled out of range: infinite or NaN. Those shares are
 * left out; every item answered has a finite score and a reason that names its source
 * (a NaN share used to make a candidate with no reason: "popular in " and a NULL name). */
static void test_out_of_range_scores_left_out(void **state)
{
    struct scored_product books[] = {sp("b1", "books", INFINITY), sp("b2", "books", 5)};
    struct scored_product toys[] = {sp("t1", "toys", NAN), sp("t2", "toys", 2)};
    struct scored_product nb[] = {sp("n1", "games", NAN), sp("n2", "games", 1)};
    struct rec_category cats[] = {{"books", INFINITY, books, 2}, {"toys", 1.0, toys, 2}};
    struct rec_anchor anchors[] = {{"x", 1.0, false, false, nb, 2}};
    struct rec_input in = {cats, 2, anchors, 1, NULL, 0, NULL, 0};
    struct rec_item out[10];
    struct rec_params nocap = W;
    nocap.diversity_cap = 0;
    size_t n = rec_rank(&in, &nocap, &mem, out, 10);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].product_id, "n2"); /* 1.5 x 1 */
    assert_string_equal(out[0].reason, "viewed together with x");
    assert_string_equal(out[1].product_id, "t2"); /* 1.0 x (1 / 1) x (2 / 2) */
    assert_string_equal(out[1].reason, "popular in toys");
    for (size_t i = 0; i < n; i++)
        assert_true(isfinite(out[i].score) && out[i].score > 0);
}

/* A user with many exclusions (collisions in the exclusion table, a block grown for it),
 * ranked with the memory of earlier rankings and with a fresh one: the same answer, and
 * no excluded product in it; then a small input on the grown block. */
static void test_many_exclusions_and_reused_memory(void **state)
{
    enum { N = 600 };
    static struct scored_product pop[N];
    const char *exclude[N];
    size_t nx = 0;
    for (int i = 0; i < N; i++) {
        snprintf(pop[i].product_id, sizeof(pop[i].product_id), "p%d", i);
        snprintf(pop[i].category, sizeof(pop[i].category), "%s", i % 2 ? "odd" : "even");
        pop[i].score = (double)(N - i);
        if (i % 3 != 2) /* two of every three, the best first among them */
            exclude[nx++] = pop[i].product_id;
    }
    struct rec_category cats[] = {{"even", 1.0, pop, N}};
    struct rec_input in = {cats, 1, NULL, 0, pop, N, exclude, nx};
    struct rec_params nocap = W;
    nocap.diversity_cap = 0;
    struct rec_item out[20], fresh_out[20];
    struct rec_mem fresh = {0};
    size_t n = rec_rank(&in, &nocap, &mem, out, 20);
    size_t fresh_n = rec_rank(&in, &nocap, &fresh, fresh_out, 20);
    rec_mem_release(&fresh);
    assert_int_equal(n, 20);
    assert_int_equal(fresh_n, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(out[i].product_id, fresh_out[i].product_id);
        assert_true(out[i].score == fresh_out[i].score);
        int k = atoi(out[i].product_id + 1);
        assert_int_equal(k % 3, 2); /* never an excluded one */
    }
    assert_string_equal(out[0].product_id, "p2");

    struct rec_input small = {cats, 1, NULL, 0, pop, 3, exclude, 1};
    cats[0].n = 3;
    n = rec_rank(&small, &nocap, &mem, out, 20);
    assert_int_equal(n, 2); /* p0 excluded */
    assert_string_equal(out[0].product_id, "p1");
    assert_string_equal(out[1].product_id, "p2");
}

static int release_mem(void **state)
{
    rec_mem_release(&mem);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_range_scores_left_out),
        cmocka_unit_test(test_blend_and_reasons),
        cmocka_unit_test(test_exclusions_and_context),
        cmocka_unit_test(test_anchor_not_its_own_neighbour),
        cmocka_unit_test(test_diversity_cap),
        cmocka_unit_test(test_cap_spares_neighbours),
        cmocka_unit_test(test_cold_start_and_fill),
        cmocka_unit_test(test_excluded_top_candidates_keep_the_cap),
        cmocka_unit_test(test_trending_blended),
        cmocka_unit_test(test_many_exclusions_and_reused_memory),
    };
    return cmocka_run_group_tests(tests, NULL, release_mem);
}
