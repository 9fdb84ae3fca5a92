/* Exact bucketed event-time decay. */
#include "node/state/decay.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#define FIXED_ONE 65536.0

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
