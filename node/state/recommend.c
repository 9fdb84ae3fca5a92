/* The blend and ranking of recommendation candidates. */
#include "node/state/recommend.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum reason { R_POPULAR, R_NEIGHBOUR, R_CONTEXT, R_CART, R_TRENDING };

/* Copy 's' to the end of the string in 'buf' (size 'len', *at its length), truncating as
 * snprintf would; NULL as the empty string. (UBSan once caught a NULL reason argument:
 * a candidate first offered a NaN share, which set no reason, see contribute.) */
static void append(char *buf, size_t len, size_t *at, const char *s)
{
    if (!s)
        return;
    size_t n = strlen(s);
    if (*at + 1 >= len)
        return;
    if (n > len - 1 - *at)
        n = len - 1 - *at;
    memcpy(buf + *at, s, n);
    *at += n;
    buf[*at] = '\0';
}

/* The reason of an item: what snprintf("popular in %s") and friends wrote, without the
 * format parsing (a few per answer item, a tenth of the ranking's cost). */
static void reason_text(char *buf, size_t len, enum reason r, const char *arg)
{
    static const char *const pre[] = {"popular in ", "viewed together with ", "related to ",
                                      "goes with ", "trending now"};
    size_t at = 0;
    buf[0] = '\0';
    append(buf, len, &at, pre[r]);
    if (r != R_TRENDING)
        append(buf, len, &at, arg);
    if (r == R_CART)
        append(buf, len, &at, " in your cart");
}

struct cand {
    const char *id;         /* borrowed from the input lists */
    const char *category;
    double score;
    double best;            /* largest single contribution: it names the reason */
    enum reason reason;
    const char *reason_arg;
};

/* The candidates, densely in 'c' (room for every contribution), found through an
 * open-addressing table of indices (-1 = empty): clearing 4 bytes per slot rather than a
 * whole candidate keeps the per-call setup small. */
struct cand_set {
    struct cand *c;
    int32_t *idx;
    size_t cap, n, room;
};

/* The exclusions: an open-addressing table of indices into rec_input.exclude (-1 = empty),
 * built in one pass; each check is a probe or two (a user may have purchased a thousand
 * products, and sorting them for a binary search was 7 % of a Recommend's CPU). */
struct excl {
    const char *const *ids;
    int32_t *idx;
    size_t cap;
};

/* The smallest power of two >= 'least' and >= 2 * 'n' (tables at most half full). */
static size_t table_size(size_t least, size_t n)
{
    size_t cap = least;
    while (cap < n * 2)
        cap <<= 1;
    return cap;
}

/* Carve the candidate set (room for 'expect') and the exclusion table out of m's block,
 * grown if this input needs more than any before it. */
static bool mem_carve(struct rec_mem *m, size_t expect, const struct rec_input *in,
                      struct cand_set *s, struct excl *x)
{
    s->room = expect ? expect : 1;
    s->cap = table_size(64, expect);
    s->n = 0;
    x->ids = in->exclude;
    x->cap = table_size(16, in->nexclude);
    size_t need = s->room * sizeof(*s->c) + (s->cap + x->cap) * sizeof(int32_t);
    if (m->size < need) {
        void *b = malloc(need);
        if (!b)
            return false;
        free(m->block);
        m->block = b;
        m->size = need;
    }
    s->c = m->block;
    s->idx = (int32_t *)(s->c + s->room);
    x->idx = s->idx + s->cap;
    memset(s->idx, 0xff, (s->cap + x->cap) * sizeof(int32_t));
    return true;
}

void rec_mem_release(struct rec_mem *m)
{
    free(m->block);
    m->block = NULL;
    m->size = 0;
}

/* FNV-1a over the NUL-terminated id: one pass (no strlen first), inline; ids are short
 * and the table at most half full, so its quality is plenty (the answer does not depend on
 * the hash: candidates are ranked by score and id). */
