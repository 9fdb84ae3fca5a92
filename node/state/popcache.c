/* Cached popularity lists and neighbour lookups for Recommend.
 *
 * DESIGN: refreshing the popularity lists in use is one pass over the CAT_POP index of
 * every partition (~6 ms for 51 lists over 10,000 products, growing with the products),
 * due every --stage2-staleness. Done by the Recommend call that found a list expired, it
 * put that call and every call queued behind it on the handler threads at the p99. So the
 * call that finds a list expired only schedules the refresh and answers from the previous
 * list like everybody else; a refresher thread (started by the first such call) runs the
 * pass and installs the new lists. A list is answered that way until it is twice
 * --stage2-staleness old: one read per period keeps every list in use off the calling
 * threads, and a list nobody read for longer (or never read: there is nothing to answer
 * from) is read on the calling thread, alone (its own key ranges; the lists in use are the
 * refresher's), as is every list with --stage2-staleness 0 (no caching), so no answer
 * comes from a list older than that. A list not cached yet is read by one thread while
 * the other callers of that list wait for it: on a fresh node every call needs the
 * global list, and each reading it (a whole pass) on every handler thread at once was
 * most of the first second's backlog. The refresher runs at the lowest priority (nice 19,
 * Linux): on a busy machine the threads answering calls go first, and the lists wait a
 * little longer.
 *
 * Neighbour entries expire the same way, one product at a time: an entry read again by
 * the call that found it expired (a LevelDB get and the decoding of the product's whole
 * state) cost ~9 % of the node's CPU at 5,000 Recommend/s, spread over the calls of each
 * period. So an entry expired less than one period ago answers while a second refresher
 * thread reads it again (a bounded queue, --neighbour-cache jobs; when full, the call reads
 * it). That thread runs at normal priority: it takes a shard lock for every entry it
 * installs (thousands per period), and a nice 19 thread preempted while holding one would
 * stall every call of that shard for as long as the busy machine leaves it waiting (up
 * to 200 ms measured for the list refresher, which takes its lock once per period). */
#include "node/state/popcache.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "node/state/decay.h"

#define MAX_CACHED_LISTS 4096

struct pop_list {
    char *category;
    bool building;             /* no list yet: one thread reads it, callers wait for it */
    int64_t refreshed_ms;      /* monotonic */
    bool refreshing;           /* a thread is refreshing it: others use it meanwhile */
    bool scheduled;            /* ...or the refresher will (refreshing is set too) */
    bool used;                 /* read since its last refresh: refreshed with the next pass */
    int64_t at;                /* event time the scores were decayed to */
    struct scored_product *items;
    size_t n;
};

/* ---- neighbour cache (see popcache.h) ---- */

#define NB_SHARDS 16

struct nb_item {
    const char *id, *category; /* in the entry's block, NUL-terminated */
    uint32_t idlen, catlen;
    bool has_score;
    int64_t bucket, cur, prev; /* raw entries: the stored Decayed */
};

struct nb_entry {
    const char *key;        /* in the block; NULL: unused slot */
    uint64_t hash;
    int32_t next;           /* hash chain (slot index), -1 = end */
    bool ref;               /* clock bit: used since the hand last passed */
    bool raw;               /* local: undecayed items; else scores as the source gave them */
    bool refreshing;        /* a thread is refreshing it: others use it meanwhile */
    int64_t refreshed_ms;   /* monotonic */
    uint64_t writes;        /* raw: store_key_writes of the product before it was read */
    size_t n;               /* items */
    size_t fetched;         /* source entries: 'max' of the call (the list is whole if n < it) */
    struct nb_item *items;  /* start of the entry's one allocation */
    double *scores;         /* raw: score of order[i]; source: score of items[i] */
    uint32_t *order;        /* raw: the best 'scored_max' items at 'scored_at', best first */
    size_t norder, scored_max;
    int64_t scored_at;
    bool scored;
};

