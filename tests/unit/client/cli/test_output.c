/* client/cli/output.c: UTC times, aligned tables and JSON counts as `eddy` prints them.
 * output.c belongs to the eddy executable, not to a library, so it is compiled in here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/cli/output.c"

/* output.c reports errors through args.c, which is not compiled in. */
void cli_errorf(const char *fmt, ...)
{
    (void)fmt;
}

static void check_time(int64_t ms, const char *want)
{
    char buf[40];
    cli_format_time(ms, buf, sizeof(buf));
    assert_string_equal(buf, want);
}

static void test_format_time_utc(void **state)
{
    check_time(0, "-");
    check_time(1, "1970-01-01T00:00:00.001Z");
    check_time(86400000, "1970-01-02T00:00:00.000Z");
    check_time(1714564800123LL, "2024-05-01T12:00:00.123Z");
    check_time(951782400000LL, "2000-02-29T00:00:00.000Z");
    /* Before the epoch the millisecond part still counts forward from the second. */
    check_time(-1, "1969-12-31T23:59:59.999Z");
    check_time(-1000, "1969-12-31T23:59:59.000Z");

    char small[8];
    cli_format_time(1714564800123LL, small, sizeof(small));
    assert_string_equal(small, "2024-05"); /* truncated, still terminated */
}

static char *render(const struct cli_table *t, int indent)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    cli_table_print(t, f, indent);
    fclose(f);
    return text;
}

static void test_table_alignment(void **state)
{
    static const char *const header[] = {">RANK", "PRODUCT", ">SCORE", "REASON"};
    struct cli_table *t = cli_table_new(4, header);
    assert_non_null(t);
    assert_int_equal(cli_table_cell(t, "%d", 1), 0);
    assert_int_equal(cli_table_cell(t, "%s", "p-17"), 0);
    assert_int_equal(cli_table_cell(t, "%.2f", 3.5), 0);
    assert_int_equal(cli_table_cell(t, "%s", "viewed together with p-9"), 0);
    assert_int_equal(cli_table_cell(t, "%d", 10), 0);
    assert_int_equal(cli_table_cell(t, "%s", "p-1234567"), 0);
    assert_int_equal(cli_table_cell(t, "%.2f", 0.25), 0);
    assert_int_equal(cli_table_cell(t, "%s", "trending"), 0);

    char *text = render(t, 0);
    assert_string_equal(text, "RANK  PRODUCT    SCORE  REASON\n"
                              "   1  p-17        3.50  viewed together with p-9\n"
                              "  10  p-1234567   0.25  trending\n");
    free(text);

    text = render(t, 2);
    assert_memory_equal(text, "  RANK", 6);
    free(text);
    cli_table_free(t);
    cli_table_free(NULL);
}

/* A short last row prints empty cells; the header alone prints for no rows. */
static void test_table_partial_and_empty(void **state)
{
    static const char *const header[] = {"A", "B"};
    struct cli_table *t = cli_table_new(2, header);
    char *text = render(t, 0);
    assert_string_equal(text, "A  B\n");
    free(text);
    assert_int_equal(cli_table_cell(t, "%s", "xyz"), 0);
    text = render(t, 0);
    assert_string_equal(text, "A    B\nxyz  \n");
    free(text);
    cli_table_free(t);
}

/* Rows past the limit are counted, not kept. */
static void test_table_row_limit(void **state)
{
    static const char *const header[] = {"N"};
    struct cli_table *t = cli_table_new(1, header);
    for (int i = 0; i < CLI_TABLE_MAX_ROWS + 3; i++)
        assert_int_equal(cli_table_cell(t, "%d", i), 0);
    char *text = render(t, 0);
    const char *tail = "... 3 more rows\n";
    size_t n = strlen(text);
    assert_true(n > strlen(tail));
    assert_string_equal(text + n - strlen(tail), tail);
    assert_null(strstr(text, "\n100000\n"));
    assert_non_null(strstr(text, "\n99999\n"));
    free(text);
    cli_table_free(t);
}

static void test_json_counts(void **state)
{
    Eddy__V1__TypeCounts c = EDDY__V1__TYPE_COUNTS__INIT;
    c.view = 5;
    c.add_to_cart = 2;
    c.total = 7;
    cJSON *o = cli_json_counts(&c);
    char *s = cJSON_PrintUnformatted(o);
    assert_string_equal(s, "{\"view\":5,\"click\":0,\"add_to_cart\":2,\"remove_from_cart\":0,"
                           "\"purchase\":0,\"search\":0,\"total\":7}");
    cJSON_free(s);
    cJSON_Delete(o);

    o = cli_json_counts(NULL);
    assert_int_equal(cJSON_GetObjectItem(o, "total")->valuedouble, 0);
    cJSON_Delete(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_time_utc),
        cmocka_unit_test(test_table_alignment),
        cmocka_unit_test(test_table_partial_and_empty),
        cmocka_unit_test(test_table_row_limit),
        cmocka_unit_test(test_json_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
