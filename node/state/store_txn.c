/* The state node's write transactions: an overlay of the writer's pending writes and of
 * the values it read, kept across commits, over the store's LevelDB (store_txn.h). */
#include "node/state/store_txn.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <leveldb/c.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SMALL_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define SMALL_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define SMALL_POISON(p, n) ((void)(p), (void)(n))
#define SMALL_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#include "common/clock.h"
#include "common/pbutil.h"
#include "node/state/keyset.h"
#include "node/state/pbenc.h"
#include "node/state/store_internal.h"

/* DESIGN: one open-addressing table holds every key the txn knows: the pending writes of
 * this txn (put bytes, delete, changed decoded object) and the committed values it has
 * read, as bytes or decoded. Pending writes reach the WriteBatch only at commit, one
 * record per key however often it was written (a product's CAT_POP entry or the stage-2
 * high-water is written once per group, not once per event). Values that were read stay
 * after the commit ("kept"), so the next group finds a user model or a product state
 * decoded instead of reading and unpacking it again; only their LevelDB bytes are
 * dropped (packed again on demand). The store's budget covers the table and the kept
 * values, charged what they occupy, which are evicted oldest first (by the commit that
 * last used them) past it. A
 * kept value is exactly the committed one: every write to the store that does not go
 * through this txn bumps the store's generation and records its key range (store.c:
 * store_changed), and the txn forgets what it kept in those ranges when it sees a new
 * generation (catch_up_locked). A commit may be split (store_txn_seal, _write, _settle) so that the
 * synced write runs on another thread while the next group is applied: the sealed keys stay
 * in the table "in flight", seen by reads and scans as pending keys are, never forgotten or
 * evicted, until the settle. Entries leave the table as tombstones. Probing reads
 * a dense array of 32-bit hash tags and touches an entry only when its tag matches: a
 * large table of kept values would otherwise cost a cache miss per probe. The entries
 * themselves live in blocks that never move, named by their id (the lists and chains
 * hold ids), and the table maps slots to ids, a key's home slot taken from its tag:
 * growing the table or clearing its tombstones rewrites two small arrays (8 bytes a
 * slot) without reading an entry. When the table held the entries, a rebuild at a million kept values copied
 * and page-faulted ~200 MB on the writer between two groups (0.5-2 s of stall; the
 * tombstones of every eviction brought it back). */

#define PREFIX_BITS (1u << 16)

/* One key the txn knows. */
struct overlay_entry {
    unsigned char *key; /* NULL: a free entry (its id is on the free list) */
    size_t klen;
    uint32_t tag;       /* the key's hash tag (tag_of), which names its home slot */
    uint32_t id;        /* its index in the blocks (stays while the entry is free) */
    char *val;          /* the bytes; NULL for a delete or while only 'obj' is held */
    size_t vlen;        /* length of the bytes, or of the last packing of 'obj' */
    ProtobufCMessage *obj; /* decoded value (store_txn_obj_*), owned by the entry */
    size_t cost;        /* estimated bytes charged to the budget while kept */
    size_t heap;        /* obj's malloc'd bytes (pb_heap_size) when measured... */
    size_t heap_vlen;   /* ...and its packed length then (0: not measured) */
    uint64_t stamp;     /* the commit that last used it (eviction: oldest first) */
    bool deleted;       /* pending delete */
    bool pending;       /* written in this txn: goes into the batch at commit */
    bool obj_dirty;     /* obj changed: packed at commit ('val' is stale) */
    bool keep;          /* holds a value that was read or decoded: kept after commit */
    bool touched;       /* listed in t->touched */
    bool inflight;      /* in the sealed write, not yet settled: listed in t->sealed */
    uint8_t val_class;  /* 'val' is a small block of this class (0: malloc'd, or NULL) */
    uint32_t pnext;     /* next pending entry of its prefix chain (id + 1; 0: last) */
    uint32_t snext;     /* next in-flight entry of its prefix chain */
};

/* Keys and short values live in small blocks, SMALL_STEP multiples up to SMALL_MAX bytes,
 * carved from SLAB_BYTES slabs and recycled through a free list per size: a group makes
 * and drops hundreds of thousands (a key per entry, a copy per value written or read), in
 * bursts that empty glibc's per-size caches, and malloc and free cost ~250 instructions a
 * pair there. The slabs go at a reset: between resets they hold at most what the most
 * entries held at once did (the kept-values budget and a group's pending writes). */
#define SMALL_STEP 16
#define SMALL_MAX 256
#define SMALL_CLASSES (SMALL_MAX / SMALL_STEP)
#define SLAB_BYTES ((size_t)64 << 10)

struct small_pool {
    void *free[SMALL_CLASSES + 1]; /* by class (1..SMALL_CLASSES): a block's first bytes
                                      hold the next */
    char *at;                      /* the current slab's unused bytes */
    size_t left;
    void **slabs;
    size_t nslabs, slabs_cap;
};

struct store_txn {
    store *s;
    int64_t write_ns, publish_ns; /* the last store_txn_write's steps */
    struct small_pool small;
    leveldb_writebatch_t *wb;
    struct overlay_entry **blocks; /* the entries, ENTRY_BLOCK each: never moved */
    size_t nblocks;
    uint32_t nent;             /* ids handed out: every id below is in a block */
    uint32_t *free_ids;        /* ids of free entries, reused first */
    size_t nfree, free_cap;
    uint32_t *tags;            /* per slot: TAG_EMPTY, TAG_TOMB or the key's hash tag */
    uint32_t *ids;             /* per slot with a key's tag: the entry's id */
    size_t cap, live, tombs;   /* power-of-two capacity */
    size_t *touched;           /* ids used since the last commit */
    size_t ntouched, touched_cap;
    size_t *sealed;            /* ids of the in-flight entries (the sealed write) */
    size_t nsealed, sealed_cap;
    size_t sealed_keys;        /* records in 'wb' (seal, write and settle only) */
    /* the records, bytes and packed objects of 'wb' per table, for store_write_stats */
    uint64_t wb_keys[STORE_STAT_TABLES], wb_bytes[STORE_STAT_TABLES];
    uint64_t wb_packs[STORE_STAT_TABLES];
    uint32_t *track;           /* write slots of the tracked keys in 'wb' (store_key_writes) */
    size_t ntrack, track_cap;
    size_t npending;
    size_t kept_bytes;         /* sum of the entries' cost */
    uint64_t commits;
    uint64_t gen;              /* the store generation the kept values are current with */
    uint32_t kept_mask;        /* tables announced in s->kept_tables */
    struct {
        const ProtobufCMessageDescriptor *desc;
        store_pack_fn *fn;
    } packers[STORE_TXN_PACKERS];
    size_t npackers;
    struct store_txn_stats stats;
    /* The pending and the in-flight entries chained by prefix_bit of their keys ((partition,
     * table) hashed), so that a scan of one partition's table merges only those: heads
     * are id + 1, 0 for none. */
    uint32_t *phead, *shead;
    /* The sealed writes of the tables written behind (store_set_behind), published in the
     * dirty set by store_txn_write: records of [u32 klen][u32 vlen, UINT32_MAX: a
     * delete][key][value], 'nbehind' of them, and their records and bytes per table. */
    unsigned char *behind;
    size_t behind_len, behind_cap, nbehind;
    uint64_t bb_keys[STORE_STAT_TABLES], bb_bytes[STORE_STAT_TABLES];
    /* The seal packs each changed object here, for the batch to copy (the txn keeps the
     * object, not its bytes): one buffer, as large as the largest value packed yet. */
    uint8_t *scratch;
    size_t scratch_cap;
    bool through;              /* the sealed write goes through in full (see store.h) */
    bool want_through;         /* store_txn_write_through: the next seal's does */
    /* store_txn_index_keys: the keys of the tables in each mask, per partition; a set's
     * index in its keyset is partition * (tables in the mask) + the table's rank in it */
    struct key_sets {
        uint32_t tables;       /* 0: an unused entry */
        uint32_t ntables;
        keyset *ks;
    } sets[STORE_TXN_KEY_SETS];
    /* per table < 32: its entry of 'sets' + 1 (0: none) and its rank in the mask */
    uint8_t set_of[32], rank_of[32];
};

/* The class of a block of n bytes (1 ...), 0 if it is too large for one. */
static unsigned small_class(size_t n)
{
    return n <= SMALL_MAX ? (unsigned)((n + SMALL_STEP - 1) / SMALL_STEP + (n == 0)) : 0;
}

