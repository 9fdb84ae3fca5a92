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

/* Make '*d' a Decayed if it is NULL (a stored message may lack one: a damaged value, or
 * fuzz_store_values' input), so that decay_add can take it. EDDY_ERR_NOMEM if it cannot. */
eddy_err decay_ensure(Eddy__Store__V1__Decayed **d);

/* A new zeroed Decayed on the heap (free with protobuf_c_message_free_unpacked or as part
 * of its parent message). NULL on allocation failure. */
Eddy__Store__V1__Decayed *decay_new(void);

#endif