/* An expired entry queued for the refresher: read again for this call's 'at' and 'max'. */
struct nb_job {
    struct nb_job *next;
    int64_t at;
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

struct popcache {
    store *st;
    const struct popcache_source *src; /* NULL: the local store */
    bool (*owns)(void *ud, uint32_t p);  /* local lists: partitions to include (NULL: all) */
    void *owns_ud;
    const struct product_params *pp;
    int64_t staleness_ms;
    size_t top_k;
    pthread_mutex_t mu;        /* the lists and the refresher's state */
    struct pop_list *lists;
    size_t nlists;
    struct nb_shard *nb;       /* NB_SHARDS, or NULL: neighbours are not cached */
    /* the refresher thread (see DESIGN), started by the first expired list */
    pthread_t refresher;
    bool refresher_started;
    bool refresh_due;          /* lists are scheduled */
    bool refresh_running;      /* a scheduled refresh is being computed */
    bool stopping;
    int64_t refresh_at;        /* event time of the last call that scheduled a refresh */
    pthread_cond_t work_cv;    /* the refresher waits: work queued, or stopping */
    pthread_cond_t idle_cv;    /* popcache_sync waits: nothing scheduled or running */
    pthread_cond_t built_cv;   /* a list being built was installed or given up */
    int64_t (*now_ms)(void);   /* the clock lists and entries age by */
    /* the neighbour refresher (see DESIGN): expired entries it reads again, oldest first,
     * at most nb_queue_max; guarded by nb_mu, never taken with another lock */
    pthread_mutex_t nb_mu;
    pthread_cond_t nb_work_cv; /* jobs queued, or nb_stopping */
    pthread_cond_t nb_idle_cv; /* popcache_sync waits: no job queued or running */
    pthread_t nb_refresher;
    bool nb_started, nb_running, nb_stopping;
    struct nb_job *nb_head, *nb_tail;
    size_t nb_queued, nb_queue_max;
    struct scored_product *nb_buf; /* the neighbour refresher's: a source's answer */
    size_t nb_buf_cap;
};

popcache *popcache_new(store *st, const struct product_params *pp, int64_t staleness_ms,
                       size_t top_k)
{
    popcache *pc = calloc(1, sizeof(*pc));
    if (!pc)
        return NULL;
    pc->st = st;
    pc->pp = pp;
    pc->staleness_ms = staleness_ms;
    pc->top_k = top_k;
    pthread_mutex_init(&pc->mu, NULL);
    pthread_cond_init(&pc->work_cv, NULL);
    pthread_cond_init(&pc->idle_cv, NULL);
    pthread_cond_init(&pc->built_cv, NULL);
    pc->now_ms = clock_mono_ms;
    pthread_mutex_init(&pc->nb_mu, NULL);
    pthread_cond_init(&pc->nb_work_cv, NULL);
    pthread_cond_init(&pc->nb_idle_cv, NULL);
    return pc;
}

static void drop_lists(popcache *pc)
{
    for (size_t i = 0; i < pc->nlists; i++) {
        free(pc->lists[i].category);
        free(pc->lists[i].items);
    }
    free(pc->lists);
    pc->lists = NULL;
    pc->nlists = 0;
}

void popcache_set_source(popcache *pc, const struct popcache_source *src)
{
    pc->src = src;
}

void popcache_set_owns(popcache *pc, bool (*owns)(void *ud, uint32_t p), void *ud)
{
    pc->owns = owns;
    pc->owns_ud = ud;
}

static void nb_free(popcache *pc)
{
    if (!pc->nb)
        return;
    for (size_t s = 0; s < NB_SHARDS; s++) {
        struct nb_shard *sh = &pc->nb[s];
        for (size_t i = 0; i < sh->used; i++)
            free(sh->slots[i].items);
        free(sh->slots);
        free(sh->heads);
        pthread_mutex_destroy(&sh->mu);
    }
    free(pc->nb);
    pc->nb = NULL;
}

void popcache_set_clock(popcache *pc, int64_t (*now_ms)(void))
{
    pc->now_ms = now_ms;
}

eddy_err popcache_set_neighbour_cache(popcache *pc, size_t entries)
{
    nb_free(pc);
    if (entries && pc->st)
        store_track_writes(pc->st, T_PRODUCT); /* expired entries nothing changed stay */
    pc->nb_queue_max = entries; /* each entry is queued at most once at a time */
    if (entries == 0)
        return EDDY_OK;
    size_t per = (entries + NB_SHARDS - 1) / NB_SHARDS;
    if (per > INT32_MAX / 4)
        per = INT32_MAX / 4;
    if (!(pc->nb = calloc(NB_SHARDS, sizeof(*pc->nb))))
        return EDDY_ERR_NOMEM;
    for (size_t s = 0; s < NB_SHARDS; s++) {
        struct nb_shard *sh = &pc->nb[s];
        pthread_mutex_init(&sh->mu, NULL);
        sh->cap = per;
        sh->nheads = 4;
        while (sh->nheads < per * 2)
            sh->nheads <<= 1;
        sh->slots = calloc(per, sizeof(*sh->slots));
        sh->heads = malloc(sh->nheads * sizeof(*sh->heads));
        if (!sh->slots || !sh->heads) {
            for (size_t j = s + 1; j < NB_SHARDS; j++)
                pthread_mutex_init(&pc->nb[j].mu, NULL);
            nb_free(pc);
            return EDDY_ERR_NOMEM;
        }
        memset(sh->heads, 0xff, sh->nheads * sizeof(*sh->heads)); /* -1 */
    }
    return EDDY_OK;
}

void popcache_stats(popcache *pc, struct popcache_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t s = 0; pc->nb && s < NB_SHARDS; s++) {
        struct nb_shard *sh = &pc->nb[s];
        pthread_mutex_lock(&sh->mu);
        out->hits += sh->hits;
        out->misses += sh->misses;
        out->evictions += sh->evictions;
        out->revalidated += sh->revalidated;
        out->entries += sh->used;
        pthread_mutex_unlock(&sh->mu);
    }
}

