/* Cached popularity lists and neighbour lookups for Recommend. */
#include "node/state/popcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "node/state/decay.h"

#define MAX_CACHED_LISTS 4096

struct pop_list {
    char *category;
    int64_t refreshed_ms;      /* monotonic */
    int64_t at;                /* event time the scores were decayed to */
    struct scored_product *items;
    size_t n;
};

struct popcache {
    store *st;
    const struct popcache_source *src; /* NULL: the local store */
    const struct product_params *pp;
    int64_t staleness_ms;
    size_t top_k;
    pthread_mutex_t mu;
    struct pop_list *lists;
    size_t nlists;
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

void popcache_free(popcache *pc)
{
    if (!pc)
        return;
    drop_lists(pc);
    pthread_mutex_destroy(&pc->mu);
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

struct scan_ctx {
    struct topk *t;
    const struct product_params *pp;
    int64_t at;
};

/* CAT_POP key: p(2) T(1) len(2) category product_id; value: Decayed. */
static int offer_entry(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct scan_ctx *c = ud;
    if (klen < 5)
        return 0;
    size_t clen = ((size_t)k[3] << 8) | k[4];
    if (5 + clen > klen)
        return 0;
    Eddy__Store__V1__Decayed *d = eddy__store__v1__decayed__unpack(NULL, vlen, (const uint8_t *)v);
    if (!d)
        return 0;
    double score = decay_value(d, &c->pp->popularity, c->at);
    eddy__store__v1__decayed__free_unpacked(d, NULL);
    topk_offer(c->t, (const char *)k + 5 + clen, klen - 5 - clen, (const char *)k + 5, clen,
               score);
    return 0;
}

static eddy_err scan_top(popcache *pc, const char *category, int64_t at, struct topk *t)
{
    struct scan_ctx c = {t, pc->pp, at};
    for (uint32_t p = 0; p < pc->pp->partitions; p++) {
        struct store_key start, end;
        key_init(&start, p, T_CAT_POP);
        if (category[0])
            key_lstr(&start, category);
        key_prefix_end(&start, &end);
        eddy_err err = store_scan(pc->st, &start, &end, offer_entry, &c);
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}

eddy_err popcache_top(popcache *pc, const char *category, int64_t at,
                      struct scored_product *out, size_t max, size_t *n)
{
    int64_t now = clock_mono_ms();
    *n = 0;
    pthread_mutex_lock(&pc->mu);
    for (size_t i = 0; i < pc->nlists; i++) {
        struct pop_list *l = &pc->lists[i];
        /* Decay scales every score of a list alike, so a list decayed to a slightly older
         * reference time ranks the same; only its age matters. */
        if (strcmp(l->category, category) == 0 && now - l->refreshed_ms < pc->staleness_ms) {
            *n = l->n < max ? l->n : max;
            memcpy(out, l->items, *n * sizeof(*out));
            pthread_mutex_unlock(&pc->mu);
            return EDDY_OK;
        }
    }
    pthread_mutex_unlock(&pc->mu);

    /* refresh outside the lock: concurrent refreshes of one list are harmless */
    struct topk t = {calloc(pc->top_k ? pc->top_k : 1, sizeof(*t.items)), 0, pc->top_k};
    char *cat = strdup(category);
    if (!t.items || !cat) {
        free(t.items);
        free(cat);
        return EDDY_ERR_NOMEM;
    }
    eddy_err err = pc->src ? pc->src->top(pc->src->ud, category, at, t.items, t.cap, &t.n)
                           : scan_top(pc, category, at, &t);
    if (err != EDDY_OK) {
        free(t.items);
        free(cat);
        return err;
    }
    *n = t.n < max ? t.n : max;
    memcpy(out, t.items, *n * sizeof(*out));

    pthread_mutex_lock(&pc->mu);
    size_t i;
    for (i = 0; i < pc->nlists; i++) {
        if (strcmp(pc->lists[i].category, category) == 0)
            break;
    }
    if (i == pc->nlists) {
        if (pc->nlists >= MAX_CACHED_LISTS)
            drop_lists(pc);
        struct pop_list *nl = realloc(pc->lists, (pc->nlists + 1) * sizeof(*nl));
        if (!nl) {
            pthread_mutex_unlock(&pc->mu);
            free(t.items);
            free(cat);
            return EDDY_OK; /* answered, just not cached */
        }
        pc->lists = nl;
        i = pc->nlists++;
        pc->lists[i].category = cat;
        pc->lists[i].items = NULL;
    } else {
        free(cat);
    }
    free(pc->lists[i].items);
    pc->lists[i].items = t.items;
    pc->lists[i].n = t.n;
    pc->lists[i].refreshed_ms = now;
    pc->lists[i].at = at;
    pthread_mutex_unlock(&pc->mu);
    return EDDY_OK;
}

eddy_err popcache_neighbours(popcache *pc, const char *product_id, int64_t at,
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
