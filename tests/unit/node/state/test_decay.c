/* Event-time decay: values, and byte-identical results for any arrival order. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "node/state/decay.h"

static const struct decay_params P = {3600000, 8}; /* 1 h half-life, 8 h buckets */

static void test_half_life(void **state)
{
    Eddy__Store__V1__Decayed d = EDDY__STORE__V1__DECAYED__INIT;
    decay_add(&d, &P, 1000000000, 4.0);
    assert_true(fabs(decay_value(&d, &P, 1000000000) - 4.0) < 1e-4);
    assert_true(fabs(decay_value(&d, &P, 1000000000 + 3600000) - 2.0) < 1e-4);
    assert_true(fabs(decay_value(&d, &P, 1000000000 + 7200000) - 1.0) < 1e-4);
    assert_true(decay_value(NULL, &P, 0) == 0.0);
}

static void test_sum_across_buckets(void **state)
{
    Eddy__Store__V1__Decayed d = EDDY__STORE__V1__DECAYED__INIT;
    int64_t t0 = 28800000LL * 100 + 1000; /* inside a bucket */
    decay_add(&d, &P, t0, 1.0);
    decay_add(&d, &P, t0 + 28800000, 1.0); /* next bucket */
    double expect = 1.0 + pow(2.0, -8.0);
    assert_true(fabs(decay_value(&d, &P, t0 + 28800000) - expect) < 1e-4);
}

static void shuffle(int64_t *a, double *w, size_t n, unsigned seed)
{
    srand(seed);
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)rand() % (i + 1);
        int64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
        double x = w[i];
        w[i] = w[j];
        w[j] = x;
    }
}

static void test_order_independent(void **state)
{
    enum { N = 500 };
    int64_t ts[N];
    double w[N];
    for (int i = 0; i < N; i++) {
        ts[i] = 1700000000000LL + (int64_t)i * 97531 % 86400000; /* a day, scrambled */
        w[i] = 1.0 + (i % 5);
    }
    Eddy__Store__V1__Decayed ref = EDDY__STORE__V1__DECAYED__INIT;
    for (int i = 0; i < N; i++)
        decay_add(&ref, &P, ts[i], w[i]);
    for (unsigned seed = 1; seed <= 20; seed++) {
        shuffle(ts, w, N, seed);
        Eddy__Store__V1__Decayed d = EDDY__STORE__V1__DECAYED__INIT;
        for (int i = 0; i < N; i++)
            decay_add(&d, &P, ts[i], w[i]);
        assert_int_equal(d.bucket, ref.bucket);
        assert_int_equal(d.cur, ref.cur);
        assert_int_equal(d.prev, ref.prev);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_half_life),
        cmocka_unit_test(test_sum_across_buckets),
        cmocka_unit_test(test_order_independent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