void popcache_free(popcache *pc)
{
    if (!pc)
        return;
    if (pc->refresher_started) {
        pthread_mutex_lock(&pc->mu);
        pc->stopping = true;
        pthread_cond_signal(&pc->work_cv);
        pthread_mutex_unlock(&pc->mu);
        pthread_join(pc->refresher, NULL);
    }
    if (pc->nb_started) {
        pthread_mutex_lock(&pc->nb_mu);
        pc->nb_stopping = true;
        pthread_cond_signal(&pc->nb_work_cv);
        pthread_mutex_unlock(&pc->nb_mu);
        pthread_join(pc->nb_refresher, NULL);
    }
    nb_free(pc);
    while (pc->nb_head) {
        struct nb_job *j = pc->nb_head;
        pc->nb_head = j->next;
        free(j);
    }
    free(pc->nb_buf);
    drop_lists(pc);
    pthread_mutex_destroy(&pc->mu);
    pthread_cond_destroy(&pc->work_cv);
    pthread_cond_destroy(&pc->idle_cv);
    pthread_cond_destroy(&pc->built_cv);
    pthread_mutex_destroy(&pc->nb_mu);
    pthread_cond_destroy(&pc->nb_work_cv);
    pthread_cond_destroy(&pc->nb_idle_cv);
    free(pc);
}

/* A bounded best-first list: insert keeps the top 'cap' by (score desc, id asc). */
struct topk {
    struct scored_product *items;
    size_t n, cap;
};

static void topk_offer(struct topk *t, const char *id, size_t idlen, const char *category,
                       size_t catlen, double score)
{
    if (idlen > REC_ID_CAP || catlen > REC_ID_CAP || t->cap == 0)
        return;
    size_t pos = t->n;
    while (pos > 0) {
        const struct scored_product *o = &t->items[pos - 1];
        if (o->score > score || (o->score == score && strncmp(o->product_id, id, idlen) <= 0))
            break;
        pos--;
    }
    if (pos >= t->cap)
        return;
    size_t moving = (t->n < t->cap ? t->n : t->cap - 1) - pos;
    memmove(&t->items[pos + 1], &t->items[pos], moving * sizeof(*t->items));
    struct scored_product *it = &t->items[pos];
    memcpy(it->product_id, id, idlen);
    it->product_id[idlen] = '\0';
    memcpy(it->category, category, catlen);
    it->category[catlen] = '\0';
    it->score = score;
    if (t->n < t->cap)
        t->n++;
}

/* One pass over the CAT_POP index refreshes every list in use at once: the index of each
 * owned partition is read with one iterator (a seek per partition) and each entry is
 * offered to the global list and to its category's. Refreshing the lists one by one cost
 * a LevelDB iterator and seek per list and partition (256 per list): with the global list
 * and 50 categories, 51 times the seeks of one pass, every --stage2-staleness. A category
 * refreshed alone reads only its own key range of each partition. */
struct pass {
    const struct product_params *pp;
    int64_t at;
    size_t n;          /* lists */
    char **cats;       /* [n]; "" = the global list */
    struct topk *tk;   /* [n] */
    long global;       /* index of "", -1 if not refreshed */
    int32_t *slots;    /* category -> list index, open addressing, -1 = empty */
    size_t cap;
};

static long pass_find(const struct pass *ps, const char *cat, size_t len)
{
    for (size_t i = (size_t)XXH3_64bits(cat, len) & (ps->cap - 1); ps->slots[i] >= 0;
         i = (i + 1) & (ps->cap - 1)) {
        const char *c = ps->cats[ps->slots[i]];
        if (strncmp(c, cat, len) == 0 && c[len] == '\0')
            return ps->slots[i];
    }
    return -1;
}

/* A bump allocator over a stack buffer: a Decayed decodes without malloc. */
struct stack_alloc {
    _Alignas(16) unsigned char buf[256];
    size_t used;
};

static void *stack_alloc_fn(void *ud, size_t size)
{
    struct stack_alloc *a = ud;
    size = (size + 15) & ~(size_t)15;
    if (a->used + size > sizeof(a->buf))
        return NULL;
    void *p = a->buf + a->used;
    a->used += size;
    return p;
}

static void stack_free_fn(void *ud, void *p)
{
    (void)ud;
    (void)p;
}

/* CAT_POP key: p(2) T(1) len(2) category product_id; value: Decayed. */
static int offer_entry(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct pass *ps = ud;
    if (klen < 5)
        return 0;
    size_t clen = ((size_t)k[3] << 8) | k[4];
    if (5 + clen > klen)
        return 0;
    const char *cat = (const char *)k + 5, *id = cat + clen;
    long j = clen ? pass_find(ps, cat, clen) : -1;
    if (ps->global < 0 && j < 0)
        return 0;
    struct stack_alloc sa = {.used = 0};
    ProtobufCAllocator alloc = {stack_alloc_fn, stack_free_fn, &sa};
    Eddy__Store__V1__Decayed *d = eddy__store__v1__decayed__unpack(&alloc, vlen,
                                                                  (const uint8_t *)v);
    if (!d)
        return 0;
    double score = decay_value(d, &ps->pp->popularity, ps->at);
    size_t idlen = klen - 5 - clen;
    if (ps->global >= 0)
        topk_offer(&ps->tk[ps->global], id, idlen, cat, clen, score);
    if (j >= 0)
        topk_offer(&ps->tk[j], id, idlen, cat, clen, score);
    return 0;
}

