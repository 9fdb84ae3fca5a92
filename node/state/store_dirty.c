/* The store's dirty set: the packed values of acknowledged writes that are not in LevelDB
 * yet (write-behind, store_set_behind), consulted first by every read of the store until
 * store_flush writes them (store_internal.h). */
#include <stdlib.h>
#include <string.h>

#include "node/state/store_internal.h"

/* DESIGN: the keys of one (partition, table) prefix are a sorted array (a "run"), found
 * through an open-addressing table of prefixes: a get is a hash and a binary search, a
 * scan of one partition's table (every query's) walks one run, and the flush drops what
 * it wrote in one pass per run. A run's array holds the next 16 bytes of each key beside
 * the entry's pointer (struct dirty_slot): after a burst a group's publish puts ~20,000
 * rows into runs of hundreds to thousands of keys, and a search that read every probed
 * entry missed the cache at each step (a third of the sync thread, before the
 * acknowledgements; the txn also publishes a group run after run, behind_publish).
 * Entries are immutable once published (a newer value replaces the entry), stamped with
 * the set's version at publish: a flush that wrote everything up to version V drops the
 * entries stamped <= V, keeping those published while it wrote. One rwlock: readers copy
 * what they need under it.
 *
 * A flush holds the lock only to copy the runs' entry pointers and, after its writes, to
 * unlink what it wrote: every group's publish (on the acknowledgement's path) takes the
 * lock for writing, and building the batches of a few seconds of rows (tens of MB) or
 * freeing them under it held acknowledgements for 80-190 ms. An entry a publish replaces
 * while the flush reads it is retired instead of freed, until the batches are built. */

struct dirty_entry {
    uint64_t ver;
    size_t klen, vlen;
    bool del;
    unsigned char data[]; /* key, then value */
};

static size_t entry_bytes(const struct dirty_entry *e)
{
    /* + the run's slot and malloc's header */
    return sizeof(*e) + e->klen + e->vlen + sizeof(struct dirty_slot) + 8;
}

/* The key's bytes 3 to 18 as two big-endian words, zero past its end: for two keys of one
 * run, unequal words order them as their bytes do (a key that ends first is a prefix of
 * the other, and sorts first), equal words leave it to the bytes. */
static void key_words(const unsigned char *k, size_t klen, uint64_t w[2])
{
    unsigned char b[16] = {0};
    if (klen > 3)
        memcpy(b, k + 3, klen - 3 < 16 ? klen - 3 : 16);
    for (int i = 0; i < 2; i++) {
        w[i] = 0;
        for (int j = 0; j < 8; j++)
            w[i] = w[i] << 8 | b[i * 8 + j];
    }
}

static size_t slot_of(uint32_t prefix, size_t cap)
{
    return (size_t)((prefix * UINT32_C(2654435761)) & (cap - 1));
}

eddy_err store_dirty_init(struct store_dirty *d)
{
    memset(d, 0, sizeof(*d));
    d->cap = 64;
    if (!(d->runs = calloc(d->cap, sizeof(*d->runs))))
        return EDDY_ERR_NOMEM;
    pthread_rwlock_init(&d->lock, NULL);
    pthread_mutex_init(&d->flush_mu, NULL);
    pthread_mutex_init(&d->pub_mu, NULL);
    atomic_init(&d->bytes, 0);
    return EDDY_OK;
}

void store_dirty_release(struct store_dirty *d)
{
    if (!d->runs)
        return;
    for (size_t i = 0; i < d->cap; i++) {
        for (size_t j = 0; j < d->runs[i].n; j++)
            free(d->runs[i].v[j].e);
        free(d->runs[i].v);
    }
    free(d->runs);
    d->runs = NULL;
    free(d->retired);
    pthread_rwlock_destroy(&d->lock);
    pthread_mutex_destroy(&d->flush_mu);
    pthread_mutex_destroy(&d->pub_mu);
}

