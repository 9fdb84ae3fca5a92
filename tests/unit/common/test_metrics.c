/* metrics: the exact exposition text of each kind of metric, registration rules, exact sums
 * under concurrent updates, the /metrics HTTP endpoint and the web console's files and
 * endpoints (fetched with libcurl: answers, errors, tokens), the chart families as JSON, and
 * the grpc_server_* series rpc_server records for real calls. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/metrics.h"
#include "common/metrics_http.h"
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "common/tokens.h"
#include "eddy/v1/eddy.pb-c.h"

#define LIMIT (1u << 20)

__attribute__((noinline)) /* GCC 12 -O3 otherwise sees a dangling pointer */
static char *render(metrics *m)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(m, LIMIT, &text, &len), EDDY_OK);
    assert_int_equal(strlen(text), len);
    return text;
}

/* Whether 'text' has the line 'line' exactly. */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

static double fixed_value(void *ud)
{
    return *(double *)ud;
}

static void test_exposition(void **state)
{
    metrics *m = metrics_new();
    assert_non_null(m);
    metric_counter *c = metrics_counter(m, "t_requests_total", "Requests.\nSecond line \\.");
    metric_gauge *g = metrics_gauge(m, "t_temperature", "A gauge.");
    static const char *const labels[] = {"code", "path"};
    metric_family *fam =
        metrics_family(m, METRIC_COUNTER, "t_calls_total", "Calls by code.", labels, 2, NULL, 0);
    metric_counter *ok = metric_family_counter(fam, (const char *const[]){"OK", "/a"});
    metric_counter *bad =
        metric_family_counter(fam, (const char *const[]){"Bad", "q\"x\\y\nz"});
    static const double bounds[] = {0.005, 0.1, 1, 10, 1e6};
    metric_histogram *h = metrics_histogram(m, "t_latency_seconds", "Latency.", bounds, 5);
    metrics_family(m, METRIC_GAUGE, "t_unused", "No series: not rendered.", labels, 2, NULL, 0);
    double fixed = 2.5;
    assert_int_equal(metrics_callback(m, METRIC_GAUGE, "t_computed", "Computed.", fixed_value,
                                      &fixed),
                     EDDY_OK);
    assert_true(c && g && fam && ok && bad && h);

    metric_counter_add(c, 41);
    metric_counter_inc(c);
    metric_gauge_set(g, -3.25);
    metric_gauge_add(g, 1);
    metric_counter_add(ok, 7);
    metric_counter_inc(bad);
    metric_histogram_observe(h, 0.005); /* on a bound: counts in that bucket (le) */
    metric_histogram_observe(h, 0.05);
    metric_histogram_observe(h, 5);
    metric_histogram_observe(h, 2e6);   /* only +Inf */
    metric_histogram_observe_n(h, 0.5, 2);

    char *text = render(m);
    const char *want =
        "# HELP t_requests_total Requests.\\nSecond line \\\\.\n"
        "# TYPE t_requests_total counter\n"
        "t_requests_total 42\n"
        "# HELP t_temperature A gauge.\n"
        "# TYPE t_temperature gauge\n"
        "t_temperature -2.25\n"
        "# HELP t_calls_total Calls by code.\n"
        "# TYPE t_calls_total counter\n"
        "t_calls_total{code=\"OK\",path=\"/a\"} 7\n"
        "t_calls_total{code=\"Bad\",path=\"q\\\"x\\\\y\\nz\"} 1\n"
        "# HELP t_latency_seconds Latency.\n"
        "# TYPE t_latency_seconds histogram\n"
        "t_latency_seconds_bucket{le=\"0.005\"} 1\n"
        "t_latency_seconds_bucket{le=\"0.1\"} 2\n"
        "t_latency_seconds_bucket{le=\"1\"} 4\n"
        "t_latency_seconds_bucket{le=\"10\"} 5\n"
        "t_latency_seconds_bucket{le=\"1e+06\"} 5\n"
        "t_latency_seconds_bucket{le=\"+Inf\"} 6\n"
        "t_latency_seconds_sum 2.000006055e+06\n"
        "t_latency_seconds_count 6\n"
        "# HELP t_computed Computed.\n"
        "# TYPE t_computed gauge\n"
        "t_computed 2.5\n";
    assert_string_equal(text, want);
    free(text);

    fixed = NAN;
    text = render(m);
    assert_true(has_line(text, "t_computed NaN"));
    free(text);
    metric_gauge_set(g, INFINITY);
    text = render(m);
    assert_true(has_line(text, "t_temperature +Inf"));
    free(text);
    metrics_free(m);
}

