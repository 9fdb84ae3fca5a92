/* User model updates and the public profile view. */
#include "node/state/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "node/state/pbenc.h"
#include "common/pbutil.h"

double model_event_weight(Eddy__V1__EventType type)
{
    switch (type) {
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW: return 1.0;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK: return 2.0;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART: return 3.0;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE: return 5.0;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH: return 0.5;
    default: return 0.0;
    }
}

/* (ts, tie) order: >0 if a is newer than b. The tie is a string the entries hold anyway
 * (not the event id, which the model no longer keeps: state format 5), so the order stays
 * total and independent of arrival without the bytes of an id per entry. */
static int newer(int64_t ats, const char *atie, int64_t bts, const char *btie)
{
    if (ats != bts)
        return ats > bts ? 1 : -1;
    return strcmp(atie ? atie : "", btie ? btie : "");
}

/* A cart event against an entry: the newer time wins; at the same time a removal or
 * purchase wins over an add, then the greater category. */
static int cart_newer(int64_t ts, bool in_cart, const char *category,
                      const Eddy__Store__V1__CartEntry *e)
{
    if (ts != e->ts)
        return ts > e->ts ? 1 : -1;
    if (in_cart != e->in_cart)
        return in_cart ? -1 : 1;
    return strcmp(category ? category : "", e->category ? e->category : "");
}

/* ---- decayed named scores (categories, brands) ---------------------------------------- */

