/* The stage-2 read side used by Recommend: popular products per category (and overall)
 * from the CAT_POP index, cached for --stage2-staleness, and a product's co-occurrence
 * neighbours, cached per product for --stage2-staleness too (--neighbour-cache entries,
 * clock eviction). Values are decayed to a reference event time given by the caller (the
 * newest event time seen), never to the wall clock.
 *
 * Neighbour cache: a local entry keeps the product's stored neighbours undecayed (bucket
 * sums), so an answer from it is exactly the uncached answer over the same stored state,
 * decayed to the caller's time; an entry read through a popcache_source keeps the scored
 * list as the owner answered it (decayed to the time of that call: decay scales a list
 * uniformly, so its order and normalised scores do not change). Products without state are
 * cached too (empty lists).
 *
 * Threads: any; the popularity lists are guarded by one mutex, the neighbour cache by 16
 * sharded mutexes; a refresh reads LevelDB (or calls the source) outside of them. The
 * refresher threads (one for the lists, one for neighbour entries) read the store (or call
 * the source) until popcache_free, so free the cache before either goes away. */
#ifndef EDDY_POPCACHE_H
#define EDDY_POPCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/product.h"
#include "node/state/recommend.h"
#include "node/state/store.h"

typedef struct popcache popcache;

/* Where the lists come from when they are not in this node's store (cluster mode): the
 * most popular products of a category across every state node, and a product's neighbours
 * from the owner of its partition. Both fill 'out' best first. */
struct popcache_source {
    eddy_err (*top)(void *ud, const char *category, int64_t at, struct scored_product *out,
                    size_t max, size_t *n);
    eddy_err (*neighbours)(void *ud, const char *product_id, int64_t at,
                           struct scored_product *out, size_t max, size_t *n);
    void *ud;
};

/* Caller owns the result; free with popcache_free. 'st' and 'pp' are borrowed for the
 * cache's lifetime. */
popcache *popcache_new(store *st, const struct product_params *pp, int64_t staleness_ms,
                       size_t top_k);
void popcache_free(popcache *pc);

/* Cache the neighbour lists of up to 'entries' products (0 = no cache: every call reads
 * the store or the source). Each entry holds a product's neighbours (~50 at the default
 * --max-neighbours, about 3 kB). Call before the cache is shared between threads. */
eddy_err popcache_set_neighbour_cache(popcache *pc, size_t entries);

/* The clock the cache ages its lists and entries by, in ms (default clock_mono_ms; tests
 * pass one they move by hand). Call before the cache is shared between threads. */
void popcache_set_clock(popcache *pc, int64_t (*now_ms)(void));

/* Counters of the neighbour cache (for tests and diagnostics). */
struct popcache_stats {
    uint64_t hits, misses, evictions;
    uint64_t revalidated; /* expired entries found unchanged in the store: not read again */
    size_t entries;
};
void popcache_stats(popcache *pc, struct popcache_stats *out);

/* Read lists through 'src' instead of the local store (borrowed for the cache's life). */
void popcache_set_source(popcache *pc, const struct popcache_source *src);

/* Local lists cover only the partitions for which 'owns' is true (cluster: the node's
 * own; a partition copied here by a move, or not yet deleted after one, must not count
 * twice). NULL: every partition (--dev). Set before use. */
void popcache_set_owns(popcache *pc, bool (*owns)(void *ud, uint32_t p), void *ud);

/* Copy up to 'max' most popular products of 'category' ("" = all) at event time 'at',
 * best first, into 'out'; returns the count in *n. A list older than the staleness (and
 * younger than twice it) is answered as it is while a background thread (the refresher,
 * started by the first such call) reads it again, with every other list in use, decayed
 * to this call's 'at'; a list not cached, or older, is read by the calling thread, alone
 * (and every list at staleness 0). Concurrent calls for a list not cached yet wait for
 * the one that reads it. */
eddy_err popcache_top(popcache *pc, const char *category, int64_t at,
                      struct scored_product *out, size_t max, size_t *n);

/* Wait until no list or neighbour entry is waiting for a refresher or being refreshed by
 * one (tests and benchmarks: what is installed afterwards includes every refresh
 * scheduled before). */
void popcache_sync(popcache *pc);

/* Copy up to 'max' strongest neighbours of 'product_id' at event time 'at'. An entry
 * older than the staleness (and younger than twice it) answers while the neighbour
 * refresher reads it again; a missing or older entry is read by the calling thread. */
eddy_err popcache_neighbours(popcache *pc, const char *product_id, int64_t at,
                             struct scored_product *out, size_t max, size_t *n);

#endif
