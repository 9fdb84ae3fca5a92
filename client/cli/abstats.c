/* A/B test statistics (Wilson 1927; the pooled two-proportion z-test). */
#include "abstats.h"

#include <math.h>

struct abstats_interval abstats_wilson(uint64_t k, uint64_t n, double z)
{
    struct abstats_interval r = {0, 0, 0};
    if (n == 0)
        return r;
    double nn = (double)n, p = (double)k / nn, z2 = z * z;
    double centre = (p + z2 / (2 * nn)) / (1 + z2 / nn);
    double half = z / (1 + z2 / nn) * sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
    r.value = p;
    r.lo = centre - half < 0 ? 0 : centre - half;
    r.hi = centre + half > 1 ? 1 : centre + half;
    return r;
}

struct abstats_interval abstats_mean(double sum, double sumsq, uint64_t n, double z)
{
    struct abstats_interval r = {0, 0, 0};
    if (n == 0)
        return r;
    double nn = (double)n, mean = sum / nn;
    r.value = r.lo = r.hi = mean;
    if (n < 2)
        return r;
    double var = (sumsq - nn * mean * mean) / (nn - 1); /* the sample variance */
    double half = var > 0 ? z * sqrt(var / nn) : 0;
    r.lo = mean - half;
    r.hi = mean + half;
    return r;
}

double abstats_two_proportion_p(uint64_t k0, uint64_t n0, uint64_t k1, uint64_t n1)
{
    if (n0 == 0 || n1 == 0)
        return 1;
    double p0 = (double)k0 / (double)n0, p1 = (double)k1 / (double)n1;
    double pooled = (double)(k0 + k1) / (double)(n0 + n1);
    double se = sqrt(pooled * (1 - pooled) * (1.0 / (double)n0 + 1.0 / (double)n1));
    if (se == 0)
        return 1;
    return erfc(fabs(p1 - p0) / se / sqrt(2.0));
}