static size_t id_hash(const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

/* The candidate of 'id' (whose id_hash is 'h'), added (zeroed, borrowing 'id' and
 * 'category') if new; NULL if the set is full (sized for every contribution up front:
 * cannot happen). */
static struct cand *set_get(struct cand_set *s, const char *id, size_t h, const char *category)
{
    size_t i = h & (s->cap - 1);
    while (s->idx[i] >= 0 && strcmp(s->c[s->idx[i]].id, id) != 0)
        i = (i + 1) & (s->cap - 1);
    if (s->idx[i] >= 0)
        return &s->c[s->idx[i]];
    if (s->n >= s->room || (s->n + 1) * 2 > s->cap)
        return NULL;
    struct cand *c = &s->c[s->n];
    *c = (struct cand){.id = id, .category = category};
    s->idx[i] = (int32_t)s->n++;
    return c;
}

/* Slot of 'id' in the exclusion table: its entry, or the empty slot where it would go. */
static size_t excl_slot(const struct excl *x, const char *id)
{
    size_t i = id_hash(id) & (x->cap - 1);
    while (x->idx[i] >= 0 && strcmp(x->ids[x->idx[i]], id) != 0)
        i = (i + 1) & (x->cap - 1);
    return i;
}

static void excl_fill(struct excl *x, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        size_t i = excl_slot(x, x->ids[k]);
        if (x->idx[i] < 0)
            x->idx[i] = (int32_t)k;
    }
}

static bool excluded(const struct excl *x, const char *id)
{
    return x->idx[excl_slot(x, id)] >= 0;
}

/* Exclusions are checked when a candidate is picked, not per contribution: the few
 * dozen picked rather than every one of several hundred contributions. */
static void contribute(struct cand_set *s, const struct scored_product *sp, size_t h, double v,
                       enum reason r, const char *arg)
{
    if (!(v > 0) || !isfinite(v)) /* NaN too: it would win no reason and spoil the order */
        return;
    struct cand *c = set_get(s, sp->product_id, h, sp->category);
    if (!c)
        return;
    if (!c->category[0] && sp->category[0])
        c->category = sp->category;
    c->score += v;
    if (v > c->best) {
        c->best = v;
        c->reason = r;
        c->reason_arg = arg;
    }
}

/* The largest finite score of a list (0 if none). A list read while its decay parameters
 * change (a stage-2 rebuild with other half-lives swapping in) may hold a value scaled far
 * out of range: an infinite maximum would turn every share of the list into 0 or NaN. */
static double list_max(const struct scored_product *items, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        if (isfinite(items[i].score) && items[i].score > m)
            m = items[i].score;
    }
    return m;
}

/* The answer's order: score descending, then product id (ids are unique in the set, so
 * this is a total order and any selection method gives the same sequence). */
static bool before(const struct cand *x, const struct cand *y)
{
    if (x->score != y->score)
        return x->score > y->score;
    return strcmp(x->id, y->id) < 0;
}

/* A binary heap of candidate indices whose root is the first candidate in answer order:
 * an answer takes a few dozen of several hundred candidates, so building the heap
 * (linear) and popping those beats sorting them all; moving 4-byte indices rather than
 * whole candidates keeps the sifting cheap. */
static void sift_down(const struct cand *c, int32_t *h, size_t n, size_t i)
{
    int32_t top = h[i];
    for (;;) {
        size_t l = 2 * i + 1, best = l;
        if (l >= n)
            break;
        if (l + 1 < n && before(&c[h[l + 1]], &c[h[l]]))
            best = l + 1;
        if (!before(&c[h[best]], &c[top]))
            break;
        h[i] = h[best];
        i = best;
    }
    h[i] = top;
}

static void heap_build(const struct cand *c, int32_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h[i] = (int32_t)i;
    for (size_t i = n / 2; i-- > 0;)
        sift_down(c, h, n, i);
}

/* Remove the root; returns the new size. */
static size_t heap_pop(const struct cand *c, int32_t *h, size_t n, int32_t *out)
{
    *out = h[0];
    h[0] = h[n - 1];
    if (n > 1)
        sift_down(c, h, n - 1, 0);
    return n - 1;
}

struct picker {
    struct rec_item *out;
    size_t n, max;
    int cap;
};

static bool already(const struct picker *pk, const char *id)
{
    for (size_t i = 0; i < pk->n; i++) {
        if (strcmp(pk->out[i].product_id, id) == 0)
            return true;
    }
    return false;
}

static bool capped(const struct picker *pk, const char *category)
{
    if (pk->cap <= 0 || !category[0])
        return false;
    int k = 0;
    for (size_t i = 0; i < pk->n; i++)
        k += strcmp(pk->out[i].category, category) == 0;
    return k >= pk->cap;
}