static eddy_err scored_add(Eddy__Store__V1__Scored ***arr, size_t *n, int max,
                           const struct decay_params *dp, const char *name, int64_t ts,
                           double w, int64_t now)
{
    size_t lo = 0, hi = *n;
    while (lo < hi) { /* sorted by name */
        size_t mid = (lo + hi) / 2;
        int c = strcmp((*arr)[mid]->name, name);
        if (c == 0) {
            if (decay_ensure(&(*arr)[mid]->score) != EDDY_OK)
                return EDDY_ERR_NOMEM;
            decay_add((*arr)[mid]->score, dp, ts, w);
            return EDDY_OK;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if ((int)*n >= max) {
        /* Full: the new name replaces the weakest entry if it would be stronger. */
        Eddy__Store__V1__Decayed probe = EDDY__STORE__V1__DECAYED__INIT;
        decay_add(&probe, dp, ts, w);
        size_t weakest = 0;
        double wv = INFINITY;
        for (size_t i = 0; i < *n; i++) {
            double v = decay_value((*arr)[i]->score, dp, now);
            if (v < wv || (v == wv && strcmp((*arr)[i]->name, (*arr)[weakest]->name) > 0)) {
                wv = v;
                weakest = i;
            }
        }
        if (decay_value(&probe, dp, now) <= wv)
            return EDDY_OK;
        protobuf_c_message_free_unpacked(&(*arr)[weakest]->base, NULL);
        memmove(&(*arr)[weakest], &(*arr)[weakest + 1], (*n - weakest - 1) * sizeof(**arr));
        (*n)--;
        if (weakest < lo)
            lo--;
    }
    Eddy__Store__V1__Scored *s = malloc(sizeof(*s));
    if (!s)
        return EDDY_ERR_NOMEM;
    eddy__store__v1__scored__init(s);
    s->score = decay_new();
    s->name = strdup(name);
    if (!s->score || !s->name || pb_grow((void **)arr, *n, sizeof(**arr)) != EDDY_OK) {
        free(s->name);
        s->name = NULL;
        protobuf_c_message_free_unpacked(&s->base, NULL);
        return EDDY_ERR_NOMEM;
    }
    decay_add(s->score, dp, ts, w);
    memmove(&(*arr)[lo + 1], &(*arr)[lo], (*n - lo) * sizeof(**arr));
    (*arr)[lo] = s;
    (*n)++;
    return EDDY_OK;
}

/* ---- recent lists ------------------------------------------------------------------- */

/* Ids are distinct within a list, so (ts, id) orders it totally; two occurrences of an
 * id at the same time keep the greater category. */
static eddy_err recent_add(Eddy__Store__V1__Recent ***arr, size_t *n, int max, const char *id,
                           const char *category, int64_t ts)
{
    for (size_t i = 0; i < *n; i++) {
        Eddy__Store__V1__Recent *r = (*arr)[i];
        if (strcmp(r->id, id) != 0)
            continue;
        if (newer(ts, category, r->ts, r->category) <= 0)
            return EDDY_OK; /* we already hold a newer occurrence */
        /* remove, then re-insert at the right place below */
        protobuf_c_message_free_unpacked(&r->base, NULL);
        memmove(&(*arr)[i], &(*arr)[i + 1], (*n - i - 1) * sizeof(**arr));
        (*n)--;
        break;
    }
    size_t pos = 0; /* newest first */
    while (pos < *n && newer((*arr)[pos]->ts, (*arr)[pos]->id, ts, id) > 0)
        pos++;
    if ((int)pos >= max)
        return EDDY_OK;
    Eddy__Store__V1__Recent *r = malloc(sizeof(*r));
    if (!r)
        return EDDY_ERR_NOMEM;
    eddy__store__v1__recent__init(r);
    r->ts = ts;
    if (pb_set_str(&r->id, id) != EDDY_OK || pb_set_str(&r->category, category) != EDDY_OK ||
        pb_grow((void **)arr, *n, sizeof(**arr)) != EDDY_OK) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return EDDY_ERR_NOMEM;
    }
    memmove(&(*arr)[pos + 1], &(*arr)[pos], (*n - pos) * sizeof(**arr));
    (*arr)[pos] = r;
    (*n)++;
    while ((int)*n > max) {
        protobuf_c_message_free_unpacked(&(*arr)[*n - 1]->base, NULL);
        (*n)--;
    }
    return EDDY_OK;
}

/* ---- cart ---------------------------------------------------------------------------- */

static eddy_err cart_set(Eddy__Store__V1__UserModel *m, int max, const Eddy__V1__Event *ev,
                         bool in_cart)
{
    size_t lo = 0, hi = m->n_cart;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(m->cart[mid]->product_id, ev->product_id);
        if (c == 0) {
            Eddy__Store__V1__CartEntry *e = m->cart[mid];
            if (cart_newer(ev->timestamp_ms, in_cart, ev->category, e) > 0) {
                e->ts = ev->timestamp_ms;
                e->in_cart = in_cart;
                if (!pb_empty(ev->category) && pb_set_str(&e->category, ev->category) != EDDY_OK)
                    return EDDY_ERR_NOMEM;
            }
            return EDDY_OK;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!in_cart && (int)m->n_cart >= max)
        return EDDY_OK; /* no room to remember a removal of something we never saw */
    Eddy__Store__V1__CartEntry *e = malloc(sizeof(*e));
    if (!e)
        return EDDY_ERR_NOMEM;
    eddy__store__v1__cart_entry__init(e);
    e->ts = ev->timestamp_ms;
    e->in_cart = in_cart;
    if (pb_set_str(&e->product_id, ev->product_id) != EDDY_OK ||
        pb_set_str(&e->category, ev->category) != EDDY_OK ||
        pb_grow((void **)&m->cart, m->n_cart, sizeof(*m->cart)) != EDDY_OK) {
        protobuf_c_message_free_unpacked(&e->base, NULL);
        return EDDY_ERR_NOMEM;
    }
    memmove(&m->cart[lo + 1], &m->cart[lo], (m->n_cart - lo) * sizeof(*m->cart));
    m->cart[lo] = e;
    m->n_cart++;
    if ((int)m->n_cart > max) { /* evict the oldest entry */
        size_t old = 0;
        for (size_t i = 1; i < m->n_cart; i++) {
            if (newer(m->cart[old]->ts, m->cart[old]->product_id, m->cart[i]->ts,
                      m->cart[i]->product_id) > 0)
                old = i;
        }
        protobuf_c_message_free_unpacked(&m->cart[old]->base, NULL);
        memmove(&m->cart[old], &m->cart[old + 1], (m->n_cart - old - 1) * sizeof(*m->cart));
        m->n_cart--;
    }
    return EDDY_OK;
}

/* ---- conversion of format 4 ---------------------------------------------------------- */

static bool recent_convert(Eddy__Store__V1__Recent **arr, size_t n)
{
    bool changed = false;
    for (size_t i = 0; i < n; i++) {
        if (!pb_empty(arr[i]->event_id)) {
            pb_clear_str(&arr[i]->event_id);
            changed = true;
        }
    }
    for (size_t i = 1; i < n; i++) { /* newest first by (ts, id); at most --recent-items */
        Eddy__Store__V1__Recent *r = arr[i];
        size_t j = i;
        for (; j > 0 && newer(r->ts, r->id, arr[j - 1]->ts, arr[j - 1]->id) > 0; j--)
            arr[j] = arr[j - 1];
        changed |= j != i;
        arr[j] = r;
    }
    return changed;
}

bool model_convert(Eddy__Store__V1__UserModel *m)
{
    bool changed = recent_convert(m->views, m->n_views);
    changed |= recent_convert(m->searches, m->n_searches);
    changed |= recent_convert(m->purchases, m->n_purchases);
    for (size_t i = 0; i < m->n_cart; i++) {
        if (!pb_empty(m->cart[i]->event_id)) {
            pb_clear_str(&m->cart[i]->event_id);
            changed = true;
        }
    }
    return changed;
}

/* ---- apply --------------------------------------------------------------------------- */

eddy_err model_apply(Eddy__Store__V1__UserModel *m, const struct model_params *p,
                     const Eddy__V1__Event *ev)
{
    eddy_err err = EDDY_OK;
    int64_t ts = ev->timestamp_ms;
    double w = model_event_weight(ev->event_type);
    int64_t now = ts > m->last_ts ? ts : m->last_ts;

    if (w > 0 && !pb_empty(ev->category))
        err = scored_add(&m->categories, &m->n_categories, p->max_affinities, &p->affinity,
                         ev->category, ts, w, now);
    if (err == EDDY_OK && w > 0 && !pb_empty(ev->brand))
        err = scored_add(&m->brands, &m->n_brands, p->max_affinities, &p->affinity, ev->brand,
                         ts, w, now);
    if (err != EDDY_OK)
        return err;

    if (ev->price > 0 && ev->event_type != EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH) {
        if (m->events == 0 || m->price_max <= 0) {
            m->price_min = m->price_max = ev->price;
        } else {
            if (ev->price < m->price_min)
                m->price_min = ev->price;
            if (ev->price > m->price_max)
                m->price_max = ev->price;
        }
        if (decay_ensure(&m->price_sum) != EDDY_OK || decay_ensure(&m->price_n) != EDDY_OK)
            return EDDY_ERR_NOMEM;
        decay_add(m->price_sum, &p->affinity, ts, ev->price);
        decay_add(m->price_n, &p->affinity, ts, 1.0);
    }

    switch (ev->event_type) {
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW:
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK:
        err = recent_add(&m->views, &m->n_views, p->recent_items, ev->product_id, ev->category,
                         ts);
        break;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH:
        err = recent_add(&m->searches, &m->n_searches, p->recent_items, ev->search_query,
                         ev->category, ts);
        break;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART:
        err = cart_set(m, p->max_cart, ev, true);
        break;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART:
        err = cart_set(m, p->max_cart, ev, false);
        break;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE:
        err = recent_add(&m->purchases, &m->n_purchases, p->recent_items, ev->product_id,
                         ev->category, ts);
        if (err == EDDY_OK)
            err = cart_set(m, p->max_cart, ev, false);
        break;
    default:
        break;
    }
    if (err != EDDY_OK)
        return err;
    if (ts > m->last_ts)
        m->last_ts = ts;
    m->events++;
    return EDDY_OK;
}

bool model_in_cart(const Eddy__Store__V1__UserModel *m, const char *product_id)
{
    for (size_t i = 0; i < m->n_cart; i++) {
        if (m->cart[i]->in_cart && strcmp(m->cart[i]->product_id, product_id) == 0)
            return true;
    }
    return false;
}

/* ---- views --------------------------------------------------------------------------- */

static int cmp_affinity(const void *a, const void *b)
{
    const struct affinity *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return strcmp(x->name, y->name);
}

/* The 'max' best of 'arr' at time 'at', best first: an insertion into 'out' (the order is
 * total, so this is the first 'max' of the sorted list; Recommend wants 3 of up to
 * --max-affinities, where sorting them all cost more than everything else here). */
static size_t top_scored(Eddy__Store__V1__Scored *const *arr, size_t n,
                         const struct decay_params *dp, int64_t at, struct affinity *out,
                         size_t max)
{
    size_t k = 0;
    for (size_t i = 0; i < n && max > 0; i++) {
        struct affinity a = {arr[i]->name, decay_value(arr[i]->score, dp, at)};
        if (k == max && cmp_affinity(&a, &out[k - 1]) >= 0)
            continue;
        size_t j = k < max ? k++ : k - 1;
        while (j > 0 && cmp_affinity(&a, &out[j - 1]) < 0) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = a;
    }
    return k;
}

size_t model_top_categories(const Eddy__Store__V1__UserModel *m, const struct model_params *p,
                            struct affinity *out, size_t max)
{
    return top_scored(m->categories, m->n_categories, &p->affinity, m->last_ts, out, max);
}

static eddy_err affinities_out(Eddy__Store__V1__Scored *const *arr, size_t n,
                               const struct decay_params *dp, int64_t at,
                               Eddy__V1__Affinity ***out, size_t *nout)
{
    struct affinity *top = malloc((n ? n : 1) * sizeof(*top));
    if (!top)
        return EDDY_ERR_NOMEM;
    size_t k = top_scored(arr, n, dp, at, top, n);
    *out = calloc(k ? k : 1, sizeof(**out));
    if (!*out) {
        free(top);
        return EDDY_ERR_NOMEM;
    }
    for (size_t i = 0; i < k; i++) {
        Eddy__V1__Affinity *a = malloc(sizeof(*a));
        if (!a) {
            free(top);
            return EDDY_ERR_NOMEM;
        }
        eddy__v1__affinity__init(a);
        a->score = top[i].score;
        (*out)[i] = a;
        *nout = i + 1;
        if (pb_set_str(&a->name, top[i].name) != EDDY_OK) {
            free(top);
            return EDDY_ERR_NOMEM;
        }
    }
    free(top);
    return EDDY_OK;
}

static eddy_err recent_out(Eddy__Store__V1__Recent *const *arr, size_t n,
                           Eddy__V1__RecentItem ***out, size_t *nout)
{
    *out = calloc(n ? n : 1, sizeof(**out));
    if (!*out)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        Eddy__V1__RecentItem *r = malloc(sizeof(*r));
        if (!r)
            return EDDY_ERR_NOMEM;
        eddy__v1__recent_item__init(r);
        (*out)[i] = r;
        *nout = i + 1;
        r->timestamp_ms = arr[i]->ts;
        if (pb_set_str(&r->product_id, arr[i]->id) != EDDY_OK ||
            pb_set_str(&r->category, arr[i]->category) != EDDY_OK)
            return EDDY_ERR_NOMEM;
    }
    return EDDY_OK;
}

