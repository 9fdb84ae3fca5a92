/* The read side of a state node: Recommend, GetUserProfile, EventCounts and TopProducts
 * answered from committed LevelDB state. Runs on RPC handler threads. Each function
 * fills a response message that the caller owns (free with query_free_response). */
#ifndef EDDY_QUERY_H
#define EDDY_QUERY_H

#include <protobuf-c/protobuf-c.h>

#include "common/err.h"
#include "common/metrics.h"
#include "eddy/v1/eddy.pb-c.h"
#include "node/state/engine.h"
#include "node/state/stage2cache.h"
#include "node/state/usercache.h"

/* Recommend's phases, each timed into its series of eddy_recommend_seconds{phase}: the
 * user (its model and its BOUGHT and SEEN rows, from the user cache or the store), the
 * popularity lists, the neighbour lists, the ranking and the answer, and the whole call. */
enum query_phase {
    QUERY_PHASE_USER,
    QUERY_PHASE_POPULAR,
    QUERY_PHASE_NEIGHBOURS,
    QUERY_PHASE_RANK,
    QUERY_PHASE_TOTAL,
    QUERY_PHASES
};
extern const char *const query_phase_names[QUERY_PHASES];

struct query_ctx {
    engine *eng;
    stage2cache *pop;
    int default_recommendations;
    int max_recommendations;
    /* Global queries cover the partitions for which owns() is true (NULL: all, --dev). */
    bool (*owns)(void *ud, uint32_t partition);
    void *owns_ud;
    size_t max_purchased;        /* purchases read per Recommend for exclusion (0: 10000) */
    usercache *users;            /* borrowed; NULL: every Recommend reads the user's rows */
    metric_histogram *const *recommend_seconds; /* [QUERY_PHASES], borrowed; NULL: untimed */
    /* The caller passed engine_read_barrier(eng, -1) for this query already (a Partial,
     * which reads the partitions' watermarks after it): the queries over every partition
     * do not wait a second time. */
    bool barrier_passed;
};

/* EDDY_ERR_NOT_FOUND if the user has no (unexpired) model. */
eddy_err query_profile(struct query_ctx *q, const char *user_id,
                       Eddy__V1__GetUserProfileResponse **out);
eddy_err query_recommend(struct query_ctx *q, const Eddy__V1__RecommendRequest *req,
                         Eddy__V1__RecommendResponse **out);
/* query_recommend with the ranking parameters 'rec' (NULL: the node's): an experiment's
 * variant. */
eddy_err query_recommend_with(struct query_ctx *q, const Eddy__V1__RecommendRequest *req,
                              const struct rec_params *rec, Eddy__V1__RecommendResponse **out);
/* The counts of experiment 'name' in the partitions the context covers, one entry per
 * variant seen, by variant name, into *out (a GetExperimentResponse without its
 * experiment; caller owns it: free with query_free_response). */
eddy_err query_experiment_stats(struct query_ctx *q, const char *name,
                                Eddy__V1__GetExperimentResponse **out);
eddy_err query_event_counts(struct query_ctx *q, const Eddy__V1__EventCountsRequest *req,
                            Eddy__V1__EventCountsResponse **out);
eddy_err query_top_products(struct query_ctx *q, const Eddy__V1__TopProductsRequest *req,
                            Eddy__V1__TopProductsResponse **out);
/* The same with an explicit result limit (SIZE_MAX: every product, for merging). */
eddy_err query_top_products_n(struct query_ctx *q, const Eddy__V1__TopProductsRequest *req,
                              size_t limit, Eddy__V1__TopProductsResponse **out);

/* Free a response built by these functions. Accepts NULL. */
void query_free_response(ProtobufCMessage *m);

#endif
