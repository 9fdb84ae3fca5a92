/* A small Prometheus registry: counters, gauges and fixed-bucket histograms, optionally in
 * labelled families, rendered in the text exposition format 0.0.4.
 *
 * Threads: registration and rendering take the registry's mutex; updating a metric is a
 * few relaxed atomic operations and never locks, so it is safe on hot paths from any
 * thread. Every update function accepts NULL and then does nothing: a component built
 * without a registry holds NULL metric pointers and pays one branch per update.
 *
 * Cardinality: a family's label names are fixed when it is registered and each series is
 * created explicitly (metric_family_counter & co.), at most METRICS_MAX_SERIES per family.
 * Label values must come from a bounded set known to the code (method names, status
 * codes, field names), never from requests (user or product ids). */
#ifndef EDDY_METRICS_H
#define EDDY_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define METRICS_MAX_LABELS 8     /* label names per family */
#define METRICS_MAX_SERIES 4096  /* series per family */
#define METRICS_MAX_BUCKETS 64   /* finite bucket bounds per histogram */

typedef struct metrics metrics;
typedef struct metric_family metric_family;
typedef struct metric_counter metric_counter;
typedef struct metric_gauge metric_gauge;
typedef struct metric_histogram metric_histogram;

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

/* Computes a value at scrape time. Runs on the thread that renders, with the registry's
 * mutex held: it must not call back into the registry. */
typedef double metrics_value_fn(void *ud);

/* A new, empty registry. Returns NULL on allocation failure. Caller owns the result; free
 * with metrics_free once nothing updates or renders it any more. */
metrics *metrics_new(void);
void metrics_free(metrics *m);

/* Register a family 'name' of 'type' with the given label names (nlabels may be 0). For a
 * histogram, 'bounds' are the nbounds finite upper bounds, strictly increasing (copied; the
 * +Inf bucket is implicit); NULL/0 otherwise. Registering an existing name with the same
 * type, labels and bounds returns the existing family, so two components may share one.
 * Returns NULL if 'm' is NULL, on a name/type/label clash or invalid name, or on OOM.
 * The family lives as long as the registry. */
metric_family *metrics_family(metrics *m, enum metric_type type, const char *name,
                              const char *help, const char *const *labels, size_t nlabels,
                              const double *bounds, size_t nbounds);

/* The series of 'f' with label values 'values' (one per label name, copied), created on
 * first use. Returns NULL if 'f' is NULL, on a type mismatch, past METRICS_MAX_SERIES or on
 * OOM. The series lives as long as the registry. Takes the registry's mutex: resolve the
 * series once, at setup, and keep the pointer. */
metric_counter *metric_family_counter(metric_family *f, const char *const *values);
metric_gauge *metric_family_gauge(metric_family *f, const char *const *values);
metric_histogram *metric_family_histogram(metric_family *f, const char *const *values);

/* Shorthands for an unlabelled family and its one series. */
metric_counter *metrics_counter(metrics *m, const char *name, const char *help);
metric_gauge *metrics_gauge(metrics *m, const char *name, const char *help);
metric_histogram *metrics_histogram(metrics *m, const char *name, const char *help,
                                    const double *bounds, size_t nbounds);

/* An unlabelled gauge or counter whose value 'fn(ud)' is computed at every render. 'ud'
 * is borrowed: it must stay valid as long as the registry may be rendered. */
eddy_err metrics_callback(metrics *m, enum metric_type type, const char *name,
                          const char *help, metrics_value_fn *fn, void *ud);

/* The standard process_* metrics of the Prometheus client libraries (CPU seconds,
 * resident and virtual memory, open and max fds, start time), read from /proc/self at
 * render time. */
eddy_err metrics_add_process(metrics *m);

void metric_counter_add(metric_counter *c, uint64_t n);
static inline void metric_counter_inc(metric_counter *c)
{
    metric_counter_add(c, 1);
}
uint64_t metric_counter_value(const metric_counter *c);

void metric_gauge_set(metric_gauge *g, double v);
void metric_gauge_add(metric_gauge *g, double delta);
double metric_gauge_value(const metric_gauge *g);

/* Record one observation of 'v' ('n' observations of the same value for _n). */
void metric_histogram_observe(metric_histogram *h, double v);
void metric_histogram_observe_n(metric_histogram *h, double v, uint64_t n);
/* Number of observations so far (the +Inf bucket). */
uint64_t metric_histogram_count(const metric_histogram *h);

/* Render every family with at least one series, in registration order (series in creation
 * order), as text format 0.0.4. The text is at most 'limit' bytes (EDDY_ERR_TOO_LARGE past
 * it). Caller owns *out (NUL-terminated, *len bytes without the NUL); free with free(). */
eddy_err metrics_render(metrics *m, size_t limit, char **out, size_t *len);

/* The families named 'names[0..n)' (names not registered are left out) as a JSON object,
 * for the web console's charts: {"NAME": {"type": "counter"|"gauge"|"histogram", "bounds":
 * [finite upper bounds] (histograms), "series": [{"labels": {...}, "value": V} or, for a
 * histogram, {"labels": {...}, "buckets": [cumulative counts, +Inf last], "count": N,
 * "sum": S}]}}. Takes the registry's mutex like a render. Caller owns *out; free with
 * cJSON_Delete. */
struct cJSON;
eddy_err metrics_json(metrics *m, const char *const *names, size_t n, struct cJSON **out);

/* Default buckets of the Prometheus client libraries, in seconds (.005 to 10). */
extern const double metrics_default_buckets[];
extern const size_t metrics_default_nbuckets;

#endif
