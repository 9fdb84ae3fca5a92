/* The assignment of users to the variants of an experiment (issue 15, A/B): a pure
 * function of the experiment's name, the user id and the variants' traffic weights, so
 * every node, a replay and a reprocess put a user in the same variant without sharing
 * any state. Different experiments split users independently of each other. */
#ifndef EDDY_EXPERIMENT_H
#define EDDY_EXPERIMENT_H

#include <stddef.h>
#include <stdint.h>

#define EXPERIMENT_BUCKETS 10000 /* a user's bucket: traffic splits in 0.01% steps */

struct experiment_variant {
    const char *name;          /* borrowed */
    uint32_t weight;           /* share of traffic, relative to the variants' sum */
};

/* The bucket of 'user_id' in 'experiment', in [0, EXPERIMENT_BUCKETS). */
uint32_t experiment_bucket(const char *experiment, const char *user_id);

/* The index of the variant 'user_id' is in: the variants take consecutive ranges of
 * buckets in proportion to their weights, in the order given (so raising one variant's
 * weight moves users only into it from the variants after it, never between others).
 * -1 if no variant has a weight (the experiment is stopped or empty). */
int experiment_assign(const char *experiment, const char *user_id,
                      const struct experiment_variant *v, size_t n);

#endif
