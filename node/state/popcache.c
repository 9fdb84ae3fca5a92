/* Cached popularity lists for Recommend: the most popular products per category (and
 * overall) from the CAT_POP index, refreshed in the background.
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
 * little longer. */
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
#include "common/worker.h"
#include "node/state/decay.h"
#include "node/state/topk.h"

#define MAX_CACHED_LISTS 4096

struct pop_list {
    char *category;
    bool building;             /* no list yet: one thread reads it, callers wait for it */
    int64_t refreshed_ms;      /* monotonic */
    bool refreshing;           /* a thread is refreshing it: others use it meanwhile */
    bool scheduled;            /* ...or the refresher will (refreshing is set too) */
    bool used;                 /* read since its last refresh: refreshed with the next pass */
    struct scored_product *items; /* scored at the list's own reference (topk_score) */
    struct decay_sum *sums;    /* items[i]'s popularity as stored */
    size_t n;
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
    /* the refresher thread (see DESIGN), started by the first expired list and kicked by
     * every list scheduled after it */
    struct worker refresher;
    bool refresh_due;          /* lists are scheduled */
    bool refresh_running;      /* a scheduled refresh is being computed */
    pthread_cond_t idle_cv;    /* popcache_sync waits: nothing scheduled or running */
    pthread_cond_t built_cv;   /* a list being built was installed or given up */
    int64_t (*now_ms)(void);   /* the clock lists age by */
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
    pthread_cond_init(&pc->idle_cv, NULL);
    pthread_cond_init(&pc->built_cv, NULL);
    pc->now_ms = clock_mono_ms;
    return pc;
}

