/* Private to node/state/store.c, store_txn.c and store_dirty.c: the store's fields and the
 * helpers the transaction layer needs of them. Include it from no other file: everyone else
 * goes through store.h, store_txn.h and store_key.h. */
#ifndef EDDY_STORE_INTERNAL_H
#define EDDY_STORE_INTERNAL_H

#include <leveldb/c.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <xxhash.h>

#include "common/bytes.h"
#include "common/err.h"
#include "node/state/store.h"
#include "node/state/store_key.h"

#define STORE_CHANGES 16 /* writes around the txns remembered with their key ranges */

struct store_txn;
struct dirty_entry;

/* A key and its value (or a delete) from the dirty set or a txn's overlay, merged into a
 * scan of LevelDB (store_merge_scan). Borrowed from whoever built the array. */
struct store_ovl {
    const unsigned char *key;
    size_t klen;
    const char *val;
    size_t vlen;
    bool del;
};

/* A key's first three bytes (partition, table), zero past its end, as one number: the
 * dirty set's runs are keyed by it, and numbers order as the prefixes do. */
static inline uint32_t store_key_prefix(const unsigned char *k, size_t klen)
{
    unsigned char p[3] = {0, 0, 0};
    memcpy(p, k, klen < 3 ? klen : 3);
    return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}

/* The dirty set (store_dirty.c): the writes of the tables store_set_behind names, kept
 * packed in memory from the txn's synced write (their acknowledgement) until store_flush
 * writes them. Every read of the store looks here first. */
/* An entry of a run: the 16 key bytes after the run's prefix (big-endian words, zero past
 * the key's end) beside its pointer, so that a search compares in the array and reads an
 * entry only on a tie. */
struct dirty_slot {
    uint64_t w[2];
    struct dirty_entry *e;
};
struct dirty_run {
    uint32_t prefix1;          /* the keys' first three bytes + 1; 0: an empty slot */
    struct dirty_slot *v;      /* sorted by key */
    size_t n, cap;
};
struct store_dirty {
    pthread_rwlock_t lock;     /* the runs, 'entries' and 'ver' */
    /* One flush at a time (its batch, its write and the drop of what it wrote). */
    pthread_mutex_t flush_mu;
    /* Held by a txn's write across its synced LevelDB write and the publish of its
     * dirty values, and by what must see LevelDB and the dirty set at a group boundary
     * (snapshots, range replaces): taken before flush_mu. */
    pthread_mutex_t pub_mu;
    struct dirty_run *runs;    /* open addressing by prefix; power-of-two 'cap' */
    size_t cap, nruns, entries;
    uint64_t ver;              /* stamp of the last publish */
    /* A flush is reading the entries (store_dirty_batches): a publish retires the entries
     * it replaces here instead of freeing them. */
    bool reading;
    struct dirty_entry **retired;
    size_t nretired, retired_cap;
    _Atomic size_t bytes;      /* estimated memory of the entries (0: a read skips the lock) */
    _Atomic uint32_t tables;   /* 1 << table of the tables written behind */
    _Atomic uint64_t flushes;
};

eddy_err store_dirty_init(struct store_dirty *d);
void store_dirty_release(struct store_dirty *d);
/* Publish a value (a delete if 'del'), replacing the key's; under d->lock held for writing. */
eddy_err store_dirty_put_locked(struct store_dirty *d, const unsigned char *k, size_t klen,
                                const void *val, size_t vlen, bool del);
/* The dirty value of 'k': *hit false if the set does not hold it; else *val (malloc'd,
 * NULL for a delete) and *vlen. */
eddy_err store_dirty_get(struct store_dirty *d, const unsigned char *k, size_t klen, char **val,
                         size_t *vlen, bool *hit);
/* The entries in [start, end), sorted, copied: *out is one malloc'd block (free it), NULL
 * when there are none. */
eddy_err store_dirty_range(struct store_dirty *d, const struct store_key *start,
                           const struct store_key *end, struct store_ovl **out, size_t *n);
/* Every entry, as the write batches of a flush (one consistent copy of the set: its
 * entries' pointers, copied under its lock, the batches built after it): the stage-2 tables of every partition first, then the others, each
 * batch about 'chunk' bytes (at least one partition's rows of its kind: a partition's
 * stage-2 rows, and its other rows, are never split between two batches). Records and
 * bytes per table are counted into keys[] and bytes[] ([STORE_STAT_TABLES]). */
struct dirty_batches {
    leveldb_writebatch_t **wb;
    size_t n;
    uint64_t ver; /* the version the entries are current with (store_dirty_drop) */
};
eddy_err store_dirty_batches(struct store_dirty *d, size_t chunk, struct dirty_batches *out,
                             uint64_t *keys, uint64_t *bytes);
void store_dirty_batches_free(struct dirty_batches *b);
/* Drop the entries published at or before version 'upto' (written by a flush). */
void store_dirty_drop(struct store_dirty *d, uint64_t upto);

/* Scan [start, end) of LevelDB through iterator 'it' merged with the sorted 'ovl' (which
 * wins over LevelDB on the same key; its deletes hide LevelDB's). fn returning 1 stops:
 * *stopped (may be NULL) says so. */
eddy_err store_merge_scan(leveldb_iterator_t *it, const struct store_key *start,
                          const struct store_key *end, const struct store_ovl *ovl, size_t n,
                          store_scan_fn *fn, void *ud, bool *stopped);

/* Merge the txn's sorted 'a' (wins) with the dirty set's sorted 'b' into *out (malloc'd;
 * free it). */
