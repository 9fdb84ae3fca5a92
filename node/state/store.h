/* The state node's LevelDB: opening, reading, scanning and snapshotting it, replacing key
 * ranges, syncing its log, and removing a database that is not open. The key layout is in
 * store_key.h; write transactions, the writer's way in, are in store_txn.h.
 *
 * Threads: the LevelDB handle is shared; reads may run on any thread. */
#ifndef EDDY_STORE_H
#define EDDY_STORE_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/store_key.h"

typedef struct store store;

/* Called on the thread that wrote when a LevelDB write, or a sync of its logs, failed
 * (ENOSPC, EIO), before the error is returned; 'why' is borrowed for the call. After such
 * a failure the database cannot be trusted with more writes: LevelDB's log writer counts
 * the bytes of a record it could not write, so records written after it may be dropped
 * when the database is reopened, and a failed compaction fails every later write until
 * the reopen. A node exits here (docs/operations.md, "Disk full"). */
typedef void store_write_failed_fn(void *ud, const char *why);

struct store_opts {
    const char *path;          /* directory of the LevelDB */
    int64_t cache_bytes;       /* LevelDB block cache (default 64 MiB) */
    int64_t write_buffer_bytes;/* memtable size (default 16 MiB) */
};

/* The nice value LevelDB's compaction thread gets (default 0: the opener's). LevelDB has
 * one compaction thread per process, started by the process's first store_open: call
 * before it. */
void store_set_compaction_nice(int nice);

/* Open (creating if missing) the database at opts->path. Caller owns *out; free with
 * store_close. On failure returns an error and writes LevelDB's message to 'err'. */
eddy_err store_open(const struct store_opts *opts, store **out, char *err, size_t errlen);
void store_close(store *s);

/* Set the hook told of a refused write (NULL, the default: the error is only returned).
 * Call right after store_open, before any write. */
void store_on_write_failed(store *s, store_write_failed_fn *fn, void *ud);

/* Remove the database at 'dir', which must not be open (EDDY_ERR_IO otherwise: LevelDB's
 * lock is held): LevelDB's files, then the directory if nothing else is left in it (other
 * files stay, and so does the directory). A directory that does not exist is no error
 * (EDDY_OK): there is nothing to remove. On failure returns EDDY_ERR_IO and writes
 * LevelDB's message to 'err' (may be NULL). Any thread. */
eddy_err store_destroy(const char *dir, char *err, size_t errlen);

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

/* The last key in [start, end) of the committed state, given to fn (its result is
 * ignored); *found false when the range is empty. */
eddy_err store_last(store *s, const struct store_key *start, const struct store_key *end,
                    store_scan_fn *fn, void *ud, bool *found);

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
/* A snapshot of the keys in [start, end) only (an empty 'end': no upper bound), as of the
 * last group a txn wrote: LevelDB's view merged with the values still behind in the dirty
 * set (a copy of those in the range), where store_snapshot_new flushes the whole dirty
 * set first. A checkpoint of one partition so costs a copy of its unwritten rows, not a
 * flush of every partition's. Reads outside the range fail with EDDY_ERR_INVALID. */
store_snapshot *store_snapshot_new_range(store *s, const struct store_key *start,
                                         const struct store_key *end);
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
 * store_range_loader_finish). 'write' owns the batch (it may write it after returning, on
 * another thread); free with store_batch_free, after an error too. One thread. */
typedef eddy_err store_range_write_fn(void *ud, const struct store_key *start,
                                      const struct store_key *end, store_batch *b);
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

/* Erase the old versions of [start, end) from LevelDB's files (DeleteUser's purge): when
 * it returns, no table file holds a value overwritten or deleted in the range before the
 * call, nor a delete of a key of the range (every file of the range was rewritten by a
 * compaction down to the deepest level holding the range), and the write-ahead log
 * holding them was rolled and deleted. Delete markers of the keys 'start' and 'end'
 * themselves stay in the files (no data: a partition's two bytes). The bounds must not
 * be keys: shorter than 3 bytes, a partition's p and p + 1 (EDDY_ERR_INVALID otherwise;
 * an empty 'end': no upper bound). The exception: a snapshot (store_snapshot_new) open
 * when the call starts keeps every version it sees, in the files too; *snapshots (may be
 * NULL) receives how many were open, for the caller to say so (0: the guarantee holds).
 * An open iterator keeps the table files of its view until it is destroyed (scans are
 * short). Blocks for a time proportional to the range's data (two compactions); writes
 * go on meanwhile. Any thread but the writer's. */
