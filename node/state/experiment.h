/* The assignment of users to the variants of an experiment (issue 15, A/B): a pure
 * function of the experiment's name, the user id and the variants' traffic weights, so
 * every node, a replay and a reprocess put a user in the same variant without sharing
 * any state. Different experiments split users independently of each other. */
#ifndef EDDY_EXPERIMENT_H
#define EDDY_EXPERIMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eddy/v1/eddy.pb-c.h"
#include "node/state/recommend.h"

#define EXPERIMENT_BUCKETS 10000 /* a user's bucket: traffic splits in 0.01% steps */
#define EXPERIMENT_NAME_MAX 64
#define EXPERIMENT_VARIANTS_MAX 16
#define EXPERIMENT_WEIGHT_MAX 10000
#define EXPERIMENT_WINDOW_MAX (30LL * 86400000) /* attribution windows: at most 30 days */
#define EXPERIMENT_WEIGHT_LIMIT 1000.0          /* Recommend blend weights: 0 .. this */

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

/* Whether 'e' is a valid definition (names, 1..16 variants with unique names, weights in
 * 1..10000, parameters and windows in bounds). If not, a message starting with the field
 * at fault ("variants[1].weight: ...") goes to 'why'. Pure. */
bool experiment_valid(const Eddy__V1__Experiment *e, char *why, size_t whylen);

/* Whether 'name' is a valid experiment or variant name (1..64 bytes of [A-Za-z0-9_.-]). */
bool experiment_name_valid(const char *name);

/* 'base' with the parameters 'p' sets (may be NULL: 'base' as it is) into *out. */
void experiment_rec_params(const struct rec_params *base, const Eddy__V1__RecommendParams *p,
                           struct rec_params *out);

#endif
