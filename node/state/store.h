/* The state node's LevelDB: key layout, typed values and write transactions.
 *
 * Every key starts with the partition (big-endian u16) and a table byte, so that one
 * partition is one contiguous key range (cheap to scan, snapshot, copy and delete):
 *
 *   LOG       p T seq:u64                  -> LogRecord
 *   DEDUP     p T event_id                 -> Dedup
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
 *
 * i64 values are stored with the sign bit flipped, big-endian, so they sort numerically.
 *
 * Threads: the LevelDB handle is shared; reads may run on any thread. A store_txn belongs
 * to one thread (the writer) and is not locked. */
#ifndef EDDY_STORE_H
#define EDDY_STORE_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

enum store_table {
    T_LOG = 1,
    T_DEDUP = 2,
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
};

#define STORE_KEY_MAX 1024

/* A key under construction: fixed buffer, no allocation. */
struct store_key {
    size_t len;
    unsigned char buf[STORE_KEY_MAX];
};

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

typedef struct store store;
typedef struct store_txn store_txn;

struct store_opts {
    const char *path;          /* directory of the LevelDB */
    int64_t cache_bytes;       /* LevelDB block cache (default 64 MiB) */
    int64_t write_buffer_bytes;/* memtable size (default 16 MiB) */
};

/* Open (creating if missing) the database at opts->path. Caller owns *out; free with
 * store_close. On failure returns an error and writes LevelDB's message to 'err'. */
eddy_err store_open(const struct store_opts *opts, store **out, char *err, size_t errlen);
void store_close(store *s);

/* Read 'key' from the committed state; *val is malloc'd (caller frees), NULL if absent. */
eddy_err store_get(store *s, const struct store_key *key, char **val, size_t *vlen);

/* Read and decode a message; *msg is NULL if absent. Free with protobuf_c_message_free_unpacked. */
eddy_err store_get_msg(store *s, const struct store_key *key,
                       const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg);

/* Iterate keys in [start, end) of the committed state, calling fn for each. fn returns 0
 * to continue, 1 to stop. Keys and values are borrowed for the callback. */
typedef int store_scan_fn(void *ud, const unsigned char *key, size_t klen, const char *val,
                          size_t vlen);
eddy_err store_scan(store *s, const struct store_key *start, const struct store_key *end,
                    store_scan_fn *fn, void *ud);

/* store_scan over the ranges [starts[i], ends[i]) in turn, with one iterator (creating a
 * LevelDB iterator costs about as much as a seek: a scan of one small range in each of
 * hundreds of partitions is dominated by it). fn returning 1 stops the whole scan. */
eddy_err store_scan_ranges(store *s, const struct store_key *starts,
                           const struct store_key *ends, size_t n, store_scan_fn *fn, void *ud);

/* Set 'end' to the first key after every key that starts with 'prefix'. */
void key_prefix_end(const struct store_key *prefix, struct store_key *end);

/* Delete 'key' at once, outside any txn, without sync (for entries only one thread
 * removes, such as forwarded OUTBOX records: losing the delete in a crash only causes a
 * harmless re-send). */
eddy_err store_delete(store *s, const struct store_key *key);

/* Approximate bytes on disk of the whole database. */
uint64_t store_approximate_size(store *s);

/* Every key/value of the given tables, in key order, as "hexkey hexvalue\n" lines to
 * 'out' (for the determinism tests and debugging). 'tables' is a bitmask of 1 << table. */
eddy_err store_dump(store *s, uint32_t tables, void *out_file);

/* --- snapshots -----------------------------------------------------------------------
 * A consistent, read-only view of the whole database as of store_snapshot_new: writes
 * committed afterwards (by the writer thread, concurrently) are invisible through it. Used
 * to checkpoint a partition while it keeps taking writes. Any thread; one thread at a time
 * per snapshot. Caller owns the snapshot; free with store_snapshot_free (before
 * store_close). Reads through a snapshot verify LevelDB's block checksums and do not fill
 * the block cache (a checkpoint scan must not evict the hot set). */