/* The run of 'prefix', NULL if none (create: add an empty one; NULL if out of memory). */
static struct dirty_run *run_of(struct store_dirty *d, uint32_t prefix, bool create)
{
    for (size_t i = slot_of(prefix, d->cap);; i = (i + 1) & (d->cap - 1)) {
        struct dirty_run *r = &d->runs[i];
        if (r->prefix1 == prefix + 1)
            return r;
        if (r->prefix1 != 0)
            continue;
        if (!create)
            return NULL;
        if ((d->nruns + 1) * 2 > d->cap) {
            size_t ncap = d->cap * 2;
            struct dirty_run *n = calloc(ncap, sizeof(*n));
            if (!n)
                return NULL;
            for (size_t j = 0; j < d->cap; j++) {
                if (!d->runs[j].prefix1)
                    continue;
                size_t s = slot_of(d->runs[j].prefix1 - 1, ncap);
                while (n[s].prefix1)
                    s = (s + 1) & (ncap - 1);
                n[s] = d->runs[j];
            }
            free(d->runs);
            d->runs = n;
            d->cap = ncap;
            return run_of(d, prefix, true);
        }
        r->prefix1 = prefix + 1;
        d->nruns++;
        return r;
    }
}

/* Slot 's' against key k (of the same run, with words w) as key_cmp_raw. */
static int slot_cmp(const struct dirty_slot *s, const uint64_t w[2], const unsigned char *k,
                    size_t klen)
{
    if (s->w[0] != w[0])
        return s->w[0] < w[0] ? -1 : 1;
    if (s->w[1] != w[1])
        return s->w[1] < w[1] ? -1 : 1;
    return key_cmp_raw(s->e->data, s->e->klen, k, klen);
}

/* The first index of run 'r' whose key is >= k (r->n if none); *eq whether it is k. The
 * words of k (key_words) go to w. */
