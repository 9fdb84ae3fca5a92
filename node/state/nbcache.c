/* Cached neighbour lookups for Recommend: a product's co-occurrence neighbours, one entry
 * per product in 16 shards with clock eviction, each valid for --stage2-staleness.
 *
 * DESIGN: neighbour entries expire like the popularity lists (popcache.c), one product at
 * a time: an entry read again by the call that found it expired (a LevelDB get and the
 * decoding of the product's whole state) cost ~9 % of the node's CPU at 5,000
 * Recommend/s, spread over the calls of each period. So an entry expired less than one
 * period ago answers while a refresher thread reads it again (a bounded queue,
 * --neighbour-cache jobs; when full, the call reads it). That thread runs at normal
 * priority: it takes a shard lock for every entry it installs (thousands per period), and
 * a nice 19 thread preempted while holding one would stall every call of that shard for as
 * long as the busy machine leaves it waiting (up to 200 ms measured for the list
 * refresher, which takes its lock once per period).
 *
 * A local entry remembers the store's write count of its product's pairs (store_key_writes)
 * from before its read: while the count has not moved, the entry is what the store holds,
 * so a call that finds it expired, by any time, stamps it current and answers, without a
 * read and without the refresher. Before, an entry unused for twice the staleness was read
 * again by the call (a scan of the product's rows), which for the catalogue's long tail was
 * nearly every use: ~4,000 scans in a 10 s warm run at 5,000 QPS without any write. */
#include "node/state/nbcache.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/clock.h"
#include "common/worker.h"
#include "node/state/topk.h"

#define NB_SHARDS 16

struct nb_item {
    const char *id, *category; /* in the entry's block, NUL-terminated */
    uint32_t idlen, catlen;
};

struct nb_entry {
    const char *key;        /* in the block; NULL: unused slot */
    uint64_t hash;
    int32_t next;           /* hash chain (slot index), -1 = end */
    bool ref;               /* clock bit: used since the hand last passed */
    bool raw;               /* local: read from the store (else as the source answered) */
    bool refreshing;        /* a thread is refreshing it: others use it meanwhile */
    int64_t refreshed_ms;   /* monotonic */
    uint64_t writes;        /* raw: store_key_writes of the product's pairs before the read */
    size_t n;               /* items */
    size_t fetched;         /* source entries: 'max' of the call (the list is whole if n < it) */
    struct nb_item *items;  /* best first; start of the entry's one allocation */
    double *scores;         /* score of items[i] (product_neighbours': the product's own
                             * reference, so the same whenever and wherever it is read) */
};

/* An expired entry queued for the refresher: read again for this call's 'max'. */
struct nb_job {
    struct nb_job *next;
    size_t max;
    char key[]; /* the product id */
};

struct nb_shard {
    pthread_mutex_t mu;
    struct nb_entry *slots;
    int32_t *heads;         /* nheads chains */
    size_t cap, used, nheads, hand;
    uint64_t hits, misses, evictions, revalidated;
};

struct nbcache {
    store *st;
    const struct nbcache_source *src; /* NULL: the local store */
    const struct product_params *pp;
    int64_t staleness_ms;
    int64_t (*now_ms)(void);   /* the clock entries age by */
    struct nb_shard *shards;   /* NB_SHARDS, or NULL: neighbours are not cached */
    /* the refresher (see DESIGN): expired entries it reads again, oldest first, at most
     * queue_max; guarded by mu, never taken with another lock */
    pthread_mutex_t mu;
    pthread_cond_t idle_cv;    /* nbcache_sync waits: no job queued or running */
    struct worker refresher;   /* started by the first job, kicked by every job queued */
    bool running;
    struct nb_job *head, *tail;
    size_t queued, queue_max;
    struct scored_product *buf; /* the refresher's: a source's answer */
    size_t buf_cap;
};

