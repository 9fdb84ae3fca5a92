/* The key layout of the state node's LevelDB, and the functions that build and read keys.
 *
 * Every key starts with the partition (big-endian u16) and a table byte, so that one
 * partition is one contiguous key range (cheap to scan, snapshot, copy and delete):
 *
 *   LOG       p T seq:u64                  -> LogRecord (an event's: compact, logrec.h)
 *   DEDUP_ID  p T event_id                 -> Dedup   (format 5 and older: DEDUP keyed by
 *                                                     the id itself; converted to DEDUP)
 *   DEDUP_EXP p T ts:i64 event_id          -> ""      (older layout: expiry index of DEDUP;
 *                                                     now the dedup sweep walks the log)
 *   USER      p T user_id                  -> UserModel
 *   USER_WIN  p T len:u16 user_id ws:i64   -> Counts
 *   USER_LOG  p T len:u16 user_id seq:u64  -> ""      (a user's log entries, for DeleteUser)
 *   PART_WIN  p T ws:i64                   -> Counts  (all users of the partition)
 *   PRODUCT   p T product_id               -> ProductState
 *   PROD_WIN  p T ws:i64 product_id        -> Counts  (window first: range scans by time)
 *   CAT_POP   p T len:u16 category product_id -> Decayed (popularity index by category)
 *   LATE      p T seq:u64                  -> ""      (late events, for inspection)
 *   S2_HW     p T                          -> Stage2Marks (stage-2 exactly-once marks)
 *   OUTBOX    p T seq:u64                  -> Stage2Batch (cluster: not yet forwarded)
 *   BOUGHT    p T len:u16 user_id product_id -> ""    (every purchase: never recommended)
 *   META      p T                          -> PartitionMeta
 *   SEEN      p T len:u16 user_id product_id -> ""    (every view, click or add to cart:
 *                                                     left out of Recommend unless asked)
 *   IMPR      p T len:u16 user_id          -> UserImpressions (latest Recommend answers in
 *                                                     an experiment: attribution.h)
 *   EXP_STAT  p T len:u16 experiment variant -> VariantCounts (per partition)
 *   EXP_DEF   0xffff T name                -> ExperimentDef (--dev: the experiments,
 *                                                     outside every partition)
 *   COOC      p T len:u16 product neighbour -> CoOccurrencePair (one co-occurrence pair's
 *                                                     decayed sum; the product's partition)
 *   PART_ACK  p T                          -> PartitionMeta (duplicates and epoch only:
 *                                                     what no log record rebuilds, synced
 *                                                     with the log when META is behind)
 *   DEDUP     p T xxh3_128(event_id):16    -> ""      (an event id remembered for dedup:
 *                                                     apply_dedup_key)
 *
 * i64 values are stored with the sign bit flipped, big-endian, so they sort numerically. */
#ifndef EDDY_STORE_KEY_H
#define EDDY_STORE_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum store_table {
    T_LOG = 1,
    T_DEDUP_ID = 2, /* PartitionMeta.format 5 and older */
    T_DEDUP_EXP = 3,
    T_USER = 4,
    T_USER_WIN = 5,
    T_USER_LOG = 6,
    T_PART_WIN = 7,
    T_PRODUCT = 8,
    T_PROD_WIN = 9,
    T_CAT_POP = 10,
    T_LATE = 11,
    T_S2_HW = 12,
    T_OUTBOX = 13,
    T_BOUGHT = 14,
    T_META = 15,
    T_SEEN = 16, /* after META: data written before it simply has no SEEN rows */
    T_IMPR = 17,
    T_EXP_STAT = 18,
    T_EXP_DEF = 19, /* partition EXP_DEF_PARTITION only */
    T_COOC = 20,    /* since PartitionMeta.format 3 */
    T_PART_ACK = 21, /* since PartitionMeta.format 4 */
    T_DEDUP = 22,    /* since PartitionMeta.format 6 */
};

#define STORE_KEY_MAX 1024
#define EXP_DEF_PARTITION 0xffff /* above every partition (at most 65535 of them) */

/* A key under construction: fixed buffer, no allocation. */
struct store_key {
    size_t len;
    unsigned char buf[STORE_KEY_MAX];
};

/* Whether table 't' holds stage-2 state (a product partition's: PRODUCT, PROD_WIN, CAT_POP,
 * S2_HW, COOC), which the S2_HW marks make exactly-once, rather than state only the
 * partition's own log rebuilds. */
bool store_table_stage2(unsigned t);

void key_init(struct store_key *k, uint32_t partition, enum store_table t);
void key_u16(struct store_key *k, uint16_t v);
void key_u64(struct store_key *k, uint64_t v);
void key_i64(struct store_key *k, int64_t v);
void key_bytes(struct store_key *k, const char *s, size_t n);
void key_str(struct store_key *k, const char *s);          /* raw bytes, last component */
void key_lstr(struct store_key *k, const char *s);         /* u16 length + bytes */

/* Decoders for key components at *off; return false if the key is too short. */
bool key_get_u64(const unsigned char *key, size_t len, size_t *off, uint64_t *v);
bool key_get_i64(const unsigned char *key, size_t len, size_t *off, int64_t *v);

/* Set 'end' to the first key after every key that starts with 'prefix'. */
void key_prefix_end(const struct store_key *prefix, struct store_key *end);

#endif
