/* Deterministic assignment of users to experiment variants. */
#include "node/state/experiment.h"

#include <string.h>
#include <xxhash.h>

uint32_t experiment_bucket(const char *experiment, const char *user_id)
{
    /* The user's hash seeded by the experiment's: two experiments split users
     * independently, and ("ab", "c") and ("a", "bc") stay apart. */
    uint64_t seed = XXH3_64bits(experiment, strlen(experiment));
    return (uint32_t)(XXH3_64bits_withSeed(user_id, strlen(user_id), seed) % EXPERIMENT_BUCKETS);
}

int experiment_assign(const char *experiment, const char *user_id,
                      const struct experiment_variant *v, size_t n)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += v[i].weight;
    if (total == 0)
        return -1;
    /* bucket b falls in variant i when cum(i) <= b * total / BUCKETS < cum(i + 1) */
    uint64_t at = (uint64_t)experiment_bucket(experiment, user_id) * total / EXPERIMENT_BUCKETS;
    uint64_t cum = 0;
    for (size_t i = 0; i < n; i++) {
        cum += v[i].weight;
        if (at < cum)
            return (int)i;
    }
    return (int)n - 1; /* not reached: at < total */
}
