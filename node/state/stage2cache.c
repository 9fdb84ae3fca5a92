/* One handle over the popularity lists and the neighbour cache (see stage2cache.h): it
 * builds both, gives each its half of a cluster source and forwards each call. */
#include "node/state/stage2cache.h"

#include <stdlib.h>

struct stage2cache {
    popcache *lists; /* owned */
    nbcache *nb;     /* owned */
};

stage2cache *stage2cache_new(store *st, const struct product_params *pp, int64_t staleness_ms,
                             size_t top_k)
{
    stage2cache *sc = calloc(1, sizeof(*sc));
    if (!sc)
        return NULL;
    sc->lists = popcache_new(st, pp, staleness_ms, top_k);
    sc->nb = nbcache_new(st, pp, staleness_ms);
    if (!sc->lists || !sc->nb) {
        stage2cache_free(sc);
        return NULL;
    }
    return sc;
}

void stage2cache_free(stage2cache *sc)
{
    if (!sc)
        return;
    popcache_free(sc->lists);
    nbcache_free(sc->nb);
    free(sc);
}

eddy_err stage2cache_set_neighbour_cache(stage2cache *sc, size_t entries)
{
    return nbcache_set_entries(sc->nb, entries);
}

void stage2cache_set_source(stage2cache *sc, const struct stage2cache_source *src)
{
    popcache_set_source(sc->lists, &src->lists);
    nbcache_set_source(sc->nb, &src->neighbours);
}

void stage2cache_set_owns(stage2cache *sc, bool (*owns)(void *ud, uint32_t p), void *ud)
{
    popcache_set_owns(sc->lists, owns, ud);
}

eddy_err stage2cache_top(stage2cache *sc, const char *category, struct scored_product *out,
                         struct decay_sum *sums, size_t max, size_t *n)
{
    return popcache_top(sc->lists, category, out, sums, max, n);
}

eddy_err stage2cache_neighbours(stage2cache *sc, const char *product_id,
                                struct scored_product *out, size_t max, size_t *n)
{
    return nbcache_neighbours(sc->nb, product_id, out, max, n);
}

void stage2cache_neighbour_stats(stage2cache *sc, struct nbcache_stats *out)
{
    nbcache_stats(sc->nb, out);
}
