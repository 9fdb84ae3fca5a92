/* client/cli/roi.c: the arithmetic of `eddy roi` (saved latency, monthly benefit, payback,
 * "never"), the mean of eddy_event_to_result_seconds from a /metrics scrape, and the
 * command end to end (flags, a file:// scrape, exit codes). roi.c belongs to the eddy
 * executable, so it is compiled in here with the CLI files it uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/cli/args.c"
#include "client/cli/output.c"
#include "client/cli/roi.c"

static void test_compute_example(void **state)
{
    /* 5 s -> 50 ms saves 4.95 s per event; 0.0001 per second saved, 1000 events/s:
     * 4.95 * 0.0001 * 1000 * 2,592,000 = 1,283,040 per month, minus 2,000 infrastructure */
    struct roi_input in = {.value_per_second_saved = 0.0001, .events_per_second = 1000,
                           .monthly_infra_cost = 2000, .development_cost = 50000,
                           .baseline_latency_s = 5, .eddy_latency_s = 0.05};
    struct roi_result r;

    roi_compute(&in, &r);
    assert_float_equal(r.saved_s, 4.95, 1e-12);
    assert_float_equal(r.gross_monthly, 1283040.0, 1e-6);
    assert_float_equal(r.monthly_benefit, 1281040.0, 1e-6);
    assert_false(r.never);
    assert_float_equal(r.payback_months, 50000.0 / 1281040.0, 1e-12);
}

static void test_compute_never(void **state)
{
    struct roi_input in = {.value_per_second_saved = 0.00001, .events_per_second = 10,
                           .monthly_infra_cost = 2000, .development_cost = 50000,
                           .baseline_latency_s = 5, .eddy_latency_s = 0.05};
    struct roi_result r;

    roi_compute(&in, &r); /* 4.95 * 1e-5 * 10 * 2,592,000 = 1283.04 < 2000 */
    assert_float_equal(r.gross_monthly, 1283.04, 1e-9);
    assert_float_equal(r.monthly_benefit, -716.96, 1e-9);
    assert_true(r.never);

    /* a benefit of exactly 0 never pays back either */
    in.value_per_second_saved = 0;
    in.monthly_infra_cost = 0;
    roi_compute(&in, &r);
    assert_float_equal(r.monthly_benefit, 0, 0);
    assert_true(r.never);

    /* slower than the baseline: a negative saving */
    in = (struct roi_input){.value_per_second_saved = 1, .events_per_second = 1,
                            .baseline_latency_s = 0.01, .eddy_latency_s = 0.02};
    roi_compute(&in, &r);
    assert_float_equal(r.saved_s, -0.01, 1e-15);
    assert_true(r.monthly_benefit < 0);
    assert_true(r.never);
}

static void test_compute_free_development(void **state)
{
    struct roi_input in = {.value_per_second_saved = 1, .events_per_second = 1,
                           .baseline_latency_s = 1, .eddy_latency_s = 0};
    struct roi_result r;

    roi_compute(&in, &r);
    assert_float_equal(r.monthly_benefit, 2592000.0, 0);
    assert_false(r.never);
    assert_float_equal(r.payback_months, 0, 0);
}

static const char SCRAPE[] =
    "# HELP eddy_event_to_result_seconds Arrival to committed and queryable.\n"
    "# TYPE eddy_event_to_result_seconds histogram\n"
    "eddy_event_to_result_seconds_bucket{le=\"0.005\"} 10\n"
    "eddy_event_to_result_seconds_bucket{le=\"+Inf\"} 40\n"
    "eddy_event_to_result_seconds_sum 0.6\n"
    "eddy_event_to_result_seconds_count 40\n"
    "eddy_event_to_result_seconds_sum{role=\"x\",note=\"a}b\\\"c\"} 0.2\n"
    "eddy_event_to_result_seconds_count{role=\"x\",note=\"a}b\\\"c\"} 10\n"
    "eddy_event_to_result_seconds_summary_count 99\n"
    "other_seconds_sum 100\n";

static void test_metrics_mean(void **state)
{
    double mean = -1;
    char why[256];

    /* every series: (0.6 + 0.2) / (40 + 10); look-alike names are not summed */
    assert_int_equal(metrics_histogram_mean(SCRAPE, ROI_METRIC, &mean, why, sizeof(why)), 0);
    assert_float_equal(mean, 0.8 / 50.0, 1e-15);

    assert_int_equal(metrics_histogram_mean("other_seconds_sum 1\n", ROI_METRIC, &mean, why,
                                            sizeof(why)),
                     -1);
    assert_non_null(strstr(why, "no eddy_event_to_result_seconds"));
    assert_int_equal(metrics_histogram_mean("eddy_event_to_result_seconds_sum 0\n"
                                            "eddy_event_to_result_seconds_count 0",
                                            ROI_METRIC, &mean, why, sizeof(why)),
                     -1);
    assert_non_null(strstr(why, "no observations"));
}

/* Run `eddy roi ARGS...` with stdout in a string; returns the exit code. */
static int run_roi(char **out, int argc, char **argv)
{
    struct cli_ctx ctx = {.endpoint = "127.0.0.1:1", .output = "table", .timeout_ms = 2000};
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    fflush(stdout);
    FILE *old = stdout;
    stdout = f;
    int rc = cmd_roi(&ctx, argc, argv);
    stdout = old;
    fclose(f);
    *out = text;
    return rc;
}

