/* The flag table's human formats (durations and sizes in --help) against hand-written
 * answers and a round trip through the parser, and --help / --version on the command line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/config.h"
#include "common/version.h"

/* 'v' formats as 'text', and 'text' parses back to 'v'. */
static void check_format(enum flag_type type, int64_t v, const char *text)
{
    char buf[32];
    if (type == FLAG_DURATION)
        config_format_duration(v, buf, sizeof(buf));
    else
        config_format_size(v, buf, sizeof(buf));
    assert_string_equal(buf, text);
    int64_t back = -1;
    assert_int_equal(config_parse_value(type, buf, &back), 0);
    assert_int_equal(back, v);
}

static void test_format_duration(void **state)
{
    static const struct { int64_t ms; const char *text; } cases[] = {
        {0, "0"}, {1, "1ms"}, {1500, "1500ms"}, {1000, "1s"}, {90000, "90s"}, {60000, "1m"},
        {3600000, "1h"}, {5400000, "90m"}, {86400000, "1d"}, {2592000000LL, "30d"},
        {315360000000LL, "3650d"}, {604800000, "7d"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_format(FLAG_DURATION, cases[i].ms, cases[i].text);
}

static void test_format_size(void **state)
{
    static const struct { int64_t b; const char *text; } cases[] = {
        {0, "0"}, {1, "1B"}, {1000, "1000B"}, {4096, "4KiB"}, {1536, "1536B"},
        {4194304, "4MiB"}, {67108864, "64MiB"}, {268435456, "256MiB"}, {1073741824, "1GiB"},
        {3LL << 30, "3GiB"}, {(1LL << 30) + (1 << 20), "1025MiB"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_format(FLAG_SIZE, cases[i].b, cases[i].text);
}

static void test_usage_prints_human_defaults(void **state)
{
    int64_t ttl = 2592000000LL, cache = 67108864;
    const struct flag flags[] = {
        {"state-ttl", FLAG_DURATION, &ttl, "ttl", 0, 0},
        {"cache-size", FLAG_SIZE, &cache, "cache", 0, 0},
    };
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    config_usage(f, flags, 2);
    fclose(f);
    assert_non_null(strstr(text, "env EDDY_STATE_TTL, default 30d\n"));
    assert_non_null(strstr(text, "env EDDY_CACHE_SIZE, default 64MiB\n"));
    free(text);
}

static void test_help_and_version(void **state)
{
    int64_t n = 1;
    const struct flag flags[] = {{"n", FLAG_INT, &n, "n", 0, 0}};
    char err[128];
    int first = 0;
    char *help[] = {"prog", "--n", "3", "--help", NULL};
    char *version[] = {"prog", "--version", NULL};
    char *neither[] = {"prog", "--n=4", "arg", NULL};
    assert_int_equal(config_parse(flags, 1, 4, help, &first, err, sizeof(err)), CONFIG_HELP);
    assert_int_equal(config_parse(flags, 1, 2, version, &first, err, sizeof(err)), CONFIG_VERSION);
    assert_int_equal(config_parse(flags, 1, 3, neither, &first, err, sizeof(err)), 0);
    assert_int_equal(first, 2);
    assert_int_equal(n, 4);
    /* The project version leads the string (CMake's project(VERSION)). */
    assert_int_equal(strncmp(eddy_version(), EDDY_VERSION, strlen(EDDY_VERSION)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_duration),
        cmocka_unit_test(test_format_size),
        cmocka_unit_test(test_usage_prints_human_defaults),
        cmocka_unit_test(test_help_and_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
