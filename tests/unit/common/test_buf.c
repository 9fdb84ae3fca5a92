/* The bounded buffer: appends and formatted text up to exactly its maximum, failures that
 * leave the contents alone, consuming from the front, and detaching. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/buf.h"

static void test_add_to_the_limit(void **state)
{
    struct buf b = BUF_INIT(1000);
    assert_string_equal(buf_str(&b), "");
    char chunk[7] = "abcdefg";
    for (int i = 0; i < 142; i++) /* 994 bytes */
        assert_int_equal(buf_add(&b, chunk, 7), EDDY_OK);
    assert_int_equal(b.len, 994);
    assert_int_equal(buf_add(&b, chunk, 7), EDDY_ERR_TOO_LARGE); /* 1001 > 1000 */
    assert_int_equal(b.len, 994);                                 /* unchanged */
    assert_int_equal(buf_add(&b, chunk, 6), EDDY_OK);             /* exactly 1000 */
    assert_int_equal(b.len, 1000);
    assert_int_equal(b.p[1000], '\0');
    assert_true(b.cap <= 1001); /* never more memory than the maximum can use */
    assert_int_equal(buf_add(&b, chunk, 1), EDDY_ERR_TOO_LARGE);
    assert_int_equal(buf_add(&b, chunk, 0), EDDY_OK);
    assert_memory_equal(b.p + 993, "gabcdef", 7);
    buf_release(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(buf_str(&b), "");
}

static void test_addf(void **state)
{
    struct buf b = BUF_INIT(20);
    assert_int_equal(buf_addf(&b, "%s=%d;", "alpha", 12345), EDDY_OK); /* 12 */
    assert_string_equal(b.p, "alpha=12345;");
    assert_int_equal(buf_addf(&b, "%s", "123456789"), EDDY_ERR_TOO_LARGE); /* 21 */
    assert_string_equal(b.p, "alpha=12345;"); /* the failed try left nothing behind */
    assert_int_equal(buf_addf(&b, "%08d", 42), EDDY_OK); /* exactly 20 */
    assert_string_equal(b.p, "alpha=12345;00000042");
    buf_release(&b);
    /* text longer than the first allocation */
    struct buf big = BUF_INIT(100000);
    char s[5000];
    memset(s, 'x', sizeof(s) - 1);
    s[sizeof(s) - 1] = '\0';
    assert_int_equal(buf_addf(&big, "<%s>", s), EDDY_OK);
    assert_int_equal(big.len, 5001);
    assert_int_equal(big.p[0], '<');
    assert_int_equal(big.p[5000], '>');
    assert_int_equal(big.p[5001], '\0');
    buf_release(&big);
}

static void test_consume_reset_detach(void **state)
{
    struct buf b;
    buf_init(&b, 64);
    assert_int_equal(buf_add(&b, "line one\nline two", 17), EDDY_OK);
    buf_consume(&b, 9);
    assert_string_equal(b.p, "line two");
    assert_int_equal(b.len, 8);
    buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    assert_string_equal(buf_str(&b), "");
    assert_int_equal(buf_add(&b, "abc", 3), EDDY_OK);
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_addf(&b, "%d", 7), EDDY_OK);
    size_t len = 0;
    char *p = buf_detach(&b, &len);
    assert_int_equal(len, 1);
    assert_string_equal(p, "7");
    free(p);
    assert_null(b.p);
    assert_int_equal(b.max, 64); /* still bounded, usable again */
    assert_int_equal(buf_add(&b, "x", 1), EDDY_OK);
    buf_release(&b);
    struct buf empty = BUF_INIT(8);
    assert_null(buf_detach(&empty, &len));
    assert_int_equal(len, 0);
}

static void test_zero_max(void **state)
{
    struct buf b = BUF_INIT(0);
    assert_int_equal(buf_add(&b, "", 0), EDDY_OK);
    assert_string_equal(b.p, "");
    assert_int_equal(buf_add(&b, "a", 1), EDDY_ERR_TOO_LARGE);
    assert_int_equal(buf_addf(&b, "%c", 'a'), EDDY_ERR_TOO_LARGE);
    assert_string_equal(b.p, "");
    buf_release(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_to_the_limit),
        cmocka_unit_test(test_addf),
        cmocka_unit_test(test_consume_reset_detach),
        cmocka_unit_test(test_zero_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
