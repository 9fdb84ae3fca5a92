/* Per-partition sets of key hashes: no false negatives once built (every hash added is
 * held, through growth), "may hold" for a partition not built or being built, a set given
 * up past the budget, dropped sets built again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "node/state/keyset.h"

static uint64_t h_of(uint64_t i)
{
    return i * UINT64_C(0x9e3779b97f4a7c15); /* 0 included: stored as 1 */
}

static void test_no_false_negatives(void **state)
{
    (void)state;
    keyset *ks = keyset_new(1 << 20);
    assert_non_null(ks);
    assert_int_equal(keyset_state(ks, 7), KEYSET_NONE);
    assert_true(keyset_may_hold(ks, 7, h_of(1))); /* unknown: may */
    assert_true(keyset_begin(ks, 7));
    for (uint64_t i = 0; i < 1000; i++)
        keyset_add(ks, 7, h_of(i));
    assert_true(keyset_may_hold(ks, 7, h_of(5000))); /* being built: may */
    keyset_finish(ks, 7);
    assert_int_equal(keyset_state(ks, 7), KEYSET_READY);
    for (uint64_t i = 0; i < 1000; i++)
        assert_true(keyset_may_hold(ks, 7, h_of(i)));
    size_t absent = 0;
    for (uint64_t i = 1000; i < 2000; i++)
        absent += !keyset_may_hold(ks, 7, h_of(i));
    assert_int_equal(absent, 1000);
    keyset_add(ks, 7, h_of(4000)); /* after the build too */
    assert_true(keyset_may_hold(ks, 7, h_of(4000)));
    keyset_add(ks, 8, h_of(1)); /* no set: nothing */
    assert_int_equal(keyset_state(ks, 8), KEYSET_NONE);
    struct keyset_stats st;
    keyset_stats(ks, &st);
    assert_int_equal(st.keys, 1001);
    assert_int_equal(st.builds, 1);
    assert_true(st.bytes >= 1001 * 2 * sizeof(uint64_t));

    keyset_drop(ks, 7);
    assert_int_equal(keyset_state(ks, 7), KEYSET_NONE);
    assert_true(keyset_may_hold(ks, 7, h_of(1500)));
    keyset_stats(ks, &st);
    assert_int_equal(st.bytes, 0);
    keyset_free(ks);
}

static void test_budget(void **state)
{
    (void)state;
    keyset *ks = keyset_new(256 * sizeof(uint64_t)); /* 128 keys in one set */
    assert_true(keyset_begin(ks, 1));
    for (uint64_t i = 0; i < 128; i++)
        keyset_add(ks, 1, h_of(i));
    keyset_finish(ks, 1);
    assert_int_equal(keyset_state(ks, 1), KEYSET_READY);
    assert_false(keyset_begin(ks, 2)); /* no room for a second set */
    assert_int_equal(keyset_state(ks, 2), KEYSET_OFF);
    assert_true(keyset_may_hold(ks, 2, h_of(999)));
    keyset_add(ks, 1, h_of(128)); /* would grow past the budget: given up */
    assert_int_equal(keyset_state(ks, 1), KEYSET_OFF);
    assert_true(keyset_may_hold(ks, 1, h_of(999)));
    struct keyset_stats st;
    keyset_stats(ks, &st);
    assert_int_equal(st.overflows, 2);
    assert_int_equal(st.bytes, 0);
    keyset_drop_all(ks); /* built again on demand, within a new budget */
    keyset_set_budget(ks, 1 << 20);
    assert_int_equal(keyset_state(ks, 1), KEYSET_NONE);
    assert_true(keyset_begin(ks, 1));
    keyset_free(ks);
    keyset_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_false_negatives),
        cmocka_unit_test(test_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