eddy_err model_to_profile(const Eddy__Store__V1__UserModel *m, const struct model_params *p,
                          const char *user_id, Eddy__V1__UserProfile **out)
{
    eddy_err err = EDDY_ERR_NOMEM;
    Eddy__V1__UserProfile *pr = malloc(sizeof(*pr));
    if (!pr)
        return EDDY_ERR_NOMEM;
    eddy__v1__user_profile__init(pr);
    pr->last_update_ms = m->last_ts;
    pr->event_count = m->events;
    if (pb_set_str(&pr->user_id, user_id) != EDDY_OK)
        goto out;
    if ((err = affinities_out(m->categories, m->n_categories, &p->affinity, m->last_ts,
                              &pr->category_affinities, &pr->n_category_affinities)) != EDDY_OK)
        goto out;
    if ((err = affinities_out(m->brands, m->n_brands, &p->affinity, m->last_ts,
                              &pr->brand_affinities, &pr->n_brand_affinities)) != EDDY_OK)
        goto out;
    err = EDDY_ERR_NOMEM;
    pr->price_range = malloc(sizeof(*pr->price_range));
    if (!pr->price_range)
        goto out;
    eddy__v1__price_range__init(pr->price_range);
    pr->price_range->min = m->price_min;
    pr->price_range->max = m->price_max;
    double n = decay_value(m->price_n, &p->affinity, m->last_ts);
    pr->price_range->mean = n > 0 ? decay_value(m->price_sum, &p->affinity, m->last_ts) / n : 0;
    if ((err = recent_out(m->views, m->n_views, &pr->recent_views, &pr->n_recent_views)) != EDDY_OK)
        goto out;
    if ((err = recent_out(m->purchases, m->n_purchases, &pr->recent_purchases,
                          &pr->n_recent_purchases)) != EDDY_OK)
        goto out;
    err = EDDY_ERR_NOMEM;
    pr->recent_searches = calloc(m->n_searches ? m->n_searches : 1, sizeof(*pr->recent_searches));
    if (!pr->recent_searches)
        goto out;
    for (size_t i = 0; i < m->n_searches; i++) {
        Eddy__V1__RecentSearch *s = malloc(sizeof(*s));
        if (!s)
            goto out;
        eddy__v1__recent_search__init(s);
        pr->recent_searches[i] = s;
        pr->n_recent_searches = i + 1;
        s->timestamp_ms = m->searches[i]->ts;
        if (pb_set_str(&s->query, m->searches[i]->id) != EDDY_OK)
            goto out;
    }
    /* cart: entries in the cart, newest first */
    pr->cart = calloc(m->n_cart ? m->n_cart : 1, sizeof(*pr->cart));
    if (!pr->cart)
        goto out;
    for (size_t i = 0; i < m->n_cart; i++) {
        const Eddy__Store__V1__CartEntry *e = m->cart[i];
        if (!e->in_cart)
            continue;
        size_t pos = 0;
        while (pos < pr->n_cart && (pr->cart[pos]->timestamp_ms > e->ts ||
                                    (pr->cart[pos]->timestamp_ms == e->ts &&
                                     strcmp(pr->cart[pos]->product_id, e->product_id) < 0)))
            pos++;
        Eddy__V1__RecentItem *r = malloc(sizeof(*r));
        if (!r)
            goto out;
        eddy__v1__recent_item__init(r);
        r->timestamp_ms = e->ts;
        memmove(&pr->cart[pos + 1], &pr->cart[pos], (pr->n_cart - pos) * sizeof(*pr->cart));
        pr->cart[pos] = r;
        pr->n_cart++;
        if (pb_set_str(&r->product_id, e->product_id) != EDDY_OK ||
            pb_set_str(&r->category, e->category) != EDDY_OK)
            goto out;
    }
    *out = pr;
    return EDDY_OK;
out:
    model_profile_free(pr);
    return err;
}

