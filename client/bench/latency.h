/* Latency recording for eddy-bench: a sample of observed latencies, sorted on demand for
 * exact percentiles (every observation is kept up to a limit; past it, a uniform reservoir
 * sample of 'limit' observations is kept, while count, mean and max stay exact).
 *
 * Threads: latency_add may be called from any number of threads at once (a mutex);
 * latency_summarize once the writers are done. */
#ifndef EDDY_BENCH_LATENCY_H
#define EDDY_BENCH_LATENCY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct latency {
    pthread_mutex_t mu;
    double *v;       /* milliseconds; grows up to 'limit' */
    size_t n, cap, limit;
    uint64_t count;  /* observations, including those not kept */
    double sum, max;
    uint64_t rng;    /* reservoir choices */
};

struct latency_summary {
    uint64_t count;
    double mean, p50, p95, p99, p999, max; /* milliseconds; all 0 when count is 0 */
};

/* Keep at most 'limit' (> 0) observations. */
void latency_init(struct latency *l, size_t limit);
void latency_release(struct latency *l);

/* Record one observation in milliseconds. If the sample cannot grow (out of memory) the
 * observation still counts in count, mean and max. */
void latency_add(struct latency *l, double ms);

/* Percentiles by nearest rank over the kept sample (sorts it). */
void latency_summarize(struct latency *l, struct latency_summary *out);

/* The summary as a JSON object {"count","mean","p50","p95","p99","p999","max"} (ms):
 * the shape every benchmark's -o json uses. Caller owns it (cJSON_Delete or attach it). */
struct cJSON;
struct cJSON *latency_summary_json(const struct latency_summary *s);

/* The nearest-rank percentile 'p' (0 < p <= 1) of 'n' sorted values; 0 if n is 0. */
double latency_percentile(const double *sorted, size_t n, double p);

#endif
