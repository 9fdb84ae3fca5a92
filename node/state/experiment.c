/* Deterministic assignment of users to experiment variants. */
#include "node/state/experiment.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
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

bool experiment_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > EXPERIMENT_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

static bool weight_ok(const Eddy__V1__DoubleValue *w)
{
    return !w || (isfinite(w->value) && w->value >= 0 && w->value <= EXPERIMENT_WEIGHT_LIMIT);
}

/* The parameters of variant 'i': false with the reason in 'why' if out of bounds. */
static bool params_valid(const Eddy__V1__RecommendParams *p, size_t i, char *why, size_t whylen)
{
    const char *bad = NULL;
    if (!p)
        return true;
    if (!weight_ok(p->weight_popular))
        bad = "weight_popular";
    else if (!weight_ok(p->weight_neighbours))
        bad = "weight_neighbours";
    else if (!weight_ok(p->weight_context))
        bad = "weight_context";
    if (bad) {
        snprintf(why, whylen, "variants[%zu].params.%s: must be a number in 0..%g", i, bad,
                 EXPERIMENT_WEIGHT_LIMIT);
        return false;
    }
    if (p->diversity_cap && (p->diversity_cap->value < 0 || p->diversity_cap->value > 1000)) {
        snprintf(why, whylen, "variants[%zu].params.diversity_cap: must be in 0..1000", i);
        return false;
    }
    if (p->exclude != EDDY__V1__EXCLUSION__EXCLUSION_DEFAULT &&
        p->exclude != EDDY__V1__EXCLUSION__EXCLUSION_INTERACTED &&
        p->exclude != EDDY__V1__EXCLUSION__EXCLUSION_PURCHASED) {
        snprintf(why, whylen, "variants[%zu].params.exclude: unknown value %d", i, (int)p->exclude);
        return false;
    }
    if (p->max_recommendations > 1000) {
        snprintf(why, whylen, "variants[%zu].params.max_recommendations: must be in 0..1000", i);
        return false;
    }
    return true;
}

bool experiment_valid(const Eddy__V1__Experiment *e, char *why, size_t whylen)
{
    if (!e) {
        snprintf(why, whylen, "experiment: required");
        return false;
    }
    if (!experiment_name_valid(e->name)) {
        snprintf(why, whylen, "name: 1..%d characters of A-Z a-z 0-9 _ . - (got \"%.80s\")",
                 EXPERIMENT_NAME_MAX, e->name ? e->name : "");
        return false;
    }
    if (e->state != EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_UNSPECIFIED &&
        e->state != EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_RUNNING &&
        e->state != EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_STOPPED) {
        snprintf(why, whylen, "state: unknown value %d", (int)e->state);
        return false;
    }
    if (e->n_variants == 0 || e->n_variants > EXPERIMENT_VARIANTS_MAX) {
        snprintf(why, whylen, "variants: 1..%d required (got %zu)", EXPERIMENT_VARIANTS_MAX,
                 e->n_variants);
        return false;
    }
    for (size_t i = 0; i < e->n_variants; i++) {
        const Eddy__V1__Variant *v = e->variants[i];
        if (!experiment_name_valid(v->name)) {
            snprintf(why, whylen,
                     "variants[%zu].name: 1..%d characters of A-Z a-z 0-9 _ . - (got \"%.80s\")",
                     i, EXPERIMENT_NAME_MAX, v->name ? v->name : "");
            return false;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(e->variants[j]->name, v->name) == 0) {
                snprintf(why, whylen, "variants[%zu].name: \"%s\" is already variants[%zu]", i,
                         v->name, j);
                return false;
            }
        }
        if (v->weight < 1 || v->weight > EXPERIMENT_WEIGHT_MAX) {
            snprintf(why, whylen, "variants[%zu].weight: must be in 1..%d (got %" PRIu32 ")", i,
                     EXPERIMENT_WEIGHT_MAX, v->weight);
            return false;
        }
        if (!params_valid(v->params, i, why, whylen))
            return false;
    }
    if (e->click_window_ms < 0 || e->click_window_ms > EXPERIMENT_WINDOW_MAX) {
        snprintf(why, whylen, "click_window_ms: must be in 0..%lld (30 days)",
                 EXPERIMENT_WINDOW_MAX);
        return false;
    }
    if (e->purchase_window_ms < 0 || e->purchase_window_ms > EXPERIMENT_WINDOW_MAX) {
        snprintf(why, whylen, "purchase_window_ms: must be in 0..%lld (30 days)",
                 EXPERIMENT_WINDOW_MAX);
        return false;
    }
    return true;
}

void experiment_rec_params(const struct rec_params *base, const Eddy__V1__RecommendParams *p,
                           struct rec_params *out)
{
    *out = *base;
    if (!p)
        return;
    if (p->weight_popular)
        out->w_popular = p->weight_popular->value;
    if (p->weight_neighbours)
        out->w_neighbours = p->weight_neighbours->value;
    if (p->weight_context)
        out->w_context = p->weight_context->value;
    if (p->diversity_cap)
        out->diversity_cap = p->diversity_cap->value;
}
