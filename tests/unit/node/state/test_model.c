/* The user model's top categories: the best 'max' of every category in decayed-affinity
 * order (ties by name), whatever 'max', for the categories seen in any order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "node/state/model.h"

#define T0 1800000000000LL

static const struct model_params P = {{7 * 86400000LL, 8}, 20, 50, 50};

static void apply(Eddy__Store__V1__UserModel *m, const char *category, Eddy__V1__EventType type,
                  int64_t ts, int i)
{
    char id[16], pid[16];
    snprintf(id, sizeof(id), "e%d", i);
    snprintf(pid, sizeof(pid), "p%d", i);
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = id;
    ev.user_id = "u1";
    ev.product_id = pid;
    ev.category = (char *)category;
    ev.event_type = type;
    ev.timestamp_ms = ts;
    assert_int_equal(model_apply(m, &P, &ev), EDDY_OK);
}

static Eddy__Store__V1__UserModel *model_new(void)
{
    Eddy__Store__V1__UserModel *m = malloc(sizeof(*m));
    assert_non_null(m);
    eddy__store__v1__user_model__init(m);
    return m;
}

static void test_top_categories_are_the_head_of_the_full_order(void **state)
{
    Eddy__Store__V1__UserModel *m = model_new();
    /* weights: views 1, purchases 5; "d" and "e" tie and are ordered by name */
    const char *cats[] = {"a", "b", "c", "d", "e", "f"};
    int views[] = {1, 4, 2, 3, 3, 0};
    int i = 0;
    for (size_t c = 0; c < 6; c++) {
        for (int v = 0; v < views[c]; v++, i++)
            apply(m, cats[c], EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, i);
    }
    apply(m, "f", EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE, T0, i++);

    struct affinity all[8], top[3];
    size_t n = model_top_categories(m, &P, all, 8);
    assert_int_equal(n, 6);
    const char *want[] = {"f", "b", "d", "e", "c", "a"};
    for (size_t k = 0; k < n; k++) {
        assert_string_equal(all[k].name, want[k]);
        if (k > 0)
            assert_true(all[k - 1].score >= all[k].score);
    }
    assert_int_equal(model_top_categories(m, &P, top, 3), 3);
    for (size_t k = 0; k < 3; k++) {
        assert_string_equal(top[k].name, want[k]);
        assert_true(top[k].score == all[k].score);
    }
    assert_int_equal(model_top_categories(m, &P, top, 0), 0);

    /* an older view counts less than a newer one of the same weight */
    Eddy__Store__V1__UserModel *m2 = model_new();
    apply(m2, "old", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, 0);
    apply(m2, "new", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0 + 86400000LL, 1);
    assert_int_equal(model_top_categories(m2, &P, top, 1), 1);
    assert_string_equal(top[0].name, "new");

    eddy__store__v1__user_model__free_unpacked(m, NULL);
    eddy__store__v1__user_model__free_unpacked(m2, NULL);
    (void)state;
}

/* Found by fuzz_store_values: a stored model whose category has a name but no score (a
 * damaged value: the writer always gives one) crashed the next event's apply in
 * decay_add. It now starts the score afresh. */
static void test_apply_to_a_stored_category_without_score(void **state)
{
    /* categories { name: "shoes" } and nothing else, as stored */
    static const uint8_t stored[] = {0x0a, 0x07, 0x0a, 0x05, 's', 'h', 'o', 'e', 's'};
    Eddy__Store__V1__UserModel *m = eddy__store__v1__user_model__unpack(NULL, sizeof(stored), stored);
    assert_non_null(m);
    assert_int_equal(m->n_categories, 1);
    assert_null(m->categories[0]->score);
    apply(m, "shoes", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, 1);
    assert_int_equal(m->n_categories, 1);
    assert_non_null(m->categories[0]->score);
    struct affinity top[1];
    assert_int_equal(model_top_categories(m, &P, top, 1), 1);
    assert_string_equal(top[0].name, "shoes");
    assert_true(top[0].score > 0.99 && top[0].score < 1.01); /* one view, weight 1, now */
    eddy__store__v1__user_model__free_unpacked(m, NULL);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_top_categories_are_the_head_of_the_full_order),
        cmocka_unit_test(test_apply_to_a_stored_category_without_score),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