/* A block of class c (not 0); NULL if out of memory. Under ASan a free block, and a
 * slab's unused bytes, are poisoned: a use after small_free is reported as after free(). */
static void *small_alloc(struct small_pool *sp, unsigned c)
{
    size_t n = (size_t)c * SMALL_STEP;
    void *p = sp->free[c];
    if (p) {
        SMALL_UNPOISON(p, n);
        memcpy(&sp->free[c], p, sizeof(void *));
        return p;
    }
    if (sp->left < n) {
        if (sp->nslabs == sp->slabs_cap) {
            size_t ncap = sp->slabs_cap ? 2 * sp->slabs_cap : 16;
            void **ns = realloc(sp->slabs, ncap * sizeof(*ns));
            if (!ns)
                return NULL;
            sp->slabs = ns;
            sp->slabs_cap = ncap;
        }
        if (!(sp->at = malloc(SLAB_BYTES))) {
            sp->left = 0;
            return NULL;
        }
        sp->slabs[sp->nslabs++] = sp->at;
        sp->left = SLAB_BYTES; /* the rest of the last slab is left unused */
        SMALL_POISON(sp->at, SLAB_BYTES);
    }
    p = sp->at;
    SMALL_UNPOISON(p, n);
    sp->at += n;
    sp->left -= n;
    return p;
}

static void small_free(struct small_pool *sp, void *p, unsigned c)
{
    memcpy(p, &sp->free[c], sizeof(void *));
    sp->free[c] = p;
    SMALL_POISON(p, (size_t)c * SMALL_STEP);
}

/* Every block at once (nothing may hold one). */
static void small_release(struct small_pool *sp)
{
    for (size_t i = 0; i < sp->nslabs; i++) {
        SMALL_UNPOISON(sp->slabs[i], SLAB_BYTES);
        free(sp->slabs[i]);
    }
    free(sp->slabs);
    memset(sp, 0, sizeof(*sp));
}

/* A copy of the n bytes at 'src' for an entry: a small block of class *c, or malloc'd
 * (*c 0); NULL if out of memory. */
static void *bytes_copy(store_txn *t, const void *src, size_t n, unsigned *c)
{
    void *p = (*c = small_class(n)) ? small_alloc(&t->small, *c) : malloc(n);
    if (p && n)
        memcpy(p, src, n);
    return p;
}

static void bytes_free(store_txn *t, void *p, unsigned c)
{
    if (c)
        small_free(&t->small, p, c);
    else
        free(p);
}

/* Drop the entry's bytes (a small block, or malloc'd). */
static void val_free(store_txn *t, struct overlay_entry *e)
{
    if (e->val)
        bytes_free(t, e->val, e->val_class);
    e->val = NULL;
    e->val_class = 0;
}

/* Append a sealed write of a behind table to t->behind. */
static eddy_err behind_add(store_txn *t, const unsigned char *k, size_t klen, const char *v,
                           size_t vlen, bool del)
{
    size_t need = 8 + klen + (del ? 0 : vlen);
    if (t->behind_len + need > t->behind_cap) {
        size_t ncap = t->behind_cap ? t->behind_cap * 2 : 64 << 10;
        while (ncap < t->behind_len + need)
            ncap *= 2;
        unsigned char *n = realloc(t->behind, ncap);
        if (!n)
            return EDDY_ERR_NOMEM;
        t->behind = n;
        t->behind_cap = ncap;
    }
    unsigned char *p = t->behind + t->behind_len;
    uint32_t kl = (uint32_t)klen, vl = del ? UINT32_MAX : (uint32_t)vlen;
    memcpy(p, &kl, 4);
    memcpy(p + 4, &vl, 4);
    memcpy(p + 8, k, klen);
    if (!del && vlen)
        memcpy(p + 8 + klen, v, vlen);
    t->behind_len += need;
    t->nbehind++;
    return EDDY_OK;
}

/* Walk t->behind: the record at *off, which moves to the next. */
static void behind_next(const store_txn *t, size_t *off, const unsigned char **k, size_t *klen,
                        const char **v, size_t *vlen, bool *del)
{
    const unsigned char *p = t->behind + *off;
    uint32_t kl, vl;
    memcpy(&kl, p, 4);
    memcpy(&vl, p + 4, 4);
    *k = p + 8;
    *klen = kl;
    *del = vl == UINT32_MAX;
    *v = (const char *)p + 8 + kl;
    *vlen = *del ? 0 : vl;
    *off += 8 + kl + *vlen;
}

static void behind_clear(store_txn *t)
{
    t->behind_len = t->nbehind = 0;
    t->through = false;
    memset(t->bb_keys, 0, sizeof(t->bb_keys));
    memset(t->bb_bytes, 0, sizeof(t->bb_bytes));
}

void store_txn_write_through(store_txn *t)
{
    t->want_through = true;
}

static void entry_drop_obj(struct overlay_entry *e)
{
    if (e->obj)
        protobuf_c_message_free_unpacked(e->obj, NULL);
    e->obj = NULL;
    e->obj_dirty = false;
    e->heap_vlen = 0;
}

/* What the decoded value occupies: pb_heap_size walks every field and string of it, which
 * for a product with 50 neighbours cost as much as packing it, at every group that changed
 * it. So it is measured again only when the packed length moved by more than an eighth
 * since it was measured, and scaled by the packed length in between. */
static size_t obj_heap(struct overlay_entry *e)
{
    size_t v = e->vlen ? e->vlen : 1, at = e->heap_vlen;
    if (!at || v > at + at / 8 || v + at / 8 < at) {
        e->heap = pb_heap_size(e->obj);
        e->heap_vlen = v;
        return e->heap;
    }
    return e->heap / at * v + e->heap % at * v / at;
}

/* What the kept value of 'e' occupies outside the txn's table (table_bytes): a key or
 * value too large for a small block is a malloc'd chunk (pb_chunk_size); a decoded message
 * is its malloc'd pieces (4-6x its packed size). */
static size_t kept_cost(struct overlay_entry *e)
{
    size_t key = small_class(e->klen) ? 0 : pb_chunk_size(e->klen);
    if (e->obj)
        return key + obj_heap(e);
    return key + (e->val && !e->val_class ? pb_chunk_size(e->vlen) : 0);
}

/* Pack 'obj' into 'o' (its registered packer, else protobuf-c). */
static eddy_err pack_obj(const store_txn *t, const ProtobufCMessage *obj, struct pbenc_out *o)
{
    for (size_t i = 0; i < t->npackers; i++) {
        if (t->packers[i].desc == obj->descriptor && t->packers[i].fn(obj, o))
            return EDDY_OK;
    }
    if (!pbenc_reserve(o, protobuf_c_message_get_packed_size(obj)))
        return EDDY_ERR_NOMEM;
    protobuf_c_message_pack(obj, o->buf);
    return EDDY_OK;
}

/* Bring e->val up to date with the object (for byte readers and scans). */
static eddy_err entry_pack(store_txn *t, struct overlay_entry *e)
{
    if (!e->obj || (!e->obj_dirty && e->val))
        return EDDY_OK;
    struct pbenc_out o = {NULL, 0, NULL, 0};
    eddy_err err = pack_obj(t, e->obj, &o);
    if (err != EDDY_OK)
        return err;
    val_free(t, e);
    e->val = (char *)o.buf;
    e->vlen = o.len;
    return EDDY_OK;
}

/* The bytes the seal writes for 'e' (not a delete) in *v and *n: its value, or its object
 * packed into t->scratch (valid until the next call), which the batch copies. */
static eddy_err seal_bytes(store_txn *t, struct overlay_entry *e, const char **v, size_t *n)
{
    if (!e->obj || (!e->obj_dirty && e->val)) {
        *v = e->val;
        *n = e->vlen;
        return EDDY_OK;
    }
    struct pbenc_out o = {t->scratch, t->scratch_cap, NULL, 0};
    eddy_err err = pack_obj(t, e->obj, &o);
    if (err != EDDY_OK)
        return err;
    if (o.buf != t->scratch) { /* larger than any before: the new scratch */
        free(t->scratch);
        t->scratch = o.buf;
        t->scratch_cap = o.len;
    }
    val_free(t, e); /* stale: the object is what is kept */
    e->vlen = o.len;
    *v = (const char *)o.buf;
    *n = o.len;
    return EDDY_OK;
}

