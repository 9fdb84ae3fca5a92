/* The metrics registry and its text rendering (see metrics.h).
 *
 * Histograms keep one non-cumulative atomic counter per bucket; rendering accumulates them,
 * so the _bucket series are monotonic in 'le' and _count equals the +Inf bucket even while
 * observations race with a scrape (only _sum may be one observation ahead or behind).
 * Gauges and histogram sums are doubles stored as their bit pattern in an atomic uint64. */
#include "common/metrics.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/buf.h"

const double metrics_default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5,   1,    2.5,   5,    10};
const size_t metrics_default_nbuckets =
    sizeof(metrics_default_buckets) / sizeof(metrics_default_buckets[0]);

struct metric_counter {
    _Atomic uint64_t v;
};

struct metric_gauge {
    _Atomic uint64_t bits; /* a double */
};

struct metric_histogram {
    const struct metric_family *f;
    _Atomic uint64_t sum_bits;  /* a double */
    _Atomic uint64_t *buckets;  /* [f->nbounds + 1], not cumulative; last is +Inf */
};

/* One series of a family. Immutable after creation except the atomics in 'u'. */
struct series {
    struct series *next;
    char **values;   /* [f->nlabels] */
    char *labels;    /* rendered 'a="x",b="y"' ("" without labels) */
    union {
        struct metric_counter c;
        struct metric_gauge g;
        struct metric_histogram h;
    } u;
};

struct metric_family {
    struct metric_family *next;
    metrics *reg;
    enum metric_type type;
    char *name, *help;
    char **labels;
    size_t nlabels;
    double *bounds;
    size_t nbounds;
    metrics_value_fn *fn; /* callback families have no series */
    void *ud;
    struct series *head, *tail;
    size_t nseries;
};

/* Families and series are appended under 'mu' and never removed before metrics_free. */
struct metrics {
    pthread_mutex_t mu;
    struct metric_family *head, *tail;
};

static uint64_t dbits(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof(b));
    return b;
}

static double bitsd(uint64_t b)
{
    double v;
    memcpy(&v, &b, sizeof(v));
    return v;
}

/* ---------------------------------------------------------------- registry */

metrics *metrics_new(void)
{
    metrics *m = calloc(1, sizeof(*m));
    if (m)
        pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void series_free(struct series *s, size_t nlabels)
{
    if (!s)
        return;
    for (size_t i = 0; s->values && i < nlabels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->labels);
    free(s->u.h.buckets);
    free(s);
}

static void family_free(struct metric_family *f)
{
    if (!f)
        return;
    for (struct series *s = f->head, *next; s; s = next) {
        next = s->next;
        series_free(s, f->nlabels);
    }
    for (size_t i = 0; f->labels && i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->labels);
    free(f->bounds);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    for (struct metric_family *f = m->head, *next; f; f = next) {
        next = f->next;
        family_free(f);
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s || isdigit((unsigned char)s[0]))
        return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_' || (colon && *s == ':')) ||
            (unsigned char)*s >= 0x80)
            return false;
    return true;
}

static bool same_shape(const struct metric_family *f, enum metric_type type,
                       const char *const *labels, size_t nlabels, const double *bounds,
                       size_t nbounds)
{
    if (f->type != type || f->fn || f->nlabels != nlabels || f->nbounds != nbounds)
        return false;
    for (size_t i = 0; i < nlabels; i++)
        if (strcmp(f->labels[i], labels[i]) != 0)
            return false;
    for (size_t i = 0; i < nbounds; i++)
        if (f->bounds[i] != bounds[i])
            return false;
    return true;
}

