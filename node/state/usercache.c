/* Recommend's user cache (see usercache.h): per user one block holding its view (counts,
 * scores, string offsets and the strings), in 16 shards of chained hash buckets with a
 * clock ring for eviction by bytes.
 *
 * DESIGN: a warm Recommend used to read the user's model (a LevelDB get, or the dirty set
 * under its lock) and scan its BOUGHT and SEEN rows (two LevelDB iterators, each costing
 * about a seek) on the handler thread, beside the writer's and the flush thread's work on
 * the same 2 cores. Validating by the store's write counts (one atomic load per key) keeps
 * the answers exactly the store's without any read. */
#include "node/state/usercache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "node/state/store_key.h"

#define UC_SHARDS 16
#define UC_OVERHEAD 48 /* malloc's header and the bucket slot, charged per entry */

/* The block: this head, then uint32_t off[nstr] (from the block's start), then the
 * strings, NUL-terminated, in view order: cats, recent, cart, bought, seen. */
struct uc_head {
    int64_t last_ts;
    double affinity[USERCACHE_MAX_CATS];
    uint32_t present, ncats, nrecent, ncart, nbought, nseen, nstr;
    uint32_t pad;
};

struct uc_entry {
    struct uc_entry *hnext;       /* hash chain */
    struct uc_entry *prev, *next; /* the shard's clock ring */
    uint64_t hash, stamp;
    size_t size;                  /* of the block */
    size_t charged;               /* bytes counted against the budget */
    const char *key;              /* after the block, in the same allocation */
    bool ref;                     /* used since the hand last passed */
    _Alignas(8) unsigned char block[];
};

struct uc_shard {
    pthread_mutex_t mu;
    struct uc_entry **buckets;    /* nbuckets chains, a power of two */
    size_t nbuckets, n, bytes, budget;
    struct uc_entry *hand;        /* the clock ring's hand; NULL when empty */
    uint64_t hits, misses, evictions;
};

struct usercache {
    store *st;
    struct uc_shard shards[UC_SHARDS];
};