void store_txn_set_packer(store_txn *t, const ProtobufCMessageDescriptor *desc,
                          store_pack_fn *fn)
{
    for (size_t i = 0; i < t->npackers; i++) {
        if (t->packers[i].desc == desc) {
            t->packers[i].fn = fn;
            return;
        }
    }
    if (t->npackers < STORE_TXN_PACKERS) {
        t->packers[t->npackers].desc = desc;
        t->packers[t->npackers++].fn = fn;
    }
}

#define TAG_EMPTY 0u
#define TAG_TOMB 1u
#define ENTRY_BLOCK_BITS 12
#define ENTRY_BLOCK ((uint32_t)1 << ENTRY_BLOCK_BITS)

/* The entry of id 'id' (< t->nent). */
static inline struct overlay_entry *ent(const store_txn *t, size_t id)
{
    return &t->blocks[id >> ENTRY_BLOCK_BITS][id & (ENTRY_BLOCK - 1)];
}

static uint32_t tag_of(uint64_t h)
{
    uint32_t tag = (uint32_t)(h >> 32);
    return tag > TAG_TOMB ? tag : tag + 2;
}

/* Free the entry (its id goes to the free list), leaving a tombstone in its slot. The
 * free list has room for every id (grown with the blocks). */
static void entry_remove(store_txn *t, struct overlay_entry *e)
{
    bytes_free(t, e->key, small_class(e->klen));
    val_free(t, e);
    entry_drop_obj(e);
    t->kept_bytes -= e->cost;
    t->live--;
    t->tombs++;
    size_t j = e->tag & (t->cap - 1);
    while (t->tags[j] != e->tag || t->ids[j] != e->id)
        j = (j + 1) & (t->cap - 1);
    t->tags[j] = TAG_TOMB;
    uint32_t id = e->id;
    memset(e, 0, sizeof(*e));
    e->id = id;
    t->free_ids[t->nfree++] = id;
}

/* A free entry (zeroed but for its id): a reused one, or the next id (a new block when
 * the last is full); NULL if out of memory. */
static struct overlay_entry *entry_new(store_txn *t)
{
    if (t->nfree > 0)
        return ent(t, t->free_ids[--t->nfree]);
    if (t->nent == UINT32_MAX - 1)
        return NULL;
    if ((t->nent >> ENTRY_BLOCK_BITS) == t->nblocks) {
        size_t nb = t->nblocks + 1;
        struct overlay_entry **b = realloc(t->blocks, nb * sizeof(*b));
        if (!b)
            return NULL;
        t->blocks = b;
        if (!(b[t->nblocks] = calloc(ENTRY_BLOCK, sizeof(**b))))
            return NULL;
        uint32_t *f = realloc(t->free_ids, nb * ENTRY_BLOCK * sizeof(*f));
        if (!f) {
            free(b[t->nblocks]);
            return NULL;
        }
        t->free_ids = f;
        t->nblocks = nb;
    }
    struct overlay_entry *e = ent(t, t->nent);
    e->id = t->nent++;
    return e;
}

/* What the txn holds whatever it keeps: the entry blocks (and the free list's place for
 * each id), the slot arrays, the prefix chains' heads and the small blocks' slabs. The
 * blocks, slots and slabs stay at their high-water mark (the most entries held at once:
 * the kept values and two groups' writes; 160-190 bytes an entry at a million users, more
 * than a small kept value itself), so the budget covers them and the kept values get
 * what they leave. */
static size_t table_bytes(const store_txn *t)
{
    return t->nblocks * ENTRY_BLOCK * (sizeof(struct overlay_entry) + sizeof(uint32_t)) +
           t->cap * 2 * sizeof(uint32_t) + PREFIX_BITS * 2 * sizeof(uint32_t) +
           t->small.nslabs * SLAB_BYTES;
}

/* The kept values' share of the budget: what the table leaves (nothing under a budget of
 * a few MB, which the table of two groups' writes takes: only those stay). */
static size_t kept_room(const store_txn *t)
{
    size_t budget = t->s->obj_cache_bytes, table = table_bytes(t);
    return table < budget ? budget - table : 0;
}

static size_t prefix_bit(const unsigned char *k, size_t klen)
{
    if (klen < 3)
        return 0;
    return ((((size_t)k[0] << 8 | k[1]) << 4) ^ k[2]) & (PREFIX_BITS - 1);
}

store_txn *store_txn_new(store *s)
{
    store_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->s = s;
    t->wb = leveldb_writebatch_create();
    t->cap = 1024;
    t->tags = calloc(t->cap, sizeof(*t->tags));
    t->ids = calloc(t->cap, sizeof(*t->ids));
    t->touched_cap = t->sealed_cap = 256;
    t->touched = malloc(t->touched_cap * sizeof(*t->touched));
    t->sealed = malloc(t->sealed_cap * sizeof(*t->sealed));
    t->phead = calloc(PREFIX_BITS, sizeof(*t->phead));
    t->shead = calloc(PREFIX_BITS, sizeof(*t->shead));
    t->gen = atomic_load_explicit(&s->gen, memory_order_acquire);
    if (!t->tags || !t->ids || !t->touched || !t->sealed || !t->phead || !t->shead) {
        store_txn_free(t);
        return NULL;
    }
    return t;
}

void store_txn_reset(store_txn *t)
{
    for (size_t i = 0; i < t->nent; i++) {
        struct overlay_entry *e = ent(t, i);
        if (e->key && !small_class(e->klen))
            free(e->key);
        if (e->val && !e->val_class)
            free(e->val);
        entry_drop_obj(e);
    }
    small_release(&t->small); /* every small block: keys and values */
    for (size_t b = 0; b < t->nblocks; b++)
        memset(t->blocks[b], 0, ENTRY_BLOCK * sizeof(**t->blocks));
    t->nent = 0;
    t->nfree = 0;
    memset(t->tags, 0, t->cap * sizeof(*t->tags));
    t->live = t->tombs = t->ntouched = t->npending = t->kept_bytes = 0;
    t->nsealed = t->sealed_keys = 0;
    memset(t->phead, 0, PREFIX_BITS * sizeof(*t->phead));
    memset(t->shead, 0, PREFIX_BITS * sizeof(*t->shead));
    t->gen = atomic_load_explicit(&t->s->gen, memory_order_acquire);
    leveldb_writebatch_clear(t->wb);
    memset(t->wb_keys, 0, sizeof(t->wb_keys));
    memset(t->wb_bytes, 0, sizeof(t->wb_bytes));
    memset(t->wb_packs, 0, sizeof(t->wb_packs));
    behind_clear(t);
    t->want_through = false;
    for (size_t i = 0; i < STORE_TXN_KEY_SETS; i++)
        if (t->sets[i].ks)
            keyset_drop_all(t->sets[i].ks);
}

void store_txn_free(store_txn *t)
{
    if (!t)
        return;
    if (t->tags && t->ids && t->phead && t->shead)
        store_txn_reset(t);
    for (size_t b = 0; b < t->nblocks; b++)
        free(t->blocks[b]);
    free(t->blocks);
    free(t->free_ids);
    free(t->tags);
    free(t->ids);
    free(t->touched);
    free(t->sealed);
    free(t->track);
    free(t->phead);
    free(t->shead);
    free(t->behind);
    free(t->scratch);
    small_release(&t->small);
    for (size_t i = 0; i < STORE_TXN_KEY_SETS; i++)
        keyset_free(t->sets[i].ks);
    if (t->wb)
        leveldb_writebatch_destroy(t->wb);
    free(t);
}

size_t store_txn_pending(const store_txn *t)
{
    return t->npending;
}

void store_txn_stats(const store_txn *t, struct store_txn_stats *out)
{
    *out = t->stats;
    out->key_set_bytes = out->key_set_keys = 0;
    out->key_set_overflows = 0;
    for (size_t i = 0; i < STORE_TXN_KEY_SETS; i++) {
        struct keyset_stats ks = {0};
        if (t->sets[i].ks)
            keyset_stats(t->sets[i].ks, &ks);
        out->key_set_bytes += ks.bytes;
        out->key_set_keys += ks.keys;
        out->key_set_overflows += ks.overflows;
    }
    out->kept = 0;
    for (size_t i = 0; i < t->nent; i++) {
        const struct overlay_entry *e = ent(t, i);
        out->kept += e->key && e->keep && !e->pending;
    }
    out->kept_bytes = t->kept_bytes;
    out->table_bytes = table_bytes(t);
}

/* The entry of key 'k', or NULL; then *ins (if not NULL) receives the slot to insert at
 * and *tag (if not NULL) the key's tag. The home slot is the tag's low bits: the
 * comparison of tags then tests the others (10 bits at 4 M slots), enough to touch a
 * wrong entry rarely. */
