/* A token bucket as a pure function of the time it is given: no clock, no lock, so quotas
 * are unit-testable with made-up times. The caller serialises access to one bucket. */
#ifndef EDDY_TOKEN_BUCKET_H
#define EDDY_TOKEN_BUCKET_H

#include <stdbool.h>
#include <stdint.h>

/* Zero-initialised = full at its first use. Plain data, owned by the caller. */
struct token_bucket {
    double tokens;   /* may go below zero: a batch larger than what is left is taken whole
                        and the debt delays the next calls */
    int64_t last_ns; /* time of the last refill */
    bool started;
};

/* Refill 'b' at 'rate' tokens per second (capped at 'burst', and full at its first use),
 * then take 'n' tokens at time 'now_ns' (any monotonic clock, never going back). A request
 * is admitted when min(n, burst) tokens are there, so a batch larger than the burst still
 * passes once the bucket is full; what it takes beyond the balance is owed. Returns true if
 * admitted; otherwise nothing is taken and *retry_ms (if not NULL) is the wait, at least 1 ms,
 * until it would be. rate <= 0 means unlimited (always true). */
bool token_bucket_take(struct token_bucket *b, double rate, double burst, double n,
                       int64_t now_ns, int64_t *retry_ms);

#endif