static void test_labelled_histogram(void **state)
{
    metrics *m = metrics_new();
    static const char *const labels[] = {"method"};
    static const double bounds[] = {0.25, 0.5};
    metric_family *f =
        metrics_family(m, METRIC_HISTOGRAM, "t_h", "H.", labels, 1, bounds, 2);
    metric_histogram *a = metric_family_histogram(f, (const char *const[]){"A"});
    metric_histogram *b = metric_family_histogram(f, (const char *const[]){"B"});
    metric_histogram_observe(a, 0.3);
    metric_histogram_observe(b, 0.1);
    metric_histogram_observe(b, 0.75);
    assert_int_equal(metric_histogram_count(b), 2);
    char *text = render(m);
    assert_string_equal(text, "# HELP t_h H.\n"
                              "# TYPE t_h histogram\n"
                              "t_h_bucket{method=\"A\",le=\"0.25\"} 0\n"
                              "t_h_bucket{method=\"A\",le=\"0.5\"} 1\n"
                              "t_h_bucket{method=\"A\",le=\"+Inf\"} 1\n"
                              "t_h_sum{method=\"A\"} 0.3\n"
                              "t_h_count{method=\"A\"} 1\n"
                              "t_h_bucket{method=\"B\",le=\"0.25\"} 1\n"
                              "t_h_bucket{method=\"B\",le=\"0.5\"} 1\n"
                              "t_h_bucket{method=\"B\",le=\"+Inf\"} 2\n"
                              "t_h_sum{method=\"B\"} 0.85\n"
                              "t_h_count{method=\"B\"} 2\n");
    free(text);
    metrics_free(m);
}

static void test_registration_rules(void **state)
{
    metrics *m = metrics_new();
    static const char *const l1[] = {"a"};
    static const char *const l2[] = {"b"};
    static const double bounds[] = {1, 2};
    static const double unsorted[] = {2, 1};

    /* same name and shape: the same family and series; another shape: refused */
    metric_counter *c1 = metrics_counter(m, "t_total", "x");
    assert_ptr_equal(metrics_counter(m, "t_total", "x"), c1);
    assert_null(metrics_gauge(m, "t_total", "x"));
    metric_family *f = metrics_family(m, METRIC_COUNTER, "t_l_total", "x", l1, 1, NULL, 0);
    assert_ptr_equal(metrics_family(m, METRIC_COUNTER, "t_l_total", "x", l1, 1, NULL, 0), f);
    assert_null(metrics_family(m, METRIC_COUNTER, "t_l_total", "x", l2, 1, NULL, 0));
    assert_ptr_equal(metric_family_counter(f, (const char *const[]){"v"}),
                     metric_family_counter(f, (const char *const[]){"v"}));
    assert_null(metric_family_gauge(f, (const char *const[]){"v"}));
    assert_int_equal(metrics_callback(m, METRIC_GAUGE, "t_total", "x", fixed_value, NULL),
                     EDDY_ERR_INVALID);

    /* invalid names, labels and bounds */
    assert_null(metrics_counter(m, "9lives", "x"));
    assert_null(metrics_counter(m, "has space", "x"));
    assert_null(metrics_family(m, METRIC_COUNTER, "t_x", "x", (const char *const[]){"__r"}, 1,
                               NULL, 0));
    assert_null(metrics_family(m, METRIC_HISTOGRAM, "t_y", "x", (const char *const[]){"le"}, 1,
                               bounds, 2));
    assert_null(metrics_histogram(m, "t_z", "x", unsorted, 2));
    assert_null(metrics_histogram(m, "t_z", "x", NULL, 0));
    assert_non_null(metrics_histogram(m, "t_z", "x", bounds, 2));

    /* the series of a family are bounded */
    metric_family *big = metrics_family(m, METRIC_COUNTER, "t_big", "x", l1, 1, NULL, 0);
    char v[32];
    for (int i = 0; i < METRICS_MAX_SERIES; i++) {
        snprintf(v, sizeof(v), "%d", i);
        assert_non_null(metric_family_counter(big, (const char *const[]){v}));
    }
    assert_null(metric_family_counter(big, (const char *const[]){"one-too-many"}));

    /* NULL everywhere is a no-op: a component without a registry */
    assert_null(metrics_counter(NULL, "t_n", "x"));
    metric_counter_inc(NULL);
    metric_gauge_set(NULL, 1);
    metric_histogram_observe(NULL, 1);
    assert_int_equal(metric_counter_value(NULL), 0);

    /* a render past the limit fails cleanly */
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(m, 100, &text, &len), EDDY_ERR_TOO_LARGE);
    assert_null(text);
    metrics_free(m);
}