/* Fill ps->tk for ps->cats from the local store. */
static eddy_err pass_run(popcache *pc, struct pass *ps)
{
    ps->cap = 16;
    while (ps->cap < ps->n * 2)
        ps->cap <<= 1;
    uint32_t np = pc->pp->partitions;
    struct store_key *starts = malloc(np * sizeof(*starts));
    struct store_key *ends = malloc(np * sizeof(*ends));
    ps->slots = malloc(ps->cap * sizeof(*ps->slots));
    eddy_err err = EDDY_ERR_NOMEM;
    if (!starts || !ends || !ps->slots)
        goto out;
    memset(ps->slots, 0xff, ps->cap * sizeof(*ps->slots));
    ps->global = -1;
    for (size_t j = 0; j < ps->n; j++) {
        size_t len = strlen(ps->cats[j]);
        if (len == 0) {
            ps->global = (long)j;
            continue;
        }
        size_t i = (size_t)XXH3_64bits(ps->cats[j], len) & (ps->cap - 1);
        while (ps->slots[i] >= 0)
            i = (i + 1) & (ps->cap - 1);
        ps->slots[i] = (int32_t)j;
    }
    /* one category alone: its own key range in each partition, not the whole index */
    const char *only = ps->n == 1 && ps->global < 0 ? ps->cats[0] : NULL;
    size_t nr = 0;
    for (uint32_t p = 0; p < np; p++) {
        if (pc->owns && !pc->owns(pc->owns_ud, p))
            continue; /* a copy in transit or left behind by a move: not this node's */
        key_init(&starts[nr], p, T_CAT_POP);
        if (only)
            key_lstr(&starts[nr], only);
        key_prefix_end(&starts[nr], &ends[nr]);
        nr++;
    }
    err = store_scan_ranges(pc->st, starts, ends, nr, offer_entry, ps);
out:
    free(starts);
    free(ends);
    free(ps->slots);
    return err;
}

/* Copy list entries, only the bytes of their strings (a scored_product is ~0.5 kB). */
static void copy_list(struct scored_product *out, const struct scored_product *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        memcpy(out[i].product_id, in[i].product_id, strlen(in[i].product_id) + 1);
        memcpy(out[i].category, in[i].category, strlen(in[i].category) + 1);
        out[i].score = in[i].score;
    }
}

/* The cached list of 'category', or NULL. Under pc->mu. */
static struct pop_list *list_find(popcache *pc, const char *category)
{
    for (size_t i = 0; i < pc->nlists; i++) {
        if (strcmp(pc->lists[i].category, category) == 0)
            return &pc->lists[i];
    }
    return NULL;
}

/* Add to 'cats' (room for every list) each list read since its last refresh that no
 * thread is refreshing, marked refreshing: local lists are refreshed together, in one
 * pass. Under pc->mu. Returns false if out of memory (the names added so far stay). */
static bool add_used_lists(popcache *pc, char **cats, size_t *n)
{
    for (size_t i = 0; !pc->src && i < pc->nlists; i++) {
        struct pop_list *l = &pc->lists[i];
        if (!l->used || l->refreshing)
            continue;
        if (!(cats[*n] = strdup(l->category)))
            return false;
        l->refreshing = true;
        (*n)++;
    }
    return true;
}

/* Give up refreshing the lists 'cats' (the names are freed). Under pc->mu. */
static void unmark_lists(popcache *pc, char **cats, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        struct pop_list *l = list_find(pc, cats[k]);
        if (l)
            l->refreshing = l->scheduled = false;
        free(cats[k]);
    }
}

/* 'category' alone as the set of lists refresh_lists takes over; NULL if out of memory. */
static char **one_list(const char *category)
{
    char **cats = malloc(sizeof(*cats));
    if (cats && !(cats[0] = strdup(category))) {
        free(cats);
        cats = NULL;
    }
    return cats;
}

/* An empty entry for 'category', marked building: callers of the list wait until the
 * thread that reads it installs it (list_install) or gives up (list_remove). NULL if out
 * of memory (the reader still reads it; callers do not wait). Under pc->mu. */
static struct pop_list *list_placeholder(popcache *pc, const char *category)
{
    if (pc->nlists >= MAX_CACHED_LISTS)
        return NULL;
    char *cat = strdup(category);
    struct pop_list *nl = cat ? realloc(pc->lists, (pc->nlists + 1) * sizeof(*nl)) : NULL;
    if (!nl) {
        free(cat);
        return NULL;
    }
    pc->lists = nl;
    struct pop_list *l = &pc->lists[pc->nlists++];
    memset(l, 0, sizeof(*l));
    l->category = cat;
    l->building = true;
    return l;
}

/* Remove 'l' (a placeholder whose read failed) from the lists. Under pc->mu. */
static void list_remove(popcache *pc, struct pop_list *l)
{
    free(l->category);
    free(l->items);
    *l = pc->lists[--pc->nlists];
}

/* Install the refreshed list 'items' (taken over) of 'cat' (taken over). Under pc->mu. */
static void list_install(popcache *pc, char *cat, struct scored_product *items, size_t n,
                         int64_t now, int64_t at)
{
    struct pop_list *l = list_find(pc, cat);
    if (!l) {
        if (pc->nlists >= MAX_CACHED_LISTS)
            drop_lists(pc);
        struct pop_list *nl = realloc(pc->lists, (pc->nlists + 1) * sizeof(*nl));
        if (!nl) {
            free(items);
            free(cat);
            return; /* answered, just not cached */
        }
        pc->lists = nl;
        l = &pc->lists[pc->nlists++];
        memset(l, 0, sizeof(*l));
        l->category = cat;
    } else {
        free(cat);
    }
    free(l->items);
    l->items = items;
    l->n = n;
    l->refreshed_ms = now;
    l->at = at;
    l->building = false;
    l->refreshing = false;
    l->scheduled = false;
    l->used = false;
}