static struct overlay_entry *lookup(const store_txn *t, const unsigned char *k, size_t klen,
                                    size_t *ins, uint32_t *tag)
{
    uint32_t want = tag_of(XXH3_64bits(k, klen));
    size_t i = want & (t->cap - 1);
    size_t tomb = SIZE_MAX;
    if (tag)
        *tag = want;
    for (;; i = (i + 1) & (t->cap - 1)) {
        uint32_t tg = t->tags[i];
        if (tg == TAG_EMPTY) {
            if (ins)
                *ins = tomb != SIZE_MAX ? tomb : i;
            return NULL;
        }
        if (tg == TAG_TOMB) {
            if (tomb == SIZE_MAX)
                tomb = i;
            continue;
        }
        if (tg != want)
            continue;
        struct overlay_entry *e = ent(t, t->ids[i]);
        if (e->klen == klen && memcmp(e->key, k, klen) == 0)
            return e;
    }
}

/* Rebuild the table with capacity 'ncap': the slots of the live entries again, the
 * tombstones gone. The entries, the lists and the chains (ids) stay as they are. */
static eddy_err rehash(store_txn *t, size_t ncap)
{
    uint32_t *ntags = calloc(ncap, sizeof(*ntags));
    uint32_t *nids = malloc(ncap * sizeof(*nids));
    if (!ntags || !nids) {
        free(ntags);
        free(nids);
        return EDDY_ERR_NOMEM;
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (t->tags[i] <= TAG_TOMB)
            continue;
        size_t j = t->tags[i] & (ncap - 1);
        while (ntags[j] != TAG_EMPTY)
            j = (j + 1) & (ncap - 1);
        ntags[j] = t->tags[i];
        nids[j] = t->ids[i];
    }
    free(t->tags);
    free(t->ids);
    t->tags = ntags;
    t->ids = nids;
    t->cap = ncap;
    t->tombs = 0;
    return EDDY_OK;
}

/* Room for one more entry. */
static eddy_err ensure_room(store_txn *t)
{
    if ((t->live + t->tombs + 1) * 2 <= t->cap)
        return EDDY_OK;
    return rehash(t, (t->live + 1) * 4 > t->cap ? t->cap * 2 : t->cap);
}

static eddy_err touch(store_txn *t, struct overlay_entry *e)
{
    e->stamp = t->commits + 1;
    if (e->touched)
        return EDDY_OK;
    if (t->ntouched == t->touched_cap) {
        size_t ncap = t->touched_cap * 2;
        size_t *n = realloc(t->touched, ncap * sizeof(*n));
        if (!n)
            return EDDY_ERR_NOMEM;
        t->touched = n;
        t->touched_cap = ncap;
    }
    t->touched[t->ntouched++] = e->id;
    e->touched = true;
    return EDDY_OK;
}

/* The entry of 'key', created (empty) if absent, listed as touched. */
static eddy_err entry_for(store_txn *t, const struct store_key *key, struct overlay_entry **out)
{
    size_t slot = 0;
    eddy_err err = ensure_room(t); /* first: a rebuild moves the slots */
    if (err != EDDY_OK)
        return err;
    uint32_t tag;
    struct overlay_entry *e = lookup(t, key->buf, key->len, &slot, &tag);
    if (!e) {
        unsigned c;
        unsigned char *k = bytes_copy(t, key->buf, key->len, &c);
        if (k && !(e = entry_new(t))) {
            bytes_free(t, k, c);
            k = NULL;
        }
        if (!k)
            return EDDY_ERR_NOMEM;
        if (t->tags[slot] == TAG_TOMB)
            t->tombs--;
        t->tags[slot] = tag;
        t->ids[slot] = e->id;
        e->key = k;
        e->klen = key->len;
        e->tag = tag;
        t->live++;
    }
    *out = e;
    return touch(t, e);
}

static uint32_t key_partition(const unsigned char *k)
{
    return (uint32_t)k[0] << 8 | k[1];
}

/* The index in a keyset of the set of (partition 'p', the table of rank 'rank' in its
 * mask). */
static uint32_t set_index(const struct key_sets *ks, uint32_t p, uint32_t rank)
{
    return p * ks->ntables + rank;
}

/* The key sets of the table of 'k' (NULL: none kept), and in *idx the index of its
 * partition's set in them. */
static struct key_sets *indexed_key(store_txn *t, const unsigned char *k, size_t klen,
                                    uint32_t *idx)
{
    if (klen < 3 || k[2] >= 32 || !t->set_of[k[2]])
        return NULL;
    struct key_sets *ks = &t->sets[t->set_of[k[2]] - 1];
    *idx = set_index(ks, key_partition(k), t->rank_of[k[2]]);
    return ks->ks ? ks : NULL;
}

/* 'was_deleted': the entry held a delete before this write. */
static void mark_pending(store_txn *t, struct overlay_entry *e, bool was_deleted)
{
    /* A key that exists is never missing from its partition's set: every put adds it but
     * one of a key pending already as a put (added then, or seen by the scan that built
     * the set since: a scan merges the pending puts, and hides the pending deletes) */
    uint32_t idx;
    struct key_sets *ks;
    if (!e->deleted && (!e->pending || was_deleted) &&
        (ks = indexed_key(t, e->key, e->klen, &idx)) != NULL)
        keyset_add(ks->ks, idx, XXH3_64bits(e->key, e->klen));
    if (e->pending)
        return;
    e->pending = true;
    t->npending++;
    size_t b = prefix_bit(e->key, e->klen);
    e->pnext = t->phead[b];
    t->phead[b] = e->id + 1;
}

/* Drop the ids of removed entries from the touched list (an id reused by a later
 * insert must be listed once). */
static void compact_touched(store_txn *t)
{
    size_t k = 0;
    for (size_t i = 0; i < t->ntouched; i++) {
        if (ent(t, t->touched[i])->touched)
            t->touched[k++] = t->touched[i];
    }
    t->ntouched = k;
}

/* Forget every kept value that is not a pending or in-flight write of this txn. */
static void forget_kept(store_txn *t)
{
    for (size_t i = 0; i < t->nent; i++) {
        struct overlay_entry *e = ent(t, i);
        if (e->key && !e->pending && !e->inflight)
            entry_remove(t, e);
    }
    compact_touched(t);
    t->stats.forgets++;
}

static bool in_change(const struct store_change *c, const unsigned char *k, size_t klen)
{
    return key_cmp_raw(k, klen, c->start.buf, c->start.len) >= 0 &&
           key_before_end((const char *)k, klen, &c->end);
}

/* Drop the key sets of the partitions a write of [c->start, c->end) may have reached: those
 * whose number lies between the range's first two bytes at each end (a few too many at
 * worst, built again on demand). */
static void keysets_changed(store_txn *t, const struct store_change *c)
{
    uint32_t lo = c->start.len > 0 ? (uint32_t)c->start.buf[0] << 8 : 0;
    uint32_t hi = c->end.len > 0 ? (uint32_t)c->end.buf[0] << 8 | 0xff : 0xffff;
    if (c->start.len > 1)
        lo |= c->start.buf[1];
    if (c->end.len > 1)
        hi = (uint32_t)c->end.buf[0] << 8 | c->end.buf[1];
    for (size_t i = 0; i < STORE_TXN_KEY_SETS; i++) {
        struct key_sets *ks = &t->sets[i];
        for (uint32_t p = lo; ks->ks && p <= hi; p++) {
            for (uint32_t r = 0; r < ks->ntables; r++) {
                if (keyset_state(ks->ks, set_index(ks, p, r)) != KEYSET_NONE)
                    keyset_drop(ks->ks, set_index(ks, p, r));
            }
        }
    }
}

/* Forget what the writes recorded since this txn last looked touched (its own commits
 * aside): the kept values in their ranges, or everything if one range is unknown or the
 * txn fell more than STORE_CHANGES behind. Under s->changes_mu. */
