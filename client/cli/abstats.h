/* The statistics `eddy experiments show` prints for an A/B test: Wilson score intervals for
 * rates (CTR, conversion), a normal interval for a mean (revenue per impression) and the
 * two-proportion z-test of a variant against the first one. Pure functions. */
#ifndef EDDY_ABSTATS_H
#define EDDY_ABSTATS_H

#include <stdint.h>

#define ABSTATS_Z95 1.959963984540054 /* the two-sided 95% normal quantile */

struct abstats_interval {
    double value, lo, hi; /* value 0 and an empty [0, 0] when there is no data */
};

/* The rate k/n with its Wilson score interval at quantile z (n = 0: all zero). */
struct abstats_interval abstats_wilson(uint64_t k, uint64_t n, double z);

/* The mean of n values with the given sum and sum of squares, with the normal interval
 * mean ± z·sd/√n (the sample variance; n < 2: the interval is the mean alone). */
struct abstats_interval abstats_mean(double sum, double sumsq, uint64_t n, double z);

/* Two-sided p-value of the pooled two-proportion z-test of k1/n1 against k0/n0 (1 when
 * either n is 0 or neither has a success nor a failure to tell them apart). */
double abstats_two_proportion_p(uint64_t k0, uint64_t n0, uint64_t k1, uint64_t n1);

#endif