typedef struct store_snapshot store_snapshot;
store_snapshot *store_snapshot_new(store *s); /* NULL if out of memory */
void store_snapshot_free(store_snapshot *snap);

/* store_get_msg as of the snapshot. */
eddy_err store_snapshot_get_msg(store_snapshot *snap, const struct store_key *key,
                                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg);

/* store_scan as of the snapshot. */
eddy_err store_snapshot_scan(store_snapshot *snap, const struct store_key *start,
                             const struct store_key *end, store_scan_fn *fn, void *ud);

/* --- replacing a key range ------------------------------------------------------------
 * A store_batch collects puts off-line (e.g. the records of a checkpoint file); nothing
 * reaches the database until store_replace_range. Caller owns it; free with
 * store_batch_free. Not locked: one thread. */
typedef struct store_batch store_batch;
store_batch *store_batch_new(void); /* NULL if out of memory */
void store_batch_free(store_batch *b);
/* Add a put of 'klen' bytes of key (1 .. STORE_KEY_MAX) and 'vlen' bytes of value (both
 * copied). EDDY_ERR_INVALID for a bad key length. */
eddy_err store_batch_put(store_batch *b, const void *key, size_t klen, const void *val,
                         size_t vlen);
size_t store_batch_count(const store_batch *b);
/* The smallest key put so far into *out (false, and *out untouched, if none): with the key
 * that ends it, the range a batch of ascending keys replaces. */
bool store_batch_first(const store_batch *b, struct store_key *out);

/* Atomically make [start, end) hold exactly the puts of 'b': one synced LevelDB write
 * deletes every key in the range and then writes the puts, so a crash leaves either the
 * old range or the new one. Every put must lie in [start, end) (EDDY_ERR_INVALID
 * otherwise, and nothing is written). *deleted (may be NULL) receives the number of keys
 * that were in the range. The caller makes sure nothing else writes the range meanwhile
 * (a key committed after the range was read would survive). 'b' is unchanged. */
eddy_err store_replace_range(store *s, const struct store_key *start, const struct store_key *end,
                             const store_batch *b, uint64_t *deleted);

/* A stream of puts in ascending key order (a checkpoint being loaded), cut into batches of
 * about 'max_bytes' of keys and values, each handed to 'write' as the range [its first
 * key, the next batch's first key) (the last one: up to the 'end' given to
 * store_range_loader_finish). 'write' borrows the batch for the call. One thread. */
typedef eddy_err store_range_write_fn(void *ud, const struct store_key *start,
                                      const struct store_key *end, const store_batch *b);
struct store_range_loader {
    store_batch *b;
    size_t bytes, max_bytes;
    store_range_write_fn *write;
    void *ud;
};
eddy_err store_range_loader_init(struct store_range_loader *l, size_t max_bytes,
                                 store_range_write_fn *write, void *ud);
/* Add a put (copied); may first hand the full batch to 'write' and return its error. */
eddy_err store_range_loader_put(struct store_range_loader *l, const void *key, size_t klen,
                                const void *val, size_t vlen);
/* Hand the last batch to 'write' as [its first key, end). */
eddy_err store_range_loader_finish(struct store_range_loader *l, const struct store_key *end);
void store_range_loader_release(struct store_range_loader *l);

/* store_replace_range without the sync: atomic, but durable only once a later synced write
 * or store_sync_log has run (a bulk load in many batches: one sync at its end, not one
 * per batch). */
eddy_err store_replace_range_nosync(store *s, const struct store_key *start,
                                    const struct store_key *end, const store_batch *b,
                                    uint64_t *deleted);

/* Make every write so far durable, unsynced ones included: fsync each write-ahead log file
 * of the database (LevelDB's NNNNNN.log; what LevelDB compacted into tables and deleted
 * is durable already, its tables and manifest being synced). Blocks on the disk; any
 * thread. */
eddy_err store_sync_log(store *s);