/* A family named 'name' already registered, or NULL. Under m->mu. */
static struct metric_family *find_family(metrics *m, const char *name)
{
    for (struct metric_family *f = m->head; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static bool args_valid(enum metric_type type, const char *name, const char *const *labels,
                       size_t nlabels, const double *bounds, size_t nbounds)
{
    if (!valid_name(name, true) || nlabels > METRICS_MAX_LABELS || (nlabels && !labels))
        return false;
    for (size_t i = 0; i < nlabels; i++) {
        if (!valid_name(labels[i], false) || strncmp(labels[i], "__", 2) == 0 ||
            (type == METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0))
            return false;
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0)
                return false;
    }
    if (type != METRIC_HISTOGRAM)
        return nbounds == 0;
    if (nbounds == 0 || nbounds > METRICS_MAX_BUCKETS || !bounds)
        return false;
    for (size_t i = 0; i < nbounds; i++)
        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
            return false;
    return true;
}

/* Allocate and append a family. Under m->mu. */
static struct metric_family *family_add(metrics *m, enum metric_type type, const char *name,
                                        const char *help, const char *const *labels,
                                        size_t nlabels, const double *bounds, size_t nbounds)
{
    struct metric_family *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->reg = m;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->nlabels = nlabels;
    f->labels = calloc(nlabels ? nlabels : 1, sizeof(*f->labels));
    f->nbounds = nbounds;
    f->bounds = calloc(nbounds ? nbounds : 1, sizeof(*f->bounds));
    if (!f->name || !f->help || !f->labels || !f->bounds)
        goto fail;
    for (size_t i = 0; i < nlabels; i++)
        if (!(f->labels[i] = strdup(labels[i])))
            goto fail;
    if (nbounds)
        memcpy(f->bounds, bounds, nbounds * sizeof(*bounds));
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    return f;
fail:
    family_free(f);
    return NULL;
}

metric_family *metrics_family(metrics *m, enum metric_type type, const char *name,
                              const char *help, const char *const *labels, size_t nlabels,
                              const double *bounds, size_t nbounds)
{
    if (!m || !args_valid(type, name, labels, nlabels, bounds, nbounds))
        return NULL;
    pthread_mutex_lock(&m->mu);
    struct metric_family *f = find_family(m, name);
    if (f) {
        if (!same_shape(f, type, labels, nlabels, bounds, nbounds))
            f = NULL;
    } else {
        f = family_add(m, type, name, help, labels, nlabels, bounds, nbounds);
    }
    pthread_mutex_unlock(&m->mu);
    return f;
}

eddy_err metrics_callback(metrics *m, enum metric_type type, const char *name,
                          const char *help, metrics_value_fn *fn, void *ud)
{
    if (!m || !fn || type == METRIC_HISTOGRAM || !valid_name(name, true))
        return EDDY_ERR_INVALID;
    eddy_err err = EDDY_OK;
    pthread_mutex_lock(&m->mu);
    struct metric_family *f = NULL;
    if (find_family(m, name))
        err = EDDY_ERR_INVALID;
    else if (!(f = family_add(m, type, name, help, NULL, 0, NULL, 0)))
        err = EDDY_ERR_NOMEM;
    if (f) {
        f->fn = fn;
        f->ud = ud;
    }
    pthread_mutex_unlock(&m->mu);
    return err;
}

/* Append 'v' to 'out' (of size 'cap', at *n) with \\, \" and \n escaped ('quote': the
 * label-value rules; otherwise the HELP rules, which leave '"' alone). */
static bool escape_into(char *out, size_t cap, size_t *n, const char *v, bool quote)
{
    for (; *v; v++) {
        const char *rep = NULL;
        if (*v == '\\')
            rep = "\\\\";
        else if (*v == '\n')
            rep = "\\n";
        else if (quote && *v == '"')
            rep = "\\\"";
        size_t k = rep ? 2 : 1;
        if (*n + k >= cap)
            return false;
        if (rep)
            memcpy(out + *n, rep, 2);
        else
            out[*n] = *v;
        *n += k;
    }
    out[*n] = '\0';
    return true;
}

static char *render_labels(const struct metric_family *f, const char *const *values)
{
    size_t cap = 1;
    for (size_t i = 0; i < f->nlabels; i++)
        cap += strlen(f->labels[i]) + 2 * strlen(values[i]) + 4;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t n = 0;
    s[0] = '\0';
    for (size_t i = 0; i < f->nlabels; i++) {
        int w = snprintf(s + n, cap - n, "%s%s=\"", i ? "," : "", f->labels[i]);
        n += (size_t)w;
        escape_into(s, cap, &n, values[i], true);
        s[n++] = '"';
        s[n] = '\0';
    }
    return s;
}

static struct series *family_series(metric_family *f, enum metric_type type,
                                    const char *const *values)
{
    if (!f || f->type != type || f->fn || (f->nlabels && !values))
        return NULL;
    for (size_t i = 0; i < f->nlabels; i++)
        if (!values[i])
            return NULL;
    metrics *m = f->reg;
    pthread_mutex_lock(&m->mu);
    struct series *s;
    for (s = f->head; s; s = s->next) {
        size_t i = 0;
        while (i < f->nlabels && strcmp(s->values[i], values[i]) == 0)
            i++;
        if (i == f->nlabels)
            goto out;
    }
    if (f->nseries >= METRICS_MAX_SERIES || !(s = calloc(1, sizeof(*s))))
        goto out;
    s->values = calloc(f->nlabels ? f->nlabels : 1, sizeof(*s->values));
    s->labels = render_labels(f, values);
    if (type == METRIC_HISTOGRAM) {
        s->u.h.f = f;
        s->u.h.buckets = calloc(f->nbounds + 1, sizeof(*s->u.h.buckets));
    }
    bool ok = s->values && s->labels && (type != METRIC_HISTOGRAM || s->u.h.buckets);
    for (size_t i = 0; ok && i < f->nlabels; i++)
        ok = (s->values[i] = strdup(values[i])) != NULL;
    if (!ok) {
        series_free(s, f->nlabels);
        s = NULL;
        goto out;
    }
    if (f->tail)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
    f->nseries++;
out:
    pthread_mutex_unlock(&m->mu);
    return s;
}

metric_counter *metric_family_counter(metric_family *f, const char *const *values)
{
    struct series *s = family_series(f, METRIC_COUNTER, values);
    return s ? &s->u.c : NULL;
}

metric_gauge *metric_family_gauge(metric_family *f, const char *const *values)
{
    struct series *s = family_series(f, METRIC_GAUGE, values);
    return s ? &s->u.g : NULL;
}

metric_histogram *metric_family_histogram(metric_family *f, const char *const *values)
{
    struct series *s = family_series(f, METRIC_HISTOGRAM, values);
    return s ? &s->u.h : NULL;
}

metric_counter *metrics_counter(metrics *m, const char *name, const char *help)
{
    return metric_family_counter(
        metrics_family(m, METRIC_COUNTER, name, help, NULL, 0, NULL, 0), NULL);
}

metric_gauge *metrics_gauge(metrics *m, const char *name, const char *help)
{
    return metric_family_gauge(metrics_family(m, METRIC_GAUGE, name, help, NULL, 0, NULL, 0),
                               NULL);
}

metric_histogram *metrics_histogram(metrics *m, const char *name, const char *help,
                                    const double *bounds, size_t nbounds)
{
    return metric_family_histogram(
        metrics_family(m, METRIC_HISTOGRAM, name, help, NULL, 0, bounds, nbounds), NULL);
}

/* ---------------------------------------------------------------- updates */

void metric_counter_add(metric_counter *c, uint64_t n)
{
    if (c)
        atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

uint64_t metric_counter_value(const metric_counter *c)
{
    return c ? atomic_load_explicit(&((metric_counter *)c)->v, memory_order_relaxed) : 0;
}

void metric_gauge_set(metric_gauge *g, double v)
{
    if (g)
        atomic_store_explicit(&g->bits, dbits(v), memory_order_relaxed);
}

static void add_double(_Atomic uint64_t *bits, double delta)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(bits, &old, dbits(bitsd(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

void metric_gauge_add(metric_gauge *g, double delta)
{
    if (g)
        add_double(&g->bits, delta);
}

double metric_gauge_value(const metric_gauge *g)
{
    return g ? bitsd(atomic_load_explicit(&((metric_gauge *)g)->bits, memory_order_relaxed))
             : 0.0;
}

void metric_histogram_observe_n(metric_histogram *h, double v, uint64_t n)
{
    if (!h || n == 0)
        return;
    const struct metric_family *f = h->f;
    size_t lo = 0, hi = f->nbounds; /* first bound >= v; nbounds = +Inf (and NaN) */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v <= f->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->buckets[lo], n, memory_order_relaxed);
    add_double(&h->sum_bits, v * (double)n);
}

void metric_histogram_observe(metric_histogram *h, double v)
{
    metric_histogram_observe_n(h, v, 1);
}

uint64_t metric_histogram_count(const metric_histogram *h)
{
    if (!h)
        return 0;
    uint64_t n = 0;
    for (size_t i = 0; i <= h->f->nbounds; i++)
        n += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
    return n;
}

/* ---------------------------------------------------------------- rendering */

/* The text of a scrape; the first error sticks and ends it. */
struct render {
    struct buf b;
    eddy_err err;
};

static void bprintf(struct render *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bprintf(struct render *r, const char *fmt, ...)
{
    if (r->err != EDDY_OK)
        return;
    va_list ap;
    va_start(ap, fmt);
    r->err = buf_vaddf(&r->b, fmt, ap);
    va_end(ap);
}

/* The shortest text that reads back as 'v', laid out like Go's FormatFloat(v, 'g', -1, 64)
 * (what the Go client writes): plain notation for exponents -4..5, else 1.5e+06; and
 * +Inf, -Inf, NaN. */
static void fmt_double(char *out, size_t n, double v)
{
    if (isnan(v)) {
        snprintf(out, n, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, n, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    int digits = 1;
    for (; digits < 17; digits++) {
        snprintf(out, n, "%.*e", digits - 1, v);
        if (strtod(out, NULL) == v)
            break;
    }
    snprintf(out, n, "%.*e", digits - 1, v);
    const char *e = strchr(out, 'e');
    long exp = e ? strtol(e + 1, NULL, 10) : 0;
    if (exp >= -4 && exp < 6)
        snprintf(out, n, "%.*f", (int)(digits - 1 - exp > 0 ? digits - 1 - exp : 0), v);
}

static void render_help(struct render *b, const struct metric_family *f)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    size_t cap = 2 * strlen(f->help) + 1, n = 0;
    char *h = malloc(cap);
    if (!h) {
        b->err = EDDY_ERR_NOMEM;
        return;
    }
    escape_into(h, cap, &n, f->help, false);
    bprintf(b, "# HELP %s %s\n# TYPE %s %s\n", f->name, h, f->name, types[f->type]);
    free(h);
}

static void render_histogram(struct render *b, const struct metric_family *f,
                             const struct series *s)
{
    const char *sep = s->labels[0] ? "," : "";
    uint64_t cum = 0;
    char num[64];
    for (size_t i = 0; i <= f->nbounds; i++) {
        cum += atomic_load_explicit(&((struct series *)s)->u.h.buckets[i], memory_order_relaxed);
        if (i < f->nbounds)
            fmt_double(num, sizeof(num), f->bounds[i]);
        else
            snprintf(num, sizeof(num), "+Inf");
        bprintf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", f->name, s->labels, sep, num,
                (unsigned long long)cum);
    }
    fmt_double(num, sizeof(num),
               bitsd(atomic_load_explicit(&((struct series *)s)->u.h.sum_bits,
                                          memory_order_relaxed)));
    const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
    bprintf(b, "%s_sum%s%s%s %s\n", f->name, open, s->labels, close, num);
    bprintf(b, "%s_count%s%s%s %llu\n", f->name, open, s->labels, close,
            (unsigned long long)cum);
}

static void render_family(struct render *b, const struct metric_family *f)
{
    char num[64];
    if (f->fn) {
        render_help(b, f);
        fmt_double(num, sizeof(num), f->fn(f->ud));
        bprintf(b, "%s %s\n", f->name, num);
        return;
    }
    if (!f->head)
        return;
    render_help(b, f);
    for (const struct series *s = f->head; s; s = s->next) {
        const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
        switch (f->type) {
        case METRIC_COUNTER:
            bprintf(b, "%s%s%s%s %llu\n", f->name, open, s->labels, close,
                    (unsigned long long)metric_counter_value(&s->u.c));
            break;
        case METRIC_GAUGE:
            fmt_double(num, sizeof(num), metric_gauge_value(&s->u.g));
            bprintf(b, "%s%s%s%s %s\n", f->name, open, s->labels, close, num);
            break;
        case METRIC_HISTOGRAM:
            render_histogram(b, f, s);
            break;
        }
    }
}

eddy_err metrics_render(metrics *m, size_t limit, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!m)
        return EDDY_ERR_INVALID;
    /* the text and its NUL fit in 'limit' */
    struct render r = {BUF_INIT(limit ? limit - 1 : 0), EDDY_OK};
    r.err = buf_add(&r.b, "", 0); /* an empty scrape is "" too, not NULL */
    pthread_mutex_lock(&m->mu);
    for (const struct metric_family *f = m->head; f && r.err == EDDY_OK; f = f->next)
        render_family(&r, f);
    pthread_mutex_unlock(&m->mu);
    if (r.err != EDDY_OK) {
        buf_release(&r.b);
        return r.err;
    }
    *out = buf_detach(&r.b, len);
    return EDDY_OK;
}

/* ---------------------------------------------------------------- JSON */

/* One series of 'f' as JSON (see metrics_json); NULL on allocation failure. */
static cJSON *series_json(const struct metric_family *f, const struct series *s)
{
    cJSON *o = cJSON_CreateObject(), *labels = cJSON_AddObjectToObject(o, "labels");
    if (!labels) {
        cJSON_Delete(o);
        return NULL;
    }
    bool ok = true;
    for (size_t i = 0; i < f->nlabels; i++)
        ok = ok && cJSON_AddStringToObject(labels, f->labels[i], s->values[i]);
    if (f->type == METRIC_COUNTER) {
        ok = ok && cJSON_AddNumberToObject(o, "value", (double)metric_counter_value(&s->u.c));
    } else if (f->type == METRIC_GAUGE) {
        ok = ok && cJSON_AddNumberToObject(o, "value", metric_gauge_value(&s->u.g));
    } else {
        cJSON *b = cJSON_AddArrayToObject(o, "buckets");
        uint64_t cum = 0;
        for (size_t i = 0; ok && b && i <= f->nbounds; i++) {
            cum += atomic_load_explicit(&((struct series *)s)->u.h.buckets[i],
                                        memory_order_relaxed);
            cJSON *n = cJSON_CreateNumber((double)cum);
            ok = n && cJSON_AddItemToArray(b, n);
            if (!ok)
                cJSON_Delete(n);
        }
        double sum = bitsd(atomic_load_explicit(&((struct series *)s)->u.h.sum_bits,
                                                memory_order_relaxed));
        ok = ok && b && cJSON_AddNumberToObject(o, "count", (double)cum) &&
             cJSON_AddNumberToObject(o, "sum", sum);
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *family_json(const struct metric_family *f)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "type", types[f->type]);
    cJSON *series = ok ? cJSON_AddArrayToObject(o, "series") : NULL;
    ok = series != NULL;
    if (ok && f->type == METRIC_HISTOGRAM) {
        cJSON *b = cJSON_CreateDoubleArray(f->bounds, (int)f->nbounds);
        ok = b && cJSON_AddItemToObject(o, "bounds", b);
        if (!ok)
            cJSON_Delete(b);
    }
    if (ok && f->fn) {
        cJSON *s = cJSON_CreateObject();
        ok = s && cJSON_AddObjectToObject(s, "labels") &&
             cJSON_AddNumberToObject(s, "value", f->fn(f->ud)) &&
             cJSON_AddItemToArray(series, s);
        if (!ok)
            cJSON_Delete(s);
    }
    for (const struct series *s = f->head; ok && s; s = s->next) {
        cJSON *j = series_json(f, s);
        ok = j && cJSON_AddItemToArray(series, j);
        if (!ok)
            cJSON_Delete(j);
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

eddy_err metrics_json(metrics *m, const char *const *names, size_t n, cJSON **out)
{
    *out = NULL;
    if (!m)
        return EDDY_ERR_INVALID;
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return EDDY_ERR_NOMEM;
    eddy_err err = EDDY_OK;
    pthread_mutex_lock(&m->mu);
    for (const struct metric_family *f = m->head; f && err == EDDY_OK; f = f->next) {
        bool wanted = false;
        for (size_t i = 0; i < n && !wanted; i++)
            wanted = strcmp(f->name, names[i]) == 0;
        if (!wanted)
            continue;
        cJSON *j = family_json(f);
        if (!j || !cJSON_AddItemToObject(root, f->name, j)) {
            cJSON_Delete(j);
            err = EDDY_ERR_NOMEM;
        }
    }
    pthread_mutex_unlock(&m->mu);
    if (err != EDDY_OK) {
        cJSON_Delete(root);
        return err;
    }
    *out = root;
    return EDDY_OK;
}

/* ---------------------------------------------------------------- process metrics */

/* Read a small /proc file into 'buf' (NUL-terminated); false on failure. */
static bool read_proc(const char *path, char *buf, size_t cap)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return false;
    size_t n = fread(buf, 1, cap - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    return n > 0;
}

/* Field 'k' (1-based, as in proc(5)) of /proc/self/stat, or 0 if unreadable. */
static unsigned long long proc_stat_field(int k)
{
    char buf[2048];
    if (!read_proc("/proc/self/stat", buf, sizeof(buf)))
        return 0;
    char *p = strrchr(buf, ')'); /* the command name (field 2) may contain spaces */
    if (!p)
        return 0;
    p++;
    for (int field = 3; *p; field++) {
        while (*p == ' ')
            p++;
        if (field == k)
            return strtoull(p, NULL, 10);
        while (*p && *p != ' ')
            p++;
    }
    return 0;
}

static double proc_cpu_seconds(void *ud)
{
    long tck = sysconf(_SC_CLK_TCK);
    return tck > 0 ? (double)(proc_stat_field(14) + proc_stat_field(15)) / (double)tck : 0;
}

static double proc_virtual_bytes(void *ud)
{
    return (double)proc_stat_field(23);
}

static double proc_resident_bytes(void *ud)
{
    long page = sysconf(_SC_PAGESIZE);
    return (double)proc_stat_field(24) * (double)(page > 0 ? page : 4096);
}

static double proc_open_fds(void *ud)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    double n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* not the descriptor opendir itself holds */
}

static double proc_max_fds(void *ud)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    return rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur;
}

static double proc_start_time(void *ud)
{
    long tck = sysconf(_SC_CLK_TCK);
    FILE *fp = fopen("/proc/stat", "r");
    if (tck <= 0 || !fp) {
        if (fp)
            fclose(fp);
        return 0;
    }
    char *line = NULL; /* lines of /proc/stat ("intr ...") can be long */
    size_t cap = 0;
    double boot = 0;
    while (getline(&line, &cap, fp) > 0) {
        if (strncmp(line, "btime ", 6) == 0) {
            boot = (double)strtoull(line + 6, NULL, 10);
            break;
        }
    }
    free(line);
    fclose(fp);
    return boot > 0 ? boot + (double)proc_stat_field(22) / (double)tck : 0;
}

eddy_err metrics_add_process(metrics *m)
{
    static const struct {
        enum metric_type type;
        const char *name, *help;
        metrics_value_fn *fn;
    } pm[] = {
        {METRIC_COUNTER, "process_cpu_seconds_total",
         "Total user and system CPU time spent in seconds.", proc_cpu_seconds},
        {METRIC_GAUGE, "process_resident_memory_bytes", "Resident memory size in bytes.",
         proc_resident_bytes},
        {METRIC_GAUGE, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
         proc_virtual_bytes},
        {METRIC_GAUGE, "process_open_fds", "Number of open file descriptors.", proc_open_fds},
        {METRIC_GAUGE, "process_max_fds", "Maximum number of open file descriptors.",
         proc_max_fds},
        {METRIC_GAUGE, "process_start_time_seconds",
         "Start time of the process since unix epoch in seconds.", proc_start_time},
    };
    for (size_t i = 0; i < sizeof(pm) / sizeof(pm[0]); i++) {
        eddy_err err = metrics_callback(m, pm[i].type, pm[i].name, pm[i].help, pm[i].fn, NULL);
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}