void model_profile_free(Eddy__V1__UserProfile *pr)
{
    if (pr)
        protobuf_c_message_free_unpacked(&pr->base, NULL);
}

/* ---- encoding (pbenc.h) ---------------------------------------------------------------- */

static size_t scored_body(const Eddy__Store__V1__Scored *sc, size_t *lname)
{
    return pbenc_str_size(sc->name, lname) + pbenc_decayed_size(sc->score);
}

static size_t recent_body(const Eddy__Store__V1__Recent *r, size_t l[3])
{
    return pbenc_str_size(r->id, &l[0]) + pbenc_str_size(r->category, &l[1]) +
           pbenc_u64_size((uint64_t)r->ts) + pbenc_str_size(r->event_id, &l[2]);
}

static size_t cart_body(const Eddy__Store__V1__CartEntry *c, size_t l[3])
{
    return pbenc_str_size(c->product_id, &l[0]) + pbenc_str_size(c->category, &l[1]) +
           pbenc_u64_size((uint64_t)c->ts) + pbenc_str_size(c->event_id, &l[2]) +
           pbenc_u64_size(c->in_cart ? 1 : 0);
}

static bool scored_unknown(Eddy__Store__V1__Scored *const *arr, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (pbenc_unknown(&arr[i]->base) ||
            (arr[i]->score && pbenc_unknown(&arr[i]->score->base)))
            return true;
    }
    return false;
}

