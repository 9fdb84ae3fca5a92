/* Queries over committed state. */
#include "node/state/query.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/partition.h"
#include "common/strmap.h"
#include "node/state/counts.h"
#include "node/state/model.h"
#include "common/pbutil.h"
#include "node/state/window.h"

void query_free_response(ProtobufCMessage *m)
{
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

/* The user's stored model (expired or not) of partition 'p'; *m is NULL if there is none.
 * With 'alloc' (an arena, freed all at once by the caller), only the fields Recommend reads
 * (model_unpack_for_recommend); without, the whole model (free with
 * eddy__store__v1__user_model__free_unpacked). */
static eddy_err read_user(struct query_ctx *q, const char *user_id, uint32_t p,
                          ProtobufCAllocator *alloc, Eddy__Store__V1__UserModel **m)
{
    struct store_key k;
    char *val = NULL;
    size_t vlen = 0;
    *m = NULL;
    key_init(&k, p, T_USER);
    key_str(&k, user_id);
    eddy_err err = store_get(engine_store(q->eng), &k, &val, &vlen);
    if (err != EDDY_OK || !val)
        return err;
    if (alloc) { /* Recommend: only what it reads, into the caller's arena */
        err = model_unpack_for_recommend((const uint8_t *)val, vlen, alloc, m);
    } else {
        *m = eddy__store__v1__user_model__unpack(NULL, vlen, (const uint8_t *)val);
        err = *m ? EDDY_OK : EDDY_ERR_CORRUPT;
    }
    free(val);
    if (err != EDDY_OK)
        *m = NULL; /* an arena's blocks go with it */
    return err;
}

/* Whether a model last touched at 'last_ts' in partition 'p' is past the state TTL: by
 * the watermark of 'p', a function of its log, the same on every node that holds it. */
static bool expired(struct query_ctx *q, uint32_t p, int64_t last_ts)
{
    const struct engine_opts *o = engine_options(q->eng);
    if (o->apply.state_ttl_ms <= 0)
        return false;
    struct engine_partition_view v;
    engine_partition(q->eng, p, &v);
    return v.watermark != WATERMARK_NONE && last_ts < v.watermark - o->apply.state_ttl_ms;
}

/* The user's whole model if present and not expired; *m is NULL otherwise (free with
 * eddy__store__v1__user_model__free_unpacked). */
static eddy_err load_user(struct query_ctx *q, const char *user_id,
                          Eddy__Store__V1__UserModel **m)
{
    uint32_t p = partition_of_user(user_id, engine_options(q->eng)->apply.partitions);
    eddy_err err = read_user(q, user_id, p, NULL, m);
    if (err == EDDY_OK && *m && expired(q, p, (*m)->last_ts)) {
        eddy__store__v1__user_model__free_unpacked(*m, NULL);
        *m = NULL;
    }
    return err;
}

/* Read-your-writes over every partition (engine_read_barrier), unless the caller passed
 * it for this query. */
static eddy_err barrier_all(struct query_ctx *q)
{
    return q->barrier_passed ? EDDY_OK : engine_read_barrier(q->eng, -1);
}

/* Read-your-writes: the events acknowledged before the query are applied in what it reads
 * (engine_read_barrier) of the user's partition. */
static eddy_err read_barrier_user(struct query_ctx *q, const char *user_id)
{
    return engine_read_barrier(
        q->eng, partition_of_user(user_id, engine_options(q->eng)->apply.partitions));
}

eddy_err query_profile(struct query_ctx *q, const char *user_id,
                       Eddy__V1__GetUserProfileResponse **out)
{
    Eddy__Store__V1__UserModel *m = NULL;
    eddy_err err = read_barrier_user(q, user_id);
    if (err == EDDY_OK)
        err = load_user(q, user_id, &m);
    if (err != EDDY_OK)
        return err;
    if (!m)
        return EDDY_ERR_NOT_FOUND;
    Eddy__V1__GetUserProfileResponse *r = malloc(sizeof(*r));
    if (!r) {
        eddy__store__v1__user_model__free_unpacked(m, NULL);
        return EDDY_ERR_NOMEM;
    }
    eddy__v1__get_user_profile_response__init(r);
    err = model_to_profile(m, &engine_options(q->eng)->apply.model, user_id, &r->profile);
    eddy__store__v1__user_model__free_unpacked(m, NULL);
    if (err != EDDY_OK) {
        free(r);
        return err;
    }
    *out = r;
    return EDDY_OK;
}

/* ---- Recommend ------------------------------------------------------------------------ */

#define REC_MAX_CATS 3
#define REC_MAX_RECENT 10
#define REC_MAX_CART 10

struct rec_work {
    struct rec_category cats[REC_MAX_CATS];
    struct rec_anchor anchors[REC_MAX_RECENT + 1 + REC_MAX_CART];
    struct scored_product *lists; /* one block of (cats + anchors + 1) * candidates */
};

/* A bump allocator for protobuf-c: the user model of one Recommend is a few hundred small
 * blocks (every sub-message, string and array), which malloc'd and freed one by one cost
 * more than the decoding itself. Blocks are never freed singly: arena_reset drops them all
 * and keeps one chunk, sized to the last call's total (at most ARENA_KEEP). */
#define ARENA_CHUNK ((size_t)64 << 10)
#define ARENA_KEEP ((size_t)4 << 20)

struct arena_chunk {
    struct arena_chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

struct arena {
    struct arena_chunk *head; /* the chunk in use; older ones follow */
    size_t total;             /* bytes handed out since the last reset */
};

static void *arena_alloc(void *ud, size_t size)
{
    struct arena *a = ud;
    size = (size + 15) & ~(size_t)15;
    if (!a->head || a->head->size - a->head->used < size) {
        size_t want = size > ARENA_CHUNK ? size : ARENA_CHUNK;
        struct arena_chunk *c = malloc(sizeof(*c) + want);
        if (!c)
            return NULL;
        c->next = a->head;
        c->size = want;
        c->used = 0;
        a->head = c;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += size;
    a->total += size;
    return p;
}

static void arena_free(void *ud, void *p)
{
    (void)ud;
    (void)p; /* everything goes in arena_reset */
}

static void arena_release(struct arena *a)
{
    while (a->head) {
        struct arena_chunk *next = a->head->next;
        free(a->head);
        a->head = next;
    }
    a->total = 0;
}

static void arena_reset(struct arena *a)
{
    if (a->head && a->head->next) { /* outgrew one chunk: one big enough next time */
        size_t want = a->total < ARENA_KEEP ? a->total : ARENA_KEEP;
        arena_release(a);
        struct arena_chunk *c = malloc(sizeof(*c) + want);
        if (c) {
            c->next = NULL;
            c->size = want;
            c->used = 0;
            a->head = c;
        }
    } else if (a->head) {
        a->head->used = 0;
    }
    a->total = 0;
}

/* Per-thread scratch of Recommend, reused from call to call: the candidate lists are
 * (cats + anchors + 1) * --candidates scored_product of ~0.5 kB each (~650 kB at K = 50),
 * which as a fresh calloc per call cost an mmap, page faults and a munmap. Only the
 * entries each list fills are read, so nothing needs clearing. The arena holds the
 * decoded user model. Freed at thread exit. */
struct rec_scratch {
    struct scored_product *lists;
    size_t nlists;
    struct rec_item *items;
    size_t nitems;
    const char **exclude;         /* purchased, cart, context: never recommended */
    size_t exclude_cap;
    struct rec_mem rank;          /* rec_rank's */
    struct arena arena;
    ProtobufCAllocator alloc; /* over 'arena' */
    struct usercache_buf user; /* a user cache hit */
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static bool scratch_ok;

static void scratch_free(void *p)
{
    struct rec_scratch *s = p;
    if (s) {
        free(s->lists);
        free(s->items);
        free(s->exclude);
        rec_mem_release(&s->rank);
        arena_release(&s->arena);
        usercache_buf_release(&s->user);
        free(s);
    }
}

static void scratch_init(void)
{
    scratch_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

/* This thread's scratch with room for 'nlists' list entries and 'nitems' items; NULL if
 * out of memory. */
static struct rec_scratch *scratch_get(size_t nlists, size_t nitems)
{
    pthread_once(&scratch_once, scratch_init);
    if (!scratch_ok)
        return NULL;
    struct rec_scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        if (!(s = calloc(1, sizeof(*s))))
            return NULL;
        s->alloc = (ProtobufCAllocator){arena_alloc, arena_free, &s->arena};
        if (pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->nlists < nlists) {
        free(s->lists);
        s->nlists = 0;
        if (!(s->lists = malloc(nlists * sizeof(*s->lists))))
            return NULL;
        s->nlists = nlists;
    }
    if (s->nitems < nitems) {
        free(s->items);
        s->nitems = 0;
        if (!(s->items = malloc(nitems * sizeof(*s->items))))
            return NULL;
        s->nitems = nitems;
    }
    return s;
}

/* The products the user purchased (BOUGHT table), never recommended again, and those the
 * user viewed, clicked or put in the cart (SEEN), unless the request lets them back. */
struct bought {
    char **ids;
    size_t n, cap, max;
    eddy_err err;
};

static int collect_bought(void *ud, const unsigned char *k, size_t klen, const char *v,
                          size_t vlen)
{
    struct bought *b = ud;
    size_t off = 3 + 2 + (((size_t)k[3] << 8) | k[4]); /* p T len user */
    if (off > klen)
        return 0;
    if (b->n == b->max)
        return 1;
    if (b->n == b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 64;
        char **nids = realloc(b->ids, ncap * sizeof(*nids));
        if (!nids) {
            b->err = EDDY_ERR_NOMEM;
            return 1;
        }
        b->ids = nids;
        b->cap = ncap;
    }
    if (!(b->ids[b->n] = strndup((const char *)k + off, klen - off))) {
        b->err = EDDY_ERR_NOMEM;
        return 1;
    }
    b->n++;
    return 0;
}

/* Appends the user's rows of 'table' (BOUGHT or SEEN): at most --max-purchased of each. */
static eddy_err load_bought(struct query_ctx *q, const char *user_id, enum store_table table,
                            struct bought *b)
{
    const struct engine_opts *o = engine_options(q->eng);
    struct store_key start, end;
    key_init(&start, partition_of_user(user_id, o->apply.partitions), table);
    key_lstr(&start, user_id);
    key_prefix_end(&start, &end);
    b->max = b->n + (q->max_purchased ? q->max_purchased : 10000);
    eddy_err err = store_scan(engine_store(q->eng), &start, &end, collect_bought, b);
    return err != EDDY_OK ? err : b->err;
}

/* Whether the request leaves out what the user interacted with (Exclusion). */
static bool excludes_interacted(const struct rec_params *p, const Eddy__V1__RecommendRequest *req)
{
    if (req->exclude == EDDY__V1__EXCLUSION__EXCLUSION_INTERACTED)
        return true;
    if (req->exclude == EDDY__V1__EXCLUSION__EXCLUSION_PURCHASED)
        return false;
    return p->exclude_interacted;
}

static void bought_release(struct bought *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->ids[i]);
    free(b->ids);
}

eddy_err query_recommend(struct query_ctx *q, const Eddy__V1__RecommendRequest *req,
                         Eddy__V1__RecommendResponse **out)
{
    return query_recommend_with(q, req, NULL, out);
}

const char *const query_phase_names[QUERY_PHASES] = {"user", "popular", "neighbours", "rank",
                                                      "total"};

/* Recommend's timing: the time since the last mark goes to a phase's total. */
struct rec_clock {
    int64_t start, last;
    int64_t ns[QUERY_PHASES];
    bool on;
};

static void phase_end(struct rec_clock *c, enum query_phase ph)
{
    if (!c->on)
        return;
    int64_t now = clock_mono_ns();
    c->ns[ph] += now - c->last;
    c->last = now;
}

static void phases_observe(const struct query_ctx *q, struct rec_clock *c)
{
    if (!c->on)
        return;
    c->ns[QUERY_PHASE_TOTAL] = c->last - c->start;
    for (int i = 0; i < QUERY_PHASES; i++)
        metric_histogram_observe(q->recommend_seconds[i], (double)c->ns[i] / 1e9);
}

/* What Recommend reads of the user into *v: from the user cache if it holds the user as
 * stored now, else from the store (the model into the scratch's arena, the rows into
 * 'bought' and 'seen', which *v then borrows), cached for the next call. */
static eddy_err load_recview(struct query_ctx *q, const char *user_id, uint32_t p,
                             struct rec_scratch *s, struct bought *bought, struct bought *seen,
                             struct user_recview *v)
{
    uint64_t stamp = 0;
    if (q->users) {
        stamp = usercache_stamp(q->users, p, user_id); /* before the reads (usercache.h) */
        if (usercache_get(q->users, user_id, stamp, &s->user, v))
            return EDDY_OK;
    }
    memset(v, 0, sizeof(*v));
    Eddy__Store__V1__UserModel *m = NULL;
    eddy_err err = read_user(q, user_id, p, &s->alloc, &m);
    if (err != EDDY_OK || !m)
        goto out;
    if ((err = load_bought(q, user_id, T_BOUGHT, bought)) != EDDY_OK ||
        (err = load_bought(q, user_id, T_SEEN, seen)) != EDDY_OK)
        return err;
    v->present = true;
    v->last_ts = m->last_ts;
    struct affinity top[USERCACHE_MAX_CATS];
    v->ncats = model_top_categories(m, &engine_options(q->eng)->apply.model, top,
                                    USERCACHE_MAX_CATS);
    for (size_t i = 0; i < v->ncats; i++) {
        v->cats[i] = top[i].name;
        v->affinity[i] = top[i].score;
    }
    /* recent items, newest first, views and purchases merged by time */
    size_t vi = 0, pi = 0;
    while (v->nrecent < USERCACHE_MAX_RECENT && (vi < m->n_views || pi < m->n_purchases)) {
        bool take_view = pi >= m->n_purchases ||
                         (vi < m->n_views && m->views[vi]->ts >= m->purchases[pi]->ts);
        v->recent[v->nrecent++] = take_view ? m->views[vi++]->id : m->purchases[pi++]->id;
    }
    const char **cart = s->alloc.alloc(s->alloc.allocator_data,
                                       (m->n_cart ? m->n_cart : 1) * sizeof(*cart));
    if (!cart)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < m->n_cart; i++)
        if (m->cart[i]->in_cart)
            cart[v->ncart++] = m->cart[i]->product_id;
    v->cart = cart;
    v->bought = (const char *const *)bought->ids;
    v->nbought = bought->n;
    v->seen = (const char *const *)seen->ids;
    v->nseen = seen->n;
out:
    if (err == EDDY_OK && q->users)
        usercache_put(q->users, user_id, stamp, v);
    return err;
}

eddy_err query_recommend_with(struct query_ctx *q, const Eddy__V1__RecommendRequest *req,
                              const struct rec_params *rec, Eddy__V1__RecommendResponse **out)
{
    const struct engine_opts *o = engine_options(q->eng);
    struct rec_clock clk = {.on = q->recommend_seconds != NULL};
    if (clk.on)
        clk.start = clk.last = clock_mono_ns();
    if (!rec)
        rec = &o->rec;
    size_t max = req->max_recommendations ? req->max_recommendations
                                          : (size_t)q->default_recommendations;
    if (max > (size_t)q->max_recommendations)
        max = (size_t)q->max_recommendations;
    size_t K = (size_t)o->candidates;
    size_t nlists = REC_MAX_CATS + REC_MAX_RECENT + 1 + REC_MAX_CART + 1;
    struct rec_work work = {0}, *w = &work;
    struct rec_scratch *scratch = scratch_get(nlists * (K ? K : 1), max ? max : 1);
    struct rec_item *items = scratch ? scratch->items : NULL;
    struct user_recview u;
    Eddy__V1__RecommendResponse *r = NULL;
    struct rec_input in = {0};
    struct bought bought = {0}, seen = {0};
    size_t used = 0, n;
    eddy_err err = EDDY_ERR_NOMEM;
    uint32_t p = partition_of_user(req->user_id, o->apply.partitions);

    /* every partition, not only the user's: the answer also rests on its product
     * partitions' lists (in --dev; a cluster's owners keep their own barrier). No list is
     * decayed to this node's time: each is scored at a reference of its own (popcache.h,
     * nbcache.h), so the answer is the same on every node that reads the same state. */
    if (!scratch || (err = barrier_all(q)) != EDDY_OK)
        goto out;
    w->lists = scratch->lists;
    if ((err = load_recview(q, req->user_id, p, scratch, &bought, &seen, &u)) != EDDY_OK)
        goto out;
    bool live = u.present && !expired(q, p, u.last_ts);
    bool interacted = live && excludes_interacted(rec, req);
    {
        const Eddy__V1__Context *c = req->context;
        size_t cap = (live ? u.nbought + u.ncart : 0) + (interacted ? u.nseen : 0) +
                     (c ? c->n_shopping_cart : 0) + 1;
        err = EDDY_ERR_NOMEM;
        if (scratch->exclude_cap < cap) {
            const char **x = realloc(scratch->exclude, cap * sizeof(*x));
            if (!x)
                goto out;
            scratch->exclude = x;
            scratch->exclude_cap = cap;
        }
    }
    phase_end(&clk, QUERY_PHASE_USER);

    if (live) {
        for (size_t i = 0; i < u.ncats; i++) {
            struct scored_product *l = &w->lists[used++ * K];
            if ((err = stage2cache_top(q->pop, u.cats[i], l, NULL, K, &n)) != EDDY_OK)
                goto out;
            w->cats[in.ncats++] = (struct rec_category){u.cats[i], u.affinity[i], l, n};
        }
        phase_end(&clk, QUERY_PHASE_POPULAR);
        for (size_t i = 0; i < u.nrecent; i++) {
            struct scored_product *l = &w->lists[used++ * K];
            if ((err = stage2cache_neighbours(q->pop, u.recent[i], l, K, &n)) != EDDY_OK)
                goto out;
            w->anchors[in.nanchors] = (struct rec_anchor){
                u.recent[i], 1.0 / (1.0 + 0.3 * (double)in.nanchors), false, false, l, n};
            in.nanchors++;
        }
        for (size_t i = 0; i < u.nbought; i++)
            scratch->exclude[in.nexclude++] = u.bought[i];
        for (size_t i = 0; interacted && i < u.nseen; i++)
            scratch->exclude[in.nexclude++] = u.seen[i];
        for (size_t i = 0; i < u.ncart; i++)
            scratch->exclude[in.nexclude++] = u.cart[i];
    }
    const Eddy__V1__Context *ctx = req->context;
    if (ctx && !pb_empty(ctx->current_product)) {
        struct scored_product *l = &w->lists[used++ * K];
        if ((err = stage2cache_neighbours(q->pop, ctx->current_product, l, K, &n)) != EDDY_OK)
            goto out;
        w->anchors[in.nanchors++] =
            (struct rec_anchor){ctx->current_product, 1.0, true, false, l, n};
        scratch->exclude[in.nexclude++] = ctx->current_product;
    }
    for (size_t i = 0; ctx && i < ctx->n_shopping_cart && i < REC_MAX_CART; i++) {
        struct scored_product *l = &w->lists[used++ * K];
        if ((err = stage2cache_neighbours(q->pop, ctx->shopping_cart[i], l, K, &n)) != EDDY_OK)
            goto out;
        w->anchors[in.nanchors++] = (struct rec_anchor){ctx->shopping_cart[i], 0.8, true, true, l, n};
        scratch->exclude[in.nexclude++] = ctx->shopping_cart[i];
    }
    phase_end(&clk, QUERY_PHASE_NEIGHBOURS);
    {
        struct scored_product *l = &w->lists[used++ * K];
        if ((err = stage2cache_top(q->pop, "", l, NULL, K, &n)) != EDDY_OK)
            goto out;
        in.global = l;
        in.nglobal = n;
    }
    phase_end(&clk, QUERY_PHASE_POPULAR);
    in.cats = w->cats;
    in.anchors = w->anchors;
    in.exclude = scratch->exclude;
    n = rec_rank(&in, rec, &scratch->rank, items, max);

    err = EDDY_ERR_NOMEM;
    if (!(r = malloc(sizeof(*r))))
        goto out;
    eddy__v1__recommend_response__init(r);
    r->cold_start = !live;
    if (!(r->items = calloc(n ? n : 1, sizeof(*r->items))))
        goto out;
    for (size_t i = 0; i < n; i++) {
        Eddy__V1__Recommendation *it = malloc(sizeof(*it));
        if (!it)
            goto out;
        eddy__v1__recommendation__init(it);
        r->items[r->n_items++] = it;
        it->score = items[i].score;
        if (pb_set_str(&it->product_id, items[i].product_id) != EDDY_OK ||
            pb_set_str(&it->reason, items[i].reason) != EDDY_OK ||
            pb_set_str(&it->category, items[i].category) != EDDY_OK)
            goto out;
    }
    *out = r;
    r = NULL;
    err = EDDY_OK;
    phase_end(&clk, QUERY_PHASE_RANK);
    phases_observe(q, &clk);
out:
    query_free_response(r ? &r->base : NULL);
    if (scratch)
        arena_reset(&scratch->arena); /* the model */
    bought_release(&bought);
    bought_release(&seen);
    return err;
}

/* ---- windows ------------------------------------------------------------------------- */

struct win_acc {
    int64_t start;
    Eddy__Store__V1__Counts c;
};

struct win_list {
    struct win_acc *w;
    size_t n, cap;
    size_t prefix;           /* key bytes before the window start */
    int64_t from, to;        /* [from, to), to == 0: open-ended */
    eddy_err err;
};

static int collect_window(void *ud, const unsigned char *k, size_t klen, const char *v,
                          size_t vlen)
{
    struct win_list *l = ud;
    size_t off = l->prefix;
    int64_t ws;
    if (!key_get_i64(k, klen, &off, &ws))
        return 0;
    if (ws < l->from || (l->to != 0 && ws >= l->to))
        return 0;
    Eddy__Store__V1__Counts *c = eddy__store__v1__counts__unpack(NULL, vlen, (const uint8_t *)v);
    if (!c)
        return 0;
    size_t i = 0;
    while (i < l->n && l->w[i].start != ws)
        i++;
    if (i == l->n) {
        if (l->n == l->cap) {
            size_t ncap = l->cap ? l->cap * 2 : 64;
            struct win_acc *nw = realloc(l->w, ncap * sizeof(*nw));
            if (!nw) {
                l->err = EDDY_ERR_NOMEM;
                eddy__store__v1__counts__free_unpacked(c, NULL);
                return 1;
            }
            l->w = nw;
            l->cap = ncap;
        }
        l->w[i].start = ws;
        eddy__store__v1__counts__init(&l->w[i].c);
        l->n++;
    }
    counts_add(&l->w[i].c, c);
    eddy__store__v1__counts__free_unpacked(c, NULL);
    return 0;
}

static int cmp_win(const void *a, const void *b)
{
    const struct win_acc *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

eddy_err query_event_counts(struct query_ctx *q, const Eddy__V1__EventCountsRequest *req,
                            Eddy__V1__EventCountsResponse **out)
{
    const struct engine_opts *o = engine_options(q->eng);
    struct win_list l = {0};
    int64_t wm;
    uint64_t late;
    eddy_err err = EDDY_OK;
    l.from = req->start_ms;
    l.to = req->end_ms;
    if (req->start_ms == 0 && req->end_ms == 0)
        l.from = INT64_MIN;
    err = pb_empty(req->user_id) ? barrier_all(q)
                                 : read_barrier_user(q, req->user_id);
    if (err != EDDY_OK)
        return err;

    if (!pb_empty(req->user_id)) {
        uint32_t p = partition_of_user(req->user_id, o->apply.partitions);
        struct engine_partition_view v;
        struct store_key start, end;
        engine_partition(q->eng, p, &v);
        wm = v.watermark;
        late = v.late_events;
        key_init(&start, p, T_USER_WIN);
        key_lstr(&start, req->user_id);
        key_prefix_end(&start, &end);
        l.prefix = start.len;
        err = store_scan(engine_store(q->eng), &start, &end, collect_window, &l);
    } else {
        engine_global(q->eng, &wm, NULL, &late);
        for (uint32_t p = 0; p < o->apply.partitions && err == EDDY_OK; p++) {
            if (q->owns && !q->owns(q->owns_ud, p))
                continue;
            struct store_key start, end;
            key_init(&start, p, T_PART_WIN);
            key_prefix_end(&start, &end);
            l.prefix = start.len;
            err = store_scan(engine_store(q->eng), &start, &end, collect_window, &l);
        }
    }
    if (err == EDDY_OK)
        err = l.err;
    if (err != EDDY_OK) {
        free(l.w);
        return err;
    }
    if (l.n > 1)
        qsort(l.w, l.n, sizeof(*l.w), cmp_win);

    Eddy__V1__EventCountsResponse *r = malloc(sizeof(*r));
    err = EDDY_ERR_NOMEM;
    if (!r)
        goto out;
    eddy__v1__event_counts_response__init(r);
    r->watermark_ms = wm == WATERMARK_NONE ? 0 : wm;
    r->late_events = late;
    if (!(r->windows = calloc(l.n ? l.n : 1, sizeof(*r->windows))))
        goto out;
    for (size_t i = 0; i < l.n; i++) {
        bool closed = window_is_closed(&o->apply.window, l.w[i].start, wm);
        if (!closed && !req->include_open)
            continue;
        Eddy__V1__WindowCounts *wc = malloc(sizeof(*wc));
        if (!wc)
            goto out;
        eddy__v1__window_counts__init(wc);
        r->windows[r->n_windows++] = wc;
        wc->window_start_ms = l.w[i].start;
        wc->window_end_ms = l.w[i].start + o->apply.window.size_ms;
        wc->closed = closed;
        if (!(wc->counts = counts_to_public(&l.w[i].c)))
            goto out;
    }
    *out = r;
    r = NULL;
    err = EDDY_OK;
out:
    query_free_response(r ? &r->base : NULL);
    free(l.w);
    return err;
}

/* ---- TopProducts --------------------------------------------------------------------- */

/* Products at most in one TopProducts answer's tally (far above any catalogue served). */
#define TOP_PRODUCTS_MAX (1u << 24)

struct prod_acc {
    const char *id;         /* the map's key, set when the tally is sorted */
    char *category;
    Eddy__Store__V1__Counts c;
};

static void prod_acc_free(void *p)
{
    struct prod_acc *a = p;
    if (a)
        free(a->category);
    free(a);
}

struct prod_map {
    struct strmap accs;     /* product id -> struct prod_acc */
    int64_t from, to, closed_before; /* window start range, and closed iff start < closed_before */
    bool include_open;
    const char *category;
    eddy_err err;
};

/* PROD_WIN key: p(2) T(1) ws(8) product_id */
static int collect_product(void *ud, const unsigned char *k, size_t klen, const char *v,
                           size_t vlen)
{
    struct prod_map *m = ud;
    size_t off = 3;
    int64_t ws;
    if (!key_get_i64(k, klen, &off, &ws))
        return 0;
    if (m->to != 0 && ws >= m->to)
        return 1; /* keys are in window order: nothing further is in range */
    if (ws < m->from || (!m->include_open && ws >= m->closed_before))
        return 0;
    Eddy__Store__V1__Counts *c = eddy__store__v1__counts__unpack(NULL, vlen, (const uint8_t *)v);
    if (!c)
        return 0;
    if (m->category[0] && strcmp(c->category, m->category) != 0) {
        eddy__store__v1__counts__free_unpacked(c, NULL);
        return 0;
    }
    const char *id = (const char *)k + 11;
    size_t idlen = klen - 11;
    bool added;
    void **slot = strmap_slot(&m->accs, id, idlen, &added, &m->err);
    struct prod_acc *a = slot ? *slot : NULL;
    if (slot && added) {
        a = calloc(1, sizeof(*a));
        if (a && !(a->category = strdup(c->category))) {
            free(a);
            a = NULL;
        }
        if (!a) {
            strmap_del(&m->accs, id, idlen);
            m->err = EDDY_ERR_NOMEM;
        } else {
            eddy__store__v1__counts__init(&a->c);
            *slot = a;
        }
    }
    if (!a) {
        eddy__store__v1__counts__free_unpacked(c, NULL);
        return 1;
    }
    counts_add(&a->c, c);
    eddy__store__v1__counts__free_unpacked(c, NULL);
    return 0;
}


static int cmp_prod(const void *a, const void *b, void *arg)
{
    const struct prod_acc *x = *(struct prod_acc *const *)a, *y = *(struct prod_acc *const *)b;
    Eddy__V1__EventType t = *(const Eddy__V1__EventType *)arg;
    uint64_t vx = counts_get(&x->c, t), vy = counts_get(&y->c, t);
    if (vx != vy)
        return vx < vy ? 1 : -1;
    return strcmp(x->id, y->id);
}

eddy_err query_top_products(struct query_ctx *q, const Eddy__V1__TopProductsRequest *req,
                            Eddy__V1__TopProductsResponse **out)
{
    size_t limit = req->limit ? req->limit : 10;
    return query_top_products_n(q, req, limit > 1000 ? 1000 : limit, out);
}

eddy_err query_top_products_n(struct query_ctx *q, const Eddy__V1__TopProductsRequest *req,
                              size_t limit, Eddy__V1__TopProductsResponse **out)
{
    const struct engine_opts *o = engine_options(q->eng);
    struct prod_map m = {.accs = STRMAP_INIT(TOP_PRODUCTS_MAX)};
    struct prod_acc **v = NULL; /* the tally, to sort */
    int64_t wm;
    eddy_err err = barrier_all(q);
    if (err != EDDY_OK)
        return err;
    engine_global(q->eng, &wm, NULL, NULL);
    m.from = (req->start_ms == 0 && req->end_ms == 0) ? INT64_MIN : req->start_ms;
    m.to = req->end_ms;
    m.include_open = req->include_open;
    m.category = req->category ? req->category : "";
    /* closed iff start + size + lateness <= wm */
    m.closed_before = wm == WATERMARK_NONE ? INT64_MIN
                                           : wm - o->apply.window.size_ms -
                                                 o->apply.window.lateness_ms + 1;
    for (uint32_t p = 0; p < o->apply.partitions && err == EDDY_OK; p++) {
        if (q->owns && !q->owns(q->owns_ud, p))
            continue;
        struct store_key start, end;
        key_init(&start, p, T_PROD_WIN);
        key_prefix_end(&start, &end);
        if (m.from != INT64_MIN)
            key_i64(&start, m.from);
        err = store_scan(engine_store(q->eng), &start, &end, collect_product, &m);
        if (err == EDDY_OK)
            err = m.err;
    }
    Eddy__V1__TopProductsResponse *r = NULL;
    size_t n = 0, pos = 0, idlen;
    const char *id;
    void *acc;
    if (err != EDDY_OK)
        goto out;
    err = EDDY_ERR_NOMEM;
    if (!(v = malloc((m.accs.n ? m.accs.n : 1) * sizeof(*v))))
        goto out;
    while (strmap_next(&m.accs, &pos, &id, &idlen, &acc)) {
        v[n] = acc;
        v[n++]->id = id;
    }
    Eddy__V1__EventType t = req->event_type;
    if (n > 1)
        qsort_r(v, n, sizeof(*v), cmp_prod, &t);
    if (!(r = malloc(sizeof(*r))))
        goto out;
    eddy__v1__top_products_response__init(r);
    r->watermark_ms = wm == WATERMARK_NONE ? 0 : wm;
    size_t k = n < limit ? n : limit;
    if (!(r->products = calloc(k ? k : 1, sizeof(*r->products))))
        goto out;
    for (size_t i = 0; i < k; i++) {
        Eddy__V1__ProductStat *ps = malloc(sizeof(*ps));
        if (!ps)
            goto out;
        eddy__v1__product_stat__init(ps);
        r->products[r->n_products++] = ps;
        if (pb_set_str(&ps->product_id, v[i]->id) != EDDY_OK ||
            pb_set_str(&ps->category, v[i]->category) != EDDY_OK ||
            !(ps->counts = counts_to_public(&v[i]->c)))
            goto out;
    }
    *out = r;
    r = NULL;
    err = EDDY_OK;
out:
    query_free_response(r ? &r->base : NULL);
    free(v);
    strmap_release(&m.accs, prod_acc_free);
    return err;
}

/* ---- experiments ---------------------------------------------------------------------- */

struct exp_sums {
    Eddy__V1__GetExperimentResponse *r;
    size_t prefix;   /* key bytes before the variant name */
    eddy_err err;
};

static int collect_variant(void *ud, const unsigned char *k, size_t klen, const char *v,
                           size_t vlen)
{
    struct exp_sums *s = ud;
    if (klen <= s->prefix)
        return 0;
    Eddy__Store__V1__VariantCounts *c =
        eddy__store__v1__variant_counts__unpack(NULL, vlen, (const uint8_t *)v);
    if (!c)
        return 0;
    const char *name = (const char *)k + s->prefix;
    size_t nlen = klen - s->prefix;
    Eddy__V1__VariantStats *vs = NULL;
    for (size_t i = 0; i < s->r->n_stats && !vs; i++) {
        if (strlen(s->r->stats[i]->variant) == nlen &&
            memcmp(s->r->stats[i]->variant, name, nlen) == 0)
            vs = s->r->stats[i];
    }
    if (!vs) { /* variants come in key order in every partition: appended in name order */
        if (pb_grow((void **)&s->r->stats, s->r->n_stats, sizeof(*s->r->stats)) != EDDY_OK ||
            !(vs = malloc(sizeof(*vs)))) {
            s->err = EDDY_ERR_NOMEM;
            eddy__store__v1__variant_counts__free_unpacked(c, NULL);
            return 1;
        }
        eddy__v1__variant_stats__init(vs);
        s->r->stats[s->r->n_stats++] = vs;
        if (!(vs->variant = strndup(name, nlen))) {
            vs->variant = (char *)protobuf_c_empty_string;
            s->err = EDDY_ERR_NOMEM;
        }
    }
    vs->impressions += c->impressions;
    vs->clicks += c->clicks;
    vs->add_to_carts += c->add_to_carts;
    vs->purchases += c->purchases;
    vs->revenue += c->revenue;
    vs->revenue_sq += c->revenue_sq;
    vs->recommended += c->recommended;
    vs->recommended_hits += c->recommended_hits;
    eddy__store__v1__variant_counts__free_unpacked(c, NULL);
    return s->err != EDDY_OK;
}

static int cmp_variant(const void *a, const void *b)
{
    return strcmp((*(Eddy__V1__VariantStats *const *)a)->variant,
                  (*(Eddy__V1__VariantStats *const *)b)->variant);
}

eddy_err query_experiment_stats(struct query_ctx *q, const char *name,
                                Eddy__V1__GetExperimentResponse **out)
{
    const struct engine_opts *o = engine_options(q->eng);
    struct exp_sums s = {NULL, 0, EDDY_OK};
    eddy_err err = barrier_all(q);
    *out = NULL;
    if (err != EDDY_OK)
        return err;
    if (!(s.r = malloc(sizeof(*s.r))))
        return EDDY_ERR_NOMEM;
    eddy__v1__get_experiment_response__init(s.r);
    for (uint32_t p = 0; p < o->apply.partitions && err == EDDY_OK; p++) {
        if (q->owns && !q->owns(q->owns_ud, p))
            continue;
        struct store_key start, end;
        key_init(&start, p, T_EXP_STAT);
        key_lstr(&start, name);
        key_prefix_end(&start, &end);
        s.prefix = start.len;
        err = store_scan(engine_store(q->eng), &start, &end, collect_variant, &s);
        if (err == EDDY_OK)
            err = s.err;
    }
    if (err != EDDY_OK) {
        query_free_response(&s.r->base);
        return err;
    }
    if (s.r->n_stats > 1) /* none: stats is NULL, which qsort must not get */
        qsort(s.r->stats, s.r->n_stats, sizeof(*s.r->stats), cmp_variant);
    *out = s.r;
    return EDDY_OK;
}