void usercache_buf_release(struct usercache_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

usercache *usercache_new(store *st, size_t bytes)
{
    usercache *uc = calloc(1, sizeof(*uc));
    if (!uc)
        return NULL;
    uc->st = st;
    for (size_t s = 0; s < UC_SHARDS; s++)
        pthread_mutex_init(&uc->shards[s].mu, NULL);
    for (size_t s = 0; s < UC_SHARDS; s++) {
        struct uc_shard *sh = &uc->shards[s];
        sh->budget = bytes / UC_SHARDS;
        if (sh->budget) {
            if (!(sh->buckets = calloc(64, sizeof(*sh->buckets)))) {
                usercache_free(uc);
                return NULL;
            }
            sh->nbuckets = 64;
        }
    }
    if (bytes && st) {
        store_track_writes(st, T_USER);
        store_track_writes(st, T_BOUGHT);
        store_track_writes(st, T_SEEN);
    }
    return uc;
}

void usercache_free(usercache *uc)
{
    if (!uc)
        return;
    for (size_t s = 0; s < UC_SHARDS; s++) {
        struct uc_shard *sh = &uc->shards[s];
        for (size_t b = 0; b < sh->nbuckets; b++) {
            while (sh->buckets[b]) {
                struct uc_entry *e = sh->buckets[b];
                sh->buckets[b] = e->hnext;
                free(e);
            }
        }
        free(sh->buckets);
        pthread_mutex_destroy(&sh->mu);
    }
    free(uc);
}

uint64_t usercache_stamp(usercache *uc, uint32_t p, const char *user_id)
{
    struct store_key k;
    uint64_t stamp;
    key_init(&k, p, T_USER);
    key_str(&k, user_id);
    stamp = store_key_writes(uc->st, &k);
    key_init(&k, p, T_BOUGHT);
    key_lstr(&k, user_id);
    stamp += store_key_writes(uc->st, &k);
    key_init(&k, p, T_SEEN);
    key_lstr(&k, user_id);
    return stamp + store_key_writes(uc->st, &k); /* each only grows: the sum moves iff one does */
}

static struct uc_entry **uc_bucket(struct uc_shard *sh, uint64_t h)
{
    return &sh->buckets[(h >> 8) & (sh->nbuckets - 1)];
}

static struct uc_entry *uc_find(struct uc_shard *sh, uint64_t h, const char *key)
{
    for (struct uc_entry *e = *uc_bucket(sh, h); e; e = e->hnext)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

/* Take 'e' out of its chain and the ring and free it. Under sh->mu. */
static void uc_remove(struct uc_shard *sh, struct uc_entry *e)
{
    struct uc_entry **p = uc_bucket(sh, e->hash);
    while (*p != e)
        p = &(*p)->hnext;
    *p = e->hnext;
    if (e->next == e) {
        sh->hand = NULL;
    } else {
        e->prev->next = e->next;
        e->next->prev = e->prev;
        if (sh->hand == e)
            sh->hand = e->next;
    }
    sh->n--;
    sh->bytes -= e->charged;
    free(e);
}

/* Double the buckets when the chains grow past one entry each on average (not done if out
 * of memory: the chains just get longer). Under sh->mu. */
static void uc_grow(struct uc_shard *sh)
{
    if (sh->n < sh->nbuckets)
        return;
    size_t nb = sh->nbuckets * 2;
    struct uc_entry **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < sh->nbuckets; i++) {
        while (sh->buckets[i]) {
            struct uc_entry *e = sh->buckets[i];
            sh->buckets[i] = e->hnext;
            e->hnext = b[(e->hash >> 8) & (nb - 1)];
            b[(e->hash >> 8) & (nb - 1)] = e;
        }
    }
    free(sh->buckets);
    sh->buckets = b;
    sh->nbuckets = nb;
}

/* Insert 'e' (taken over) after evicting, by the clock, entries until it fits. Under
 * sh->mu. */
static void uc_insert(struct uc_shard *sh, struct uc_entry *e)
{
    struct uc_entry *old = uc_find(sh, e->hash, e->key);
    if (old)
        uc_remove(sh, old);
    while (sh->hand && sh->bytes + e->charged > sh->budget) {
        struct uc_entry *v = sh->hand;
        if (v->ref) {
            v->ref = false;
            sh->hand = v->next;
            continue;
        }
        uc_remove(sh, v);
        sh->evictions++;
    }
    uc_grow(sh);
    struct uc_entry **b = uc_bucket(sh, e->hash);
    e->hnext = *b;
    *b = e;
    if (!sh->hand) {
        e->prev = e->next = e;
        sh->hand = e;
    } else { /* just behind the hand: the last the hand reaches */
        e->next = sh->hand;
        e->prev = sh->hand->prev;
        e->prev->next = e;
        sh->hand->prev = e;
    }
    e->ref = false;
    sh->n++;
    sh->bytes += e->charged;
}

static void put_strs(unsigned char *block, uint32_t *off, size_t *i, size_t *pos,
                     const char *const *s, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        size_t len = strlen(s[j]);
        off[(*i)++] = (uint32_t)*pos;
        memcpy(block + *pos, s[j], len + 1);
        *pos += len + 1;
    }
}

static size_t strs_size(const char *const *s, size_t n)
{
    size_t b = 0;
    for (size_t j = 0; j < n; j++)
        b += strlen(s[j]) + 1;
    return b;
}

void usercache_put(usercache *uc, const char *user_id, uint64_t stamp,
                   const struct user_recview *v)
{
    size_t keylen = strlen(user_id);
    uint64_t h = XXH3_64bits(user_id, keylen);
    struct uc_shard *sh = &uc->shards[h % UC_SHARDS];
    if (!sh->budget)
        return;
    size_t nstr = v->present ? v->ncats + v->nrecent + v->ncart + v->nbought + v->nseen : 0;
    size_t size = sizeof(struct uc_head) + nstr * sizeof(uint32_t);
    if (v->present)
        size += strs_size(v->cats, v->ncats) + strs_size(v->recent, v->nrecent) +
                strs_size(v->cart, v->ncart) + strs_size(v->bought, v->nbought) +
                strs_size(v->seen, v->nseen);
    size_t charged = sizeof(struct uc_entry) + size + keylen + 1 + UC_OVERHEAD;
    if (charged > sh->budget / 8 || size > UINT32_MAX)
        return;
    struct uc_entry *e = malloc(sizeof(*e) + size + keylen + 1);
    if (!e)
        return;
    e->hash = h;
    e->stamp = stamp;
    e->size = size;
    e->charged = charged;
    memcpy((char *)e->block + size, user_id, keylen + 1);
    e->key = (const char *)e->block + size;
    struct uc_head hd = {.last_ts = v->last_ts, .present = v->present, .nstr = (uint32_t)nstr};
    if (v->present) {
        hd.ncats = (uint32_t)v->ncats;
        hd.nrecent = (uint32_t)v->nrecent;
        hd.ncart = (uint32_t)v->ncart;
        hd.nbought = (uint32_t)v->nbought;
        hd.nseen = (uint32_t)v->nseen;
        for (size_t i = 0; i < v->ncats; i++)
            hd.affinity[i] = v->affinity[i];
    }
    memcpy(e->block, &hd, sizeof(hd));
    uint32_t *off = (uint32_t *)(e->block + sizeof(hd));
    size_t i = 0, pos = sizeof(hd) + nstr * sizeof(uint32_t);
    if (v->present) {
        put_strs(e->block, off, &i, &pos, v->cats, v->ncats);
        put_strs(e->block, off, &i, &pos, v->recent, v->nrecent);
        put_strs(e->block, off, &i, &pos, v->cart, v->ncart);
        put_strs(e->block, off, &i, &pos, v->bought, v->nbought);
        put_strs(e->block, off, &i, &pos, v->seen, v->nseen);
    }
    pthread_mutex_lock(&sh->mu);
    uc_insert(sh, e);
    pthread_mutex_unlock(&sh->mu);
}

