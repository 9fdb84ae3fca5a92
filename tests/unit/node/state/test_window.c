/* Windows, watermarks, idleness and lateness on hand-made timelines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "node/state/window.h"

static const struct window_params P = {60000, 5000, 0, 30000};

static void test_window_start(void **state)
{
    assert_int_equal(window_start(0, 60000), 0);
    assert_int_equal(window_start(59999, 60000), 0);
    assert_int_equal(window_start(60000, 60000), 60000);
    assert_int_equal(window_start(-1, 60000), -60000);
}

static void test_watermark_and_closing(void **state)
{
    int64_t wm = WATERMARK_NONE, max = WATERMARK_NONE;
    assert_false(window_is_closed(&P, 0, wm));
    wm = window_advance(&P, wm, &max, 10000);     /* max 10 s -> wm 5 s */
    assert_int_equal(wm, 5000);
    wm = window_advance(&P, wm, &max, 64000);     /* max 64 s -> wm 59 s */
    assert_int_equal(wm, 59000);
    assert_false(window_is_closed(&P, 0, wm));    /* [0,60 s) needs wm >= 60 s */
    wm = window_advance(&P, wm, &max, 30000);     /* older event: watermark stays */
    assert_int_equal(wm, 59000);
    assert_int_equal(max, 64000);
    wm = window_advance(&P, wm, &max, 65000);
    assert_int_equal(wm, 60000);
    assert_true(window_is_closed(&P, 0, wm));
    assert_false(window_is_closed(&P, 60000, wm));
}

static void test_late(void **state)
{
    int64_t wm = 60000; /* [0, 60 s) is closed */
    assert_true(window_is_late(&P, 59999, wm));
    assert_false(window_is_late(&P, 60000, wm));
    /* within the out-of-orderness bound of the newest event, never late */
    int64_t max = WATERMARK_NONE, w = WATERMARK_NONE;
    w = window_advance(&P, w, &max, 125000);
    assert_false(window_is_late(&P, 125000 - 5000, w));
    /* allowed lateness keeps the window open longer */
    struct window_params lax = P;
    lax.lateness_ms = 10000;
    assert_false(window_is_late(&lax, 59999, 60000));
    assert_true(window_is_late(&lax, 59999, 70000));
}

static void test_idle(void **state)
{
    /* quiet for less than the timeout: no change */
    assert_int_equal(window_idle_watermark(&P, 55000, 60000, 29999), 55000);
    /* after the timeout the watermark follows processing time */
    assert_int_equal(window_idle_watermark(&P, 55000, 60000, 30000), 85000);
    assert_int_equal(window_idle_watermark(&P, 55000, 60000, 90000), 145000);
    /* never for a partition without events, never backwards */
    assert_int_equal(window_idle_watermark(&P, WATERMARK_NONE, WATERMARK_NONE, 1000000),
                     WATERMARK_NONE);
    assert_int_equal(window_idle_watermark(&P, 500000, 60000, 30000), 500000);
    struct window_params off = P;
    off.idle_timeout_ms = 0;
    assert_int_equal(window_idle_watermark(&off, 55000, 60000, 1000000), 55000);
}

static void test_closes_any(void **state)
{
    assert_false(window_closes_any(&P, 61000, 119000)); /* still only [0,60) closed */
    assert_true(window_closes_any(&P, 61000, 120000));  /* [60,120) closes */
    assert_true(window_closes_any(&P, WATERMARK_NONE, 1));
    assert_false(window_closes_any(&P, 120000, 100000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_start),
        cmocka_unit_test(test_watermark_and_closing),
        cmocka_unit_test(test_late),
        cmocka_unit_test(test_idle),
        cmocka_unit_test(test_closes_any),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
