/* Seeded e-commerce traffic for eddy-bench: xoshiro256** per stream, Zipf ranks by inverse
 * CDF (a binary search in a precomputed table), product attributes derived from the product
 * rank by hashing so that every event of a product agrees on them. */
#include "gen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

struct gen_tables {
    const struct gen_config *cfg;
    double *user_cdf;    /* user_cdf[k] = P(rank <= k + 1) */
    double *product_cdf;
};

/* Cumulative Zipf distribution over ranks 1..n with exponent s; NULL on failure. */
static double *zipf_cdf(int64_t n, double s)
{
    double *cdf = malloc((size_t)n * sizeof(*cdf));
    double sum = 0;

    if (!cdf)
        return NULL;
    for (int64_t k = 0; k < n; k++) {
        sum += pow((double)(k + 1), -s);
        cdf[k] = sum;
    }
    for (int64_t k = 0; k < n; k++)
        cdf[k] /= sum;
    cdf[n - 1] = 1.0;
    return cdf;
}

struct gen_tables *gen_tables_new(const struct gen_config *cfg)
{
    struct gen_tables *t = NULL;

    if (cfg->users < 1 || cfg->products < 1 || cfg->categories < 1 || cfg->brands < 1 ||
        cfg->zipf_users < 0 || cfg->zipf_products < 0)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cfg = cfg;
    t->user_cdf = zipf_cdf(cfg->users, cfg->zipf_users);
    t->product_cdf = zipf_cdf(cfg->products, cfg->zipf_products);
    if (!t->user_cdf || !t->product_cdf) {
        gen_tables_free(t);
        return NULL;
    }
    return t;
}

void gen_tables_free(struct gen_tables *t)
{
    if (!t)
        return;
    free(t->user_cdf);
    free(t->product_cdf);
    free(t);
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman and Vigna). */
static uint64_t next_u64(struct gen *g)
{
    uint64_t *s = g->rng;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double gen_uniform(struct gen *g)
{
    return (double)(next_u64(g) >> 11) * 0x1.0p-53;
}

static int64_t uniform_int(struct gen *g, int64_t n)
{
    return n <= 1 ? 0 : (int64_t)(next_u64(g) % (uint64_t)n);
}

/* A Zipf rank (1-based) drawn from 'cdf' of 'n' ranks. */
static int64_t zipf_rank(struct gen *g, const double *cdf, int64_t n)
{
    double u = gen_uniform(g);
    int64_t lo = 0, hi = n - 1;

    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo + 1;
}

int64_t gen_user_rank(struct gen *g)
{
    return zipf_rank(g, g->t->user_cdf, g->t->cfg->users);
}

/* A fixed hash of (rank, salt): the attributes of a product never change. */
static uint64_t attr_hash(int64_t rank, uint64_t salt)
{
    uint64_t x = (uint64_t)rank * 0x9e3779b97f4a7c15ULL ^ salt;
    return splitmix64(&x);
}

void gen_user_id(int64_t rank, char *buf, size_t len)
{
    snprintf(buf, len, "u%lld", (long long)rank);
}

void gen_init(struct gen *g, const struct gen_tables *t, int stream)
{
    uint64_t x = t->cfg->seed * 0x100000001b3ULL + (uint64_t)stream * 0x9e3779b97f4a7c15ULL;

    memset(g, 0, sizeof(*g));
    g->t = t;
    g->stream = stream;
    for (int i = 0; i < 4; i++)
        g->rng[i] = splitmix64(&x);
}

static void link_event(struct gen_event *e)
{
    e->ev.event_id = e->event_id;
    e->ev.user_id = e->user_id;
    e->ev.session_id = e->session_id;
    e->ev.product_id = e->product_id;
    e->ev.category = e->category;
    e->ev.brand = e->brand;
    e->ev.search_query = e->query;
}

void gen_event_copy(struct gen_event *dst, const struct gen_event *src)
{
    memcpy(dst, src, sizeof(*dst));
    link_event(dst);
}

static Eddy__V1__EventType pick_type(double u)
{
    if (u < 0.60)
        return EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
    if (u < 0.75)
        return EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK;
    if (u < 0.85)
        return EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART;
    if (u < 0.88)
        return EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART;
    if (u < 0.93)
        return EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE;
    return EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH;
}

static void set_product(const struct gen_config *cfg, int64_t rank, struct gen_event *e)
{
    snprintf(e->product_id, sizeof(e->product_id), "p%lld", (long long)rank);
    snprintf(e->category, sizeof(e->category), "c%llu",
             (unsigned long long)(attr_hash(rank, 1) % (uint64_t)cfg->categories));
    snprintf(e->brand, sizeof(e->brand), "b%llu",
             (unsigned long long)(attr_hash(rank, 2) % (uint64_t)cfg->brands));
    /* 1.00 .. 500.99, log-uniform-ish: many cheap products, a few expensive ones */
    double u = (double)(attr_hash(rank, 3) >> 11) * 0x1.0p-53;
    e->ev.price = floor(exp(u * log(500.0)) * 100.0) / 100.0 + 0.99;
}

void gen_next(struct gen *g, int64_t now_ms, struct gen_event *out)
{
    const struct gen_config *cfg = g->t->cfg;
    uint64_t seq = g->seq++;
    int64_t clock = cfg->start_ms ? cfg->start_ms + (int64_t)((double)seq * 1000.0 / cfg->time_rate)
                                  : now_ms;

    if (g->nrecent > 0 && cfg->dup_fraction > 0 && gen_uniform(g) < cfg->dup_fraction) {
        size_t have = g->nrecent < GEN_RECENT ? g->nrecent : GEN_RECENT;
        gen_event_copy(out, &g->recent[uniform_int(g, (int64_t)have)]);
        g->dups++;
        g->by_type[out->ev.event_type]++;
        return;
    }

    Eddy__V1__Event init = EDDY__V1__EVENT__INIT;
    out->ev = init;
    out->product_id[0] = out->category[0] = out->brand[0] = out->query[0] = '\0';
    link_event(out);

    int64_t user = zipf_rank(g, g->t->user_cdf, cfg->users);
    snprintf(out->event_id, sizeof(out->event_id), "%s-%d-%llu", cfg->run_id, g->stream,
             (unsigned long long)seq);
    gen_user_id(user, out->user_id, sizeof(out->user_id));
    snprintf(out->session_id, sizeof(out->session_id), "s%lld", (long long)user);
    out->ev.event_type = pick_type(gen_uniform(g));
    if (out->ev.event_type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH) {
        snprintf(out->query, sizeof(out->query), "query %lld",
                 (long long)zipf_rank(g, g->t->product_cdf, cfg->products) % 1000);
    } else {
        set_product(cfg, zipf_rank(g, g->t->product_cdf, cfg->products), out);
    }

    int64_t ts = clock - uniform_int(g, cfg->disorder_ms + 1);
    if (cfg->late_fraction > 0 && gen_uniform(g) < cfg->late_fraction) {
        ts = clock - cfg->late_age_ms - uniform_int(g, 60000);
        g->late++;
    }
    out->ev.timestamp_ms = ts;
    g->by_type[out->ev.event_type]++;
    gen_event_copy(&g->recent[g->nrecent % GEN_RECENT], out);
    g->nrecent++;
}

void gen_batch(struct gen *g, int64_t now_ms, struct gen_event *events,
               Eddy__V1__Event **ptrs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        gen_next(g, now_ms, &events[i]);
        ptrs[i] = &events[i].ev;
    }
}