static size_t lower_bound_w(const struct dirty_run *r, const unsigned char *k, size_t klen,
                            uint64_t w[2], bool *eq)
{
    key_words(k, klen, w);
    *eq = false;
    uint32_t pk = store_key_prefix(k, klen), pr = r->prefix1 - 1;
    if (pk != pr) /* a range's bound outside the run: the words do not compare */
        return pk < pr ? 0 : r->n;
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (slot_cmp(&r->v[mid], w, k, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *eq = lo < r->n && slot_cmp(&r->v[lo], w, k, klen) == 0;
    return lo;
}

static size_t lower_bound(const struct dirty_run *r, const unsigned char *k, size_t klen,
                          bool *eq)
{
    uint64_t w[2];
    return lower_bound_w(r, k, klen, w, eq);
}

/* Array v (of *cap elements of 'size' bytes, n used) with room for one more: doubled when
 * full ('first' when empty). NULL if out of memory (v unchanged). */
static void *room_for_one(void *v, size_t size, size_t *cap, size_t n, size_t first)
{
    if (n < *cap)
        return v;
    size_t ncap = *cap ? *cap * 2 : first;
    void *nv = realloc(v, ncap * size);
    if (nv)
        *cap = ncap;
    return nv;
}

eddy_err store_dirty_put_locked(struct store_dirty *d, const unsigned char *k, size_t klen,
                                const void *val, size_t vlen, bool del)
{
    struct dirty_run *r = run_of(d, store_key_prefix(k, klen), true);
    if (!r)
        return EDDY_ERR_NOMEM;
    struct dirty_entry *e = malloc(sizeof(*e) + klen + vlen);
    if (!e)
        return EDDY_ERR_NOMEM;
    e->ver = ++d->ver;
    e->klen = klen;
    e->vlen = del ? 0 : vlen;
    e->del = del;
    memcpy(e->data, k, klen);
    if (!del && vlen)
        memcpy(e->data + klen, val, vlen);
    bool eq;
    uint64_t w[2];
    size_t i = lower_bound_w(r, k, klen, w, &eq);
    if (eq) {
        if (d->reading) {
            struct dirty_entry **nv = room_for_one(d->retired, sizeof(*d->retired),
                                                   &d->retired_cap, d->nretired, 256);
            if (!nv) {
                free(e);
                return EDDY_ERR_NOMEM;
            }
            d->retired = nv;
        }
        atomic_fetch_sub_explicit(&d->bytes, entry_bytes(r->v[i].e), memory_order_relaxed);
        if (d->reading)
            d->retired[d->nretired++] = r->v[i].e; /* a flush is reading it */
        else
            free(r->v[i].e);
        r->v[i].e = e;
    } else {
        struct dirty_slot *nv = room_for_one(r->v, sizeof(*r->v), &r->cap, r->n, 16);
        if (!nv) {
            free(e);
            return EDDY_ERR_NOMEM;
        }
        r->v = nv;
        memmove(&r->v[i + 1], &r->v[i], (r->n - i) * sizeof(*r->v));
        r->v[i] = (struct dirty_slot){{w[0], w[1]}, e};
        r->n++;
        d->entries++;
    }
    atomic_fetch_add_explicit(&d->bytes, entry_bytes(e), memory_order_relaxed);
    return EDDY_OK;
}

eddy_err store_dirty_get(struct store_dirty *d, const unsigned char *k, size_t klen, char **val,
                         size_t *vlen, bool *hit)
{
    *hit = false;
    if (atomic_load_explicit(&d->bytes, memory_order_acquire) == 0)
        return EDDY_OK;
    eddy_err err = EDDY_OK;
    pthread_rwlock_rdlock(&d->lock);
    const struct dirty_run *r = run_of(d, store_key_prefix(k, klen), false);
    bool eq = false;
    size_t i = r ? lower_bound(r, k, klen, &eq) : 0;
    if (eq) {
        const struct dirty_entry *e = r->v[i].e;
        *hit = true;
        *val = NULL;
        *vlen = 0;
        if (!e->del) {
            if ((*val = malloc(e->vlen ? e->vlen : 1))) {
                memcpy(*val, e->data + e->klen, e->vlen);
                *vlen = e->vlen;
            } else {
                err = EDDY_ERR_NOMEM;
            }
        }
    }
    pthread_rwlock_unlock(&d->lock);
    return err;
}

static int cmp_ovl(const void *a, const void *b)
{
    const struct store_ovl *x = a, *y = b;
    return key_cmp_raw(x->key, x->klen, y->key, y->klen);
}

/* Append the entries of run 'r' in [start, end) to 'out', copied into 'buf'. */
static void copy_range(const struct dirty_run *r, const struct store_key *start,
                       const struct store_key *end, struct store_ovl *out, size_t *n,
                       unsigned char *buf, size_t *off)
{
    bool eq;
    for (size_t i = lower_bound(r, start->buf, start->len, &eq); i < r->n; i++) {
        const struct dirty_entry *e = r->v[i].e;
        if (!key_before_end((const char *)e->data, e->klen, end))
            break;
        memcpy(buf + *off, e->data, e->klen + e->vlen);
        out[*n] = (struct store_ovl){buf + *off, e->klen, (const char *)buf + *off + e->klen,
                                     e->vlen, e->del};
        *off += e->klen + e->vlen;
        (*n)++;
    }
}

/* Whether run 'r' (prefix 'pre') may hold keys in [start, end). */
static bool run_in_range(uint32_t pre, const struct store_key *start,
                         const struct store_key *end)
{
    unsigned char k[3] = {(unsigned char)(pre >> 16), (unsigned char)(pre >> 8),
                          (unsigned char)pre};
    struct store_key p = {.len = 3}, pend;
    memcpy(p.buf, k, 3);
    key_prefix_end(&p, &pend);
    /* [p, pend) meets [start, end) */
    bool ends_after_start = pend.len == 0 || key_cmp_raw(pend.buf, pend.len, start->buf,
                                                         start->len) > 0;
    return ends_after_start && key_before_end((const char *)k, 3, end);
}

eddy_err store_dirty_range(struct store_dirty *d, const struct store_key *start,
                           const struct store_key *end, struct store_ovl **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (atomic_load_explicit(&d->bytes, memory_order_acquire) == 0)
        return EDDY_OK;
    eddy_err err = EDDY_OK;
    pthread_rwlock_rdlock(&d->lock);
    /* one prefix (every query's scan: a table of a partition, or part of one) or all */
    bool one = false;
    if (start->len >= 3 && end->len > 0) {
        struct store_key pre = {.len = 3}, pre_end;
        memcpy(pre.buf, start->buf, 3);
        key_prefix_end(&pre, &pre_end);
        one = pre_end.len > 0 && key_cmp_raw(end->buf, end->len, pre_end.buf, pre_end.len) <= 0;
    }
    struct dirty_run *single = NULL;
    if (one)
        single = run_of(d, store_key_prefix(start->buf, start->len), false);
    size_t count = 0, bytes = 0;
    for (size_t i = 0; i < (one ? 1 : d->cap); i++) {
        const struct dirty_run *r = one ? single : &d->runs[i];
        if (!r || !r->prefix1 || (!one && !run_in_range(r->prefix1 - 1, start, end)))
            continue;
        bool eq;
        for (size_t j = lower_bound(r, start->buf, start->len, &eq); j < r->n; j++) {
            const struct dirty_entry *e = r->v[j].e;
            if (!key_before_end((const char *)e->data, e->klen, end))
                break;
            count++;
            bytes += e->klen + e->vlen;
        }
    }
    if (count) {
        /* the array, then the copies of the keys and values behind it */
        struct store_ovl *o = malloc(count * sizeof(*o) + bytes + 1);
        if (!o) {
            err = EDDY_ERR_NOMEM;
        } else {
            unsigned char *buf = (unsigned char *)(o + count);
            size_t off = 0;
            for (size_t i = 0; i < (one ? 1 : d->cap); i++) {
                const struct dirty_run *r = one ? single : &d->runs[i];
                if (r && r->prefix1 && (one || run_in_range(r->prefix1 - 1, start, end)))
                    copy_range(r, start, end, o, n, buf, &off);
            }
            *out = o;
        }
    }
    pthread_rwlock_unlock(&d->lock);
    if (*out && !one)
        qsort(*out, *n, sizeof(**out), cmp_ovl);
    return err;
}

/* A run as a flush copied it: its prefix and its entries' pointers. */
struct flush_run {
    uint32_t prefix;
    size_t n;
    struct dirty_entry *const *v;
};

/* A flush's order of the runs: the stage-2 tables' first, then by prefix (partition, then
 * table), so that a partition's rows of one kind are adjacent. */
static int cmp_flush_order(const void *a, const void *b)
{
    uint32_t x = ((const struct flush_run *)a)->prefix;
    uint32_t y = ((const struct flush_run *)b)->prefix;
    bool sx = store_table_stage2(x & 0xff), sy = store_table_stage2(y & 0xff);
    if (sx != sy)
        return sx ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* The runs' entry pointers, copied under the lock into one block (*runs, then the
 * pointers); from here until end_reading, a publish retires the entries it replaces. */
static eddy_err begin_reading(struct store_dirty *d, struct flush_run **runs, size_t *nr,
                              uint64_t *ver)
{
    /* shared: readers go on; 'reading' is the flush thread's (one flush at a time), read
     * by publishers under the lock held for writing, so after this */
    pthread_rwlock_rdlock(&d->lock);
    size_t n = d->nruns ? d->nruns : 1;
    struct flush_run *fr = malloc(n * sizeof(*fr) + d->entries * sizeof(struct dirty_entry *));
    if (!fr) {
        pthread_rwlock_unlock(&d->lock);
        return EDDY_ERR_NOMEM;
    }
    struct dirty_entry **ptrs = (struct dirty_entry **)(fr + n);
    *nr = 0;
    for (size_t i = 0; i < d->cap; i++) {
        const struct dirty_run *r = &d->runs[i];
        if (!r->n)
            continue;
        for (size_t j = 0; j < r->n; j++)
            ptrs[j] = r->v[j].e;
        fr[(*nr)++] = (struct flush_run){r->prefix1 - 1, r->n, ptrs};
        ptrs += r->n;
    }
    *ver = d->ver;
    d->reading = true;
    pthread_rwlock_unlock(&d->lock);
    *runs = fr;
    return EDDY_OK;
}

/* The entries replaced while the flush read them are freed now. */
static void end_reading(struct store_dirty *d)
{
    pthread_rwlock_wrlock(&d->lock);
    struct dirty_entry **retired = d->retired;
    size_t n = d->nretired;
    d->retired = NULL;
    d->nretired = d->retired_cap = 0;
    d->reading = false;
    pthread_rwlock_unlock(&d->lock);
    for (size_t i = 0; i < n; i++)
        free(retired[i]);
    free(retired);
}

eddy_err store_dirty_batches(struct store_dirty *d, size_t chunk, struct dirty_batches *out,
                             uint64_t *keys, uint64_t *bytes)
{
    memset(out, 0, sizeof(*out));
    struct flush_run *runs;
    size_t cap = 0, filled = 0, nr = 0;
    uint32_t group = 0; /* the last run's kind and partition */
    eddy_err err = begin_reading(d, &runs, &nr, &out->ver);
    if (err != EDDY_OK)
        return err;
    err = EDDY_ERR_NOMEM;
    qsort(runs, nr, sizeof(*runs), cmp_flush_order);
    for (size_t i = 0; i < nr; i++) {
        uint32_t prefix = runs[i].prefix;
        uint32_t g = (store_table_stage2(prefix & 0xff) ? UINT32_C(1) << 24 : 0) | prefix >> 8;
        if (out->n == 0 || (g != group && filled >= chunk)) {
            if (out->n == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                leveldb_writebatch_t **n = realloc(out->wb, ncap * sizeof(*n));
                if (!n)
                    goto out;
                out->wb = n;
                cap = ncap;
            }
            out->wb[out->n++] = leveldb_writebatch_create();
            filled = 0;
        }
        group = g;
        leveldb_writebatch_t *wb = out->wb[out->n - 1];
        for (size_t j = 0; j < runs[i].n; j++) {
            const struct dirty_entry *e = runs[i].v[j];
            size_t tb = e->klen >= 3 && e->data[2] < STORE_STAT_TABLES ? e->data[2] : 0;
            keys[tb]++;
            bytes[tb] += e->klen + e->vlen;
            filled += e->klen + e->vlen;
            if (e->del)
                leveldb_writebatch_delete(wb, (const char *)e->data, e->klen);
            else
                leveldb_writebatch_put(wb, (const char *)e->data, e->klen,
                                       (const char *)e->data + e->klen, e->vlen);
        }
    }
    err = EDDY_OK;
out:
    end_reading(d);
    free(runs);
    if (err != EDDY_OK)
        store_dirty_batches_free(out);
    return err;
}

void store_dirty_batches_free(struct dirty_batches *b)
{
    for (size_t i = 0; i < b->n; i++)
        leveldb_writebatch_destroy(b->wb[i]);
    free(b->wb);
    b->wb = NULL;
    b->n = 0;
}

void store_dirty_drop(struct store_dirty *d, uint64_t upto)
{
    /* unlinked under the lock, freed after it (in it only if out of memory) */
    pthread_rwlock_wrlock(&d->lock);
    struct dirty_entry **gone = malloc((d->entries ? d->entries : 1) * sizeof(*gone));
    size_t ngone = 0;
    for (size_t i = 0; i < d->cap; i++) {
        struct dirty_run *r = &d->runs[i];
        size_t kept = 0;
        for (size_t j = 0; j < r->n; j++) {
            struct dirty_entry *e = r->v[j].e;
            if (e->ver <= upto) {
                atomic_fetch_sub_explicit(&d->bytes, entry_bytes(e), memory_order_relaxed);
                if (gone)
                    gone[ngone++] = e;
                else
                    free(e);
                d->entries--;
            } else {
                r->v[kept++] = r->v[j];
            }
        }
        r->n = kept;
        if (kept == 0 && r->cap > 64) { /* a burst's array is not kept for ever */
            free(r->v);
            r->v = NULL;
            r->cap = 0;
        }
    }
    pthread_rwlock_unlock(&d->lock);
    for (size_t i = 0; i < ngone; i++)
        free(gone[i]);
    free(gone);
}