static void pick(struct picker *pk, const char *id, const char *category, double score,
                 enum reason r, const char *arg)
{
    struct rec_item *it = &pk->out[pk->n++];
    size_t at = 0;
    it->product_id[0] = '\0';
    append(it->product_id, sizeof(it->product_id), &at, id);
    at = 0;
    it->category[0] = '\0';
    append(it->category, sizeof(it->category), &at, category);
    it->score = score;
    reason_text(it->reason, sizeof(it->reason), r, arg);
}

size_t rec_rank(const struct rec_input *in, const struct rec_params *p, struct rec_mem *m,
                struct rec_item *out, size_t max)
{
    size_t expect = in->nglobal;
    for (size_t i = 0; i < in->ncats; i++)
        expect += in->cats[i].n;
    for (size_t i = 0; i < in->nanchors; i++)
        expect += in->anchors[i].n;
    struct cand_set s;
    struct excl ex;
    if (max == 0 || !mem_carve(m, expect, in, &s, &ex))
        return 0;
    excl_fill(&ex, in->nexclude);

    double amax = 0;
    for (size_t i = 0; i < in->ncats; i++) {
        if (isfinite(in->cats[i].affinity) && in->cats[i].affinity > amax)
            amax = in->cats[i].affinity;
    }
    for (size_t i = 0; i < in->ncats && amax > 0; i++) {
        const struct rec_category *c = &in->cats[i];
        double pmax = list_max(c->items, c->n);
        for (size_t j = 0; j < c->n && pmax > 0; j++)
            contribute(&s, &c->items[j], id_hash(c->items[j].product_id),
                       p->w_popular * (c->affinity / amax) * (c->items[j].score / pmax),
                       R_POPULAR, c->category);
    }
    /* (d): what everybody interacts with now predicts a user's next item as well as a
     * weak personal signal does (docs/QUALITY.md), so it competes in the blend rather
     * than only filling the answer's tail. */
    double gmax = list_max(in->global, in->nglobal);
    for (size_t i = 0; i < in->nglobal && gmax > 0 && p->w_trending > 0; i++)
        contribute(&s, &in->global[i], id_hash(in->global[i].product_id),
                   p->w_trending * (in->global[i].score / gmax), R_TRENDING, NULL);
    for (size_t i = 0; i < in->nanchors; i++) {
        const struct rec_anchor *a = &in->anchors[i];
        double nmax = list_max(a->items, a->n);
        double w = (a->context ? p->w_context : p->w_neighbours) * a->weight;
        enum reason r = a->cart ? R_CART : a->context ? R_CONTEXT : R_NEIGHBOUR;
        size_t self = id_hash(a->product_id); /* the item itself: no strcmp for the others */
        for (size_t j = 0; j < a->n && nmax > 0; j++) {
            size_t h = id_hash(a->items[j].product_id);
            if (h != self || strcmp(a->items[j].product_id, a->product_id) != 0)
                contribute(&s, &a->items[j], h, w * (a->items[j].score / nmax), r,
                           a->product_id);
        }
    }

    /* In answer order, pick under the diversity cap. The cap stops popularity from filling
     * the answer with one category; an item chosen for what the user did (a neighbour of
     * a recent item or of the context) is never capped: capping those cost accuracy
     * (docs/QUALITY.md), as a user's history in one category is evidence, not a rut. */
    size_t n = s.n;
    int32_t *heap = s.idx; /* the lookup table is done with; it has room (cap >= 2n) */
    heap_build(s.c, heap, n);
    struct picker pk = {out, 0, max, p->diversity_cap};
    while (n > 0 && pk.n < max) {
        int32_t top;
        n = heap_pop(s.c, heap, n, &top);
        const struct cand *c = &s.c[top];
        bool popular = c->reason == R_POPULAR || c->reason == R_TRENDING;
        if (!excluded(&ex, c->id) && !(popular && capped(&pk, c->category)))
            pick(&pk, c->id, c->category, c->score, c->reason, c->reason_arg);
    }
    /* fill with global popularity, below every blended item */
    double floor = pk.n ? out[pk.n - 1].score : 1.0;
    for (size_t i = 0; i < in->nglobal && pk.n < max && gmax > 0; i++) {
        const struct scored_product *g = &in->global[i];
        if (excluded(&ex, g->product_id) || already(&pk, g->product_id) ||
            capped(&pk, g->category))
            continue;
        pick(&pk, g->product_id, g->category, floor * 0.5 * (g->score / gmax), R_TRENDING,
             NULL);
    }
    return pk.n;
}