static bool recent_unknown(Eddy__Store__V1__Recent *const *arr, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (pbenc_unknown(&arr[i]->base))
            return true;
    }
    return false;
}

/* Encoded size of a repeated Scored / Recent field. */
static size_t scored_list_size(Eddy__Store__V1__Scored *const *arr, size_t n)
{
    size_t total = 0, l;
    for (size_t i = 0; i < n; i++)
        total += pbenc_sub_size(scored_body(arr[i], &l));
    return total;
}

static size_t recent_list_size(Eddy__Store__V1__Recent *const *arr, size_t n)
{
    size_t total = 0, l[3];
    for (size_t i = 0; i < n; i++)
        total += pbenc_sub_size(recent_body(arr[i], l));
    return total;
}

static uint8_t *put_scored_list(uint8_t *p, uint8_t tag, Eddy__Store__V1__Scored *const *arr,
                                size_t n)
{
    size_t l;
    for (size_t i = 0; i < n; i++) {
        p = pbenc_put_sub(p, tag, scored_body(arr[i], &l));
        p = pbenc_put_str(p, PB_SCORED_NAME, arr[i]->name, l);
        p = pbenc_put_decayed(p, PB_SCORED_SCORE, arr[i]->score);
    }
    return p;
}

static uint8_t *put_recent_list(uint8_t *p, uint8_t tag, Eddy__Store__V1__Recent *const *arr,
                                size_t n)
{
    size_t l[3];
    for (size_t i = 0; i < n; i++) {
        const Eddy__Store__V1__Recent *r = arr[i];
        p = pbenc_put_sub(p, tag, recent_body(r, l));
        p = pbenc_put_str(p, PB_RECENT_ID, r->id, l[0]);
        p = pbenc_put_str(p, PB_RECENT_CATEGORY, r->category, l[1]);
        p = pbenc_put_u64(p, PB_RECENT_TS, (uint64_t)r->ts);
        p = pbenc_put_str(p, PB_RECENT_EVENT_ID, r->event_id, l[2]);
    }
    return p;
}