static void drop_lists(popcache *pc)
{
    for (size_t i = 0; i < pc->nlists; i++) {
        free(pc->lists[i].category);
        free(pc->lists[i].items);
        free(pc->lists[i].sums);
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

void popcache_set_clock(popcache *pc, int64_t (*now_ms)(void))
{
    pc->now_ms = now_ms;
}

void popcache_free(popcache *pc)
{
    if (!pc)
        return;
    worker_stop(&pc->refresher); /* not started: nothing to do */
    drop_lists(pc);
    pthread_mutex_destroy(&pc->mu);
    pthread_cond_destroy(&pc->idle_cv);
    pthread_cond_destroy(&pc->built_cv);
    free(pc);
}

/* One pass over the CAT_POP index refreshes every list in use at once: the index of each
 * owned partition is read with one iterator (a seek per partition) and each entry is
 * offered to the global list and to its category's. Refreshing the lists one by one cost
 * a LevelDB iterator and seek per list and partition (256 per list): with the global list
 * and 50 categories, 51 times the seeks of one pass, every --stage2-staleness. A category
 * refreshed alone reads only its own key range of each partition. */
struct pass {
    const struct product_params *pp;
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
    struct decay_sum sum = decay_sum_of(d);
    size_t idlen = klen - 5 - clen;
    if (ps->global >= 0)
        topk_offer_sum(&ps->tk[ps->global], id, idlen, cat, clen, &sum);
    if (j >= 0)
        topk_offer_sum(&ps->tk[j], id, idlen, cat, clen, &sum);
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

/* Copy list entries, only the bytes of their strings (a scored_product is ~0.5 kB), and
 * their sums if 'sums' is not NULL. */
static void copy_list(struct scored_product *out, struct decay_sum *sums,
                      const struct scored_product *in, const struct decay_sum *in_sums, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        memcpy(out[i].product_id, in[i].product_id, strlen(in[i].product_id) + 1);
        memcpy(out[i].category, in[i].category, strlen(in[i].category) + 1);
        out[i].score = in[i].score;
    }
    if (sums && n)
        memcpy(sums, in_sums, n * sizeof(*sums));
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
    free(l->sums);
    *l = pc->lists[--pc->nlists];
}

/* Install the refreshed list 'items' and 'sums' (taken over) of 'cat' (taken over). Under
 * pc->mu. */
static void list_install(popcache *pc, char *cat, struct scored_product *items,
                         struct decay_sum *sums, size_t n, int64_t now)
{
    struct pop_list *l = list_find(pc, cat);
    if (!l) {
        if (pc->nlists >= MAX_CACHED_LISTS)
            drop_lists(pc);
        struct pop_list *nl = realloc(pc->lists, (pc->nlists + 1) * sizeof(*nl));
        if (!nl) {
            free(items);
            free(sums);
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
    free(l->sums);
    l->items = items;
    l->sums = sums;
    l->n = n;
    l->refreshed_ms = now;
    l->building = false;
    l->refreshing = false;
    l->scheduled = false;
    l->used = false;
}

/* Compute the lists 'cats' (names and array taken over, marked refreshing if cached) and
 * install them: one pass over the local index for all of them, or one call of the source
 * per list, each ranked by the stored sums and scored at its own reference (topk.h). Up to
 * 'max' items of cats[0] are copied to 'out' (if not NULL) and their sums to 'sums' (if
 * not NULL), their count to *n. On an error nothing is installed. Not under pc->mu. */
static eddy_err refresh_lists(popcache *pc, char **cats, size_t nl, struct scored_product *out,
                              struct decay_sum *sums, size_t max, size_t *n)
{
    int64_t now = pc->now_ms();
    struct pass ps = {pc->pp, nl, cats, calloc(nl, sizeof(struct topk)), -1, NULL, 0};
    size_t room = pc->top_k ? pc->top_k : 1;
    eddy_err err = ps.tk ? EDDY_OK : EDDY_ERR_NOMEM;
    for (size_t k = 0; k < nl && err == EDDY_OK; k++) {
        ps.tk[k] = (struct topk){calloc(room, sizeof(struct scored_product)), 0, pc->top_k,
                                 calloc(room, sizeof(struct decay_sum)), &pc->pp->popularity};
        if (!ps.tk[k].items || !ps.tk[k].sums)
            err = EDDY_ERR_NOMEM;
    }
    for (size_t k = 0; pc->src && k < nl && err == EDDY_OK; k++)
        err = pc->src->top(pc->src->ud, cats[k], &ps.tk[k]);
    if (!pc->src && err == EDDY_OK)
        err = pass_run(pc, &ps);
    for (size_t k = 0; k < nl && err == EDDY_OK; k++)
        topk_score(&ps.tk[k]);
    if (err == EDDY_OK && out) {
        *n = ps.tk[0].n < max ? ps.tk[0].n : max;
        copy_list(out, sums, ps.tk[0].items, ps.tk[0].sums, *n);
    }

    pthread_mutex_lock(&pc->mu);
    for (size_t k = 0; k < nl; k++) {
        if (err == EDDY_OK) {
            list_install(pc, cats[k], ps.tk[k].items, ps.tk[k].sums, ps.tk[k].n, now);
            continue;
        }
        struct pop_list *f = list_find(pc, cats[k]);
        if (f && f->building)
            list_remove(pc, f);
        else if (f)
            f->refreshing = f->scheduled = false;
        if (ps.tk) {
            free(ps.tk[k].items);
            free(ps.tk[k].sums);
        }
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

/* The refresher's loop: a kick means lists were scheduled (the wait's period only bounds
 * how long a missed kick could go unnoticed: kicks are never lost). */
static void refresher_main(struct worker *w, void *arg)
{
    popcache *pc = arg;
#ifdef __linux__
    (void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19); /* this thread only (see DESIGN) */
#endif
    while (worker_wait(w, 1000)) {
        pthread_mutex_lock(&pc->mu);
        if (!pc->refresh_due) {
            pthread_mutex_unlock(&pc->mu);
            continue;
        }
        pc->refresh_due = false;
        pc->refresh_running = true;
        size_t n = 0;
        char **cats = scheduled_set(pc, &n);
        pthread_mutex_unlock(&pc->mu);
        if (cats && refresh_lists(pc, cats, n, NULL, NULL, 0, NULL) != EDDY_OK)
            log_warn("msg=\"popularity lists not refreshed\" lists=%zu", n);
        pthread_mutex_lock(&pc->mu);
        pc->refresh_running = false;
        pthread_cond_broadcast(&pc->idle_cv);
        pthread_mutex_unlock(&pc->mu);
    }
    pthread_mutex_lock(&pc->mu);
    pc->refresh_running = false;
    pthread_cond_broadcast(&pc->idle_cv);
    pthread_mutex_unlock(&pc->mu);
}

/* Have the refresher refresh the expired list 'l', starting it if needed. Under pc->mu.
 * False if there is no refresher: the caller refreshes. */
static bool schedule_refresh(popcache *pc, struct pop_list *l)
{
    if (pc->staleness_ms <= 0)
        return false; /* nothing is cached: every call reads the index */
    if (!pc->refresher.started &&
        worker_start(&pc->refresher, "lists", refresher_main, pc) != EDDY_OK)
        return false;
    l->refreshing = l->scheduled = true;
    pc->refresh_due = true;
    worker_kick(&pc->refresher);
    return true;
}

void popcache_sync(popcache *pc)
{
    pthread_mutex_lock(&pc->mu);
    while (pc->refresh_due || pc->refresh_running)
        pthread_cond_wait(&pc->idle_cv, &pc->mu);
    pthread_mutex_unlock(&pc->mu);
}

eddy_err popcache_top(popcache *pc, const char *category, struct scored_product *out,
                      struct decay_sum *sums, size_t max, size_t *n)
{
    int64_t now = pc->now_ms();
    *n = 0;
    pthread_mutex_lock(&pc->mu);
    struct pop_list *l = list_find(pc, category);
    while (l && l->building) { /* another thread reads it: one read, not one per caller */
        pthread_cond_wait(&pc->built_cv, &pc->mu);
        l = list_find(pc, category);
    }
    /* A list is scored at its own reference, not at the caller's time: only its age
     * matters. A list expired less than one period ago is answered from while the
     * refresher reads it again, so no call waits for a refresh (see DESIGN). */
    int64_t age = l ? now - l->refreshed_ms : 0;
    if (l && (age < pc->staleness_ms || l->refreshing ||
              (age < 2 * pc->staleness_ms && schedule_refresh(pc, l)))) {
        *n = l->n < max ? l->n : max;
        copy_list(out, sums, l->items, l->sums, *n);
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
    return refresh_lists(pc, cats, 1, out, sums, max, n);
}