static void catch_up_locked(store_txn *t)
{
    store *s = t->s;
    uint64_t g = atomic_load_explicit(&s->gen, memory_order_relaxed);
    const struct store_change *c[STORE_CHANGES];
    size_t n = 0;
    bool all = g - t->gen > STORE_CHANGES;
    for (uint64_t x = t->gen + 1; x <= g && !all; x++) {
        const struct store_change *ch = &s->changes[x % STORE_CHANGES];
        if (ch->by == t)
            continue;
        all = ch->all;
        c[n++] = ch;
    }
    t->gen = g;
    if (all) {
        for (size_t i = 0; i < STORE_TXN_KEY_SETS; i++)
            if (t->sets[i].ks)
                keyset_drop_all(t->sets[i].ks);
        forget_kept(t);
        return;
    }
    if (n == 0)
        return;
    for (size_t j = 0; j < n; j++)
        keysets_changed(t, c[j]);
    for (size_t i = 0; i < t->nent; i++) {
        struct overlay_entry *e = ent(t, i);
        if (!e->key || e->pending || e->inflight)
            continue;
        for (size_t j = 0; j < n; j++) {
            if (in_change(c[j], e->key, e->klen)) {
                entry_remove(t, e);
                break;
            }
        }
    }
    compact_touched(t);
    t->stats.forgets_ranged++;
}

/* Forget what the store's writes around this txn since it last looked made stale. */
static void sync_gen(store_txn *t)
{
    if (atomic_load_explicit(&t->s->gen, memory_order_acquire) == t->gen)
        return;
    pthread_mutex_lock(&t->s->changes_mu);
    catch_up_locked(t);
    pthread_mutex_unlock(&t->s->changes_mu);
}

static eddy_err overlay_set(store_txn *t, const struct store_key *key, const void *val,
                            size_t vlen, bool deleted)
{
    struct overlay_entry *e = lookup(t, key->buf, key->len, NULL, NULL);
    if (e && !deleted && e->val && !e->obj && e->vlen == vlen) {
        /* the same size again (a stage-2 high-water, once per event): in place */
        memcpy(e->val, val, vlen);
        e->deleted = false; /* it held bytes: not a delete */
        mark_pending(t, e, false);
        return touch(t, e);
    }
    char *copy = NULL;
    unsigned c = 0;
    if (!deleted && !(copy = bytes_copy(t, val, vlen, &c)))
        return EDDY_ERR_NOMEM;
    eddy_err err = entry_for(t, key, &e);
    if (err != EDDY_OK) {
        if (copy)
            bytes_free(t, copy, c);
        return err;
    }
    bool was_deleted = e->deleted;
    val_free(t, e);
    e->val = copy;
    e->val_class = (uint8_t)c;
    e->vlen = vlen;
    e->deleted = deleted;
    if (deleted)
        e->keep = false;
    entry_drop_obj(e); /* bytes written directly replace any decoded object */
    mark_pending(t, e, was_deleted);
    return EDDY_OK;
}

void store_txn_index_keys(store_txn *t, uint32_t tables, size_t budget)
{
    struct key_sets *free_slot = NULL;
    for (size_t i = 0; i < STORE_TXN_KEY_SETS; i++) {
        struct key_sets *ks = &t->sets[i];
        if (ks->tables == tables && tables) {
            if (!ks->ks && budget > 0)
                ks->ks = keyset_new(budget); /* out of memory: reads, as without */
            else if (ks->ks && budget > 0)
                keyset_set_budget(ks->ks, budget);
            else if (ks->ks) {
                keyset_free(ks->ks);
                ks->ks = NULL;
            }
            return;
        }
        if (ks->tables & tables) { /* replaced */
            keyset_free(ks->ks);
            memset(ks, 0, sizeof(*ks));
        }
        if (!ks->tables && !free_slot)
            free_slot = ks;
    }
    if (free_slot && tables) {
        free_slot->tables = tables;
        free_slot->ks = budget > 0 ? keyset_new(budget) : NULL;
    } /* else none free: those tables are read, as without */
    memset(t->set_of, 0, sizeof(t->set_of));
    for (size_t i = 0; i < STORE_TXN_KEY_SETS; i++) {
        struct key_sets *ks = &t->sets[i];
        ks->ntables = 0;
        for (uint32_t tb = 0; tb < 32; tb++) {
            if (ks->tables & (UINT32_C(1) << tb)) {
                t->set_of[tb] = (uint8_t)(i + 1);
                t->rank_of[tb] = (uint8_t)ks->ntables++;
            }
        }
    }
}

struct set_build {
    keyset *ks;
    uint32_t idx;
};

static int take_key_hash(void *ud, const unsigned char *k, size_t klen, const char *v,
                         size_t vlen)
{
    struct set_build *b = ud;
    (void)v;
    (void)vlen;
    keyset_add(b->ks, b->idx, XXH3_64bits(k, klen));
    return keyset_state(b->ks, b->idx) == KEYSET_OFF; /* over budget: stop */
}

/* Whether the indexed 'key' (its set at 'idx' of 'ks') is known not to exist: its
 * partition's set (built first by a scan of the partition's table, which sees the txn's
 * own writes) lacks it. */
static bool known_absent(store_txn *t, struct key_sets *ks, uint32_t idx,
                         const struct store_key *key)
{
    enum keyset_state st = keyset_state(ks->ks, idx);
    if (st == KEYSET_NONE && keyset_begin(ks->ks, idx)) {
        struct store_key start, end;
        struct set_build b = {ks->ks, idx};
        key_init(&start, key_partition(key->buf), (enum store_table)key->buf[2]);
        key_prefix_end(&start, &end);
        if (store_txn_scan(t, &start, &end, take_key_hash, &b) == EDDY_OK)
            keyset_finish(ks->ks, idx);
        else if (keyset_state(ks->ks, idx) == KEYSET_BUILDING)
            keyset_drop(ks->ks, idx); /* tried again at the next read */
        st = keyset_state(ks->ks, idx);
    }
    return st == KEYSET_READY &&
           !keyset_may_hold(ks->ks, idx, XXH3_64bits(key->buf, key->len));
}

/* store_txn_get of a key the table does not hold (its lookup missed). */
static eddy_err get_missing(store_txn *t, const struct store_key *key, const char **val,
                            size_t *vlen, bool *found)
{
    struct overlay_entry *e;
    eddy_err err;
    *val = NULL;
    *vlen = 0;
    uint32_t idx;
    struct key_sets *ks = indexed_key(t, key->buf, key->len, &idx);
    if (ks && known_absent(t, ks, idx, key)) {
        t->stats.absent++;
        *found = false;
        return EDDY_OK;
    }
    /* Not known: read the committed value and keep it, so the pointer stays valid until
     * the txn is committed or reset (and the next read finds it). */
    t->stats.misses++;
    char *v = NULL;
    size_t n = 0;
    if ((err = store_get(t->s, key, &v, &n)) != EDDY_OK)
        return err;
    *found = v != NULL;
    if (!v)
        return EDDY_OK;
    unsigned c;
    char *copy = bytes_copy(t, v, n, &c);
    leveldb_free(v);
    if (!copy)
        return EDDY_ERR_NOMEM;
    if ((err = entry_for(t, key, &e)) != EDDY_OK) {
        bytes_free(t, copy, c);
        return err;
    }
    e->val = copy;
    e->val_class = (uint8_t)c;
    e->vlen = n;
    e->keep = true;
    *val = e->val;
    *vlen = n;
    return EDDY_OK;
}

eddy_err store_txn_get(store_txn *t, const struct store_key *key, const char **val,
                       size_t *vlen, bool *found)
{
    sync_gen(t);
    struct overlay_entry *e = lookup(t, key->buf, key->len, NULL, NULL);
    eddy_err err;
    if (e) {
        t->stats.hits++;
        if ((err = touch(t, e)) != EDDY_OK || (err = entry_pack(t, e)) != EDDY_OK)
            return err;
        *found = !e->deleted;
        *val = e->val;
        *vlen = e->vlen;
        return EDDY_OK;
    }
    return get_missing(t, key, val, vlen, found);
}

eddy_err store_txn_get_msg(store_txn *t, const struct store_key *key,
                           const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg)
{
    const char *val;
    size_t vlen;
    bool found;
    *msg = NULL;
    eddy_err err = store_txn_get(t, key, &val, &vlen, &found);
    if (err != EDDY_OK || !found)
        return err;
    return store_decode(desc, val, vlen, msg);
}

eddy_err store_txn_put(store_txn *t, const struct store_key *key, const void *val, size_t vlen)
{
    return overlay_set(t, key, val, vlen, false);
}

eddy_err store_txn_put_msg(store_txn *t, const struct store_key *key, const ProtobufCMessage *msg)
{
    uint8_t stackbuf[4096];
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = n <= sizeof(stackbuf) ? stackbuf : malloc(n);
    if (!buf)
        return EDDY_ERR_NOMEM;
    protobuf_c_message_pack(msg, buf);
    eddy_err err = store_txn_put(t, key, buf, n);
    if (buf != stackbuf)
        free(buf);
    return err;
}