static void test_command(void **state)
{
    char path[] = "/tmp/eddy-test-roi-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, SCRAPE, sizeof(SCRAPE) - 1), (ssize_t)(sizeof(SCRAPE) - 1));
    close(fd);
    char url[64];
    snprintf(url, sizeof(url), "file://%s", path);
    char *out = NULL;

    char *json[] = {"roi", "-o", "json", "--value-per-second-saved", "0.001",
                    "--events-per-second", "100", "--monthly-infra-cost", "100",
                    "--development-cost", "1000", "--baseline-latency", "2s",
                    "--metrics-url", url};
    assert_int_equal(run_roi(&out, 15, json), CLI_EXIT_OK);
    cJSON *o = cJSON_Parse(out);
    assert_non_null(o);
    double eddy_s = 0.8 / 50.0, saved = 2.0 - eddy_s;
    double benefit = saved * 0.001 * 100 * 2592000.0 - 100;
    assert_float_equal(cJSON_GetObjectItem(o, "eddy_latency_s")->valuedouble, eddy_s, 1e-12);
    assert_float_equal(cJSON_GetObjectItem(o, "latency_saved_s")->valuedouble, saved, 1e-12);
    assert_float_equal(cJSON_GetObjectItem(o, "monthly_benefit")->valuedouble, benefit, 1e-6);
    assert_float_equal(cJSON_GetObjectItem(o, "payback_months")->valuedouble, 1000 / benefit,
                       1e-12);
    cJSON_Delete(o);
    free(out);

    char *never[] = {"roi", "--value-per-second-saved", "0", "--events-per-second", "100",
                     "--monthly-infra-cost", "1", "--development-cost", "1",
                     "--baseline-latency", "5s", "--eddy-latency", "50ms"};
    assert_int_equal(run_roi(&out, 13, never), CLI_EXIT_OK);
    assert_non_null(strstr(out, "never"));
    free(out);

    /* exactly one latency source; the baseline is required */
    char *both[] = {"roi", "--baseline-latency", "5s", "--eddy-latency", "1s", "--metrics-url", url};
    assert_int_equal(run_roi(&out, 7, both), CLI_EXIT_USAGE);
    free(out);
    char *none[] = {"roi", "--eddy-latency", "1s"};
    assert_int_equal(run_roi(&out, 3, none), CLI_EXIT_USAGE);
    free(out);
    /* an unreachable node: exit 3 */
    char *down[] = {"roi", "--value-per-second-saved", "0.0001", "--events-per-second", "1000",
                    "--monthly-infra-cost", "2000", "--development-cost", "50000",
                    "--baseline-latency", "5s", "--metrics-url", "http://127.0.0.1:1/metrics"};
    assert_int_equal(run_roi(&out, 13, down), CLI_EXIT_CONNECT);
    free(out);
    unlink(path);
}

/* The seed's example: a payback of 0.039 months is not printed as "0.00 months". */
static void test_seed_example_payback(void **state)
{
    char *out = NULL;
    char *seed[] = {"roi", "--value-per-second-saved", "0.0001", "--events-per-second", "1000",
                    "--monthly-infra-cost", "2000", "--development-cost", "50000",
                    "--baseline-latency", "5s", "--eddy-latency", "50ms"};
    assert_int_equal(run_roi(&out, 13, seed), CLI_EXIT_OK);
    assert_non_null(strstr(out, "payback period             0.039 months (1.2 days)"));
    assert_null(strstr(out, "0.00 months"));
    free(out);
    char text[64];
    payback_text(14.25, text, sizeof(text));
    assert_string_equal(text, "14.25 months");
    payback_text(0.01, text, sizeof(text));
    assert_string_equal(text, "0.01 months (7.2 hours)");
    payback_text(0.0001, text, sizeof(text));
    assert_string_equal(text, "0.0001 months (4.3 minutes)");
}

/* Every amount is required (a missing one is not 0) and latencies need a unit. */
static void test_required_amounts_and_units(void **state)
{
    char *out = NULL;
    const char *full[] = {"roi", "--value-per-second-saved", "0.0001", "--events-per-second",
                          "1000", "--monthly-infra-cost", "0", "--development-cost", "50000",
                          "--baseline-latency", "5s", "--eddy-latency", "50ms"};
    char *args[13];
    memcpy(args, full, sizeof(args));
    assert_int_equal(run_roi(&out, 13, args), CLI_EXIT_OK); /* 0 is an amount */
    free(out);
    for (int drop = 1; drop < 9; drop += 2) { /* leave out one amount flag and its value */
        int n = 0;
        for (int i = 0; i < 13; i++)
            if (i != drop && i != drop + 1)
                args[n++] = (char *)full[i];
        assert_int_equal(run_roi(&out, n, args), CLI_EXIT_USAGE);
        free(out);
    }
    memcpy(args, full, sizeof(args));
    args[10] = "5"; /* bare number: would have been 5 ms */
    assert_int_equal(run_roi(&out, 13, args), CLI_EXIT_USAGE);
    free(out);
    memcpy(args, full, sizeof(args));
    args[12] = "0.5";
    assert_int_equal(run_roi(&out, 13, args), CLI_EXIT_USAGE);
    free(out);
    args[12] = "0.5s";
    assert_int_equal(run_roi(&out, 13, args), CLI_EXIT_OK);
    assert_non_null(strstr(out, "eddy 0.5 s"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compute_example),
        cmocka_unit_test(test_compute_never),
        cmocka_unit_test(test_compute_free_development),
        cmocka_unit_test(test_metrics_mean),
        cmocka_unit_test(test_command),
        cmocka_unit_test(test_seed_example_payback),
        cmocka_unit_test(test_required_amounts_and_units),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