eddy_err store_compact_range(store *s, const struct store_key *start,
                             const struct store_key *end, int *snapshots);

/* The budget of the values each txn of 's' keeps (estimated bytes; see "Kept values" in
 * store_txn.h). Call before the txns are used. */
#define STORE_KEPT_BYTES_DEFAULT ((size_t)96 << 20)
void store_set_kept_bytes(store *s, size_t bytes);

/* Write counts, for caches of values read from the store (Recommend's neighbour entries
 * and users): after store_track_writes(s, T), every committed txn write of a key of table
 * T moves store_key_writes of that key, and so does every write around the txns
 * (store_delete of a kept table, store_replace_range) for all keys. Read the count before the value: if it
 * has not moved since, the value is still the stored one. Counts are hashed into 65,536
 * slots: a key may see another's writes (a needless re-read), never miss its own. A
 * COOC, BOUGHT or SEEN key counts for every row under its prefix (p T len id): pass that
 * prefix to read whether any of the product's pairs or the user's rows changed. */
void store_track_writes(store *s, enum store_table t);
uint64_t store_key_writes(store *s, const struct store_key *key);

/* What the txns' committed writes of 's' put into LevelDB since store_open, per table
 * (index: enum store_table; 0 for keys too short to have one): records (puts and deletes),
 * key and value bytes, and decoded objects packed for them; and the number of writes (one
 * per group commit). Counted after each successful write; any thread (the counters are
 * read one by one, so a write may show in some of them only). For profiles of the apply
 * path (eddy-apply-bench). */
#define STORE_STAT_TABLES 32
struct store_write_stats {
    uint64_t keys[STORE_STAT_TABLES];
    uint64_t bytes[STORE_STAT_TABLES];
    uint64_t packs[STORE_STAT_TABLES];
    uint64_t writes;
};
void store_write_stats(store *s, struct store_write_stats *out);

/* --- write-behind ----------------------------------------------------------------------
 * The txns' writes of the tables in 'tables' (a bitmask of 1 << table; 0, the default:
 * none) are not written to LevelDB by the txn's write: they are published, packed, in the
 * store's dirty set when the write returns (the txn's synced write then holds only the
 * other tables: the log), and every read of the store (store_get, store_scan, store_last,
 * the txns' reads) finds them there first, so a read sees what a written txn wrote. They
 * reach LevelDB with store_flush, in one unsynced write: a crash may lose what was not
 * flushed, which the log must rebuild (the engine replays it from the flushed META).
 * store_snapshot_new, range replaces, store_dump and store_compact_range flush first
 * (store_snapshot_new_range copies its range's dirty values instead); store_close
 * flushes. A txn write that deletes a LOG key writes through (the dirty set is flushed
 * first, and the whole write is synced): the log after the flushed META must stay as the
 * group found it. Call before the txns write. */
void store_set_behind(store *s, uint32_t tables);

/* Write the dirty set to LevelDB (unsynced writes of about the flush chunk each, see
 * store_set_flush_chunk; nothing if empty). On an error the values stay in the set (and
 * s->write_failed is told). Any thread; one flush at a time. */
eddy_err store_flush(store *s);

/* The bytes of each write of a flush (default STORE_FLUSH_CHUNK_DEFAULT; 0: the whole set
 * in one write): a synced write that comes during a flush waits for at most one of them.
 * A write holds whole partitions' rows, so a partition larger than this is one larger
 * write. Call before the first flush. */
#define STORE_FLUSH_CHUNK_DEFAULT ((size_t)128 << 10)
void store_set_flush_chunk(store *s, size_t bytes);

/* Estimated memory of the dirty set; the number of flushes that wrote something. */
size_t store_dirty_bytes(store *s);
uint64_t store_flush_count(store *s);

/* Crash test hook: if EDDY_TEST_CRASH_AT names 'phase' ("phase" or "phase:N" for its
 * N-th time, read once), the process _exits (status 86) there. Phases: "log" (a txn's
 * synced write returned, its dirty values not published), "acked" (engine: a group
 * answered), "flush-before-write", "flush-after-write" (the flush's LevelDB write). */
void store_crash_point(const char *phase);
/* Read EDDY_TEST_CRASH_AT again at the next crash point (a test's forked child). */
void store_crash_rearm(void);

/* Fault injection for tests: the next 'n' store_txn_write calls with keys to write fail
 * with 'err' and write nothing (a disk error, for the engine's failed-write path). */
void store_fail_writes(store *s, int n, eddy_err err);

#endif
