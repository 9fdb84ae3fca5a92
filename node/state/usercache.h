/* Recommend's user cache: what Recommend reads of a user (its model's top categories,
 * recent items and cart, its BOUGHT and SEEN rows), kept per user in memory within a
 * budget of bytes (--user-cache-size, clock eviction, 16 shards), so a warm Recommend reads
 * nothing from the store.
 *
 * An entry is exact, never stale: it is stamped with the store's write counts of the
 * user's USER key and BOUGHT and SEEN prefixes (store_key_writes), read before the store
 * was, and answers only while the counts have not moved (any committed write of the user's
 * model or rows, a DeleteUser, a range replace or a sweep moves them). The state TTL is not
 * the cache's business: the entry keeps the model's last_ts and the caller compares it with
 * the watermark of each call.
 *
 * Threads: any; each shard has a mutex, held only to find, copy, insert or evict an entry
 * (never across a read of the store). */
#ifndef EDDY_USERCACHE_H
#define EDDY_USERCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/store.h"

#define USERCACHE_MAX_CATS 3    /* the top categories Recommend blends */
#define USERCACHE_MAX_RECENT 10 /* the recent items whose neighbours it blends */

/* What Recommend reads of one user, as stored. The strings and arrays are borrowed: from
 * the caller's buffers when it fills the cache, from a usercache_buf after a hit. */
struct user_recview {
    bool present;              /* the user has a model (else nothing below is set) */
    int64_t last_ts;           /* the model's, for the state TTL */
    size_t ncats;              /* model_top_categories, best first */
    const char *cats[USERCACHE_MAX_CATS];
    double affinity[USERCACHE_MAX_CATS];
    size_t nrecent;            /* views and purchases, newest first */
    const char *recent[USERCACHE_MAX_RECENT];
    const char *const *cart;   /* products in the cart now */
    size_t ncart;
    const char *const *bought; /* BOUGHT rows, key order */
    size_t nbought;
    const char *const *seen;   /* SEEN rows, key order */
    size_t nseen;
};

/* Where a hit is copied: one growable block, reused from call to call (a thread's own).
 * Zero it before the first use; free with usercache_buf_release. */
struct usercache_buf {
    char *p;
    size_t cap;
};
void usercache_buf_release(struct usercache_buf *b);

typedef struct usercache usercache;

/* Caller owns the result; free with usercache_free. 'st' is borrowed for the cache's
 * lifetime; its USER, BOUGHT and SEEN writes are counted from now on. 'bytes' is the
 * budget of the entries (their blocks and bookkeeping, estimated); 0 caches nothing. NULL
 * if out of memory. */
usercache *usercache_new(store *st, size_t bytes);
void usercache_free(usercache *uc);

/* The stamp of user 'user_id' of partition 'p' now: read it before reading the user from
 * the store, and give both to usercache_put. */
uint64_t usercache_stamp(usercache *uc, uint32_t p, const char *user_id);

/* Whether the cache holds 'user_id' at 'stamp' (what usercache_stamp says now): then its
 * view is copied into 'buf' and *out points into it (valid until the next use of 'buf'). */
bool usercache_get(usercache *uc, const char *user_id, uint64_t stamp,
                   struct usercache_buf *buf, struct user_recview *out);

/* Cache 'v' (copied) as 'user_id' read at 'stamp', replacing what the cache held for it
 * and evicting others past the budget. An entry over an eighth of a shard's budget is not
 * cached. Errors are not reported: the cache only loses the entry. */
void usercache_put(usercache *uc, const char *user_id, uint64_t stamp,
                   const struct user_recview *v);

/* Counters (metrics, tests). */
struct usercache_stats {
    uint64_t hits, misses, evictions;
    size_t entries, bytes;
};
void usercache_stats(usercache *uc, struct usercache_stats *out);

#endif
