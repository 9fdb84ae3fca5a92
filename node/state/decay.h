/* Exact event-time decay (docs/design.md §4). A decayed sum holds integer fixed-point sums per
 * time bucket, so adding contributions in any order gives the same bytes: the order
 * independence that replicas, replay and the determinism tests rely on. See the Decayed
 * message in proto/eddy/v1/store.proto for the encoding. */
#ifndef EDDY_DECAY_H
#define EDDY_DECAY_H

#include <stdint.h>

#include "common/err.h"

#include "eddy/v1/store.pb-c.h"

struct decay_params {
    int64_t half_life_ms;     /* > 0 */
    int bucket_half_lives;    /* bucket width in half-lives (8): older buckets are dropped */
};

/* Add weight 'w' (>= 0) at event time 'ts' to 'd'. */
void decay_add(Eddy__Store__V1__Decayed *d, const struct decay_params *p, int64_t ts, double w);

/* The bucket that event time 'ts' falls in (Decayed.bucket of a contribution at 'ts'). */
int64_t decay_bucket(const struct decay_params *p, int64_t ts);

/* The value of 'd' at event time 'at' (contributions newer than 'at' count at their full
 * weight times 2^((at - t)/half_life), i.e. more than their weight). NULL is 0. */
double decay_value(const Eddy__Store__V1__Decayed *d, const struct decay_params *p, int64_t at);

/* A decayed sum by value (a Decayed's fields): what a stage-2 list keeps of each entry to
 * rank and score it exactly, whatever time and node it is read at. */
struct decay_sum {
    int64_t bucket, cur, prev;
};

/* The sum of 'd' by value (NULL: zero). */
struct decay_sum decay_sum_of(const Eddy__Store__V1__Decayed *d);

/* <0, 0 or >0 as the value of 'a' is below, equal to or above that of 'b': compared exactly
 * (integers, no rounding), so it is the same at every event time and a list ranked by it
 * holds the same entries in the same order whenever and wherever it is read. */
int decay_cmp(const struct decay_sum *a, const struct decay_sum *b, const struct decay_params *p);

/* The value of 'v' at the start of bucket 'ref' (decay_value at event time ref * width),
 * scaled by exact powers of two rather than exp2 of a fraction: values read at two
 * references differ by one power of two, so their ratios are the same bit for bit (while
 * above 2^-1000 or so of the reference's scale: ~130 buckets back). */
double decay_value_at_bucket(const struct decay_sum *v, const struct decay_params *p,
                             int64_t ref);

/* Make '*d' a Decayed if it is NULL (a stored message may lack one: a damaged value, or
 * fuzz_store_values' input), so that decay_add can take it. EDDY_ERR_NOMEM if it cannot. */
eddy_err decay_ensure(Eddy__Store__V1__Decayed **d);

/* A new zeroed Decayed on the heap (free with protobuf_c_message_free_unpacked or as part
 * of its parent message). NULL on allocation failure. */
Eddy__Store__V1__Decayed *decay_new(void);

#endif