bool model_pack(const Eddy__Store__V1__UserModel *m, struct pbenc_out *o)
{
    if (pbenc_unknown(&m->base) || scored_unknown(m->categories, m->n_categories) ||
        scored_unknown(m->brands, m->n_brands) ||
        (m->price_sum && pbenc_unknown(&m->price_sum->base)) ||
        (m->price_n && pbenc_unknown(&m->price_n->base)) ||
        recent_unknown(m->views, m->n_views) || recent_unknown(m->searches, m->n_searches) ||
        recent_unknown(m->purchases, m->n_purchases))
        return false;
    size_t l[3];
    size_t n = scored_list_size(m->categories, m->n_categories) +
               scored_list_size(m->brands, m->n_brands) + pbenc_double_size(m->price_min) +
               pbenc_double_size(m->price_max) + pbenc_decayed_size(m->price_sum) +
               pbenc_decayed_size(m->price_n) + recent_list_size(m->views, m->n_views) +
               recent_list_size(m->searches, m->n_searches) +
               recent_list_size(m->purchases, m->n_purchases) +
               pbenc_u64_size((uint64_t)m->last_ts) + pbenc_u64_size(m->events);
    for (size_t i = 0; i < m->n_cart; i++) {
        if (pbenc_unknown(&m->cart[i]->base))
            return false;
        n += pbenc_sub_size(cart_body(m->cart[i], l));
    }
    if (!pbenc_reserve(o, n))
        return false;
    uint8_t *p = o->buf;
    p = put_scored_list(p, PB_MODEL_CATEGORIES, m->categories, m->n_categories);
    p = put_scored_list(p, PB_MODEL_BRANDS, m->brands, m->n_brands);
    p = pbenc_put_double(p, PB_MODEL_PRICE_MIN, m->price_min);
    p = pbenc_put_double(p, PB_MODEL_PRICE_MAX, m->price_max);
    p = pbenc_put_decayed(p, PB_MODEL_PRICE_SUM, m->price_sum);
    p = pbenc_put_decayed(p, PB_MODEL_PRICE_N, m->price_n);
    p = put_recent_list(p, PB_MODEL_VIEWS, m->views, m->n_views);
    p = put_recent_list(p, PB_MODEL_SEARCHES, m->searches, m->n_searches);
    p = put_recent_list(p, PB_MODEL_PURCHASES, m->purchases, m->n_purchases);
    for (size_t i = 0; i < m->n_cart; i++) {
        const Eddy__Store__V1__CartEntry *c = m->cart[i];
        p = pbenc_put_sub(p, PB_MODEL_CART, cart_body(c, l));
        p = pbenc_put_str(p, PB_CART_PRODUCT_ID, c->product_id, l[0]);
        p = pbenc_put_str(p, PB_CART_CATEGORY, c->category, l[1]);
        p = pbenc_put_u64(p, PB_CART_TS, (uint64_t)c->ts);
        p = pbenc_put_str(p, PB_CART_EVENT_ID, c->event_id, l[2]);
        p = pbenc_put_u64(p, PB_CART_IN_CART, c->in_cart ? 1 : 0);
    }
    p = pbenc_put_u64(p, PB_MODEL_LAST_TS, (uint64_t)m->last_ts);
    pbenc_put_u64(p, PB_MODEL_EVENTS, m->events);
    return true;
}

/* ---- the fields Recommend reads ----------------------------------------------------------
 * protobuf-c decodes every field of a model (brands, searches, prices, every string of
 * every recent item); Recommend reads the categories, the ids and times of the recent views
 * and purchases, the cart's products and flags, and last_ts. This parses the wire format
 * for those only and skips the rest by length. */

struct rd {
    const uint8_t *p, *end;
};

