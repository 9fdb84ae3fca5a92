/* The order of topk lists: score first, then the whole id, whatever the order of the
 * offers (a cluster's merge and --dev's scan offer the same products in other orders). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "node/state/topk.h"

#define CAP 4

static void offer_all(struct topk *t, const char *const *ids, size_t n, const double *scores)
{
    for (size_t i = 0; i < n; i++)
        topk_offer(t, ids[i], strlen(ids[i]), "c", 1, scores[i]);
}

/* Ties of score: an id that is another's prefix ranks first in both offer orders. */
static void test_ties_order_by_whole_id(void **state)
{
    (void)state;
    const char *fwd[] = {"p-1", "p-10", "p-2", "p-0"};
    const char *rev[] = {"p-0", "p-2", "p-10", "p-1"};
    const double s[] = {1.0, 1.0, 1.0, 1.0};
    const char *want[] = {"p-0", "p-1", "p-10", "p-2"};
    const char *const *orders[] = {fwd, rev};
    for (size_t o = 0; o < 2; o++) {
        struct scored_product items[CAP];
        struct topk t = {items, 0, CAP, NULL, NULL};
        offer_all(&t, orders[o], 4, s);
        assert_int_equal(t.n, 4);
        for (size_t i = 0; i < 4; i++)
            assert_string_equal(items[i].product_id, want[i]);
    }
}

/* The best CAP are kept, best first; an equal score past the cap goes by id. */
static void test_keeps_best(void **state)
{
    (void)state;
    const char *ids[] = {"a", "b", "c", "d", "e", "ab"};
    const double s[] = {1.0, 5.0, 3.0, 4.0, 2.0, 1.0};
    struct scored_product items[CAP];
    struct topk t = {items, 0, CAP, NULL, NULL};
    offer_all(&t, ids, 6, s);
    assert_int_equal(t.n, CAP);
    const char *want[] = {"b", "d", "c", "e"};
    for (size_t i = 0; i < CAP; i++)
        assert_string_equal(items[i].product_id, want[i]);
    struct scored_product few[CAP];
    struct topk u = {few, 0, CAP, NULL, NULL};
    const char *tied[] = {"ab", "a"};
    offer_all(&u, tied, 2, s);
    assert_string_equal(few[0].product_id, "a");
    assert_string_equal(few[1].product_id, "ab");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ties_order_by_whole_id),
        cmocka_unit_test(test_keeps_best),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