#define THREADS 8
#define ROUNDS 100000

struct shared {
    metric_counter *c;
    metric_gauge *g;
    metric_histogram *h;
};

static void *hammer(void *arg)
{
    struct shared *s = arg;
    for (int i = 0; i < ROUNDS; i++) {
        metric_counter_inc(s->c);
        metric_gauge_add(s->g, 1.0);
        metric_histogram_observe(s->h, (i % 4) * 0.5); /* 0, .5, 1, 1.5 */
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    metrics *m = metrics_new();
    static const double bounds[] = {0.5, 1};
    struct shared s = {metrics_counter(m, "t_c_total", "c"), metrics_gauge(m, "t_g", "g"),
                       metrics_histogram(m, "t_h", "h", bounds, 2)};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &s), 0);
    for (int i = 0; i < 50; i++) /* scrapes racing with the updates stay well-formed */
        free(render(m));
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    uint64_t n = (uint64_t)THREADS * ROUNDS;
    assert_int_equal(metric_counter_value(s.c), n);
    assert_true(metric_gauge_value(s.g) == (double)n);
    assert_int_equal(metric_histogram_count(s.h), n);
    char *text = render(m);
    char line[128];
    snprintf(line, sizeof(line), "t_h_bucket{le=\"0.5\"} %llu", (unsigned long long)n / 2);
    assert_true(has_line(text, line));
    snprintf(line, sizeof(line), "t_h_bucket{le=\"1\"} %llu", (unsigned long long)n * 3 / 4);
    assert_true(has_line(text, line));
    snprintf(line, sizeof(line), "t_h_sum %llu", (unsigned long long)n * 3 / 4);
    assert_true(has_line(text, line));
    free(text);
    metrics_free(m);
}

static void test_process_metrics(void **state)
{
    metrics *m = metrics_new();
    assert_int_equal(metrics_add_process(m), EDDY_OK);
    char *text = render(m);
    static const char *const names[] = { /* sample lines, not the HELP lines */
        "\nprocess_cpu_seconds_total ", "\nprocess_resident_memory_bytes ",
        "\nprocess_virtual_memory_bytes ", "\nprocess_open_fds ", "\nprocess_max_fds ",
        "\nprocess_start_time_seconds "};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *p = strstr(text, names[i]);
        assert_non_null(p);
        double v = strtod(p + strlen(names[i]), NULL);
        if (i > 0 && !(v > 0)) /* CPU time may still be 0 */
            fail_msg("%s= %g\n%s", names[i] + 1, v, text);
    }
    const char *st = strstr(text, names[5]);
    double start = strtod(st + strlen(names[5]), NULL);
    double now = (double)time(NULL);
    assert_true(start > now - 3600 && start <= now + 1);
    free(text);
    metrics_free(m);
}

