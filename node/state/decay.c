/* Exact bucketed event-time decay. */
#include "node/state/decay.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#define FIXED_ONE 65536.0
#define FIXED_BITS 16 /* FIXED_ONE = 2^FIXED_BITS */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

Eddy__Store__V1__Decayed *decay_new(void)
{
    Eddy__Store__V1__Decayed *d = malloc(sizeof(*d));
    if (d)
        eddy__store__v1__decayed__init(d);
    return d;
}

eddy_err decay_ensure(Eddy__Store__V1__Decayed **d)
{
    if (!*d)
        *d = decay_new();
    return *d ? EDDY_OK : EDDY_ERR_NOMEM;
}

/* The half-life, read once per call: `eddy reprocess --set` may change it while queries
 * read it (an atomic store on the writer thread; reprocess.c). */
static int64_t half_life(const struct decay_params *p)
{
    return __atomic_load_n(&p->half_life_ms, __ATOMIC_RELAXED);
}

int64_t decay_bucket(const struct decay_params *p, int64_t ts)
{
    return floor_div(ts, half_life(p) * p->bucket_half_lives);
}

void decay_add(Eddy__Store__V1__Decayed *d, const struct decay_params *p, int64_t ts, double w)
{
    int64_t hl_ms = half_life(p);
    int64_t width = hl_ms * p->bucket_half_lives;
    int64_t b = floor_div(ts, width);
    /* exp2 of a value in [0, bucket_half_lives): the contribution is computed from the
     * event alone, then summed as an integer. */
    double frac = (double)(ts - b * width) / (double)hl_ms;
    int64_t c = llround(w * FIXED_ONE * exp2(frac));
    bool empty = d->cur == 0 && d->prev == 0 && d->bucket == 0;

    if (empty || b > d->bucket) {
        if (!empty && b == d->bucket + 1) {
            d->prev = d->cur;
        } else {
            d->prev = 0;
        }
        d->bucket = b;
        d->cur = c;
    } else if (b == d->bucket) {
        d->cur += c;
    } else if (b == d->bucket - 1) {
        d->prev += c;
    }
    /* else: older than two buckets; below 2^-bucket_half_lives of its weight: dropped,
     * exactly as it would be had it arrived first. */
}

double decay_value(const Eddy__Store__V1__Decayed *d, const struct decay_params *p, int64_t at)
{
    if (!d)
        return 0.0;
    int64_t hl_ms = half_life(p);
    int64_t width = hl_ms * p->bucket_half_lives;
    double hl = (double)hl_ms;
    double start = (double)d->bucket * (double)width;
    double v = (double)d->cur * exp2((start - (double)at) / hl) +
               (double)d->prev * exp2((start - (double)width - (double)at) / hl);
    return v / FIXED_ONE;
}

struct decay_sum decay_sum_of(const Eddy__Store__V1__Decayed *d)
{
    if (!d)
        return (struct decay_sum){0, 0, 0};
    return (struct decay_sum){d->bucket, d->cur, d->prev};
}

/* A value is 2^((bucket - 1) * bhl) * (cur * 2^bhl + prev) in fixed-point units up to a
 * factor common to all values at one time: the mantissa below, exact in 128 bits (|cur|,
 * |prev| < 2^63 and bhl <= 56: below 2^120). */
__extension__ typedef __int128 i128;

static i128 mantissa(const struct decay_sum *v, int bhl)
{
    return (i128)v->cur * ((i128)1 << bhl) + (i128)v->prev;
}

/* The sign of ma * 2^d - mb, for d >= 0 and |ma|, |mb| < 2^120. */
static int cmp_scaled(i128 ma, uint64_t d, i128 mb)
{
    if (d >= 120) /* |ma| * 2^d >= 2^120 > |mb| unless ma is 0 */
        return ma != 0 ? (ma > 0 ? 1 : -1) : (mb > 0 ? -1 : mb < 0);
    i128 q = mb >> d; /* floor(mb / 2^d): ma * 2^d > mb iff ma > q (ma an integer) */
    if (ma != q)
        return ma > q ? 1 : -1;
    return mb - q * ((i128)1 << d) != 0 ? -1 : 0; /* mb = q * 2^d + a remainder >= 0 */
}

int decay_cmp(const struct decay_sum *a, const struct decay_sum *b, const struct decay_params *p)
{
    int bhl = p->bucket_half_lives;
    i128 ma = mantissa(a, bhl), mb = mantissa(b, bhl);
    if (a->bucket == b->bucket)
        return ma != mb ? (ma > mb ? 1 : -1) : 0;
    /* buckets apart by up to 2^64: the difference as unsigned, in half-lives capped */
    if (a->bucket > b->bucket) {
        uint64_t gap = (uint64_t)a->bucket - (uint64_t)b->bucket;
        return cmp_scaled(ma, gap >= 120 ? 120 : gap * (uint64_t)bhl, mb);
    }
    uint64_t gap = (uint64_t)b->bucket - (uint64_t)a->bucket;
    return -cmp_scaled(mb, gap >= 120 ? 120 : gap * (uint64_t)bhl, ma);
}

double decay_value_at_bucket(const struct decay_sum *v, const struct decay_params *p,
                             int64_t ref)
{
    int bhl = p->bucket_half_lives;
    /* buckets apart, capped far beyond where ldexp gives 0 or infinity */
    uint64_t gap = v->bucket < ref ? (uint64_t)ref - (uint64_t)v->bucket
                                   : (uint64_t)v->bucket - (uint64_t)ref;
    int back = gap > 4096 ? 4096 : (int)gap;
    int e = (v->bucket < ref ? -back : back) * bhl - FIXED_BITS;
    /* ldexp is exact (short of the subnormal range): the scale is a power of two */
    return ldexp((double)v->cur, e) + ldexp((double)v->prev, e - bhl);
}
