/* eddy roi: the seed's cost-benefit calculator. What a latency improvement is worth per
 * month, and how many months until it pays back its development cost. The improved latency
 * comes from a flag or from a running node's /metrics (mean of the histogram
 * eddy_event_to_result_seconds: _sum / _count over every series). */
#include <curl/curl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/buf.h"

#define ROI_SECONDS_PER_MONTH (30.0 * 86400.0)
#define ROI_MAX_METRICS_BYTES (16 << 20)
#define ROI_METRIC "eddy_event_to_result_seconds"

struct roi_input {
    double value_per_second_saved; /* money per second of latency saved, per event */
    double events_per_second;
    double monthly_infra_cost;
    double development_cost;
    double baseline_latency_s;
    double eddy_latency_s;
};

struct roi_result {
    double saved_s;          /* latency saved per event (may be negative) */
    double gross_monthly;    /* saved_s * value * events/s * seconds per month */
    double monthly_benefit;  /* gross minus the monthly infrastructure cost */
    bool never;              /* the benefit is <= 0: it never pays back */
    double payback_months;   /* development_cost / monthly_benefit; 0 if 'never' */
};

/* The arithmetic of `eddy roi`; pure. */
static void roi_compute(const struct roi_input *in, struct roi_result *out)
{
    out->saved_s = in->baseline_latency_s - in->eddy_latency_s;
    out->gross_monthly = out->saved_s * in->value_per_second_saved * in->events_per_second *
                         ROI_SECONDS_PER_MONTH;
    out->monthly_benefit = out->gross_monthly - in->monthly_infra_cost;
    out->never = !(out->monthly_benefit > 0);
    out->payback_months = out->never ? 0 : in->development_cost / out->monthly_benefit;
}

/* Sum the samples of 'name' (with or without labels) in the Prometheus text 'text'.
 * Returns the number of samples found. */
static int metrics_sum(const char *text, const char *name, double *sum)
{
    size_t nlen = strlen(name);
    int found = 0;

    *sum = 0;
    for (const char *line = text; line && *line;) {
        const char *next = strchr(line, '\n');
        if (line[0] != '#' && strncmp(line, name, nlen) == 0 &&
            (line[nlen] == ' ' || line[nlen] == '{')) {
            const char *v = line + nlen;
            if (*v == '{') {
                /* label values may contain '}' only escaped inside quotes */
                bool quoted = false;
                for (v++; *v && *v != '\n' && (quoted || *v != '}'); v++) {
                    if (*v == '\\' && quoted && v[1])
                        v++;
                    else if (*v == '"')
                        quoted = !quoted;
                }
                if (*v == '}')
                    v++;
            }
            char *end = NULL;
            double x = strtod(v, &end);
            if (end != v && isfinite(x)) {
                *sum += x;
                found++;
            }
        }
        line = next ? next + 1 : NULL;
    }
    return found;
}

/* The mean of histogram 'base' in 'text' (_sum / _count). Returns 0, or -1 with a message
 * in 'why' if the histogram is missing or empty. */
static int metrics_histogram_mean(const char *text, const char *base, double *mean,
                                  char *why, size_t whylen)
{
    char name[128];
    double sum = 0, count = 0;

    snprintf(name, sizeof(name), "%s_sum", base);
    int ns = metrics_sum(text, name, &sum);
    snprintf(name, sizeof(name), "%s_count", base);
    int nc = metrics_sum(text, name, &count);
    if (ns == 0 || nc == 0) {
        snprintf(why, whylen, "no %s histogram in the scrape", base);
        return -1;
    }
    if (!(count > 0)) {
        snprintf(why, whylen, "%s has no observations yet (ingest some events first)", base);
        return -1;
    }
    *mean = sum / count;
    return 0;
}