/* ---- HTTP ------------------------------------------------------------------------------ */

struct body {
    char *p;
    size_t len;
};

static size_t on_data(char *ptr, size_t size, size_t n, void *ud)
{
    struct body *b = ud;
    char *p = realloc(b->p, b->len + size * n + 1);
    if (!p)
        return 0;
    memcpy(p + b->len, ptr, size * n);
    b->p = p;
    b->len += size * n;
    b->p[b->len] = '\0';
    return size * n;
}

/* GET (or 'method') http://127.0.0.1:port/path with the header 'header' (NULL: none);
 * returns the status, the body in *out, the Content-Type and (if 'csp') the
 * Content-Security-Policy header's presence. */
static long fetch_with(int port, const char *path, const char *method, const char *header,
                       char **out, char *ctype, size_t ctlen)
{
    char url[8192];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    struct body b = {calloc(1, 1), 0};
    CURL *c = curl_easy_init();
    assert_non_null(c);
    struct curl_slist *headers = header ? curl_slist_append(NULL, header) : NULL;
    if (headers)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, (void *)&b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    if (method)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    if (ctype)
        snprintf(ctype, ctlen, "%s", ct ? ct : "");
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    *out = b.p;
    return status;
}

static long fetch(int port, const char *path, const char *method, char **out, char *ctype,
                  size_t ctlen)
{
    return fetch_with(port, path, method, NULL, out, ctype, ctlen);
}

/* metrics_http_open with the registry and the address alone (no console endpoints). */
static eddy_err http_open(metrics *m, const char *listen, metrics_http **out, int *port)
{
    struct metrics_http_opts o = {.reg = m, .listen = listen};
    return metrics_http_open(&o, out, port);
}

static void test_http_endpoint(void **state)
{
    metrics *m = metrics_new();
    metric_counter *c = metrics_counter(m, "t_http_total", "Served over HTTP.");
    metric_counter_add(c, 3);
    metrics_http *h = NULL;
    int port = 0;
    assert_int_equal(http_open(m, "127.0.0.1:0", &h, &port), EDDY_OK);
    assert_true(port > 0);

    char *body = NULL, ctype[128];
    assert_int_equal(fetch(port, "/metrics", NULL, &body, ctype, sizeof(ctype)), 200);
    assert_string_equal(ctype, "text/plain; version=0.0.4; charset=utf-8");
    char *want = render(m);
    assert_string_equal(body, want);
    free(want);
    free(body);

    metric_counter_inc(c); /* every scrape renders afresh */
    assert_int_equal(fetch(port, "/metrics", NULL, &body, NULL, 0), 200);
    assert_true(has_line(body, "t_http_total 4"));
    free(body);

    assert_int_equal(fetch(port, "/", NULL, &body, NULL, 0), 200);
    assert_non_null(strstr(body, "/metrics"));
    free(body);
    assert_int_equal(fetch(port, "/nope", NULL, &body, NULL, 0), 404);
    free(body);
    assert_int_equal(fetch(port, "/metrics", "DELETE", &body, NULL, 0), 405);
    free(body);

    /* the address is taken: a second server on it fails; bad addresses are refused */
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    metrics_http *h2 = NULL;
    assert_int_equal(http_open(m, addr, &h2, NULL), EDDY_ERR_NET);
    assert_null(h2);
    assert_int_equal(http_open(m, "127.0.0.1", &h2, NULL), EDDY_ERR_INVALID);
    assert_int_equal(http_open(m, "127.0.0.1:99999", &h2, NULL), EDDY_ERR_INVALID);
    assert_int_equal(http_open(m, "[::1:5", &h2, NULL), EDDY_ERR_INVALID);

    metrics_http_close(h);
    metrics_http_close(NULL);
    /* stopped: the port is free again */
    assert_int_equal(http_open(m, addr, &h2, NULL), EDDY_OK);
    metrics_http_close(h2);
    metrics_free(m);
}