eddy_err store_txn_del(store_txn *t, const struct store_key *key)
{
    return overlay_set(t, key, NULL, 0, true);
}

struct key_list {
    struct store_key *keys;
    size_t n, cap;
    eddy_err err;
};

static int collect_key(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct key_list *l = ud;
    if (klen > STORE_KEY_MAX)
        return 0;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 16;
        struct store_key *nk = realloc(l->keys, ncap * sizeof(*nk));
        if (!nk) {
            l->err = EDDY_ERR_NOMEM;
            return 1;
        }
        l->keys = nk;
        l->cap = ncap;
    }
    memcpy(l->keys[l->n].buf, k, klen);
    l->keys[l->n].len = klen;
    l->n++;
    return 0;
}

eddy_err store_txn_del_range(store_txn *t, const struct store_key *start,
                             const struct store_key *end, uint64_t *n)
{
    /* Collect first: deleting while scanning would reshape the overlay under the scan. */
    struct key_list l = {NULL, 0, 0, EDDY_OK};
    eddy_err err = store_txn_scan(t, start, end, collect_key, &l);
    if (err == EDDY_OK)
        err = l.err;
    for (size_t i = 0; i < l.n && err == EDDY_OK; i++)
        err = store_txn_del(t, &l.keys[i]);
    if (n)
        *n = err == EDDY_OK ? l.n : 0;
    free(l.keys);
    return err;
}

/* The rest of store_txn_obj_get when the table holds no decoded message: 'e' is the key's
 * entry (bytes kept, or a pending delete), NULL if its lookup missed. A message found is
 * kept by its entry, which *held is then (when 'held' is not NULL). */
static eddy_err obj_load(store_txn *t, struct overlay_entry *e, const struct store_key *key,
                         const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj,
                         struct overlay_entry **held)
{
    const char *val;
    size_t vlen;
    bool found;
    *obj = NULL;
    eddy_err err = e ? store_txn_get(t, key, &val, &vlen, &found) /* keeps the bytes */
                     : get_missing(t, key, &val, &vlen, &found);
    if (err != EDDY_OK || !found)
        return err;
    ProtobufCMessage *m = NULL;
    if ((err = store_decode(desc, val, vlen, &m)) != EDDY_OK)
        return err;
    e = lookup(t, key->buf, key->len, NULL, NULL); /* the get may have rebuilt the table */
    e->obj = m;
    e->obj_dirty = false;
    e->keep = true;
    *obj = m;
    if (held)
        *held = e;
    return EDDY_OK;
}

eddy_err store_txn_obj_get(store_txn *t, const struct store_key *key,
                           const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj)
{
    *obj = NULL;
    sync_gen(t);
    struct overlay_entry *e = lookup(t, key->buf, key->len, NULL, NULL);
    if (e && e->obj) {
        t->stats.hits++;
        *obj = e->deleted ? NULL : e->obj;
        return touch(t, e);
    }
    return obj_load(t, e, key, desc, obj, NULL);
}

/* 'e' holds 'obj' from now on, changed: packed again at commit. */
static void entry_set_obj(store_txn *t, struct overlay_entry *e, ProtobufCMessage *obj)
{
    if (e->obj != obj)
        entry_drop_obj(e);
    val_free(t, e); /* stale now: packed again at commit */
    bool was_deleted = e->deleted;
    e->obj = obj;
    e->obj_dirty = true;
    e->deleted = false;
    e->keep = true;
    mark_pending(t, e, was_deleted);
}

eddy_err store_txn_obj_set(store_txn *t, const struct store_key *key, ProtobufCMessage *obj)
{
    struct overlay_entry *e;
    eddy_err err = entry_for(t, key, &e);
    if (err != EDDY_OK) {
        /* ours to free, unless the key's entry holds it (a message got and changed in
         * place): the txn frees that one */
        const struct overlay_entry *held = lookup(t, key->buf, key->len, NULL, NULL);
        if (!held || held->obj != obj)
            protobuf_c_message_free_unpacked(obj, NULL);
        return err;
    }
    entry_set_obj(t, e, obj);
    return EDDY_OK;
}

/* A message of type 'desc' at 'key', created empty and set (changed). */
static eddy_err obj_new(store_txn *t, const struct store_key *key,
                        const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj)
{
    if (!(*obj = malloc(desc->sizeof_message)))
        return EDDY_ERR_NOMEM;
    desc->message_init(*obj);
    eddy_err err = store_txn_obj_set(t, key, *obj);
    if (err != EDDY_OK)
        *obj = NULL; /* freed */
    return err;
}

eddy_err store_txn_obj_get_or_new(store_txn *t, const struct store_key *key,
                                  const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj,
                                  bool *created)
{
    eddy_err err = store_txn_obj_get(t, key, desc, obj);
    *created = err == EDDY_OK && !*obj;
    return *created ? obj_new(t, key, desc, obj) : err;
}

eddy_err store_txn_obj_edit(store_txn *t, const struct store_key *key,
                            const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj)
{
    sync_gen(t);
    /* a kept message, the usual case: one probe, where a get and a set took two */
    struct overlay_entry *e = lookup(t, key->buf, key->len, NULL, NULL);
    if (e && e->obj && !e->deleted) {
        t->stats.hits++;
        eddy_err err = touch(t, e); /* first: the seal finds pending keys by their touch */
        if (err == EDDY_OK) {
            *obj = e->obj;
            entry_set_obj(t, e, e->obj);
        }
        return err;
    }
    /* else read it (after a miss, with no second probe) and mark its entry changed, or
     * create it: two probes for a new key, where store_txn_obj_get_or_new and a set took
     * four */
    struct overlay_entry *held;
    eddy_err err = obj_load(t, e, key, desc, obj, &held);
    if (err != EDDY_OK)
        return err;
    if (!*obj)
        return obj_new(t, key, desc, obj);
    entry_set_obj(t, held, *obj);
    return EDDY_OK;
}

/* Evict the kept values used longest ago until they fit in 3/4 of their room. */
static void evict(store_txn *t)
{
    enum { AGES = 1024 };
    size_t target = kept_room(t) / 4 * 3;
    size_t *by_age = calloc(AGES, sizeof(*by_age));
    if (!by_age) {
        forget_kept(t);
        return;
    }
    for (size_t i = 0; i < t->nent; i++) {
        const struct overlay_entry *e = ent(t, i);
        if (e->key) {
            uint64_t age = t->commits - e->stamp;
            by_age[age < AGES ? age : AGES - 1] += e->cost;
        }
    }
    size_t excess = t->kept_bytes - target, freed = 0;
    size_t cutoff = AGES - 1;
    while (cutoff > 0 && freed + by_age[cutoff] < excess)
        freed += by_age[cutoff--];
    for (size_t i = 0; i < t->nent; i++) {
        struct overlay_entry *e = ent(t, i);
        if (e->key && !e->inflight && t->commits - e->stamp >= cutoff) {
            entry_remove(t, e);
            t->stats.evictions++;
        }
    }
    free(by_age);
}

/* Whether the entry holds a value worth keeping after its write: one read or decoded. */
static bool holds_kept_value(const struct overlay_entry *e)
{
    return e->keep && !e->deleted && (e->obj || e->val);
}

/* The txn's side of a seal: pending entries go in flight, what was read or decoded is kept
 * (charged to the budget), what was only written stays in flight until the settle (reads
 * find it there, not yet in LevelDB), anything else leaves. */
static void seal_touched(store_txn *t)
{
    t->commits++;
    for (size_t i = 0; i < t->ntouched; i++) {
        size_t id = t->touched[i];
        struct overlay_entry *e = ent(t, id);
        if (!e->key)
            continue; /* forgotten meanwhile */
        e->touched = false;
        if (e->pending) {
            e->pending = false;
            e->inflight = true;
            t->sealed[t->nsealed++] = id;
        }
        e->obj_dirty = false;
        t->kept_bytes -= e->cost;
        e->cost = 0;
        if (!holds_kept_value(e)) {
            if (!e->inflight)
                entry_remove(t, e);
            continue;
        }
        if (e->obj) /* the decoded value is what is kept; its bytes are packed on demand */
            val_free(t, e);
        e->cost = kept_cost(e);
        t->kept_bytes += e->cost;
        uint32_t bit = e->klen >= 3 && e->key[2] < 32 ? UINT32_C(1) << e->key[2] : 0;
        if (!(t->kept_mask & bit)) {
            t->kept_mask |= bit;
            atomic_fetch_or_explicit(&t->s->kept_tables, bit, memory_order_relaxed);
        }
    }
    t->ntouched = 0;
    t->npending = 0;
    /* what was pending is in flight now (nothing was: the last write settled) */
    uint32_t *empty = t->shead;
    t->shead = t->phead;
    t->phead = empty;
    for (size_t i = 0; i < t->nsealed; i++) {
        struct overlay_entry *e = ent(t, t->sealed[i]);
        e->snext = e->pnext;
        e->pnext = 0;
    }
    if (t->kept_bytes > kept_room(t))
        evict(t);
    if (t->tombs > t->cap / 4)
        rehash(t, t->cap); /* on failure the tombstones just stay */
}