eddy_err store_ovl_merge(const struct store_ovl *a, size_t na, const struct store_ovl *b,
                         size_t nb, struct store_ovl **out, size_t *n);

struct store {
    leveldb_t *db;
    leveldb_options_t *opts;
    leveldb_cache_t *cache;
    leveldb_filterpolicy_t *filter;
    leveldb_readoptions_t *ropts;
    leveldb_writeoptions_t *wsync;
    leveldb_writeoptions_t *wnosync;
    size_t obj_cache_bytes;      /* budget of each txn's kept values */
    char *path;                  /* the database directory (store_sync_log) */
    /* Bumped by every write that does not go through the txn reading it (another txn's
     * commit, store_replace_range, store_delete of a kept table), with the key range it
     * wrote in 'changes': a txn whose last seen value differs forgets the values it kept in
     * those ranges (everything if it fell more than STORE_CHANGES behind). */
    _Atomic uint64_t gen;
    pthread_mutex_t changes_mu;  /* 'changes' and the bumps of 'gen' */
    struct store_change {
        uint64_t gen;
        const struct store_txn *by; /* a txn's commit (NULL: another write) */
        bool all;                   /* the range is unknown: everything */
        struct store_key start, end;
    } changes[STORE_CHANGES];
    _Atomic uint32_t kept_tables; /* 1 << table of every table some txn keeps values of */
    store_write_failed_fn *write_failed; /* store_on_write_failed */
    void *write_failed_ud;
    _Atomic int fail_writes;     /* store_fail_writes: txn writes left to fail */
    eddy_err fail_err;
    /* store_key_writes: committed writes of the tracked tables' keys, hashed into slots,
     * and the writes around the txns (which count for every key) */
    _Atomic uint32_t tracked_tables;
    _Atomic uint64_t *key_writes;  /* [STORE_WRITE_SLOTS] */
    _Atomic uint64_t bulk_writes;
    /* store_write_stats: what the txns' committed writes put, per table (key[2] < 32) */
    _Atomic uint64_t written_keys[32], written_bytes[32], written_packs[32];
    _Atomic uint64_t written_batches;
    _Atomic int snapshots;       /* store_snapshot objects open (store_compact_range) */
    struct store_dirty dirty;
    size_t flush_chunk;          /* bytes per write of a flush (store_set_flush_chunk) */
};

#define STORE_WRITE_SLOTS (1u << 16)

/* Whether writes of the key's table go behind. */
static inline bool store_behind_key(store *s, const unsigned char *k, size_t klen)
{
    uint32_t t = atomic_load_explicit(&s->dirty.tables, memory_order_relaxed);
    return t && klen >= 3 && k[2] < 32 && (t & (UINT32_C(1) << k[2]));
}

/* Turn LevelDB's error (NULL: none) into an eddy_err: EDDY_ERR_IO, its message logged and
 * copied to 'err' (may be NULL), 'lerr' freed. */
eddy_err store_take_err(char *lerr, char *err, size_t errlen);

/* store_take_err for the error of a write (or a log sync): also tells s->write_failed. */
eddy_err store_take_write_err(store *s, char *lerr);

/* Decode a stored value; EDDY_ERR_CORRUPT (logged) if it does not. Caller owns *msg; free
 * with protobuf_c_message_free_unpacked. */
eddy_err store_decode(const ProtobufCMessageDescriptor *desc, const char *val, size_t vlen,
                      ProtobufCMessage **msg);

/* Record a write of [start, end) (start NULL: anything) by 'by' (NULL: not a txn), under
 * s->changes_mu. Returns the new generation. */
uint64_t store_change_locked(store *s, const struct store_txn *by, const struct store_key *start,
                             const struct store_key *end);

/* Byte order of raw keys, as LevelDB's default comparator. Inline: the txn's scans and
 * catch-ups call these once per key. */
static inline int key_cmp_raw(const unsigned char *a, size_t alen, const unsigned char *b,
                              size_t blen)
{
    return bytes_cmp(a, alen, b, blen);
}

/* Whether key 'k' sorts before 'end' (an empty end: no upper bound). */
static inline bool key_before_end(const char *k, size_t klen, const struct store_key *end)
{
    if (end->len == 0)
        return true;
    size_t n = klen < end->len ? klen : end->len;
    int c = memcmp(k, end->buf, n);
    return c < 0 || (c == 0 && klen < end->len);
}

/* Whether the key's table is one store_track_writes asked for. */
static inline bool store_tracked_key(store *s, const unsigned char *k, size_t klen)
{
    uint32_t t = atomic_load_explicit(&s->tracked_tables, memory_order_relaxed);
    return t && klen >= 3 && k[2] < 32 && (t & (UINT32_C(1) << k[2]));
}

/* The slot of s->key_writes that counts the writes of key 'k'. A COOC row counts in the
 * slot of its product's prefix (p T len product), a BOUGHT or SEEN row in its user's (p T
 * len user): a cache of a product's neighbours, or of a user's purchases, reads that
 * prefix's count to see whether any of its rows changed. */
static inline uint32_t store_write_slot(const unsigned char *k, size_t klen)
{
    if (klen >= 5 && (k[2] == T_COOC || k[2] == T_BOUGHT || k[2] == T_SEEN)) {
        size_t prefix = 5 + ((size_t)k[3] << 8 | k[4]);
        if (prefix < klen)
            klen = prefix;
    }
    return (uint32_t)XXH3_64bits(k, klen) & (STORE_WRITE_SLOTS - 1);
}

#endif