/* ---- the web console's endpoints ---------------------------------------------------------- */

/* /api/echo?x=V answers {"x": V}; without x, 400 "x: required". */
static unsigned echo_api(void *ud, const metrics_http_req *rq, cJSON **out, char *msg,
                         size_t msglen)
{
    int *calls = ud;
    (*calls)++;
    const char *x = metrics_http_arg(rq, "x");
    if (!x) {
        snprintf(msg, msglen, "x: required");
        return 400;
    }
    *out = cJSON_CreateObject();
    cJSON_AddStringToObject(*out, "x", x);
    return 200;
}

static void test_console_endpoints(void **state)
{
    char dir[] = "/tmp/eddy-test-console-XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokens", dir);
    char k[2][TOKEN_HASH_KEY_LEN];
    token_hash_key("tok-read", 8, k[0]);
    token_hash_key("tok-ingest", 10, k[1]);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "%s tenant=bi roles=read\n%s tenant=shop roles=ingest\n", k[0], k[1]);
    fclose(fp);
    metrics *m = metrics_new();
    metric_counter_add(metrics_counter(m, "t_events_total", "Events."), 7);
    metrics_counter(m, "t_other_total", "Not charted.");
    auth *a = NULL;
    char err[256];
    struct auth_opts ao = {.token_file = path, .poll_ms = 3600000};
    assert_int_equal(auth_new(&ao, &a, err, sizeof(err)), EDDY_OK);
    static const struct metrics_http_endpoint api[] = {
        {"echo", NULL, echo_api},
        {"secret", "/eddy.v1.Eddy/Recommend", echo_api},
    };
    static const char *const charted[] = {"t_events_total", "t_missing"};
    int calls = 0;
    struct metrics_http_opts o = {.reg = m, .listen = "127.0.0.1:0", .api = api, .napi = 2,
                                  .api_ud = &calls, .chart_families = charted,
                                  .nchart_families = 2, .auth = a};
    metrics_http *h = NULL;
    int port = 0;
    assert_int_equal(metrics_http_open(&o, &h, &port), EDDY_OK);

    /* the page and its files, from the embedded copy of console/ */
    char *body = NULL, ctype[128];
    assert_int_equal(fetch(port, "/", NULL, &body, ctype, sizeof(ctype)), 200);
    assert_string_equal(ctype, "text/html; charset=utf-8");
    assert_non_null(strstr(body, "<script src=\"/app.js\">"));
    free(body);
    assert_int_equal(fetch(port, "/app.js", NULL, &body, ctype, sizeof(ctype)), 200);
    assert_string_equal(ctype, "text/javascript; charset=utf-8");
    assert_non_null(strstr(body, "/api/"));
    free(body);
    assert_int_equal(fetch(port, "/style.css", NULL, &body, ctype, sizeof(ctype)), 200);
    assert_string_equal(ctype, "text/css; charset=utf-8");
    free(body);
    assert_int_equal(fetch(port, "/console/index.html", NULL, &body, NULL, 0), 404);
    free(body);

    /* /api/metrics: the charted families only */
    assert_int_equal(fetch(port, "/api/metrics", NULL, &body, ctype, sizeof(ctype)), 200);
    assert_string_equal(ctype, "application/json");
    cJSON *j = cJSON_Parse(body);
    free(body);
    cJSON *fams = cJSON_GetObjectItem(j, "families");
    assert_non_null(cJSON_GetObjectItem(fams, "t_events_total"));
    assert_null(cJSON_GetObjectItem(fams, "t_other_total"));
    assert_int_equal(cJSON_GetArraySize(fams), 1);
    assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "time_ms")) > 1.7e12);
    cJSON_Delete(j);

    /* a handler's answer, its 400 with the reason, unknown endpoints, long targets */
    assert_int_equal(fetch(port, "/api/echo?x=a%20b", NULL, &body, NULL, 0), 200);
    assert_string_equal(body, "{\"x\":\"a b\"}");
    free(body);
    assert_int_equal(fetch(port, "/api/echo", NULL, &body, ctype, sizeof(ctype)), 400);
    assert_string_equal(ctype, "application/json");
    assert_string_equal(body, "{\"error\":\"x: required\"}");
    free(body);
    assert_int_equal(fetch(port, "/api/nope", NULL, &body, NULL, 0), 404);
    free(body);
    assert_int_equal(fetch(port, "/api/echo?x=1", "POST", &body, NULL, 0), 405);
    free(body);
    char long_path[4096];
    int n = snprintf(long_path, sizeof(long_path), "/api/echo?x=");
    memset(long_path + n, 'a', sizeof(long_path) - (size_t)n - 1);
    long_path[sizeof(long_path) - 1] = '\0';
    int before = calls;
    assert_int_equal(fetch(port, long_path, NULL, &body, NULL, 0), 414);
    free(body);
    assert_int_equal(calls, before); /* refused before the handler */

    /* tokens: the open endpoint needs none; the other the read role */
    assert_int_equal(fetch(port, "/api/secret?x=1", NULL, &body, NULL, 0), 401);
    free(body);
    assert_int_equal(fetch_with(port, "/api/secret?x=1", NULL, "Authorization: Bearer nope",
                                &body, NULL, 0), 401);
    free(body);
    assert_int_equal(fetch_with(port, "/api/secret?x=1", NULL,
                                "Authorization: Bearer tok-ingest", &body, NULL, 0), 403);
    free(body);
    before = calls;
    assert_int_equal(fetch_with(port, "/api/secret?x=1", NULL, "Authorization: Bearer tok-read",
                                &body, NULL, 0), 200);
    assert_string_equal(body, "{\"x\":\"1\"}");
    free(body);
    assert_int_equal(calls, before + 1);
    assert_int_equal(fetch(port, "/api/echo?x=2", NULL, &body, NULL, 0), 200);
    free(body);

    metrics_http_close(h);
    auth_free(a);
    metrics_free(m);
    unlink(path);
    rmdir(dir);
}