/* --- write transactions ---------------------------------------------------------------
 * A txn collects puts and deletes in an in-memory overlay, so reads through the txn see its
 * own uncommitted writes; store_txn_commit writes every pending key once, with its last
 * value, in one LevelDB WriteBatch (synced if 'sync'), and keeps the txn for reuse.
 *
 * Kept values: what the txn read (bytes, or the decoded message of store_txn_obj_get) stays
 * in the txn after the commit, so a later group finds it without a LevelDB read and a
 * protobuf decode. They are charged what they occupy (the entry, its key, and the bytes
 * or the decoded message's malloc'd blocks: pb_heap_size) against the store's budget
 * (store_set_kept_bytes, default
 * STORE_KEPT_BYTES_DEFAULT) and evicted least recently used first. A kept value is always
 * the committed one, with no call needed from the txn's owner: every write that bypasses
 * the txn — store_replace_range (checkpoint loads, partition drops, reprocess swaps), the
 * commit of another txn on the same store, store_delete of a key in a table some txn keeps
 * values of — bumps the store's generation and records the key range written, and a txn
 * that sees a new generation (at its next read or commit) forgets what it kept in those
 * ranges: everything after another txn's commit (its keys are not recorded) or when it
 * missed more than the last 16 writes. Such writes must not run while the txn has
 * uncommitted or in-flight writes or a caller holds values borrowed from it (forgetting
 * frees them):
 * the engine runs them as jobs alone in their group, between groups.
 * store_txn_reset forgets everything too. */
#define STORE_KEPT_BYTES_DEFAULT ((size_t)256 << 20)

/* The budget of the values each txn of 's' keeps (estimated bytes). Call before the txns
 * are used. */
void store_set_kept_bytes(store *s, size_t bytes);

store_txn *store_txn_new(store *s);
void store_txn_free(store_txn *t);
/* Read 'key' as the txn sees it. *val is borrowed until the txn is committed or reset. */
eddy_err store_txn_get(store_txn *t, const struct store_key *key, const char **val,
                       size_t *vlen, bool *found);
eddy_err store_txn_get_msg(store_txn *t, const struct store_key *key,
                           const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg);
eddy_err store_txn_put(store_txn *t, const struct store_key *key, const void *val, size_t vlen);
eddy_err store_txn_put_msg(store_txn *t, const struct store_key *key, const ProtobufCMessage *msg);
eddy_err store_txn_del(store_txn *t, const struct store_key *key);
/* Delete every committed and pending key in [start, end). Returns the number deleted in *n. */
eddy_err store_txn_del_range(store_txn *t, const struct store_key *start,
                             const struct store_key *end, uint64_t *n);
/* The decoded view of the txn, for values read and changed many times (user models,
 * product states, window counts): the message at 'key' decoded once (NULL if absent) and
 * kept across commits, borrowed until the txn is committed or reset. Change it in place
 * and call store_txn_obj_set with the same pointer to mark it changed, or pass a new
 * message (the txn takes ownership, even on error). Changed messages are packed once, at
 * commit. A message changed in place must be passed to store_txn_obj_set before the
 * commit (or the txn reset): otherwise the kept value differs from the stored one. A later
 * store_txn_put / store_txn_del of the key discards the object. */
eddy_err store_txn_obj_get(store_txn *t, const struct store_key *key,
                           const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj);
eddy_err store_txn_obj_set(store_txn *t, const struct store_key *key, ProtobufCMessage *obj);
/* store_txn_obj_get, with an absent message created empty and set (to be filled in place);
 * *created says whether it was. */
eddy_err store_txn_obj_get_or_new(store_txn *t, const struct store_key *key,
                                  const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj,
                                  bool *created);
/* A faster encoder for one message type, used when the txn packs changed objects at
 * commit: it must write exactly protobuf_c_message_pack's bytes (the stored state is
 * compared byte for byte). It sets *buf (malloc'd, the txn frees it) and *len and returns
 * true, or returns false to leave the message to protobuf-c (or on allocation failure).
 * Registering the same function again is free; up to STORE_TXN_PACKERS types. */