static bool rd_varint(struct rd *r, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && r->p < r->end; shift += 7) {
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

/* The next field's number and wire type; false at the end or on a malformed key. */
static bool rd_key(struct rd *r, uint32_t *field, unsigned *wt)
{
    uint64_t k;
    if (r->p >= r->end || !rd_varint(r, &k) || (k >> 3) == 0 || (k >> 3) > UINT32_MAX)
        return false;
    *field = (uint32_t)(k >> 3);
    *wt = (unsigned)(k & 7);
    return true;
}

/* A length-delimited field's bytes as a reader of their own. */
static bool rd_sub(struct rd *r, struct rd *sub)
{
    uint64_t len;
    if (!rd_varint(r, &len) || len > (uint64_t)(r->end - r->p))
        return false;
    sub->p = r->p;
    sub->end = r->p + len;
    r->p += len;
    return true;
}

static bool rd_skip(struct rd *r, unsigned wt)
{
    uint64_t v;
    struct rd sub;
    switch (wt) {
    case PB_WIRE_VARINT: return rd_varint(r, &v);
    case PB_WIRE_I64:
        if (r->end - r->p < 8)
            return false;
        r->p += 8;
        return true;
    case PB_WIRE_LEN: return rd_sub(r, &sub);
    case PB_WIRE_I32:
        if (r->end - r->p < 4)
            return false;
        r->p += 4;
        return true;
    default: return false; /* groups: not in these messages */
    }
}

static void *rd_alloc(ProtobufCAllocator *a, size_t size)
{
    return a ? a->alloc(a->allocator_data, size) : malloc(size);
}

static char *rd_str(ProtobufCAllocator *a, const struct rd *s)
{
    size_t len = (size_t)(s->end - s->p);
    char *c = rd_alloc(a, len + 1);
    if (c) {
        memcpy(c, s->p, len);
        c[len] = '\0';
    }
    return c;
}

/* Whether the key read (field 'f', wire type 'wt') is 'tag' (pbenc.h). */
static bool is(uint32_t f, unsigned wt, uint8_t tag)
{
    return f == PB_FIELD(tag) && wt == PB_WIRE(tag);
}

/* The varint field tagged 'want' of 'msg' into *v and, if 'sv' is not NULL, the bytes
 * field tagged 'want_str' into *sv; other fields skipped. Last occurrence wins, as in
 * protobuf. */
static bool rd_fields(struct rd msg, uint8_t want, uint64_t *v, uint8_t want_str,
                      struct rd *sv)
{
    uint32_t f;
    unsigned wt;
    while (rd_key(&msg, &f, &wt)) {
        if (is(f, wt, want)) {
            if (!rd_varint(&msg, v))
                return false;
        } else if (sv && is(f, wt, want_str)) {
            if (!rd_sub(&msg, sv))
                return false;
        } else if (!rd_skip(&msg, wt)) {
            return false;
        }
    }
    return msg.p == msg.end;
}

bool model_last_ts(const uint8_t *buf, size_t len, int64_t *ts)
{
    struct rd msg = {buf, buf + len};
    uint64_t v = 0;
    if (!rd_fields(msg, PB_MODEL_LAST_TS, &v, 0, NULL))
        return false;
    *ts = (int64_t)v;
    return true;
}

static bool rd_decayed(struct rd msg, ProtobufCAllocator *a, Eddy__Store__V1__Decayed **out)
{
    Eddy__Store__V1__Decayed *d = rd_alloc(a, sizeof(*d));
    if (!d)
        return false;
    eddy__store__v1__decayed__init(d);
    uint32_t f;
    unsigned wt;
    uint64_t v;
    while (rd_key(&msg, &f, &wt)) {
        int64_t *dst = is(f, wt, PB_DECAYED_BUCKET) ? &d->bucket
                       : is(f, wt, PB_DECAYED_CUR)  ? &d->cur
                       : is(f, wt, PB_DECAYED_PREV) ? &d->prev
                                                    : NULL;
        if (dst) {
            if (!rd_varint(&msg, &v))
                return false;
            *dst = (int64_t)v;
        } else if (!rd_skip(&msg, wt)) {
            return false;
        }
    }
    *out = d;
    return msg.p == msg.end;
}

static bool rd_scored(struct rd msg, ProtobufCAllocator *a, Eddy__Store__V1__Scored **out)
{
    Eddy__Store__V1__Scored *sc = rd_alloc(a, sizeof(*sc));
    if (!sc)
        return false;
    eddy__store__v1__scored__init(sc);
    *out = sc;
    uint32_t f;
    unsigned wt;
    struct rd sub;
    while (rd_key(&msg, &f, &wt)) {
        bool name = is(f, wt, PB_SCORED_NAME), score = is(f, wt, PB_SCORED_SCORE);
        if (name || score) {
            if (!rd_sub(&msg, &sub))
                return false;
            if (name && !(sc->name = rd_str(a, &sub)))
                return false;
            if (score && !rd_decayed(sub, a, &sc->score))
                return false;
        } else if (!rd_skip(&msg, wt)) {
            return false;
        }
    }
    return msg.p == msg.end;
}

static bool rd_recent(struct rd msg, ProtobufCAllocator *a, Eddy__Store__V1__Recent **out)
{
    Eddy__Store__V1__Recent *r = rd_alloc(a, sizeof(*r));
    if (!r)
        return false;
    eddy__store__v1__recent__init(r);
    *out = r;
    uint64_t ts = 0;
    struct rd id = {NULL, NULL};
    if (!rd_fields(msg, PB_RECENT_TS, &ts, PB_RECENT_ID, &id) ||
        (id.p && !(r->id = rd_str(a, &id))))
        return false;
    r->ts = (int64_t)ts;
    return true;
}

static bool rd_cart(struct rd msg, ProtobufCAllocator *a, Eddy__Store__V1__CartEntry **out)
{
    Eddy__Store__V1__CartEntry *c = rd_alloc(a, sizeof(*c));
    if (!c)
        return false;
    eddy__store__v1__cart_entry__init(c);
    *out = c;
    uint64_t in_cart = 0;
    struct rd id = {NULL, NULL};
    if (!rd_fields(msg, PB_CART_IN_CART, &in_cart, PB_CART_PRODUCT_ID, &id) ||
        (id.p && !(c->product_id = rd_str(a, &id))))
        return false;
    c->in_cart = in_cart != 0;
    return true;
}

eddy_err model_unpack_for_recommend(const uint8_t *buf, size_t len, ProtobufCAllocator *a,
                                    Eddy__Store__V1__UserModel **out)
{
    struct rd all = {buf, buf + len}, r = all;
    size_t count[16] = {0}; /* by field number: the one-byte tags' */
    uint32_t f;
    unsigned wt;
    *out = NULL;
    while (rd_key(&r, &f, &wt)) { /* first pass: the repeated fields' sizes */
        if (f < 16 && wt == PB_WIRE_LEN)
            count[f]++;
        if (!rd_skip(&r, wt))
            return EDDY_ERR_CORRUPT;
    }
    if (r.p != r.end)
        return EDDY_ERR_CORRUPT;
    Eddy__Store__V1__UserModel *m = rd_alloc(a, sizeof(*m));
    if (!m)
        return EDDY_ERR_NOMEM;
    eddy__store__v1__user_model__init(m);
    size_t ncat = count[PB_FIELD(PB_MODEL_CATEGORIES)], nviews = count[PB_FIELD(PB_MODEL_VIEWS)];
    size_t npur = count[PB_FIELD(PB_MODEL_PURCHASES)], ncart = count[PB_FIELD(PB_MODEL_CART)];
    m->categories = rd_alloc(a, (ncat ? ncat : 1) * sizeof(*m->categories));
    m->views = rd_alloc(a, (nviews ? nviews : 1) * sizeof(*m->views));
    m->purchases = rd_alloc(a, (npur ? npur : 1) * sizeof(*m->purchases));
    m->cart = rd_alloc(a, (ncart ? ncart : 1) * sizeof(*m->cart));
    if (!m->categories || !m->views || !m->purchases || !m->cart)
        return EDDY_ERR_NOMEM; /* an arena reclaims what was taken */
    r = all;
    struct rd sub;
    uint64_t v = 0;
    bool ok = true;
    while (ok && rd_key(&r, &f, &wt)) {
        if (is(f, wt, PB_MODEL_CATEGORIES) || is(f, wt, PB_MODEL_VIEWS) ||
            is(f, wt, PB_MODEL_PURCHASES) || is(f, wt, PB_MODEL_CART)) {
            ok = rd_sub(&r, &sub);
            if (ok && is(f, wt, PB_MODEL_CATEGORIES))
                ok = rd_scored(sub, a, &m->categories[m->n_categories++]);
            else if (ok && is(f, wt, PB_MODEL_VIEWS))
                ok = rd_recent(sub, a, &m->views[m->n_views++]);
            else if (ok && is(f, wt, PB_MODEL_PURCHASES))
                ok = rd_recent(sub, a, &m->purchases[m->n_purchases++]);
            else if (ok)
                ok = rd_cart(sub, a, &m->cart[m->n_cart++]);
        } else if (is(f, wt, PB_MODEL_LAST_TS)) {
            if ((ok = rd_varint(&r, &v)))
                m->last_ts = (int64_t)v;
        } else {
            ok = rd_skip(&r, wt);
        }
    }
    *out = m;
    return ok ? EDDY_OK : EDDY_ERR_CORRUPT;
}