/* Point 'out' into the copy of a block in 'buf' (pointers first, then the block). */
static void uc_view(struct usercache_buf *buf, size_t nstr, struct user_recview *out)
{
    const char **ptr = (const char **)buf->p;
    const unsigned char *block = (const unsigned char *)buf->p + nstr * sizeof(*ptr);
    struct uc_head hd;
    memcpy(&hd, block, sizeof(hd));
    const uint32_t *off = (const uint32_t *)(block + sizeof(hd));
    for (size_t i = 0; i < nstr; i++)
        ptr[i] = (const char *)block + off[i];
    memset(out, 0, sizeof(*out));
    out->present = hd.present;
    out->last_ts = hd.last_ts;
    out->ncats = hd.ncats;
    out->nrecent = hd.nrecent;
    for (size_t i = 0; i < hd.ncats; i++) {
        out->cats[i] = ptr[i];
        out->affinity[i] = hd.affinity[i];
    }
    for (size_t i = 0; i < hd.nrecent; i++)
        out->recent[i] = ptr[hd.ncats + i];
    size_t at = hd.ncats + hd.nrecent;
    out->cart = ptr + at;
    out->ncart = hd.ncart;
    out->bought = ptr + at + hd.ncart;
    out->nbought = hd.nbought;
    out->seen = ptr + at + hd.ncart + hd.nbought;
    out->nseen = hd.nseen;
}

bool usercache_get(usercache *uc, const char *user_id, uint64_t stamp,
                   struct usercache_buf *buf, struct user_recview *out)
{
    size_t keylen = strlen(user_id);
    uint64_t h = XXH3_64bits(user_id, keylen);
    struct uc_shard *sh = &uc->shards[h % UC_SHARDS];
    if (!sh->budget)
        return false;
    size_t nstr = 0;
    bool hit = false;
    pthread_mutex_lock(&sh->mu);
    struct uc_entry *e = uc_find(sh, h, user_id);
    if (e && e->stamp == stamp) {
        struct uc_head hd;
        memcpy(&hd, e->block, sizeof(hd));
        nstr = hd.nstr;
        size_t need = nstr * sizeof(char *) + e->size;
        if (buf->cap < need) { /* rare: the buffer grows to the largest entry used */
            char *p = realloc(buf->p, need);
            if (p) {
                buf->p = p;
                buf->cap = need;
            }
        }
        if (buf->cap >= need) {
            memcpy(buf->p + nstr * sizeof(char *), e->block, e->size);
            e->ref = true;
            hit = true;
        }
    }
    if (hit)
        sh->hits++;
    else
        sh->misses++;
    pthread_mutex_unlock(&sh->mu);
    if (hit)
        uc_view(buf, nstr, out);
    return hit;
}

void usercache_stats(usercache *uc, struct usercache_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t s = 0; s < UC_SHARDS; s++) {
        struct uc_shard *sh = &uc->shards[s];
        pthread_mutex_lock(&sh->mu);
        out->hits += sh->hits;
        out->misses += sh->misses;
        out->evictions += sh->evictions;
        out->entries += sh->n;
        out->bytes += sh->bytes;
        pthread_mutex_unlock(&sh->mu);
    }
}