nbcache *nbcache_new(store *st, const struct product_params *pp, int64_t staleness_ms)
{
    nbcache *nc = calloc(1, sizeof(*nc));
    if (!nc)
        return NULL;
    nc->st = st;
    nc->pp = pp;
    nc->staleness_ms = staleness_ms;
    nc->now_ms = clock_mono_ms;
    pthread_mutex_init(&nc->mu, NULL);
    pthread_cond_init(&nc->idle_cv, NULL);
    return nc;
}

void nbcache_set_source(nbcache *nc, const struct nbcache_source *src)
{
    nc->src = src;
}

void nbcache_set_clock(nbcache *nc, int64_t (*now_ms)(void))
{
    nc->now_ms = now_ms;
}

static void nb_free(nbcache *nc)
{
    if (!nc->shards)
        return;
    for (size_t s = 0; s < NB_SHARDS; s++) {
        struct nb_shard *sh = &nc->shards[s];
        for (size_t i = 0; i < sh->used; i++)
            free(sh->slots[i].items);
        free(sh->slots);
        free(sh->heads);
        pthread_mutex_destroy(&sh->mu);
    }
    free(nc->shards);
    nc->shards = NULL;
}

eddy_err nbcache_set_entries(nbcache *nc, size_t entries)
{
    nb_free(nc);
    if (entries && nc->st)
        store_track_writes(nc->st, T_COOC); /* expired entries nothing changed stay */
    nc->queue_max = entries; /* each entry is queued at most once at a time */
    if (entries == 0)
        return EDDY_OK;
    size_t per = (entries + NB_SHARDS - 1) / NB_SHARDS;
    if (per > INT32_MAX / 4)
        per = INT32_MAX / 4;
    if (!(nc->shards = calloc(NB_SHARDS, sizeof(*nc->shards))))
        return EDDY_ERR_NOMEM;
    for (size_t s = 0; s < NB_SHARDS; s++) {
        struct nb_shard *sh = &nc->shards[s];
        pthread_mutex_init(&sh->mu, NULL);
        sh->cap = per;
        sh->nheads = 4;
        while (sh->nheads < per * 2)
            sh->nheads <<= 1;
        sh->slots = calloc(per, sizeof(*sh->slots));
        sh->heads = malloc(sh->nheads * sizeof(*sh->heads));
        if (!sh->slots || !sh->heads) {
            for (size_t j = s + 1; j < NB_SHARDS; j++)
                pthread_mutex_init(&nc->shards[j].mu, NULL);
            nb_free(nc);
            return EDDY_ERR_NOMEM;
        }
        memset(sh->heads, 0xff, sh->nheads * sizeof(*sh->heads)); /* -1 */
    }
    return EDDY_OK;
}

void nbcache_stats(nbcache *nc, struct nbcache_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t s = 0; nc->shards && s < NB_SHARDS; s++) {
        struct nb_shard *sh = &nc->shards[s];
        pthread_mutex_lock(&sh->mu);
        out->hits += sh->hits;
        out->misses += sh->misses;
        out->evictions += sh->evictions;
        out->revalidated += sh->revalidated;
        out->entries += sh->used;
        pthread_mutex_unlock(&sh->mu);
    }
}

void nbcache_free(nbcache *nc)
{
    if (!nc)
        return;
    worker_stop(&nc->refresher); /* not started: nothing to do */
    nb_free(nc);
    while (nc->head) {
        struct nb_job *j = nc->head;
        nc->head = j->next;
        free(j);
    }
    free(nc->buf);
    pthread_mutex_destroy(&nc->mu);
    pthread_cond_destroy(&nc->idle_cv);
    free(nc);
}

void nbcache_sync(nbcache *nc)
{
    pthread_mutex_lock(&nc->mu);
    while (nc->head || nc->running)
        pthread_cond_wait(&nc->idle_cv, &nc->mu);
    pthread_mutex_unlock(&nc->mu);
}