#define STORE_TXN_PACKERS 4
typedef bool store_pack_fn(const ProtobufCMessage *m, uint8_t **buf, size_t *len);
void store_txn_set_packer(store_txn *t, const ProtobufCMessageDescriptor *desc,
                          store_pack_fn *fn);

/* Write the pending keys. On an error nothing is kept and the txn is reset. The same as
 * store_txn_seal, store_txn_write and store_txn_settle in a row. */
eddy_err store_txn_commit(store_txn *t, bool sync);

/* A commit in three steps, so that the synced write (the slow part) can run on another
 * thread while the txn's thread goes on applying the next group through the txn. One
 * sealed write at a time, in this order:
 * - store_txn_seal (txn's thread): the pending keys become the sealed write. They stay "in
 *   flight" in the txn: its reads and scans see them (LevelDB may not have them yet),
 *   writes to them are pending again (for the next seal), and nothing forgets or evicts
 *   them. On an error (out of memory) the txn is reset and there is nothing to write.
 * - store_txn_write (any thread): one LevelDB write of the sealed keys (none: nothing
 *   done). It reads only the sealed batch, so the txn's thread may use the txn meanwhile
 *   (reads, puts, objects; not seal, settle, reset or commit).
 * - store_txn_settle (txn's thread), with store_txn_write's result: on success the
 *   in-flight keys become kept values or leave the txn; on an error the txn is reset,
 *   pending writes made since the seal included (they were computed from values that
 *   never reached the store).
 * A write around the txn (see "Kept values") must not run while a write is in flight. */
eddy_err store_txn_seal(store_txn *t);
eddy_err store_txn_write(store_txn *t, bool sync);
void store_txn_settle(store_txn *t, eddy_err write_err);

/* Write counts, for caches of values read from the store (Recommend's neighbour entries):
 * after store_track_writes(s, T), every committed txn write of a key of table T moves
 * store_key_writes of that key, and so does every write around the txns (store_delete of
 * a kept table, store_replace_range) for all keys. Read the count before the value: if it
 * has not moved since, the value is still the stored one. Counts are hashed into 65,536
 * slots: a key may see another's writes (a needless re-read), never miss its own. */
void store_track_writes(store *s, enum store_table t);
uint64_t store_key_writes(store *s, const struct store_key *key);

/* Fault injection for tests: the next 'n' store_txn_write calls with keys to write fail
 * with 'err' and write nothing (a disk error, for the engine's failed-write path). */
void store_fail_writes(store *s, int n, eddy_err err);
/* Drop pending writes without committing, and every kept value. */
void store_txn_reset(store_txn *t);
/* Keys written (put, deleted or changed objects) since the last commit or seal. */
size_t store_txn_pending(const store_txn *t);

/* What the txn's kept values did (for tests and diagnostics). */
struct store_txn_stats {
    uint64_t hits;      /* reads answered by the txn: pending or kept values */
    uint64_t misses;    /* reads that went to LevelDB */
    uint64_t evictions; /* kept values dropped for the budget */
    uint64_t forgets;   /* times everything kept was dropped: the store was written around
                         * at unknown keys (another txn's commit) or too often */
    uint64_t forgets_ranged; /* times the kept values of written key ranges were dropped */
    size_t kept;        /* values kept now */
    size_t kept_bytes;  /* their estimated size */
};
void store_txn_stats(const store_txn *t, struct store_txn_stats *out);

/* Scan [start, end) as the txn sees it: committed keys merged with the txn's pending puts
 * and deletes, in key order. Used by the apply path so that what it deletes does not
 * depend on where group-commit boundaries fell. 'fn' must not modify the txn (collect
 * keys, then change them after the scan). */
eddy_err store_txn_scan(store_txn *t, const struct store_key *start, const struct store_key *end,
                        store_scan_fn *fn, void *ud);

#endif