/* GET 'url'; caller owns *text (free). Returns 0, or -1 after a message. */
static int fetch_metrics(const char *url, int64_t timeout_ms, char **text)
{
    struct buf_sink b = BUF_SINK_INIT(ROI_MAX_METRICS_BYTES);
    long status = 0;
    int rc = -1;

    *text = NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        cli_errorf("roi: cannot initialize libcurl");
        return -1;
    }
    CURL *h = curl_easy_init();
    if (!h) {
        cli_errorf("roi: out of memory");
        goto out;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_sink_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    CURLcode cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        cli_errorf("roi: GET %s: %s", url,
                   b.err == EDDY_ERR_TOO_LARGE ? "response larger than 16 MiB" : curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200 && status != 0) { /* 0: not HTTP (file:// in tests) */
        cli_errorf("roi: GET %s: HTTP %ld", url, status);
        goto out;
    }
    *text = b.b.p ? buf_detach(&b.b, NULL) : strdup("");
    rc = *text ? 0 : -1;
out:
    buf_release(&b.b);
    curl_easy_cleanup(h);
    curl_global_cleanup();
    return rc;
}

/* The payback period in months, with enough digits to tell short periods apart, and the
 * same time in days, hours or minutes below a month: "0.039 months (1.2 days)", "14.25 months". */
static void payback_text(double months, char *out, size_t outlen)
{
    double days = months * 30.0;
    if (months >= 1.0 || months <= 0.0)
        snprintf(out, outlen, "%.2f months", months);
    else if (days >= 1.0)
        snprintf(out, outlen, "%.2g months (%.1f days)", months, days);
    else if (days * 24.0 >= 1.0)
        snprintf(out, outlen, "%.2g months (%.1f hours)", months, days * 24.0);
    else
        snprintf(out, outlen, "%.2g months (%.1f minutes)", months, days * 1440.0);
}

static int print_result(const struct cli_ctx *ctx, const struct roi_input *in,
                        const struct roi_result *r, const char *source)
{
    if (ctx->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "baseline_latency_s", in->baseline_latency_s);
        cJSON_AddNumberToObject(o, "eddy_latency_s", in->eddy_latency_s);
        cJSON_AddStringToObject(o, "eddy_latency_source", source);
        cJSON_AddNumberToObject(o, "latency_saved_s", r->saved_s);
        cJSON_AddNumberToObject(o, "value_per_second_saved", in->value_per_second_saved);
        cJSON_AddNumberToObject(o, "events_per_second", in->events_per_second);
        cJSON_AddNumberToObject(o, "monthly_gross_benefit", r->gross_monthly);
        cJSON_AddNumberToObject(o, "monthly_infra_cost", in->monthly_infra_cost);
        cJSON_AddNumberToObject(o, "monthly_benefit", r->monthly_benefit);
        cJSON_AddNumberToObject(o, "development_cost", in->development_cost);
        if (r->never)
            cJSON_AddStringToObject(o, "payback_months", "never");
        else
            cJSON_AddNumberToObject(o, "payback_months", r->payback_months);
        return cli_json_print(o);
    }
    printf("%-26s %.6g s (baseline %.6g s, eddy %.6g s from %s)\n", "latency saved per event",
           r->saved_s, in->baseline_latency_s, in->eddy_latency_s, source);
    printf("%-26s %.2f (= %.6g s x %.6g per s saved x %.6g events/s x 30 days)\n",
           "monthly gross benefit", r->gross_monthly, r->saved_s, in->value_per_second_saved,
           in->events_per_second);
    printf("%-26s %.2f (gross minus infrastructure %.2f)\n", "monthly benefit",
           r->monthly_benefit, in->monthly_infra_cost);
    char payback[64];
    payback_text(r->payback_months, payback, sizeof(payback));
    if (r->never)
        printf("%-26s never (the monthly benefit is not positive)\n", "payback period");
    else
        printf("%-26s %s (development cost %.2f)\n", "payback period", payback,
               in->development_cost);
    return CLI_EXIT_OK;
}

/* A latency flag's value: a number with a unit ("50ms", "0.5s", "2m"). A bare number would
 * be milliseconds elsewhere in the CLI, which here reads as seconds to most people: refused.
 * Returns 0, or -1 after a message. */
static int parse_latency(const char *flag, const char *text, int64_t *ms)
{
    size_t len = strlen(text);
    if (len == 0 || !((text[len - 1] >= 'a' && text[len - 1] <= 'z'))) {
        cli_errorf("roi: --%s %s needs a unit: e.g. 500ms, 0.5s, 2m", flag, text);
        return -1;
    }
    if (config_parse_value(FLAG_DURATION, text, ms) != 0) {
        cli_errorf("roi: --%s: invalid duration '%s' (e.g. 500ms, 0.5s, 2m)", flag, text);
        return -1;
    }
    return 0;
}

