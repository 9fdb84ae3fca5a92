/* Which keys exist, in numbered sets (the txn's: one per partition and table), as 64-bit
 * hashes in memory: the writer's txn answers a read of a key whose hash its set lacks
 * "absent" without a LevelDB lookup (store_txn_index_keys; a co-occurrence pair seen for
 * the first time, a new user).
 *
 * A filter with no false negatives: the owner adds every key it writes, deleted keys stay
 * (their hashes only cost a read), and a set that may have missed a write is dropped and
 * built again from a scan. A hash shared by two keys costs a read, never a wrong answer.
 *
 * Threads: a keyset belongs to its txn's thread; no locking. */
#ifndef EDDY_KEYSET_H
#define EDDY_KEYSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct keyset keyset;

/* A partition's set: none yet (build it before trusting it), being built (adds go in, not
 * trusted yet), complete, or given up for the budget (reads go to LevelDB). */
enum keyset_state { KEYSET_NONE, KEYSET_BUILDING, KEYSET_READY, KEYSET_OFF };

/* Sets of at most 'budget' bytes in all (their slots, 8 bytes each: 16-32 per key). Caller
 * owns the result, NULL if out of memory; free with keyset_free, which accepts NULL. */
keyset *keyset_new(size_t budget);
void keyset_free(keyset *ks);
void keyset_set_budget(keyset *ks, size_t budget);

enum keyset_state keyset_state(const keyset *ks, uint32_t part);

/* Start partition 'part''s set empty (KEYSET_BUILDING), replacing any; the caller adds every
 * existing key, then calls keyset_finish. False if out of memory or budget (KEYSET_OFF). */
bool keyset_begin(keyset *ks, uint32_t part);
/* A built set becomes KEYSET_READY (if no add gave it up meanwhile). */
void keyset_finish(keyset *ks, uint32_t part);

/* Add hash 'h' to the partition's set if it has one (built or being built). A set that
 * would outgrow the budget is freed and the partition goes KEYSET_OFF. */
void keyset_add(keyset *ks, uint32_t part, uint64_t h);

/* False only if the partition's set is complete and lacks 'h': the key does not exist. */
bool keyset_may_hold(const keyset *ks, uint32_t part, uint64_t h);

/* Forget the partition's set (KEYSET_NONE: built again on demand), or every one. */
void keyset_drop(keyset *ks, uint32_t part);
void keyset_drop_all(keyset *ks);

struct keyset_stats {
    size_t bytes;      /* slots allocated */
    size_t keys;       /* hashes held in complete sets */
    uint64_t builds;   /* sets started */
    uint64_t overflows; /* sets given up for the budget */
};
void keyset_stats(const keyset *ks, struct keyset_stats *out);

#endif