/* A local product's strongest neighbours, as stored (product_neighbours). */
static eddy_err read_local(nbcache *nc, const char *product_id, struct product_neighbour **l,
                           size_t *n)
{
    size_t max = nc->pp->max_neighbours > 0 ? (size_t)nc->pp->max_neighbours : 0;
    return product_neighbours(nc->st, nc->pp, product_id, max, REC_ID_CAP, l, n);
}

/* The uncached read: the reference the cache must reproduce. */
static eddy_err neighbours_uncached(nbcache *nc, const char *product_id,
                                    struct scored_product *out, size_t max, size_t *n)
{
    struct product_neighbour *l = NULL;
    size_t nl = 0;
    *n = 0;
    if (nc->src)
        return nc->src->neighbours(nc->src->ud, product_id, out, max, n);
    eddy_err err = read_local(nc, product_id, &l, &nl);
    if (err != EDDY_OK)
        return err;
    struct topk t = {out, 0, max, NULL, NULL};
    for (size_t i = 0; i < nl; i++)
        topk_offer(&t, l[i].id, strlen(l[i].id), l[i].category, strlen(l[i].category),
                   l[i].score);
    *n = t.n;
    product_neighbours_free(l, nl);
    return EDDY_OK;
}

/* One allocation: items[n], scores[n], key, then the strings. */
static bool nb_alloc(struct nb_entry *e, size_t n, const char *key, size_t keylen,
                     size_t strbytes)
{
    size_t sz = n * (sizeof(struct nb_item) + sizeof(double)) + keylen + 1 + strbytes;
    char *b = malloc(sz ? sz : 1);
    if (!b)
        return false;
    memset(e, 0, sizeof(*e));
    e->items = (struct nb_item *)b;
    e->scores = (double *)(b + n * sizeof(struct nb_item));
    char *k = b + n * (sizeof(struct nb_item) + sizeof(double));
    memcpy(k, key, keylen);
    k[keylen] = '\0';
    e->key = k;
    e->n = n;
    e->next = -1;
    return true;
}

static char *nb_put_str(char **p, const char *s, size_t len)
{
    char *d = *p;
    memcpy(d, s, len);
    d[len] = '\0';
    *p += len + 1;
    return d;
}

/* A local entry from the product's strongest stored neighbours, best first as
 * product_neighbours ranks and scores them (none if it has no pairs): the first 'max' are
 * what topk_offer keeps of them, so the entry answers any 'max'. The neighbours topk_offer
 * would skip (over-long strings) are left out. */
static eddy_err nb_build_local(nbcache *nc, const char *product_id, size_t keylen,
                               struct nb_entry *e)
{
    struct product_neighbour *l = NULL;
    size_t nl = 0;
    struct store_key k;
    product_pairs_key(&k, nc->pp->partitions, product_id);
    uint64_t writes = store_key_writes(nc->st, &k); /* before the read (store.h) */
    eddy_err err = read_local(nc, product_id, &l, &nl);
    if (err != EDDY_OK)
        return err;
    size_t bytes = 0;
    for (size_t i = 0; i < nl; i++)
        bytes += strlen(l[i].id) + strlen(l[i].category) + 2;
    if (!nb_alloc(e, nl, product_id, keylen, bytes)) {
        product_neighbours_free(l, nl);
        return EDDY_ERR_NOMEM;
    }
    char *p = (char *)e->key + keylen + 1;
    for (size_t i = 0; i < nl; i++) {
        size_t il = strlen(l[i].id), cl = strlen(l[i].category);
        struct nb_item *it = &e->items[i];
        it->id = nb_put_str(&p, l[i].id, il);
        it->category = nb_put_str(&p, l[i].category, cl);
        it->idlen = (uint32_t)il;
        it->catlen = (uint32_t)cl;
        e->scores[i] = l[i].score;
    }
    e->raw = true;
    e->writes = writes;
    product_neighbours_free(l, nl);
    return EDDY_OK;
}