/* Compute the lists 'cats' (names and array taken over, marked refreshing if cached) at
 * event time 'at' and install them: one pass over the local index for all of them, or one
 * call of the source per list. Up to 'max' items of cats[0] are copied to 'out' (if not
 * NULL), their count to *n. On an error nothing is installed. Not under pc->mu. */
static eddy_err refresh_lists(popcache *pc, char **cats, size_t nl, int64_t at,
                              struct scored_product *out, size_t max, size_t *n)
{
    int64_t now = pc->now_ms();
    struct pass ps = {pc->pp, at, nl, cats, calloc(nl, sizeof(struct topk)), -1, NULL, 0};
    eddy_err err = ps.tk ? EDDY_OK : EDDY_ERR_NOMEM;
    for (size_t k = 0; k < nl && err == EDDY_OK; k++) {
        ps.tk[k] = (struct topk){calloc(pc->top_k ? pc->top_k : 1, sizeof(struct scored_product)),
                                 0, pc->top_k};
        if (!ps.tk[k].items)
            err = EDDY_ERR_NOMEM;
    }
    for (size_t k = 0; pc->src && k < nl && err == EDDY_OK; k++)
        err = pc->src->top(pc->src->ud, cats[k], at, ps.tk[k].items, ps.tk[k].cap, &ps.tk[k].n);
    if (!pc->src && err == EDDY_OK)
        err = pass_run(pc, &ps);
    if (err == EDDY_OK && out) {
        *n = ps.tk[0].n < max ? ps.tk[0].n : max;
        copy_list(out, ps.tk[0].items, *n);
    }

    pthread_mutex_lock(&pc->mu);
    for (size_t k = 0; k < nl; k++) {
        if (err == EDDY_OK) {
            list_install(pc, cats[k], ps.tk[k].items, ps.tk[k].n, now, at);
            continue;
        }
        struct pop_list *f = list_find(pc, cats[k]);
        if (f && f->building)
            list_remove(pc, f);
        else if (f)
            f->refreshing = f->scheduled = false;
        free(ps.tk ? ps.tk[k].items : NULL);
        free(cats[k]);
    }
    pthread_cond_broadcast(&pc->built_cv);
    pthread_mutex_unlock(&pc->mu);
    free(ps.tk);
    free(cats);
    return err;
}

/* The lists scheduled for the refresher, and those in use. Under pc->mu. */
static char **scheduled_set(popcache *pc, size_t *n)
{
    *n = 0;
    char **cats = malloc((pc->nlists + 1) * sizeof(*cats));
    bool ok = cats != NULL;
    for (size_t i = 0; ok && i < pc->nlists; i++) {
        struct pop_list *l = &pc->lists[i];
        if (!l->scheduled)
            continue;
        if (!(cats[*n] = strdup(l->category)))
            ok = false;
        else
            (*n)++;
    }
    if (ok)
        ok = add_used_lists(pc, cats, n);
    if (ok)
        return cats;
    /* out of memory: every scheduled list is expired again, the next call reschedules */
    for (size_t i = 0; i < pc->nlists; i++) {
        if (pc->lists[i].scheduled)
            pc->lists[i].refreshing = pc->lists[i].scheduled = false;
    }
    if (cats)
        unmark_lists(pc, cats, *n);
    free(cats);
    *n = 0;
    return NULL;
}

static void *refresher_main(void *arg)
{
    thread_name("lists");
    popcache *pc = arg;
#ifdef __linux__
    (void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19); /* this thread only (see DESIGN) */
#endif
    pthread_mutex_lock(&pc->mu);
    for (;;) {
        while (!pc->refresh_due && !pc->stopping)
            pthread_cond_wait(&pc->work_cv, &pc->mu);
        if (pc->stopping)
            break;
        pc->refresh_due = false;
        pc->refresh_running = true;
        int64_t at = pc->refresh_at;
        size_t n = 0;
        char **cats = scheduled_set(pc, &n);
        pthread_mutex_unlock(&pc->mu);
        if (cats && refresh_lists(pc, cats, n, at, NULL, 0, NULL) != EDDY_OK)
            log_warn("msg=\"popularity lists not refreshed\" lists=%zu", n);
        pthread_mutex_lock(&pc->mu);
        pc->refresh_running = false;
        pthread_cond_broadcast(&pc->idle_cv);
    }
    pc->refresh_running = false;
    pthread_cond_broadcast(&pc->idle_cv);
    pthread_mutex_unlock(&pc->mu);
    return NULL;
}

/* Have the refresher refresh the expired list 'l' (at event time 'at'), starting it if
 * needed. Under pc->mu. False if there is no refresher: the caller refreshes. */
