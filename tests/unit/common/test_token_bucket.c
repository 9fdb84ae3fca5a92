/* The token bucket as a pure function of the time passed in: full at first use, refill
 * capped at the burst, the retry delay it names, batches larger than the burst (taken once
 * the bucket is full, the debt delaying the next), and rate 0 = unlimited. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/token_bucket.h"

#define MS 1000000LL

static void test_burst_then_refill(void **state)
{
    (void)state;
    struct token_bucket b = {0};
    int64_t retry = -1, t0 = 5000 * MS;
    for (int i = 0; i < 10; i++) /* full at first use: 10 tokens at 10/s */
        assert_true(token_bucket_take(&b, 10, 10, 1, t0, &retry));
    assert_false(token_bucket_take(&b, 10, 10, 1, t0, &retry));
    assert_int_equal(retry, 100); /* one token at 10/s */
    assert_false(token_bucket_take(&b, 10, 10, 1, t0 + 99 * MS, &retry));
    assert_int_equal(retry, 1);
    assert_true(token_bucket_take(&b, 10, 10, 1, t0 + 100 * MS, &retry));
    /* an idle minute refills only up to the burst */
    int taken = 0;
    while (token_bucket_take(&b, 10, 10, 1, t0 + 60000 * MS, NULL))
        taken++;
    assert_int_equal(taken, 10);
}

static void test_batches(void **state)
{
    (void)state;
    struct token_bucket b = {0};
    int64_t retry = 0, t0 = 0;
    assert_true(token_bucket_take(&b, 100, 100, 60, t0, &retry));
    assert_false(token_bucket_take(&b, 100, 100, 60, t0, &retry)); /* 40 left, 60 needed */
    assert_int_equal(retry, 200);
    assert_true(token_bucket_take(&b, 100, 100, 60, t0 + 200 * MS, &retry));
    /* larger than the burst: admitted when full, and the debt (-150) delays what follows */
    struct token_bucket c = {0};
    assert_true(token_bucket_take(&c, 100, 100, 250, t0, &retry));
    assert_false(token_bucket_take(&c, 100, 100, 1, t0 + 1000 * MS, &retry));
    assert_int_equal(retry, 510); /* from -50 back to 1 at 100/s */
    assert_true(token_bucket_take(&c, 100, 100, 1, t0 + 1510 * MS, &retry));
}

static void test_unlimited_and_clock(void **state)
{
    (void)state;
    struct token_bucket b = {0};
    for (int i = 0; i < 100000; i++)
        assert_true(token_bucket_take(&b, 0, 0, 1000, 0, NULL));
    /* a clock that does not move gives nothing back; one that goes back is ignored */
    struct token_bucket c = {0};
    assert_true(token_bucket_take(&c, 1, 1, 1, 10 * MS, NULL));
    assert_false(token_bucket_take(&c, 1, 1, 1, 5 * MS, NULL));
    int64_t retry = 0;
    assert_false(token_bucket_take(&c, 1, 1, 1, 10 * MS, &retry));
    assert_int_equal(retry, 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_batches),
        cmocka_unit_test(test_unlimited_and_clock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