/* An entry holding a list as the source answered it (already in 'out'). */
static eddy_err nb_build_scored(const char *product_id, size_t keylen,
                                const struct scored_product *l, size_t n, size_t fetched,
                                struct nb_entry *e)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += strlen(l[i].product_id) + strlen(l[i].category) + 2;
    if (!nb_alloc(e, n, product_id, keylen, bytes))
        return EDDY_ERR_NOMEM;
    char *p = (char *)e->key + keylen + 1;
    for (size_t i = 0; i < n; i++) {
        struct nb_item *it = &e->items[i];
        size_t il = strlen(l[i].product_id), cl = strlen(l[i].category);
        it->id = nb_put_str(&p, l[i].product_id, il);
        it->category = nb_put_str(&p, l[i].category, cl);
        it->idlen = (uint32_t)il;
        it->catlen = (uint32_t)cl;
        e->scores[i] = l[i].score;
    }
    e->fetched = fetched;
    return EDDY_OK;
}

static void put_item(struct scored_product *o, const struct nb_item *it, double score)
{
    memcpy(o->product_id, it->id, (size_t)it->idlen + 1);
    memcpy(o->category, it->category, (size_t)it->catlen + 1);
    o->score = score;
}

/* Copy the entry's best 'max' into 'out'. */
static size_t nb_emit(const struct nb_entry *e, struct scored_product *out, size_t max)
{
    size_t n = e->n < max ? e->n : max;
    for (size_t j = 0; j < n; j++)
        put_item(&out[j], &e->items[j], e->scores[j]);
    return n;
}

static int32_t *nb_chain(struct nb_shard *sh, uint64_t h)
{
    return &sh->heads[(h >> 8) & (sh->nheads - 1)];
}

