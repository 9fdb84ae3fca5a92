/* The neighbour cache of Recommend's stage 2: a product's co-occurrence neighbours, cached
 * per product for --stage2-staleness (--neighbour-cache entries, clock eviction). Scores
 * are the product's decayed sums at a reference of its own (product_neighbours: the start
 * of its newest co-occurrence bucket), never at the wall clock or at the newest event time
 * of the node that reads them, so every node answers a product's list bit for bit alike.
 *
 * A local entry keeps the product's --max-neighbours strongest pairs as product_neighbours
 * ranks and scores them, so an answer from it is exactly the uncached answer over the same
 * stored state; an entry read through an nbcache_source keeps the list as the owner
 * answered it (the owner's own such answer). Products without state are cached too (empty
 * lists).
 *
 * Threads: any; the entries are guarded by 16 sharded mutexes; a read of the store (or a
 * call of the source) happens outside of them. The refresher thread reads the store (or
 * calls the source) until nbcache_free, so free the cache before either goes away. */
#ifndef EDDY_NBCACHE_H
#define EDDY_NBCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/product.h"
#include "node/state/recommend.h"
#include "node/state/store.h"

typedef struct nbcache nbcache;

/* Where neighbours come from when they are not in this node's store (cluster mode): a
 * product's neighbours from the owner of its partition, filling 'out' best first. */
struct nbcache_source {
    eddy_err (*neighbours)(void *ud, const char *product_id, struct scored_product *out,
                           size_t max, size_t *n);
    void *ud;
};

/* Caller owns the result; free with nbcache_free. 'st' and 'pp' are borrowed for the
 * cache's lifetime. Caches nothing until nbcache_set_entries. */
nbcache *nbcache_new(store *st, const struct product_params *pp, int64_t staleness_ms);
void nbcache_free(nbcache *nc);

/* Cache the neighbour lists of up to 'entries' products (0 = no cache: every call reads
 * the store or the source). Each entry holds a product's neighbours (~50 at the default
 * --max-neighbours, about 3 kB). Call before the cache is shared between threads. */
eddy_err nbcache_set_entries(nbcache *nc, size_t entries);

/* The clock the cache ages its entries by, in ms (default clock_mono_ms; tests pass one
 * they move by hand). Call before the cache is shared between threads. */
void nbcache_set_clock(nbcache *nc, int64_t (*now_ms)(void));

/* Read neighbours through 'src' instead of the local store (borrowed for the cache's
 * life). Set before use. */
void nbcache_set_source(nbcache *nc, const struct nbcache_source *src);

/* Counters of the cache (metrics, tests and diagnostics). */
struct nbcache_stats {
    uint64_t hits, misses, evictions;
    uint64_t revalidated; /* expired entries found unchanged in the store: not read again
                           * (by the call that found them, or by the refresher) */
    size_t entries;
};
void nbcache_stats(nbcache *nc, struct nbcache_stats *out);

/* Copy up to 'max' strongest neighbours of 'product_id', best first. A local entry
 * whose product's pairs were not written since it was read answers whatever its age (and
 * is current again). Another entry older than the staleness (and younger than twice it)
 * answers while the refresher reads it again; a missing or older entry is read by the
 * calling thread. */
eddy_err nbcache_neighbours(nbcache *nc, const char *product_id, struct scored_product *out,
                            size_t max, size_t *n);

/* Wait until no entry is waiting for the refresher or being refreshed by it (tests and
 * benchmarks: what is installed afterwards includes every refresh scheduled before). */
void nbcache_sync(nbcache *nc);

#endif
