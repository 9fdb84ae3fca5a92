/* Exact percentiles from a bounded, sorted sample (see latency.h). */
#include "latency.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void latency_init(struct latency *l, size_t limit)
{
    memset(l, 0, sizeof(*l));
    pthread_mutex_init(&l->mu, NULL);
    l->limit = limit ? limit : 1;
    l->rng = 0x2545f4914f6cdd1dULL;
}

void latency_release(struct latency *l)
{
    free(l->v);
    l->v = NULL;
    pthread_mutex_destroy(&l->mu);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

void latency_add(struct latency *l, double ms)
{
    pthread_mutex_lock(&l->mu);
    l->count++;
    l->sum += ms;
    if (ms > l->max)
        l->max = ms;
    if (l->n < l->limit) {
        if (l->n == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 1024;
            if (cap > l->limit)
                cap = l->limit;
            double *v = realloc(l->v, cap * sizeof(*v));
            if (!v)
                goto out;
            l->v = v;
            l->cap = cap;
        }
        l->v[l->n++] = ms;
    } else {
        /* reservoir: the new observation replaces a kept one with probability limit/count */
        uint64_t j = xorshift(&l->rng) % l->count;
        if (j < l->limit)
            l->v[j] = ms;
    }
out:
    pthread_mutex_unlock(&l->mu);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double latency_percentile(const double *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    double rank = ceil(p * (double)n);
    size_t i = rank < 1 ? 0 : (size_t)rank - 1;
    return sorted[i < n ? i : n - 1];
}

void latency_summarize(struct latency *l, struct latency_summary *out)
{
    pthread_mutex_lock(&l->mu);
    memset(out, 0, sizeof(*out));
    out->count = l->count;
    if (l->count > 0) {
        qsort(l->v, l->n, sizeof(*l->v), cmp_double);
        out->mean = l->sum / (double)l->count;
        out->p50 = latency_percentile(l->v, l->n, 0.50);
        out->p95 = latency_percentile(l->v, l->n, 0.95);
        out->p99 = latency_percentile(l->v, l->n, 0.99);
        out->p999 = latency_percentile(l->v, l->n, 0.999);
        out->max = l->max;
    }
    pthread_mutex_unlock(&l->mu);
}

cJSON *latency_summary_json(const struct latency_summary *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "count", (double)s->count);
    cJSON_AddNumberToObject(o, "mean", s->mean);
    cJSON_AddNumberToObject(o, "p50", s->p50);
    cJSON_AddNumberToObject(o, "p95", s->p95);
    cJSON_AddNumberToObject(o, "p99", s->p99);
    cJSON_AddNumberToObject(o, "p999", s->p999);
    cJSON_AddNumberToObject(o, "max", s->max);
    return o;
}