static struct nb_entry *nb_find(struct nb_shard *sh, uint64_t h, const char *key)
{
    for (int32_t i = *nb_chain(sh, h); i >= 0; i = sh->slots[i].next) {
        struct nb_entry *e = &sh->slots[i];
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

static void nb_unlink(struct nb_shard *sh, size_t slot)
{
    int32_t *p = nb_chain(sh, sh->slots[slot].hash);
    while (*p >= 0 && (size_t)*p != slot)
        p = &sh->slots[*p].next;
    if (*p >= 0)
        *p = sh->slots[slot].next;
}

/* Insert 'e' (taken over), replacing an entry of the same key, else a free slot, else the
 * clock's victim (an entry not used since the hand last passed it). Under sh->mu. */
static void nb_insert(struct nb_shard *sh, struct nb_entry *e)
{
    struct nb_entry *old = nb_find(sh, e->hash, e->key);
    size_t slot;
    if (old) {
        slot = (size_t)(old - sh->slots);
        nb_unlink(sh, slot);
        free(old->items);
    } else if (sh->used < sh->cap) {
        slot = sh->used++;
    } else {
        for (;;) {
            struct nb_entry *v = &sh->slots[sh->hand];
            slot = sh->hand;
            sh->hand = (sh->hand + 1) % sh->cap;
            if (!v->ref)
                break;
            v->ref = false;
        }
        nb_unlink(sh, slot);
        free(sh->slots[slot].items);
        sh->evictions++;
    }
    int32_t *head = nb_chain(sh, e->hash);
    e->next = *head;
    e->ref = false;
    sh->slots[slot] = *e;
    *head = (int32_t)slot;
}

/* A refresh failed: let the next caller try again. */
static void nb_refresh_failed(struct nb_shard *sh, uint64_t h, const char *key)
{
    pthread_mutex_lock(&sh->mu);
    struct nb_entry *e = nb_find(sh, h, key);
    if (e)
        e->refreshing = false;
    pthread_mutex_unlock(&sh->mu);
}

/* Read the neighbours of 'product_id' into a new entry *ne, from the store (raw; 'out'
 * is left alone) or from the source: its answer for 'max' goes to 'out', its count to *n,
 * and *answered is set even if the entry could not be built. Not under any lock. */
static eddy_err nb_read(nbcache *nc, const char *product_id, size_t keylen,
                        struct scored_product *out, size_t max, size_t *n, bool *answered,
                        struct nb_entry *ne)
{
    *answered = false;
    if (!nc->src)
        return nb_build_local(nc, product_id, keylen, ne);
    eddy_err err = nc->src->neighbours(nc->src->ud, product_id, out, max, n);
    if (err != EDDY_OK)
        return err;
    *answered = true;
    return nb_build_scored(product_id, keylen, out, *n, max, ne);
}

/* Install *ne (taken over), read at 'read_ms', as the entry of hash 'h' in 'sh'. */
static void nb_install(struct nb_shard *sh, uint64_t h, int64_t read_ms, struct nb_entry *ne)
{
    ne->hash = h;
    ne->refreshed_ms = read_ms;
    pthread_mutex_lock(&sh->mu);
    nb_insert(sh, ne);
    pthread_mutex_unlock(&sh->mu);
}

/* Whether the local entry of 'key' is still what the store holds (nothing written to the
 * product since it was read): then it is stamped current again, without a read. */
static bool nb_still_stored(nbcache *nc, struct nb_shard *sh, uint64_t h, const char *key,
                            int64_t now)
{
    struct store_key k;
    product_pairs_key(&k, nc->pp->partitions, key);
    uint64_t writes = store_key_writes(nc->st, &k);
    pthread_mutex_lock(&sh->mu);
    struct nb_entry *e = nb_find(sh, h, key);
    bool same = e && e->raw && e->writes == writes;
    if (same) {
        e->refreshed_ms = now;
        e->refreshing = false;
        sh->revalidated++;
    }
    pthread_mutex_unlock(&sh->mu);
    return same;
}

/* On the refresher: read the entry of job 'j' again (unless nothing changed) and install
 * it. */
static void nb_refresh_job(nbcache *nc, const struct nb_job *j)
{
    size_t keylen = strlen(j->key);
    uint64_t h = XXH3_64bits(j->key, keylen);
    struct nb_shard *sh = &nc->shards[h % NB_SHARDS];
    int64_t now = nc->now_ms();
    if (!nc->src && nb_still_stored(nc, sh, h, j->key, now))
        return;
    struct nb_entry ne;
    size_t n = 0;
    bool answered;
    eddy_err err = EDDY_ERR_NOMEM;
    if (nc->src && nc->buf_cap < j->max) { /* only this thread touches nb_buf */
        free(nc->buf);
        nc->buf_cap = 0;
        if ((nc->buf = malloc(j->max * sizeof(*nc->buf))))
            nc->buf_cap = j->max;
    }
    if (!nc->src || nc->buf_cap >= j->max)
        err = nb_read(nc, j->key, keylen, nc->buf, j->max, &n, &answered, &ne);
    if (err != EDDY_OK)
        nb_refresh_failed(sh, h, j->key);
    else
        nb_install(sh, h, now, &ne);
}

/* The refresher's loop: a kick means jobs were queued (kicks are never lost; the wait's
 * period is a bound, not a poll). */
static void nb_refresher_main(struct worker *w, void *arg)
{
    nbcache *nc = arg;
    while (worker_wait(w, 1000)) {
        pthread_mutex_lock(&nc->mu);
        while (nc->head && !worker_stopping(w)) {
            struct nb_job *j = nc->head;
            if (!(nc->head = j->next))
                nc->tail = NULL;
            nc->queued--;
            nc->running = true;
            pthread_mutex_unlock(&nc->mu);
            nb_refresh_job(nc, j);
            free(j);
            pthread_mutex_lock(&nc->mu);
            nc->running = false;
        }
        if (!nc->head)
            pthread_cond_broadcast(&nc->idle_cv);
        pthread_mutex_unlock(&nc->mu);
    }
    pthread_mutex_lock(&nc->mu);
    nc->running = false;
    pthread_cond_broadcast(&nc->idle_cv);
    pthread_mutex_unlock(&nc->mu);
}

/* Queue the expired entry 'product_id' (marked refreshing) for the neighbour refresher,
 * for a call of 'max' items, starting it if needed. False if the queue is full or there is
 * no refresher: the caller reads it. */
static bool nb_schedule(nbcache *nc, const char *product_id, size_t keylen, size_t max)
{
    bool ok = false;
    pthread_mutex_lock(&nc->mu);
    if (!nc->refresher.started && !worker_stopping(&nc->refresher))
        (void)worker_start(&nc->refresher, "neighbours", nb_refresher_main, nc);
    struct nb_job *j = NULL;
    if (nc->refresher.started && !worker_stopping(&nc->refresher) &&
        nc->queued < nc->queue_max &&
        (j = malloc(sizeof(*j) + keylen + 1))) {
        j->next = NULL;
        j->max = max;
        memcpy(j->key, product_id, keylen + 1);
        if (nc->tail)
            nc->tail->next = j;
        else
            nc->head = j;
        nc->tail = j;
        nc->queued++;
        worker_kick(&nc->refresher);
        ok = true;
    }
    pthread_mutex_unlock(&nc->mu);
    return ok;
}

eddy_err nbcache_neighbours(nbcache *nc, const char *product_id, struct scored_product *out,
                            size_t max, size_t *n)
{
    *n = 0;
    if (!nc->shards || nc->staleness_ms <= 0)
        return neighbours_uncached(nc, product_id, out, max, n);
    size_t keylen = strlen(product_id);
    uint64_t h = XXH3_64bits(product_id, keylen);
    struct nb_shard *sh = &nc->shards[h % NB_SHARDS];
    int64_t now = nc->now_ms();
    uint64_t writes = 0;
    if (!nc->src) { /* before the entry is looked at (store.h) */
        struct store_key k;
        product_pairs_key(&k, nc->pp->partitions, product_id);
        writes = store_key_writes(nc->st, &k);
    }

    pthread_mutex_lock(&sh->mu);
    struct nb_entry *e = nb_find(sh, h, product_id);
    bool usable = e && (e->raw || max <= e->fetched || e->n < e->fetched);
    /* a local entry whose product was not written since its read is the stored answer,
     * however old: it answers, current again, without a read (see DESIGN) */
    if (usable && e->raw && e->writes == writes && now - e->refreshed_ms >= nc->staleness_ms) {
        e->refreshed_ms = now;
        sh->revalidated++;
    }
    int64_t age = usable ? now - e->refreshed_ms : 0;
    /* as for the popularity lists, an entry expired less than one period ago answers
     * while it is read again, by the refresher or by another thread (see DESIGN) */
    bool answer = usable && age < 2 * nc->staleness_ms;
    bool schedule = answer && age >= nc->staleness_ms && !e->refreshing;
    if (answer) {
        *n = nb_emit(e, out, max);
        e->ref = true;
        sh->hits++;
    } else {
        sh->misses++;
    }
    if (usable && (schedule || !answer))
        e->refreshing = true;
    pthread_mutex_unlock(&sh->mu);
    if (answer && (!schedule || nb_schedule(nc, product_id, keylen, max)))
        return EDDY_OK;

    /* read here, outside the lock: concurrent reads of one entry are harmless */
    struct nb_entry ne;
    bool answered;
    eddy_err err = nb_read(nc, product_id, keylen, out, max, n, &answered, &ne);
    if (err != EDDY_OK) {
        nb_refresh_failed(sh, h, product_id);
        return answered ? EDDY_OK : err; /* answered, just not cached */
    }
    if (!nc->src)
        *n = nb_emit(&ne, out, max);
    nb_install(sh, h, now, &ne);
    return EDDY_OK;
}