/* Note the write slot of 'e' for the write of the sealed batch (store_key_writes). */
static eddy_err track_write(store_txn *t, const struct overlay_entry *e)
{
    if (t->ntrack == t->track_cap) {
        size_t ncap = t->track_cap ? t->track_cap * 2 : 256;
        uint32_t *n = realloc(t->track, ncap * sizeof(*n));
        if (!n)
            return EDDY_ERR_NOMEM;
        t->track = n;
        t->track_cap = ncap;
    }
    t->track[t->ntrack++] = store_write_slot(e->key, e->klen);
    return EDDY_OK;
}

eddy_err store_txn_seal(store_txn *t)
{
    assert(t->nsealed == 0 && t->sealed_keys == 0); /* the last sealed write is settled */
    if (t->npending > t->sealed_cap) {
        size_t *n = realloc(t->sealed, t->npending * sizeof(*n));
        if (!n) {
            store_txn_reset(t);
            return EDDY_ERR_NOMEM;
        }
        t->sealed = n;
        t->sealed_cap = t->npending;
    }
    /* every pending key once, with its last value: objects changed in place are packed now;
     * the behind tables' into t->behind */
    t->ntrack = 0;
    bool through = t->want_through;
    for (size_t i = 0; i < t->ntouched; i++) {
        struct overlay_entry *e = ent(t, t->touched[i]);
        if (!e->key || !e->pending)
            continue;
        if (store_tracked_key(t->s, e->key, e->klen) && track_write(t, e) != EDDY_OK) {
            store_txn_reset(t);
            return EDDY_ERR_NOMEM;
        }
        size_t tb = e->klen >= 3 && e->key[2] < STORE_STAT_TABLES ? e->key[2] : 0;
        bool behind = store_behind_key(t->s, e->key, e->klen);
        if (!behind && e->deleted && tb == T_LOG)
            through = true;
        uint64_t *keys = behind ? t->bb_keys : t->wb_keys;
        uint64_t *bytes = behind ? t->bb_bytes : t->wb_bytes;
        keys[tb]++;
        bytes[tb] += e->klen;
        eddy_err err = EDDY_OK;
        const char *v = NULL;
        size_t n = 0;
        if (!e->deleted) {
            t->wb_packs[tb] += e->obj && (e->obj_dirty || !e->val);
            err = seal_bytes(t, e, &v, &n);
            bytes[tb] += n;
        }
        if (err == EDDY_OK && behind)
            err = behind_add(t, e->key, e->klen, v, n, e->deleted);
        else if (err == EDDY_OK && e->deleted)
            leveldb_writebatch_delete(t->wb, (const char *)e->key, e->klen);
        else if (err == EDDY_OK)
            leveldb_writebatch_put(t->wb, (const char *)e->key, e->klen, v, n);
        if (err != EDDY_OK) {
            store_txn_reset(t);
            return err;
        }
    }
    t->through = through;
    t->want_through = false;
    t->sealed_keys = t->npending;
    seal_touched(t);
    return EDDY_OK;
}

/* Add the sealed behind writes to the synced batch (a write through). */
static void behind_to_batch(store_txn *t, leveldb_writebatch_t *wb)
{
    for (size_t off = 0, i = 0; i < t->nbehind; i++) {
        const unsigned char *k;
        const char *v;
        size_t klen, vlen;
        bool del;
        behind_next(t, &off, &k, &klen, &v, &vlen, &del);
        if (del)
            leveldb_writebatch_delete(wb, (const char *)k, klen);
        else
            leveldb_writebatch_put(wb, (const char *)k, klen, v, vlen);
    }
}

/* The offsets in t->behind of the sealed behind writes, ordered by their keys' first three
 * bytes (partition, table: a run of the dirty set), in a malloc'd array of 4 * nbehind
 * (the first nbehind are the answer); NULL if out of memory or too large. A radix sort,
 * two passes of 12 bits: a group of a burst publishes tens of thousands of rows (most of
 * them co-occurrence pairs) over thousands of runs, and in this order each run's array
 * is searched while it is in the cache instead of missed row after row. */
static uint32_t *behind_by_run(const store_txn *t)
{
    size_t n = t->nbehind;
    if (t->behind_len > UINT32_MAX || n > SIZE_MAX / (4 * sizeof(uint32_t)))
        return NULL;
    uint32_t *buf = malloc(4 * n * sizeof(*buf));
    if (!buf)
        return NULL;
    uint32_t *off = buf, *pre = buf + n, *off2 = buf + 2 * n, *pre2 = buf + 3 * n;
    for (size_t i = 0, at = 0; i < n; i++) {
        const unsigned char *k;
        const char *v;
        size_t klen, vlen;
        bool del;
        off[i] = (uint32_t)at;
        behind_next(t, &at, &k, &klen, &v, &vlen, &del);
        pre[i] = store_key_prefix(k, klen);
    }
    for (unsigned shift = 0; shift < 24; shift += 12) {
        size_t at[4096] = {0}, sum = 0;
        for (size_t i = 0; i < n; i++)
            at[pre[i] >> shift & 0xfff]++;
        for (size_t b = 0; b < 4096; b++) {
            size_t c = at[b];
            at[b] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) {
            size_t j = at[pre[i] >> shift & 0xfff]++;
            off2[j] = off[i];
            pre2[j] = pre[i];
        }
        uint32_t *x = off;
        off = off2;
        off2 = x;
        x = pre;
        pre = pre2;
        pre2 = x;
    }
    return buf; /* two passes: the sorted offsets are back at the start */
}

/* Publish the sealed behind writes in the dirty set (their write to LevelDB is the
 * flush's), run by run. Out of memory midway: every one is written to LevelDB at once
 * instead (the log they follow is durable already: they must not be lost). */
static eddy_err behind_publish(store_txn *t)
{
    struct store_dirty *d = &t->s->dirty;
    eddy_err err = EDDY_OK;
    uint32_t *order = behind_by_run(t); /* NULL: in the txn's order */
    pthread_rwlock_wrlock(&d->lock);
    for (size_t i = 0, next = 0; i < t->nbehind && err == EDDY_OK; i++) {
        const unsigned char *k;
        const char *v;
        size_t klen, vlen;
        bool del;
        size_t off = order ? order[i] : next;
        behind_next(t, &off, &k, &klen, &v, &vlen, &del);
        next = off;
        err = store_dirty_put_locked(d, k, klen, v, vlen, del);
    }
    pthread_rwlock_unlock(&d->lock);
    free(order);
    if (err == EDDY_OK)
        return EDDY_OK;
    leveldb_writebatch_t *wb = leveldb_writebatch_create();
    behind_to_batch(t, wb); /* all of them: the published ones again, the same values */
    char *lerr = NULL;
    leveldb_write(t->s->db, t->s->wsync, wb, &lerr);
    leveldb_writebatch_destroy(wb);
    return store_take_write_err(t->s, lerr);
}

static void count_written(store *s, const uint64_t *keys, const uint64_t *bytes,
                          const uint64_t *packs)
{
    for (size_t i = 0; i < STORE_STAT_TABLES; i++) {
        if (!keys[i] && !(packs && packs[i]))
            continue;
        atomic_fetch_add_explicit(&s->written_keys[i], keys[i], memory_order_relaxed);
        atomic_fetch_add_explicit(&s->written_bytes[i], bytes[i], memory_order_relaxed);
        if (packs)
            atomic_fetch_add_explicit(&s->written_packs[i], packs[i], memory_order_relaxed);
    }
}

