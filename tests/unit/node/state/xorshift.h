/* The tests' pseudo-random numbers: Marsaglia's xorshift64 from a fixed seed, so that a
 * failing case is the same case on every run. One sequence per test program. */
#ifndef EDDY_TEST_XORSHIFT_H
#define EDDY_TEST_XORSHIFT_H

#include <stdint.h>

static uint64_t rng = 88172645463325252ULL;

static inline uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

#endif