int cmd_roi(struct cli_ctx *ctx, int argc, char **argv)
{
    /* NAN: not given. A missing amount is an error, not a silent 0. */
    struct roi_input in = {.value_per_second_saved = NAN, .events_per_second = NAN,
                           .monthly_infra_cost = NAN, .development_cost = NAN};
    struct roi_result r;
    int64_t baseline_ms = -1, eddy_ms = -1;
    const char *baseline_text = "", *eddy_text = "";
    const char *metrics_url = "";
    char source[300] = "--eddy-latency";
    const struct cli_opt opts[] = {
        {"value-per-second-saved", FLAG_DOUBLE, &in.value_per_second_saved, "MONEY",
         "value of one second of latency saved on one event"},
        {"events-per-second", FLAG_DOUBLE, &in.events_per_second, "N", "events per second"},
        {"monthly-infra-cost", FLAG_DOUBLE, &in.monthly_infra_cost, "MONEY",
         "infrastructure cost per month"},
        {"development-cost", FLAG_DOUBLE, &in.development_cost, "MONEY",
         "one-time development cost"},
        {"baseline-latency", FLAG_STRING, &baseline_text, "DURATION",
         "event-to-result latency before, with its unit (e.g. 5s); required"},
        {"eddy-latency", FLAG_STRING, &eddy_text, "DURATION",
         "event-to-result latency with Eddy, with its unit (e.g. 50ms)"},
        {"metrics-url", FLAG_STRING, &metrics_url, "URL",
         "instead of --eddy-latency: a node's /metrics; uses the mean of "
         "eddy_event_to_result_seconds"},
    };
    const struct cli_spec spec = {
        "roi", "",
        "What the latency improvement is worth: saved seconds per event, monthly benefit\n"
        "(saved x value x events/s x 30 days - infrastructure cost) and the payback period\n"
        "(development cost / monthly benefit; \"never\" when the benefit is <= 0).\n"
        "The four amounts are required (0 is allowed); latencies need a unit (50ms, 5s).",
        opts, sizeof(opts) / sizeof(opts[0]), 0, 0};
    const char *pos[1];
    int npos;

    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!baseline_text[0]) {
        cli_errorf("roi: --baseline-latency is required");
        return CLI_EXIT_USAGE;
    }
    if ((eddy_text[0] != '\0') == (metrics_url[0] != '\0')) {
        cli_errorf("roi: give exactly one of --eddy-latency and --metrics-url");
        return CLI_EXIT_USAGE;
    }
    if (parse_latency("baseline-latency", baseline_text, &baseline_ms) != 0 ||
        (eddy_text[0] && parse_latency("eddy-latency", eddy_text, &eddy_ms) != 0))
        return CLI_EXIT_USAGE;
    const double *amounts[] = {&in.value_per_second_saved, &in.events_per_second,
                               &in.monthly_infra_cost, &in.development_cost};
    for (size_t i = 0; i < 4; i++) {
        if (isnan(*amounts[i])) {
            cli_errorf("roi: --%s is required (%s; 0 is allowed)", opts[i].name, opts[i].help);
            return CLI_EXIT_USAGE;
        }
        if (*amounts[i] < 0) {
            cli_errorf("roi: --%s must not be negative", opts[i].name);
            return CLI_EXIT_USAGE;
        }
    }
    in.baseline_latency_s = (double)baseline_ms / 1000.0;
    if (metrics_url[0]) {
        char *text = NULL;
        char why[256];
        if (fetch_metrics(metrics_url, ctx->timeout_ms, &text) != 0)
            return CLI_EXIT_CONNECT;
        int mr = metrics_histogram_mean(text, ROI_METRIC, &in.eddy_latency_s, why, sizeof(why));
        free(text);
        if (mr != 0) {
            cli_errorf("roi: %s: %s", metrics_url, why);
            return CLI_EXIT_SERVER;
        }
        snprintf(source, sizeof(source), "mean of %s at %.200s", ROI_METRIC, metrics_url);
    } else {
        in.eddy_latency_s = (double)eddy_ms / 1000.0;
    }
    roi_compute(&in, &r);
    return print_result(ctx, &in, &r, source);
}
