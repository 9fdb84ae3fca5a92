/* Write transactions of the state node's LevelDB: the writer's in-memory overlay of pending
 * writes and kept values, committed in one LevelDB WriteBatch per group.
 *
 * Threads: a store_txn belongs to one thread at a time and is not locked (the engine hands
 * its txn between the writer and the apply thread under a mutex, engine.c's txn token);
 * only store_txn_write may run on another thread meanwhile (see the commit in three
 * steps). */
#ifndef EDDY_STORE_TXN_H
#define EDDY_STORE_TXN_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/store.h"
#include "node/state/store_key.h"

typedef struct store_txn store_txn;

/* A txn collects puts and deletes in an in-memory overlay, so reads through the txn see its
 * own uncommitted writes; store_txn_commit writes every pending key once, with its last
 * value, in one LevelDB WriteBatch (synced if 'sync'), and keeps the txn for reuse.
 *
 * Kept values: what the txn read (bytes, or the decoded message of store_txn_obj_get) stays
 * in the txn after the commit, so a later group finds it without a LevelDB read and a
 * protobuf decode. The store's budget (store_set_kept_bytes, default
 * STORE_KEPT_BYTES_DEFAULT) covers all the txn holds: its table (the entries, slots and
 * keys, at their high-water mark) and the kept values (bytes, or the decoded message's
 * malloc'd blocks: pb_heap_size), which are evicted least recently used first. A kept value is always
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

/* A txn on 's' (which must outlive it). Caller owns the result, NULL if out of memory; free
 * with store_txn_free, which accepts NULL. */
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
/* store_txn_obj_get_or_new and store_txn_obj_set in one: the message at 'key' (created
 * empty if absent), marked changed already; the caller changes it in place before the
 * commit. For a message changed whenever it is read (a pair's sum, a window's counts). */
eddy_err store_txn_obj_edit(store_txn *t, const struct store_key *key,
                            const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj);
/* A faster encoder for one message type, used when the txn packs changed objects at
 * commit: it must write exactly protobuf_c_message_pack's bytes (the stored state is
 * compared byte for byte). It writes them into 'o' (pbenc.h: the txn's scratch buffer when
 * they fit, else a block it mallocs, which the txn then owns) and returns true, or returns
 * false to leave the message to protobuf-c (or on allocation failure). Registering the
 * same function again is free; up to STORE_TXN_PACKERS types. */
#define STORE_TXN_PACKERS 8
struct pbenc_out;
typedef bool store_pack_fn(const ProtobufCMessage *m, struct pbenc_out *o);
void store_txn_set_packer(store_txn *t, const ProtobufCMessageDescriptor *desc,
                          store_pack_fn *fn);

/* Keep, per partition and table of the mask 'tables' (1 << table each), the set of the
 * keys that exist (their 64-bit hashes, keyset.h), so that a read through the txn of a key
 * its set lacks answers "absent" without a LevelDB lookup (a co-occurrence pair seen for
 * the first time, a new user). A set is built by a scan of its partition's table at the
 * first read that needs it; the txn adds every key it writes, and drops the sets a write
 * around it may have reached (as it forgets kept values) and every set at a reset. The
 * sets of one mask share at most 'budget' bytes (8 per slot, 16-32 per key): a set that
 * would take more goes back to reading LevelDB until it is dropped. Calling again with the
 * same mask only sets the budget (0: no sets); a mask sharing a table with an earlier one
 * replaces it; up to STORE_TXN_KEY_SETS masks (more: read, as without). */
#define STORE_TXN_KEY_SETS 4
void store_txn_index_keys(store_txn *t, uint32_t tables, size_t budget);

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
/* How long the last store_txn_write took, in two steps: the LevelDB write (with the flush
 * of a write through), and the publish of the behind writes in the dirty set (0: none). */
void store_txn_write_times(const store_txn *t, int64_t *write_ns, int64_t *publish_ns);
/* Make the next seal's write go through in full (see store_set_behind): the dirty set is
 * flushed first and the behind tables' writes join the synced write. For a group that
 * rewrites log records before its own (DeleteUser erases the user's), so that a replay
 * from the flushed META never meets a log changed under it. */
void store_txn_write_through(store_txn *t);
/* Drop pending writes without committing, and every kept value. */
void store_txn_reset(store_txn *t);
/* Keys written (put, deleted or changed objects) since the last commit or seal. */
size_t store_txn_pending(const store_txn *t);

/* What the txn's kept values did (for tests and diagnostics). */
struct store_txn_stats {
    uint64_t hits;      /* reads answered by the txn: pending or kept values */
    uint64_t misses;    /* reads that went to LevelDB */
    uint64_t absent;    /* reads answered "absent" by a key set (store_txn_index_keys) */
    size_t key_set_bytes;  /* what the key sets take now */
    size_t key_set_keys;   /* keys in complete sets */
    uint64_t key_set_overflows; /* sets given up for the budget */
    uint64_t evictions; /* kept values dropped for the budget */
    uint64_t forgets;   /* times everything kept was dropped: the store was written around
                         * at unknown keys (another txn's commit) or too often */
    uint64_t forgets_ranged; /* times the kept values of written key ranges were dropped */
    size_t kept;        /* values kept now */
    size_t kept_bytes;  /* their estimated size, the table's aside */
    size_t table_bytes; /* the entries, slots and small blocks' slabs: with kept_bytes,
                         * within the budget (or the table alone over half of it) */
};
void store_txn_stats(const store_txn *t, struct store_txn_stats *out);

/* Scan [start, end) as the txn sees it: committed keys merged with the txn's pending puts
 * and deletes, in key order. Used by the apply path so that what it deletes does not
 * depend on where group-commit boundaries fell. 'fn' must not modify the txn (collect
 * keys, then change them after the scan). */
eddy_err store_txn_scan(store_txn *t, const struct store_key *start, const struct store_key *end,
                        store_scan_fn *fn, void *ud);

#endif