static void test_metrics_json(void **state)
{
    metrics *m = metrics_new();
    static const double bounds[] = {0.1, 1};
    metric_histogram *h = metrics_histogram(m, "t_seconds", "Latency.", bounds, 2);
    metric_histogram_observe(h, 0.05);
    metric_histogram_observe(h, 0.5);
    metric_histogram_observe(h, 5);
    static const char *const labels[] = {"method"};
    metric_family *f = metrics_family(m, METRIC_COUNTER, "t_calls_total", "Calls.", labels, 1,
                                      NULL, 0);
    metric_counter_add(metric_family_counter(f, (const char *const[]){"Get"}), 3);
    metric_gauge_set(metrics_gauge(m, "t_depth", "Depth."), 2.5);
    static const char *const names[] = {"t_seconds", "t_calls_total", "t_nowhere"};
    cJSON *j = NULL;
    assert_int_equal(metrics_json(m, names, 3, &j), EDDY_OK);
    char *text = cJSON_PrintUnformatted(j);
    assert_string_equal(text,
                        "{\"t_seconds\":{\"type\":\"histogram\",\"series\":[{\"labels\":{},"
                        "\"buckets\":[1,2,3],\"count\":3,\"sum\":5.55}],\"bounds\":[0.1,1]},"
                        "\"t_calls_total\":{\"type\":\"counter\",\"series\":[{\"labels\":"
                        "{\"method\":\"Get\"},\"value\":3}]}}");
    free(text);
    cJSON_Delete(j);
    assert_int_equal(metrics_json(NULL, names, 3, &j), EDDY_ERR_INVALID);
    assert_null(j);
    metrics_free(m);
}

/* ---- rpc_server ------------------------------------------------------------------------ */

#define ECHO "/test.T/Echo"