eddy_err store_txn_write(store_txn *t, bool sync)
{
    if (t->sealed_keys == 0)
        return EDDY_OK;
    if (atomic_load_explicit(&t->s->fail_writes, memory_order_relaxed) > 0 &&
        atomic_fetch_sub(&t->s->fail_writes, 1) > 0)
        return t->s->fail_err;
    store *s = t->s;
    eddy_err err = EDDY_OK;
    int64_t t0 = clock_mono_ns(), t1 = 0;
    t->write_ns = t->publish_ns = 0;
    /* the log, then the dirty values, with no snapshot or range replace in between */
    pthread_mutex_lock(&s->dirty.pub_mu);
    if (t->through && t->nbehind > 0) {
        /* the dirty set first: the whole write lands on every earlier value */
        if ((err = store_flush(s)) != EDDY_OK)
            goto out;
        behind_to_batch(t, t->wb);
    }
    size_t synced = t->sealed_keys - (t->through ? 0 : t->nbehind);
    if (synced > 0) {
        char *lerr = NULL;
        leveldb_write(s->db, sync ? s->wsync : s->wnosync, t->wb, &lerr);
        if (lerr) {
            err = store_take_write_err(s, lerr);
            goto out;
        }
    }
    store_crash_point("log");
    t1 = clock_mono_ns();
    t->write_ns = t1 - t0;
    if (!t->through && t->nbehind > 0) {
        err = behind_publish(t);
        t->publish_ns = clock_mono_ns() - t1;
        if (err != EDDY_OK)
            goto out;
    }
    /* after the write: a reader that sees the new count reads the new value */
    for (size_t i = 0; i < t->ntrack; i++)
        atomic_fetch_add(&s->key_writes[t->track[i]], 1);
    count_written(s, t->wb_keys, t->wb_bytes, t->wb_packs);
    if (t->through)
        count_written(s, t->bb_keys, t->bb_bytes, NULL);
    if (synced > 0)
        atomic_fetch_add_explicit(&s->written_batches, 1, memory_order_relaxed);
    /* Record the write: its keys are unknown to the other txns of the store, which forget
     * everything when they see it; this txn skips its own writes when it catches up. */
    pthread_mutex_lock(&s->changes_mu);
    store_change_locked(s, t, NULL, NULL);
    pthread_mutex_unlock(&s->changes_mu);
out:
    pthread_mutex_unlock(&s->dirty.pub_mu);
    return err;
}

void store_txn_write_times(const store_txn *t, int64_t *write_ns, int64_t *publish_ns)
{
    *write_ns = t->write_ns;
    *publish_ns = t->publish_ns;
}

void store_txn_settle(store_txn *t, eddy_err write_err)
{
    leveldb_writebatch_clear(t->wb);
    behind_clear(t);
    t->sealed_keys = 0;
    memset(t->wb_keys, 0, sizeof(t->wb_keys));
    memset(t->wb_bytes, 0, sizeof(t->wb_bytes));
    memset(t->wb_packs, 0, sizeof(t->wb_packs));
    if (write_err != EDDY_OK) {
        store_txn_reset(t);
        return;
    }
    for (size_t i = 0; i < t->nsealed; i++) { /* the in-flight chains end */
        struct overlay_entry *e = ent(t, t->sealed[i]);
        if (e->key)
            t->shead[prefix_bit(e->key, e->klen)] = 0;
        e->snext = 0;
    }
    /* In LevelDB now: what was only written leaves, unless the txn used it again. */
    for (size_t i = 0; i < t->nsealed; i++) {
        struct overlay_entry *e = ent(t, t->sealed[i]);
        if (!e->key || !e->inflight)
            continue;
        e->inflight = false;
        if (!e->touched && !holds_kept_value(e))
            entry_remove(t, e);
    }
    t->nsealed = 0;
    sync_gen(t); /* past our own write, and whatever ran around it */
}

eddy_err store_txn_commit(store_txn *t, bool sync)
{
    eddy_err err = store_txn_seal(t);
    if (err != EDDY_OK)
        return err;
    err = store_txn_write(t, sync);
    store_txn_settle(t, err);
    return err;
}

static int cmp_entry_key(const void *a, const void *b)
{
    const struct overlay_entry *x = *(const struct overlay_entry *const *)a;
    const struct overlay_entry *y = *(const struct overlay_entry *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    if (c != 0)
        return c;
    return x->klen < y->klen ? -1 : x->klen > y->klen;
}

/* Which pending and in-flight writes a scan of [start, end) must look at: none (false), the
 * chains of one prefix bit (*chained, *bit) when the range lies in one (partition, table)
 * prefix, else every listed entry. */
static bool pending_scope(const store_txn *t, const struct store_key *start,
                          const struct store_key *end, bool *chained, size_t *bit)
{
    *chained = false;
    if (t->npending == 0 && t->nsealed == 0)
        return false;
    if (start->len < 3 || end->len == 0)
        return true;
    struct store_key pre, pre_end;
    memcpy(pre.buf, start->buf, 3);
    pre.len = 3;
    key_prefix_end(&pre, &pre_end);
    if (pre_end.len == 0 || key_cmp_raw(end->buf, end->len, pre_end.buf, pre_end.len) > 0)
        return true; /* spans several prefixes */
    *chained = true;
    *bit = prefix_bit(start->buf, start->len);
    return t->phead[*bit] || t->shead[*bit];
}

/* Whether entry 'e' is a write the scan of [start, end) must merge. */
static bool merged_in_scan(const struct overlay_entry *e, const struct store_key *start,
                           const struct store_key *end)
{
    return e->key && key_cmp_raw(e->key, e->klen, start->buf, start->len) >= 0 &&
           key_before_end((const char *)e->key, e->klen, end);
}

eddy_err store_txn_scan(store_txn *t, const struct store_key *start, const struct store_key *end,
                        store_scan_fn *fn, void *ud)
{
    /* Pending and in-flight entries in range (each once: an in-flight key written again
     * is pending too), sorted; kept values equal the committed ones. */
    size_t n = 0, bit = 0;
    bool chained;
    struct overlay_entry **pend = NULL;
    if (pending_scope(t, start, end, &chained, &bit)) {
        pend = malloc((t->npending + t->nsealed + 1) * sizeof(*pend));
        if (!pend)
            return EDDY_ERR_NOMEM;
        /* the pending ones, then the in-flight ones not written again */
        uint32_t pi = chained ? t->phead[bit] : 0, si = chained ? t->shead[bit] : 0;
        size_t i = 0, all = chained ? 0 : t->ntouched + t->nsealed;
        for (;;) {
            struct overlay_entry *e;
            bool wanted;
            if (pi) {
                e = ent(t, pi - 1);
                pi = e->pnext;
                wanted = true;
            } else if (si) {
                e = ent(t, si - 1);
                si = e->snext;
                wanted = !e->pending;
            } else if (i < all) {
                e = ent(t, i < t->ntouched ? t->touched[i] : t->sealed[i - t->ntouched]);
                wanted = i < t->ntouched ? e->pending : e->inflight && !e->pending;
                i++;
            } else {
                break;
            }
            if (!wanted || !merged_in_scan(e, start, end))
                continue;
            if (entry_pack(t, e) != EDDY_OK) {
                free(pend);
                return EDDY_ERR_NOMEM;
            }
            pend[n++] = e;
        }
        qsort(pend, n, sizeof(*pend), cmp_entry_key);
    }

    /* the txn's writes win over the dirty set's, which win over LevelDB's */
    struct store_ovl *mine = NULL, *dirty = NULL, *all = NULL;
    size_t ndirty = 0, nall = 0;
    eddy_err err = EDDY_OK;
    if (n > 0 && !(mine = malloc(n * sizeof(*mine))))
        err = EDDY_ERR_NOMEM;
    for (size_t i = 0; i < n && mine; i++)
        mine[i] = (struct store_ovl){pend[i]->key, pend[i]->klen, pend[i]->val, pend[i]->vlen,
                                     pend[i]->deleted};
    free(pend);
    if (err == EDDY_OK)
        err = store_dirty_range(&t->s->dirty, start, end, &dirty, &ndirty);
    if (err == EDDY_OK && ndirty > 0 && n > 0)
        err = store_ovl_merge(mine, n, dirty, ndirty, &all, &nall);
    if (err == EDDY_OK) {
        const struct store_ovl *ovl = all ? all : ndirty > 0 ? dirty : mine;
        size_t novl = all ? nall : ndirty > 0 ? ndirty : n;
        leveldb_iterator_t *it = leveldb_create_iterator(t->s->db, t->s->ropts);
        err = store_merge_scan(it, start, end, ovl, novl, fn, ud, NULL);
        leveldb_iter_destroy(it);
    }
    free(mine);
    free(dirty);
    free(all);
    return err;
}