static bool schedule_refresh(popcache *pc, struct pop_list *l, int64_t at)
{
    if (pc->staleness_ms <= 0)
        return false; /* nothing is cached: every call reads the index */
    if (!pc->refresher_started) {
        if (pthread_create(&pc->refresher, NULL, refresher_main, pc) != 0)
            return false;
        pc->refresher_started = true;
    }
    l->refreshing = l->scheduled = true;
    pc->refresh_due = true;
    pc->refresh_at = at;
    pthread_cond_signal(&pc->work_cv);
    return true;
}

void popcache_sync(popcache *pc)
{
    pthread_mutex_lock(&pc->mu);
    while (pc->refresh_due || pc->refresh_running)
        pthread_cond_wait(&pc->idle_cv, &pc->mu);
    pthread_mutex_unlock(&pc->mu);
    pthread_mutex_lock(&pc->nb_mu);
    while (pc->nb_head || pc->nb_running)
        pthread_cond_wait(&pc->nb_idle_cv, &pc->nb_mu);
    pthread_mutex_unlock(&pc->nb_mu);
}

eddy_err popcache_top(popcache *pc, const char *category, int64_t at,
                      struct scored_product *out, size_t max, size_t *n)
{
    int64_t now = pc->now_ms();
    *n = 0;
    pthread_mutex_lock(&pc->mu);
    struct pop_list *l = list_find(pc, category);
    while (l && l->building) { /* another thread reads it: one read, not one per caller */
        pthread_cond_wait(&pc->built_cv, &pc->mu);
        l = list_find(pc, category);
    }
    /* Decay scales every score of a list alike, so a list decayed to a slightly older
     * reference time ranks the same; only its age matters. A list expired less than one
     * period ago is answered from while the refresher reads it again, so no call waits for
     * a refresh (see DESIGN). */
    int64_t age = l ? now - l->refreshed_ms : 0;
    if (l && (age < pc->staleness_ms || l->refreshing ||
              (age < 2 * pc->staleness_ms && schedule_refresh(pc, l, at)))) {
        *n = l->n < max ? l->n : max;
        copy_list(out, l->items, *n);
        l->used = true;
        pthread_mutex_unlock(&pc->mu);
        return EDDY_OK;
    }
    /* read by this thread, alone: the other lists in use are the refresher's (DESIGN) */
    char **cats = one_list(category);
    if (!cats) {
        pthread_mutex_unlock(&pc->mu);
        return EDDY_ERR_NOMEM;
    }
    if (l)
        l->refreshing = true;
    else if (pc->staleness_ms > 0)
        (void)list_placeholder(pc, category);
    pthread_mutex_unlock(&pc->mu);
    /* outside the lock: the others answer from the previous list, or wait for the first */
    return refresh_lists(pc, cats, 1, at, out, max, n);
}

/* The uncached read: the reference the cache must reproduce. */
static eddy_err neighbours_uncached(popcache *pc, const char *product_id, int64_t at,
                                    struct scored_product *out, size_t max, size_t *n)
{
    Eddy__Store__V1__ProductState *ps = NULL;
    *n = 0;
    if (pc->src)
        return pc->src->neighbours(pc->src->ud, product_id, at, out, max, n);
    eddy_err err = product_get(pc->st, pc->pp->partitions, product_id, &ps);
    if (err != EDDY_OK || !ps)
        return err;
    struct topk t = {out, 0, max};
    for (size_t i = 0; i < ps->n_neighbours; i++) {
        const Eddy__Store__V1__Neighbour *nb = ps->neighbours[i];
        topk_offer(&t, nb->product_id, strlen(nb->product_id), nb->category,
                   strlen(nb->category), decay_value(nb->score, &pc->pp->neighbours, at));
    }
    *n = t.n;
    eddy__store__v1__product_state__free_unpacked(ps, NULL);
    return EDDY_OK;
}

