/* The popularity lists of Recommend's stage 2: popular products per category (and
 * overall) from the CAT_POP index, cached for --stage2-staleness. A list is ranked by the
 * stored decayed sums, exactly, and scored at the start of the newest decay bucket among
 * its entries (topk.h): its entries and scores are a function of the index alone, never of
 * the wall clock or of the newest event time of the node that reads it, so a cluster
 * member answers them bit for bit as --dev does.
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
#include "node/state/topk.h"

typedef struct popcache popcache;

/* Where the lists come from when they are not in this node's store (cluster mode): the
 * most popular products of a category across every state node, each offered to 'out'
 * with its stored sum (topk_offer_sum; out->cap is how many the list keeps), which ranks
 * them and scores the list. */
struct popcache_source {
    eddy_err (*top)(void *ud, const char *category, struct topk *out);
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

/* Copy up to 'max' most popular products of 'category' ("" = all), best first, into 'out'
 * (and their stored sums into 'sums', unless NULL: what a CategoryTop answer carries);
 * returns the count in *n. The scores are those of the whole list (top_k entries,
 * popcache_new) at its own reference, also when 'max' is smaller. A list older than the staleness (and
 * younger than twice it) is answered as it is while a background thread (the refresher,
 * started by the first such call) reads it again, with every other list in use; a list
 * not cached, or older, is read by the calling thread, alone (and every list at staleness
 * 0). Concurrent calls for a list not cached yet wait for the one that reads it. */
eddy_err popcache_top(popcache *pc, const char *category, struct scored_product *out,
                      struct decay_sum *sums, size_t max, size_t *n);

/* Wait until no list is waiting for the refresher or being refreshed by it (tests and
 * benchmarks: what is installed afterwards includes every refresh scheduled before). */
void popcache_sync(popcache *pc);

#endif