/* OK for user "ok", NOT_FOUND otherwise. */
static void on_echo(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    const Eddy__V1__GetUserProfileRequest *rq = (const Eddy__V1__GetUserProfileRequest *)msg;
    if (strcmp(rq->user_id, "ok") != 0) {
        rpc_reply_error(c, GRPC_STATUS_NOT_FOUND, "no %s", rq->user_id);
        return;
    }
    Eddy__V1__GetUserProfileResponse r = EDDY__V1__GET_USER_PROFILE_RESPONSE__INIT;
    rpc_reply(c, &r.base);
}

static void call_echo(rpc_channel *ch, const char *user, grpc_status_code want)
{
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = (char *)user;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_invoke(ch, ECHO, &rq.base, &eddy__v1__get_user_profile_response__descriptor, 5000,
               &resp, &res);
    assert_int_equal(res.code, want);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
}

static void test_rpc_server_metrics(void **state)
{
    metrics *m = metrics_new();
    metric_counter *busy = metrics_counter(m, "t_busy_total", "busy");
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .metrics = m, .busy_rejections = busy};
    rpc_server *s = rpc_server_new(&o);
    assert_non_null(s);
    assert_int_equal(rpc_server_add_unary(s, ECHO, &eddy__v1__get_user_profile_request__descriptor,
                                          on_echo, NULL),
                     EDDY_OK);
    int port = 0;
    assert_int_equal(rpc_server_start(s, &port), EDDY_OK);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    rpc_channel *ch = rpc_channel_open(target, NULL);
    assert_non_null(ch);

    call_echo(ch, "ok", GRPC_STATUS_OK);
    call_echo(ch, "ok", GRPC_STATUS_OK);
    call_echo(ch, "nobody", GRPC_STATUS_NOT_FOUND);
    struct rpc_result res;
    rpc_invoke_raw(ch, ECHO, "\xff\xff\xff\xff", 4, 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_INVALID_ARGUMENT);
    rpc_invoke_raw(ch, "/test.T/Missing", "", 0, 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_UNIMPLEMENTED);
    rpc_channel_close(ch);
    rpc_server_free(s); /* every call is answered and recorded */

    char *text = render(m);
#define L(x) "{grpc_service=\"test.T\",grpc_method=\"Echo\",grpc_type=\"unary\"" x
    assert_true(has_line(text, "grpc_server_started_total" L("} 4")));
    assert_true(has_line(text, "grpc_server_msg_received_total" L("} 4")));
    assert_true(has_line(text, "grpc_server_msg_sent_total" L("} 2")));
    assert_true(has_line(text, "grpc_server_handled_total" L(",grpc_code=\"OK\"} 2")));
    assert_true(has_line(text, "grpc_server_handled_total" L(",grpc_code=\"NotFound\"} 1")));
    assert_true(
        has_line(text, "grpc_server_handled_total" L(",grpc_code=\"InvalidArgument\"} 1")));
    assert_true(has_line(text, "grpc_server_handled_total" L(",grpc_code=\"Unavailable\"} 0")));
    assert_true(has_line(text, "grpc_server_handling_seconds_count" L("} 4")));
    assert_true(has_line(text, "grpc_server_handling_seconds_bucket" L(",le=\"+Inf\"} 4")));
#undef L
    assert_true(has_line(text, "grpc_server_handled_total{grpc_service=\"unknown\","
                               "grpc_method=\"unknown\",grpc_type=\"unknown\","
                               "grpc_code=\"Unimplemented\"} 1"));
    assert_null(strstr(text, "Missing")); /* unknown method names never become labels */
    assert_true(has_line(text, "t_busy_total 0"));
    free(text);
    metrics_free(m);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exposition),
        cmocka_unit_test(test_labelled_histogram),
        cmocka_unit_test(test_registration_rules),
        cmocka_unit_test(test_concurrent_updates),
        cmocka_unit_test(test_process_metrics),
        cmocka_unit_test(test_http_endpoint),
        cmocka_unit_test(test_console_endpoints),
        cmocka_unit_test(test_metrics_json),
        cmocka_unit_test(test_rpc_server_metrics),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return r;
}