/* One allocation: items[n], scores[n], order[n], key, then the strings. */
static bool nb_alloc(struct nb_entry *e, size_t n, const char *key, size_t keylen,
                     size_t strbytes)
{
    size_t sz = n * (sizeof(struct nb_item) + sizeof(double) + sizeof(uint32_t)) + keylen + 1 +
                strbytes;
    char *b = malloc(sz ? sz : 1);
    if (!b)
        return false;
    memset(e, 0, sizeof(*e));
    e->items = (struct nb_item *)b;
    e->scores = (double *)(b + n * sizeof(struct nb_item));
    e->order = (uint32_t *)(b + n * (sizeof(struct nb_item) + sizeof(double)));
    char *k = b + n * (sizeof(struct nb_item) + sizeof(double) + sizeof(uint32_t));
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

/* A raw entry from the product's stored neighbours (none if the product is unknown). The
 * neighbours topk_offer would skip (over-long strings) are left out. */
static eddy_err nb_build_local(popcache *pc, const char *product_id, size_t keylen,
                               struct nb_entry *e)
{
    Eddy__Store__V1__ProductState *ps = NULL;
    struct store_key k;
    product_key(&k, pc->pp->partitions, product_id);
    uint64_t writes = store_key_writes(pc->st, &k); /* before the read (store.h) */
    eddy_err err = store_get_msg(pc->st, &k, &eddy__store__v1__product_state__descriptor,
                                 (ProtobufCMessage **)&ps);
    if (err != EDDY_OK)
        return err;
    size_t n = 0, bytes = 0;
    for (size_t i = 0; ps && i < ps->n_neighbours; i++) {
        const Eddy__Store__V1__Neighbour *nb = ps->neighbours[i];
        size_t il = strlen(nb->product_id), cl = strlen(nb->category);
        if (il > REC_ID_CAP || cl > REC_ID_CAP)
            continue;
        n++;
        bytes += il + cl + 2;
    }
    if (!nb_alloc(e, n, product_id, keylen, bytes)) {
        if (ps)
            eddy__store__v1__product_state__free_unpacked(ps, NULL);
        return EDDY_ERR_NOMEM;
    }
    char *p = (char *)e->key + keylen + 1;
    size_t j = 0;
    for (size_t i = 0; ps && i < ps->n_neighbours; i++) {
        const Eddy__Store__V1__Neighbour *nb = ps->neighbours[i];
        size_t il = strlen(nb->product_id), cl = strlen(nb->category);
        if (il > REC_ID_CAP || cl > REC_ID_CAP)
            continue;
        struct nb_item *it = &e->items[j++];
        it->id = nb_put_str(&p, nb->product_id, il);
        it->category = nb_put_str(&p, nb->category, cl);
        it->idlen = (uint32_t)il;
        it->catlen = (uint32_t)cl;
        it->has_score = nb->score != NULL;
        if (nb->score) {
            it->bucket = nb->score->bucket;
            it->cur = nb->score->cur;
            it->prev = nb->score->prev;
        }
    }
    e->raw = true;
    e->writes = writes;
    if (ps)
        eddy__store__v1__product_state__free_unpacked(ps, NULL);
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

/* Raw entries: rank the items at 'at' keeping the best 'max', exactly as topk_offer over
 * the stored neighbours in their stored order (same comparisons, same ties), on indices
 * instead of whole scored_product copies. Kept until another (at, max) is asked for. */
static void nb_rank(const popcache *pc, struct nb_entry *e, int64_t at, size_t max)
{
    if (e->scored && e->scored_at == at && e->scored_max == max)
        return;
    size_t cnt = 0;
    for (size_t i = 0; i < e->n && max > 0; i++) {
        const struct nb_item *it = &e->items[i];
        double s = 0.0;
        if (it->has_score) {
            Eddy__Store__V1__Decayed d = EDDY__STORE__V1__DECAYED__INIT;
            d.bucket = it->bucket;
            d.cur = it->cur;
            d.prev = it->prev;
            s = decay_value(&d, &pc->pp->neighbours, at);
        }
        size_t pos = cnt;
        while (pos > 0) {
            double os = e->scores[pos - 1];
            if (os > s ||
                (os == s && strncmp(e->items[e->order[pos - 1]].id, it->id, it->idlen) <= 0))
                break;
            pos--;
        }
        if (pos >= max)
            continue;
        size_t moving = (cnt < max ? cnt : max - 1) - pos;
        memmove(&e->order[pos + 1], &e->order[pos], moving * sizeof(*e->order));
        memmove(&e->scores[pos + 1], &e->scores[pos], moving * sizeof(*e->scores));
        e->order[pos] = (uint32_t)i;
        e->scores[pos] = s;
        if (cnt < max)
            cnt++;
    }
    e->norder = cnt;
    e->scored_at = at;
    e->scored_max = max;
    e->scored = true;
}

static void put_item(struct scored_product *o, const struct nb_item *it, double score)
{
    memcpy(o->product_id, it->id, (size_t)it->idlen + 1);
    memcpy(o->category, it->category, (size_t)it->catlen + 1);
    o->score = score;
}

/* Copy the entry's list for (at, max) into 'out'. */
static size_t nb_emit(const popcache *pc, struct nb_entry *e, int64_t at,
                      struct scored_product *out, size_t max)
{
    if (e->raw) {
        nb_rank(pc, e, at, max);
        for (size_t j = 0; j < e->norder; j++)
            put_item(&out[j], &e->items[e->order[j]], e->scores[j]);
        return e->norder;
    }
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
 * is left alone) or from the source: its answer for 'at' and 'max' goes to 'out', its
 * count to *n, and *answered is set even if the entry could not be built. Not under any
 * lock. */
static eddy_err nb_read(popcache *pc, const char *product_id, size_t keylen, int64_t at,
                        struct scored_product *out, size_t max, size_t *n, bool *answered,
                        struct nb_entry *ne)
{
    *answered = false;
    if (!pc->src)
        return nb_build_local(pc, product_id, keylen, ne);
    eddy_err err = pc->src->neighbours(pc->src->ud, product_id, at, out, max, n);
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
static bool nb_still_stored(popcache *pc, struct nb_shard *sh, uint64_t h, const char *key,
                            int64_t now)
{
    struct store_key k;
    product_key(&k, pc->pp->partitions, key);
    uint64_t writes = store_key_writes(pc->st, &k);
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
static void nb_refresh_job(popcache *pc, const struct nb_job *j)
{
    size_t keylen = strlen(j->key);
    uint64_t h = XXH3_64bits(j->key, keylen);
    struct nb_shard *sh = &pc->nb[h % NB_SHARDS];
    int64_t now = pc->now_ms();
    if (!pc->src && nb_still_stored(pc, sh, h, j->key, now))
        return;
    struct nb_entry ne;
    size_t n = 0;
    bool answered;
    eddy_err err = EDDY_ERR_NOMEM;
    if (pc->src && pc->nb_buf_cap < j->max) { /* only this thread touches nb_buf */
        free(pc->nb_buf);
        pc->nb_buf_cap = 0;
        if ((pc->nb_buf = malloc(j->max * sizeof(*pc->nb_buf))))
            pc->nb_buf_cap = j->max;
    }
    if (!pc->src || pc->nb_buf_cap >= j->max)
        err = nb_read(pc, j->key, keylen, j->at, pc->nb_buf, j->max, &n, &answered, &ne);
    if (err != EDDY_OK)
        nb_refresh_failed(sh, h, j->key);
    else
        nb_install(sh, h, now, &ne);
}

static void *nb_refresher_main(void *arg)
{
    thread_name("neighbours");
    popcache *pc = arg;
    pthread_mutex_lock(&pc->nb_mu);
    for (;;) {
        while (!pc->nb_head && !pc->nb_stopping)
            pthread_cond_wait(&pc->nb_work_cv, &pc->nb_mu);
        if (pc->nb_stopping)
            break;
        struct nb_job *j = pc->nb_head;
        if (!(pc->nb_head = j->next))
            pc->nb_tail = NULL;
        pc->nb_queued--;
        pc->nb_running = true;
        pthread_mutex_unlock(&pc->nb_mu);
        nb_refresh_job(pc, j);
        free(j);
        pthread_mutex_lock(&pc->nb_mu);
        pc->nb_running = false;
        if (!pc->nb_head)
            pthread_cond_broadcast(&pc->nb_idle_cv);
    }
    pc->nb_running = false;
    pthread_cond_broadcast(&pc->nb_idle_cv);
    pthread_mutex_unlock(&pc->nb_mu);
    return NULL;
}

/* Queue the expired entry 'product_id' (marked refreshing) for the neighbour refresher,
 * for a call at 'at' of 'max' items, starting it if needed. False if the queue is full or
 * there is no refresher: the caller reads it. */
static bool nb_schedule(popcache *pc, const char *product_id, size_t keylen, int64_t at,
                        size_t max)
{
    bool ok = false;
    pthread_mutex_lock(&pc->nb_mu);
    if (!pc->nb_started && !pc->nb_stopping &&
        pthread_create(&pc->nb_refresher, NULL, nb_refresher_main, pc) == 0)
        pc->nb_started = true;
    struct nb_job *j = NULL;
    if (pc->nb_started && !pc->nb_stopping && pc->nb_queued < pc->nb_queue_max &&
        (j = malloc(sizeof(*j) + keylen + 1))) {
        j->next = NULL;
        j->at = at;
        j->max = max;
        memcpy(j->key, product_id, keylen + 1);
        if (pc->nb_tail)
            pc->nb_tail->next = j;
        else
            pc->nb_head = j;
        pc->nb_tail = j;
        pc->nb_queued++;
        pthread_cond_signal(&pc->nb_work_cv);
        ok = true;
    }
    pthread_mutex_unlock(&pc->nb_mu);
    return ok;
}

eddy_err popcache_neighbours(popcache *pc, const char *product_id, int64_t at,
                             struct scored_product *out, size_t max, size_t *n)
{
    *n = 0;
    if (!pc->nb || pc->staleness_ms <= 0)
        return neighbours_uncached(pc, product_id, at, out, max, n);
    size_t keylen = strlen(product_id);
    uint64_t h = XXH3_64bits(product_id, keylen);
    struct nb_shard *sh = &pc->nb[h % NB_SHARDS];
    int64_t now = pc->now_ms();

    pthread_mutex_lock(&sh->mu);
    struct nb_entry *e = nb_find(sh, h, product_id);
    bool usable = e && (e->raw || max <= e->fetched || e->n < e->fetched);
    int64_t age = usable ? now - e->refreshed_ms : 0;
    /* as for the popularity lists, an entry expired less than one period ago answers
     * while it is read again, by the refresher or by another thread (see DESIGN) */
    bool answer = usable && age < 2 * pc->staleness_ms;
    bool schedule = answer && age >= pc->staleness_ms && !e->refreshing;
    if (answer) {
        *n = nb_emit(pc, e, at, out, max);
        e->ref = true;
        sh->hits++;
    } else {
        sh->misses++;
    }
    if (usable && (schedule || !answer))
        e->refreshing = true;
    pthread_mutex_unlock(&sh->mu);
    if (answer && (!schedule || nb_schedule(pc, product_id, keylen, at, max)))
        return EDDY_OK;

    /* read here, outside the lock: concurrent reads of one entry are harmless */
    struct nb_entry ne;
    bool answered;
    eddy_err err = nb_read(pc, product_id, keylen, at, out, max, n, &answered, &ne);
    if (err != EDDY_OK) {
        nb_refresh_failed(sh, h, product_id);
        return answered ? EDDY_OK : err; /* answered, just not cached */
    }
    if (!pc->src)
        *n = nb_emit(pc, &ne, at, out, max);
    nb_install(sh, h, now, &ne);
    return EDDY_OK;
}
