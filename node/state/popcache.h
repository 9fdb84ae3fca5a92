/* The popularity lists of Recommend's stage 2: popular products per category (and
 * overall) from the CAT_POP index, cached for --stage2-staleness. Values are decayed to a
 * reference event time given by the caller (the newest event time seen), never to the
 * wall clock.
 *
 * Threads: any; the lists are guarded by one mutex; a refresh reads LevelDB (or calls the
 * source) outside of it. The refresher thread reads the store (or calls the source) until
 * popcache_free, so free the cache before either goes away. */
#ifndef EDDY_POPCACHE_H
#define EDDY_POPCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/product.h"
#include "node/state/recommend.h"
#include "node/state/store.h"

typedef struct popcache popcache;

/* Where the lists come from when they are not in this node's store (cluster mode): the
 * most popular products of a category across every state node, filling 'out' best
 * first. */
struct popcache_source {
    eddy_err (*top)(void *ud, const char *category, int64_t at, struct scored_product *out,
                    size_t max, size_t *n);
    void *ud;
};

/* Caller owns the result; free with popcache_free. 'st' and 'pp' are borrowed for the
 * cache's lifetime. */
popcache *popcache_new(store *st, const struct product_params *pp, int64_t staleness_ms,
                       size_t top_k);
void popcache_free(popcache *pc);

/* The clock the cache ages its lists by, in ms (default clock_mono_ms; tests pass one they
 * move by hand). Call before the cache is shared between threads. */
void popcache_set_clock(popcache *pc, int64_t (*now_ms)(void));

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

/* Wait until no list is waiting for the refresher or being refreshed by it (tests and
 * benchmarks: what is installed afterwards includes every refresh scheduled before). */
void popcache_sync(popcache *pc);

#endif
