/* Experiment assignment: deterministic, in proportion to the weights, independent across
 * experiments, stable when a later variant's weight changes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "node/state/experiment.h"

enum { USERS = 20000 };

static void user(char *buf, size_t len, int i)
{
    snprintf(buf, len, "user-%d", i);
}

static void test_deterministic_and_proportional(void **state)
{
    struct experiment_variant v[] = {{"a", 1}, {"b", 1}, {"c", 2}};
    int count[3] = {0};
    char u[32];
    for (int i = 0; i < USERS; i++) {
        user(u, sizeof(u), i);
        int k = experiment_assign("ranking", u, v, 3);
        assert_true(k >= 0 && k < 3);
        assert_int_equal(experiment_assign("ranking", u, v, 3), k);
        count[k]++;
    }
    /* 25/25/50%: binomial sd ~0.3%, 1.5% is five of them */
    assert_in_range(count[0], USERS * 235 / 1000, USERS * 265 / 1000);
    assert_in_range(count[1], USERS * 235 / 1000, USERS * 265 / 1000);
    assert_in_range(count[2], USERS * 485 / 1000, USERS * 515 / 1000);
}

static void test_experiments_split_independently(void **state)
{
    struct experiment_variant v[] = {{"a", 1}, {"b", 1}};
    int both = 0, first = 0;
    char u[32];
    for (int i = 0; i < USERS; i++) {
        user(u, sizeof(u), i);
        int x = experiment_assign("exp-1", u, v, 2), y = experiment_assign("exp-2", u, v, 2);
        first += x == 0;
        both += x == 0 && y == 0;
    }
    /* half of exp-1's "a" users are in exp-2's "a", not all or none of them */
    assert_in_range(both, first * 45 / 100, first * 55 / 100);
    assert_true(experiment_bucket("ab", "c") != experiment_bucket("a", "bc") ||
                experiment_bucket("ab", "d") != experiment_bucket("a", "bd"));
}

static void test_weights_zero_and_ramp(void **state)
{
    struct experiment_variant off[] = {{"a", 0}, {"b", 0}};
    assert_int_equal(experiment_assign("e", "u", off, 2), -1);
    assert_int_equal(experiment_assign("e", "u", NULL, 0), -1);
    struct experiment_variant only_b[] = {{"a", 0}, {"b", 5}};
    assert_int_equal(experiment_assign("e", "u", only_b, 2), 1);
    /* ramping the treatment from 10% to 50% of a two-variant split moves users from the
     * control into it only */
    struct experiment_variant r10[] = {{"treat", 10}, {"control", 90}};
    struct experiment_variant r50[] = {{"treat", 50}, {"control", 50}};
    char u[32];
    int moved = 0;
    for (int i = 0; i < USERS; i++) {
        user(u, sizeof(u), i);
        int before = experiment_assign("ramp", u, r10, 2), after = experiment_assign("ramp", u, r50, 2);
        if (before == 0)
            assert_int_equal(after, 0);
        moved += before == 1 && after == 0;
    }
    assert_in_range(moved, USERS * 37 / 100, USERS * 43 / 100);
}

static void test_validation(void **state)
{
    (void)state;
    Eddy__V1__DoubleValue neg = {PROTOBUF_C_MESSAGE_INIT(&eddy__v1__double_value__descriptor), -1};
    Eddy__V1__DoubleValue two = {PROTOBUF_C_MESSAGE_INIT(&eddy__v1__double_value__descriptor), 2};
    Eddy__V1__Int32Value cap = {PROTOBUF_C_MESSAGE_INIT(&eddy__v1__int32_value__descriptor), 0};
    Eddy__V1__RecommendParams pa = EDDY__V1__RECOMMEND_PARAMS__INIT;
    Eddy__V1__RecommendParams pb = EDDY__V1__RECOMMEND_PARAMS__INIT;
    Eddy__V1__Variant a = EDDY__V1__VARIANT__INIT, b = EDDY__V1__VARIANT__INIT;
    Eddy__V1__Variant *vs[] = {&a, &b};
    Eddy__V1__Experiment e = EDDY__V1__EXPERIMENT__INIT;
    char why[256];
    a.name = (char *)"A";
    a.weight = 50;
    a.params = &pa;
    b.name = (char *)"B";
    b.weight = 50;
    b.params = &pb;
    pb.weight_neighbours = &two;
    pb.diversity_cap = &cap;
    e.name = (char *)"ranking-v2";
    e.variants = vs;
    e.n_variants = 2;
    assert_true(experiment_valid(&e, why, sizeof(why)));

    /* the variant's parameters over the node's: only those it sets */
    struct rec_params base = {1.0, 1.5, 2.0, 3, true, 0}, out;
    experiment_rec_params(&base, &pb, &out);
    assert_float_equal(out.w_popular, 1.0, 0);
    assert_float_equal(out.w_neighbours, 2.0, 0);
    assert_int_equal(out.diversity_cap, 0);
    experiment_rec_params(&base, &pa, &out);
    assert_float_equal(out.w_popular, 1.0, 0);
    assert_float_equal(out.w_neighbours, 1.5, 0);
    assert_float_equal(out.w_context, 2.0, 0);
    assert_int_equal(out.diversity_cap, 3);
    assert_true(out.exclude_interacted);

    e.name = (char *)"bad name";
    assert_false(experiment_valid(&e, why, sizeof(why)));
    assert_non_null(strstr(why, "name:"));
    e.name = (char *)"ranking-v2";
    b.name = (char *)"A";
    assert_false(experiment_valid(&e, why, sizeof(why)));
    assert_non_null(strstr(why, "variants[1].name"));
    b.name = (char *)"B";
    b.weight = 0;
    assert_false(experiment_valid(&e, why, sizeof(why)));
    assert_non_null(strstr(why, "variants[1].weight"));
    b.weight = 50;
    pb.weight_neighbours = &neg;
    assert_false(experiment_valid(&e, why, sizeof(why)));
    assert_non_null(strstr(why, "variants[1].params.weight_neighbours"));
    pb.weight_neighbours = &two;
    e.click_window_ms = 31LL * 86400000;
    assert_false(experiment_valid(&e, why, sizeof(why)));
    assert_non_null(strstr(why, "click_window_ms"));
    e.click_window_ms = 0;
    e.n_variants = 0;
    assert_false(experiment_valid(&e, why, sizeof(why)));
    assert_non_null(strstr(why, "variants:"));
    assert_false(experiment_valid(NULL, why, sizeof(why)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deterministic_and_proportional),
        cmocka_unit_test(test_experiments_split_independently),
        cmocka_unit_test(test_weights_zero_and_ramp),
        cmocka_unit_test(test_validation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
