/* client/cli/abstats.c: the intervals and the test `eddy experiments show` prints, against
 * values computed independently (Wilson 1927's formula, the pooled z-test by hand). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "client/cli/abstats.c"

static void test_wilson_known_values(void **state)
{
    (void)state;
    struct abstats_interval r = abstats_wilson(10, 100, ABSTATS_Z95);
    assert_float_equal(r.value, 0.10, 1e-12);
    assert_float_equal(r.lo, 0.0552291370606751, 1e-9);
    assert_float_equal(r.hi, 0.17436566150491345, 1e-9);
    /* the edges stay inside [0, 1], and no data gives zeros */
    r = abstats_wilson(0, 159, ABSTATS_Z95);
    assert_float_equal(r.lo, 0, 1e-12);
    assert_float_equal(r.hi, 0.02359017690282413, 1e-9);
    r = abstats_wilson(50, 50, ABSTATS_Z95);
    assert_float_equal(r.hi, 1, 1e-12);
    assert_true(r.lo > 0.9 && r.lo < 1);
    r = abstats_wilson(0, 0, ABSTATS_Z95);
    assert_float_equal(r.value + r.lo + r.hi, 0, 0);
}

static void test_two_proportion_p(void **state)
{
    (void)state;
    /* 10/100 against 20/100: z = 1.980, p = 0.0477 */
    assert_float_equal(abstats_two_proportion_p(10, 100, 20, 100), 0.04767038065616144, 1e-9);
    /* symmetric, 1 for equal rates, 1 without data or without any difference to see */
    assert_float_equal(abstats_two_proportion_p(20, 100, 10, 100), 0.04767038065616144, 1e-9);
    assert_float_equal(abstats_two_proportion_p(30, 100, 60, 200), 1, 1e-12);
    assert_float_equal(abstats_two_proportion_p(0, 0, 5, 10), 1, 0);
    assert_float_equal(abstats_two_proportion_p(0, 10, 0, 10), 1, 0);
    assert_true(abstats_two_proportion_p(11, 159, 67, 141) < 1e-14);
}

static void test_mean_interval(void **state)
{
    (void)state;
    /* 29 purchases of 20 over 141 impressions: mean 4.1135, sample sd 8.1, ±1.339 */
    struct abstats_interval r = abstats_mean(580, 29 * 400, 141, ABSTATS_Z95);
    assert_float_equal(r.value, 580.0 / 141, 1e-12);
    assert_float_equal(r.lo, 2.7744061451991113, 1e-9);
    assert_float_equal(r.hi, 5.452544209410818, 1e-9);
    r = abstats_mean(7, 49, 1, ABSTATS_Z95); /* one value: no spread to estimate */
    assert_float_equal(r.lo, 7, 0);
    assert_float_equal(r.hi, 7, 0);
    r = abstats_mean(0, 0, 0, ABSTATS_Z95);
    assert_float_equal(r.value, 0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wilson_known_values),
        cmocka_unit_test(test_two_proportion_p),
        cmocka_unit_test(test_mean_interval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
