/* Recommend's stage-2 reads as one handle: the popularity lists (popcache.h) and the
 * neighbour cache (nbcache.h) over one store and one --stage2-staleness, configured
 * together, so the node, the query and the state service hold a single pointer. Each call
 * goes to one of the two caches; the handle keeps no state of its own.
 *
 * Threads: as the two caches (any). Their refresher threads read the store (or call the
 * source) until stage2cache_free, so free the handle before either goes away. */
#ifndef EDDY_STAGE2CACHE_H
#define EDDY_STAGE2CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/nbcache.h"
#include "node/state/popcache.h"
#include "node/state/product.h"
#include "node/state/recommend.h"
#include "node/state/store.h"

typedef struct stage2cache stage2cache;

/* Where both come from when they are not in this node's store (cluster mode): the lists'
 * source and the neighbours' (their 'ud' may be the same). */
struct stage2cache_source {
    struct popcache_source lists;
    struct nbcache_source neighbours;
};

/* Caller owns the result; free with stage2cache_free. 'st' and 'pp' are borrowed for the
 * handle's lifetime. Lists of 'top_k' (popcache_new); no neighbour entries until
 * stage2cache_set_neighbour_cache. */
stage2cache *stage2cache_new(store *st, const struct product_params *pp, int64_t staleness_ms,
                             size_t top_k);
void stage2cache_free(stage2cache *sc);

/* nbcache_set_entries. Call before the handle is shared between threads. */
eddy_err stage2cache_set_neighbour_cache(stage2cache *sc, size_t entries);

/* Read lists and neighbours through 'src' instead of the local store (borrowed for the
 * handle's life). Set before use. */
void stage2cache_set_source(stage2cache *sc, const struct stage2cache_source *src);

/* popcache_set_owns: the partitions local lists cover. Set before use. */
void stage2cache_set_owns(stage2cache *sc, bool (*owns)(void *ud, uint32_t p), void *ud);

/* popcache_top and nbcache_neighbours. */
eddy_err stage2cache_top(stage2cache *sc, const char *category, struct scored_product *out,
                         struct decay_sum *sums, size_t max, size_t *n);
eddy_err stage2cache_neighbours(stage2cache *sc, const char *product_id,
                                struct scored_product *out, size_t max, size_t *n);

/* nbcache_stats of the neighbour cache (the eddy_neighbour_cache_* metrics). */
void stage2cache_neighbour_stats(stage2cache *sc, struct nbcache_stats *out);

#endif
