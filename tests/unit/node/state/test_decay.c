/* Event-time decay: values, byte-identical results for any arrival order, the exact
 * comparison of two sums and values at a bucket's start whose ratios do not depend on the
 * bucket. */
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

/* decay_cmp orders sums as their values do, exactly: equal values written in other buckets
 * compare equal, values one fixed-point unit apart do not, however far apart the buckets. */
static void test_cmp_exact(void **state)
{
    const struct decay_sum a = {100, 1000, 0};
    const struct decay_sum same[] = {
        {101, 0, 1000},             /* 1000 units at the start of bucket 101, as prev */
        {99, 1000 << 8, 0},         /* a bucket earlier, 2^8 (8 half-lives) larger */
        {99, (1000 << 8) - 1, 256}, /* its cur one short, made up by 2^8 of prev */
    };
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        assert_int_equal(decay_cmp(&a, &same[i], &P), 0);
        assert_int_equal(decay_cmp(&same[i], &a, &P), 0);
    }
    const struct decay_sum less[] = {
        {100, 999, 255 << 0},       /* 999 + 255/256 */
        {99, (1000 << 8) - 1, 0},
        {101, 0, 999},
        {90, INT64_MAX / 2, INT64_MAX / 2}, /* 10 buckets back: 2^80 down, however large */
        {INT64_MIN / 2, INT64_MAX, INT64_MAX},
    };
    for (size_t i = 0; i < sizeof(less) / sizeof(less[0]); i++) {
        assert_true(decay_cmp(&less[i], &a, &P) < 0);
        assert_true(decay_cmp(&a, &less[i], &P) > 0);
    }
    const struct decay_sum far = {INT64_MAX / 2, 1, 0}, zero = {INT64_MAX / 2, 0, 0};
    assert_true(decay_cmp(&far, &a, &P) > 0);
    assert_true(decay_cmp(&zero, &a, &P) < 0);
    assert_true(decay_cmp(&zero, &less[4], &P) < 0);
    /* against the floating-point values where those are far apart */
    for (int i = 0; i < 200; i++) {
        struct decay_sum x = {50 + i % 3, 1000 + i * 7919 % 5000, i * 104729 % 3000};
        struct decay_sum y = {50 + i % 2, 1000 + i * 6271 % 5000, i * 7907 % 3000};
        Eddy__Store__V1__Decayed dx = {.bucket = x.bucket, .cur = x.cur, .prev = x.prev};
        Eddy__Store__V1__Decayed dy = {.bucket = y.bucket, .cur = y.cur, .prev = y.prev};
        double vx = decay_value(&dx, &P, 53 * 28800000LL);
        double vy = decay_value(&dy, &P, 53 * 28800000LL);
        if (fabs(vx - vy) > 1e-9 * vx)
            assert_int_equal(decay_cmp(&x, &y, &P), vx > vy ? 1 : -1);
    }
}

/* A value at the start of a bucket is the value at that time, and moving the reference
 * scales every value by the same power of two exactly: ratios are the same bit for bit. */
static void test_value_at_bucket(void **state)
{
    Eddy__Store__V1__Decayed d = EDDY__STORE__V1__DECAYED__INIT;
    int64_t width = 8 * 3600000LL;
    decay_add(&d, &P, 1000 * width + 12345, 3.0);
    decay_add(&d, &P, 1001 * width + 777, 1.5);
    struct decay_sum v = decay_sum_of(&d), w = {999, 123456789, 98765};
    for (int64_t ref = 998; ref < 1010; ref++) {
        double at = decay_value(&d, &P, ref * width), here = decay_value_at_bucket(&v, &P, ref);
        assert_true(fabs(at - here) <= 1e-12 * here);
        assert_true(decay_value_at_bucket(&v, &P, ref + 1) == ldexp(here, -8));
        double r0 = here / decay_value_at_bucket(&w, &P, ref);
        double r1 = decay_value_at_bucket(&v, &P, ref + 5) / decay_value_at_bucket(&w, &P, ref + 5);
        assert_true(r0 == r1);
    }
    assert_true(decay_value_at_bucket(&v, &P, INT64_MAX) == 0.0);
    struct decay_sum none = decay_sum_of(NULL);
    assert_true(decay_value_at_bucket(&none, &P, 1000) == 0.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_half_life),
        cmocka_unit_test(test_sum_across_buckets),
        cmocka_unit_test(test_order_independent),
        cmocka_unit_test(test_cmp_exact),
        cmocka_unit_test(test_value_at_bucket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
