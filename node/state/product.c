/* Stage-2 product state: popularity, category index, neighbours, product windows. */
#include "node/state/product.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/partition.h"
#include "common/pbutil.h"
#include "node/state/counts.h"
#include "node/state/model.h"
#include "node/state/pbenc.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

/* ---- exactly-once marks ---------------------------------------------------------------
 * One S2_HW row per product partition (store.h), kept decoded by the txn: a batch's claim
 * is an array lookup, and a group writes one row per product partition it touched. */

static bool marks_pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len)
{
    const Eddy__Store__V1__Stage2Marks *mk = (const Eddy__Store__V1__Stage2Marks *)m;
    if (pbenc_unknown(m))
        return false;
    size_t body = 0;
    for (size_t i = 0; i < mk->n_next_seq; i++)
        body += pbenc_varint_size(mk->next_seq[i]);
    size_t n = mk->n_next_seq ? pbenc_sub_size(body) : 0;
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return false;
    *buf = p;
    *len = n;
    if (mk->n_next_seq) {
        p = pbenc_put_sub(p, PB_MARKS_NEXT_SEQ, body);
        for (size_t i = 0; i < mk->n_next_seq; i++)
            p = pbenc_put_varint(p, mk->next_seq[i]);
    }
    return true;
}

/* Make room for source partition 'src' (new entries 0: nothing applied). */
static eddy_err marks_reserve(Eddy__Store__V1__Stage2Marks *mk, uint32_t src)
{
    if (src < mk->n_next_seq)
        return EDDY_OK;
    size_t n = (size_t)src + 1;
    uint64_t *a = realloc(mk->next_seq, n * sizeof(*a));
    if (!a)
        return EDDY_ERR_NOMEM;
    memset(a + mk->n_next_seq, 0, (n - mk->n_next_seq) * sizeof(*a));
    mk->next_seq = a;
    mk->n_next_seq = n;
    return EDDY_OK;
}

/* Rows of the older layout (p T source:u16 -> seq + 1 as u64) taken into 'mk'. */
struct legacy_marks {
    Eddy__Store__V1__Stage2Marks *mk;
    size_t rows;
    eddy_err err;
};

static int take_legacy_mark(void *ud, const unsigned char *k, size_t klen, const char *v,
                            size_t vlen)
{
    struct legacy_marks *l = ud;
    uint64_t seq = 0;
    size_t off = 0;
    l->rows++;
    if (klen != 5 || vlen != 8 || !key_get_u64((const unsigned char *)v, vlen, &off, &seq))
        return 0;
    uint32_t src = (uint32_t)k[3] << 8 | k[4];
    l->err = marks_reserve(l->mk, src);
    if (l->err == EDDY_OK && seq > l->mk->next_seq[src])
        l->mk->next_seq[src] = seq;
    return l->err != EDDY_OK;
}

/* Product partition q's marks as an object of the txn (borrowed until commit). */
static eddy_err load_marks(store_txn *t, uint32_t q, Eddy__Store__V1__Stage2Marks **mk,
                           struct store_key *k)
{
    key_init(k, q, T_S2_HW);
    store_txn_set_packer(t, &eddy__store__v1__stage2_marks__descriptor, marks_pack);
    eddy_err err = store_txn_obj_get(t, k, &eddy__store__v1__stage2_marks__descriptor,
                                     (ProtobufCMessage **)mk);
    if (err != EDDY_OK || *mk)
        return err;
    /* A new partition, or one of the older layout: its rows are taken in and go. Read
     * before the new row is pending (a scan over a table with pending keys sorts them). */
    Eddy__Store__V1__Stage2Marks *m = malloc(sizeof(*m));
    if (!m)
        return EDDY_ERR_NOMEM;
    eddy__store__v1__stage2_marks__init(m);
    struct store_key start, end;
    struct legacy_marks l = {m, 0, EDDY_OK};
    key_init(&start, q, T_S2_HW);
    key_prefix_end(&start, &end);
    key_u16(&start, 0);
    err = store_txn_scan(t, &start, &end, take_legacy_mark, &l);
    if (err == EDDY_OK)
        err = l.err;
    if (err == EDDY_OK && l.rows)
        err = store_txn_del_range(t, &start, &end, NULL);
    if (err != EDDY_OK) {
        protobuf_c_message_free_unpacked(&m->base, NULL);
        return err;
    }
    if ((err = store_txn_obj_set(t, k, &m->base)) == EDDY_OK) /* owns m, even on error */
        *mk = m;
    return err;
}

/* The mark of source partition 'src' in product partition q's marks (*mk, at *k). */
static eddy_err mark_of(store_txn *t, uint32_t q, uint32_t src, Eddy__Store__V1__Stage2Marks **mk,
                        struct store_key *k, uint64_t **slot)
{
    eddy_err err = load_marks(t, q, mk, k);
    if (err == EDDY_OK)
        err = marks_reserve(*mk, src);
    if (err == EDDY_OK)
        *slot = &(*mk)->next_seq[src];
    return err;
}

/* Whether (source partition, seq) is new for product partition q; records it if so. */
static eddy_err claim(store_txn *t, uint32_t q, uint32_t src, uint64_t seq, bool *fresh)
{
    struct store_key k;
    Eddy__Store__V1__Stage2Marks *mk;
    uint64_t *slot;
    eddy_err err = mark_of(t, q, src, &mk, &k, &slot);
    if (err != EDDY_OK)
        return err;
    /* seq 0 is a valid first seq: the mark is seq + 1 */
    *fresh = seq + 1 > *slot;
    if (!*fresh)
        return EDDY_OK;
    *slot = seq + 1;
    return store_txn_obj_set(t, &k, &mk->base);
}

eddy_err product_fresh(store_txn *t, uint32_t q, uint32_t src, uint64_t seq, bool *fresh)
{
    struct store_key k;
    Eddy__Store__V1__Stage2Marks *mk;
    uint64_t *slot;
    eddy_err err = mark_of(t, q, src, &mk, &k, &slot);
    if (err == EDDY_OK)
        *fresh = seq + 1 > *slot;
    return err;
}

eddy_err product_mark_set(store_txn *t, uint32_t q, uint32_t src, uint64_t next_seq)
{
    struct store_key k;
    Eddy__Store__V1__Stage2Marks *mk;
    uint64_t *slot;
    eddy_err err = mark_of(t, q, src, &mk, &k, &slot);
    if (err != EDDY_OK)
        return err;
    *slot = next_seq;
    return store_txn_obj_set(t, &k, &mk->base);
}

/* ---- encoding (pbenc.h) ---------------------------------------------------------------
 * A ProductState is re-encoded whole at every group commit that touched it: its neighbour
 * list, 50 entries of three fields with a nested Decayed each. */

static size_t neighbour_body(const Eddy__Store__V1__Neighbour *nb, size_t *lid, size_t *lcat)
{
    return pbenc_str_size(nb->product_id, lid) + pbenc_decayed_size(nb->score) +
           pbenc_str_size(nb->category, lcat);
}

/* The lengths of a neighbour's strings and body, from the size pass to the write pass. */
struct nb_len {
    size_t body, id, cat;
};

#define PACK_LENS 64 /* neighbours whose lengths the write pass finds measured */

bool product_state_pack(const Eddy__Store__V1__ProductState *ps, uint8_t **buf, size_t *len)
{
    if (pbenc_unknown(&ps->base) || (ps->popularity && pbenc_unknown(&ps->popularity->base)))
        return false;
    struct nb_len nl[PACK_LENS], x;
    size_t lcat, lbrand, lidx;
    size_t n = pbenc_str_size(ps->category, &lcat) + pbenc_str_size(ps->brand, &lbrand) +
               pbenc_double_size(ps->price) + pbenc_decayed_size(ps->popularity) +
               pbenc_u64_size((uint64_t)ps->last_ts) +
               pbenc_str_size(ps->category_indexed, &lidx) +
               pbenc_u64_size((uint64_t)ps->price_ts) +
               pbenc_u64_size((uint64_t)ps->category_ts) + pbenc_u64_size((uint64_t)ps->brand_ts);
    for (size_t i = 0; i < ps->n_neighbours; i++) {
        const Eddy__Store__V1__Neighbour *nb = ps->neighbours[i];
        if (pbenc_unknown(&nb->base) || (nb->score && pbenc_unknown(&nb->score->base)))
            return false;
        x.body = neighbour_body(nb, &x.id, &x.cat);
        if (i < PACK_LENS)
            nl[i] = x;
        n += pbenc_sub_size(x.body);
    }
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return false;
    *buf = p;
    *len = n;
    p = pbenc_put_str(p, PB_PRODUCT_CATEGORY, ps->category, lcat);
    p = pbenc_put_str(p, PB_PRODUCT_BRAND, ps->brand, lbrand);
    p = pbenc_put_double(p, PB_PRODUCT_PRICE, ps->price);
    p = pbenc_put_decayed(p, PB_PRODUCT_POPULARITY, ps->popularity);
    for (size_t i = 0; i < ps->n_neighbours; i++) {
        const Eddy__Store__V1__Neighbour *nb = ps->neighbours[i];
        if (i < PACK_LENS)
            x = nl[i];
        else
            x.body = neighbour_body(nb, &x.id, &x.cat);
        p = pbenc_put_sub(p, PB_PRODUCT_NEIGHBOURS, x.body);
        p = pbenc_put_str(p, PB_NEIGHBOUR_PRODUCT_ID, nb->product_id, x.id);
        p = pbenc_put_decayed(p, PB_NEIGHBOUR_SCORE, nb->score);
        p = pbenc_put_str(p, PB_NEIGHBOUR_CATEGORY, nb->category, x.cat);
    }
    p = pbenc_put_u64(p, PB_PRODUCT_LAST_TS, (uint64_t)ps->last_ts);
    p = pbenc_put_str(p, PB_PRODUCT_CATEGORY_INDEXED, ps->category_indexed, lidx);
    p = pbenc_put_u64(p, PB_PRODUCT_PRICE_TS, (uint64_t)ps->price_ts);
    p = pbenc_put_u64(p, PB_PRODUCT_CATEGORY_TS, (uint64_t)ps->category_ts);
    pbenc_put_u64(p, PB_PRODUCT_BRAND_TS, (uint64_t)ps->brand_ts);
    return true;
}

static bool product_pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len)
{
    return product_state_pack((const Eddy__Store__V1__ProductState *)m, buf, len);
}

/* The product's state as an object of the txn (borrowed until commit), created if absent. */
static eddy_err load_product(store_txn *t, uint32_t q, const char *id,
                             Eddy__Store__V1__ProductState **ps, struct store_key *k)
{
    key_init(k, q, T_PRODUCT);
    key_str(k, id);
    bool created;
    return store_txn_obj_get_or_new(t, k, &eddy__store__v1__product_state__descriptor,
                                    (ProtobufCMessage **)ps, &created);
}

static eddy_err count_window(store_txn *t, uint32_t q, const Eddy__Store__V1__ProductUpdate *u)
{
    struct store_key k;
    key_init(&k, q, T_PROD_WIN);
    key_i64(&k, u->window_start);
    key_str(&k, u->product_id);
    return counts_bump(t, &k, u->event_type, u->category);
}

/* Whether a value 'v' of event time 'ts' replaces the current one ('cur' of 'cur_ts'): the
 * newest wins, and of two equally new the greater, so the result is the same in whatever
 * order the updates arrive (they come from every user partition). */
static bool newer_str(int64_t ts, const char *v, int64_t cur_ts, const char *cur)
{
    return !pb_empty(v) && (ts > cur_ts || (ts == cur_ts && strcmp(v, cur ? cur : "") > 0));
}

/* The product's category, brand and price: each from the newest update that carried it. */
static eddy_err take_attributes(Eddy__Store__V1__ProductState *ps,
                                const Eddy__Store__V1__ProductUpdate *u)
{
    eddy_err err = EDDY_OK;
    if (newer_str(u->ts, u->category, ps->category_ts, ps->category)) {
        err = pb_set_str(&ps->category, u->category);
        ps->category_ts = u->ts;
    }
    if (err == EDDY_OK && newer_str(u->ts, u->brand, ps->brand_ts, ps->brand)) {
        err = pb_set_str(&ps->brand, u->brand);
        ps->brand_ts = u->ts;
    }
    if (u->price > 0 && (u->ts > ps->price_ts || (u->ts == ps->price_ts && u->price > ps->price))) {
        ps->price = u->price;
        ps->price_ts = u->ts;
    }
    if (u->ts > ps->last_ts)
        ps->last_ts = u->ts;
    return err;
}

static eddy_err apply_update(store_txn *t, const struct product_params *p, uint32_t q,
                             const Eddy__Store__V1__ProductUpdate *u)
{
    struct store_key k, ck;
    Eddy__Store__V1__ProductState *ps = NULL;
    eddy_err err = load_product(t, q, u->product_id, &ps, &k);
    if (err != EDDY_OK)
        goto out;
    if ((err = take_attributes(ps, u)) != EDDY_OK)
        goto out;
    double w = model_event_weight(u->event_type);
    if (w > 0) {
        if ((err = decay_ensure(&ps->popularity)) != EDDY_OK)
            goto out;
        decay_add(ps->popularity, &p->popularity, u->ts, w);
    }
    /* keep the category index in step: one CAT_POP entry under the current category */
    if (!pb_empty(ps->category_indexed) && strcmp(ps->category_indexed, ps->category) != 0) {
        key_init(&ck, q, T_CAT_POP);
        key_lstr(&ck, ps->category_indexed);
        key_str(&ck, u->product_id);
        if ((err = store_txn_del(t, &ck)) != EDDY_OK)
            goto out;
    }
    if (ps->popularity) {
        key_init(&ck, q, T_CAT_POP);
        key_lstr(&ck, ps->category);
        key_str(&ck, u->product_id);
        if ((err = store_txn_put_msg(t, &ck, &ps->popularity->base)) != EDDY_OK)
            goto out;
        if ((err = pb_set_str(&ps->category_indexed, ps->category)) != EDDY_OK)
            goto out;
    }
    if ((err = store_txn_obj_set(t, &k, &ps->base)) != EDDY_OK)
        goto out;
    if (!u->late)
        err = count_window(t, q, u);
out:
    return err; /* the state belongs to the txn */
}

/* decay_value of many sums at one event time, for comparing them: the same arithmetic
 * (so the same order, ties included) without decay_value's final division by the fixed-point
 * one, a power of two that keeps the order exact, and with the two exp2 factors of a
 * bucket computed once per bucket instead of once per sum: a neighbour list spans a few
 * buckets at most. Scans of a full list (each new neighbour of a product with
 * --max-neighbours of them) spent most of their time in exp2. */
struct values_at {
    const struct decay_params *p;
    int64_t at;
    int64_t bucket[2];
    double factor[2][2]; /* [slot][cur, prev] */
    int n;               /* slots filled, round robin past 2 */
};

/* The factors of a bucket not in the two slots yet: computed into the older slot. */
static int values_at_fill(struct values_at *va, int64_t bucket)
{
    int s = va->n++ % 2;
    /* read once, atomically: eddy reprocess --set may change it (decay.c) */
    int64_t hl_ms = __atomic_load_n(&va->p->half_life_ms, __ATOMIC_RELAXED);
    int64_t width = hl_ms * va->p->bucket_half_lives;
    double hl = (double)hl_ms;
    double start = (double)bucket * (double)width;
    va->bucket[s] = bucket;
    va->factor[s][0] = exp2((start - (double)va->at) / hl);
    va->factor[s][1] = exp2((start - (double)width - (double)va->at) / hl);
    return s;
}

static inline double value_at(struct values_at *va, const Eddy__Store__V1__Decayed *d)
{
    if (!d)
        return 0.0;
    int s = va->n > 0 && va->bucket[0] == d->bucket   ? 0
            : va->n > 1 && va->bucket[1] == d->bucket ? 1
                                                      : values_at_fill(va, d->bucket);
    return (double)d->cur * va->factor[s][0] + (double)d->prev * va->factor[s][1];
}

static eddy_err add_neighbour(Eddy__Store__V1__ProductState *ps, const struct product_params *p,
                              const Eddy__Store__V1__CoOccurrence *c)
{
    size_t lo = 0, hi = ps->n_neighbours;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int r = strcmp(ps->neighbours[mid]->product_id, c->to_product);
        if (r == 0) {
            if (decay_ensure(&ps->neighbours[mid]->score) != EDDY_OK)
                return EDDY_ERR_NOMEM;
            decay_add(ps->neighbours[mid]->score, &p->neighbours, c->ts, c->weight);
            if (!pb_empty(c->to_category))
                return pb_set_str(&ps->neighbours[mid]->category, c->to_category);
            return EDDY_OK;
        }
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if ((int)ps->n_neighbours >= p->max_neighbours) {
        /* full: replace the weakest neighbour if the newcomer is stronger */
        Eddy__Store__V1__Decayed probe = EDDY__STORE__V1__DECAYED__INIT;
        decay_add(&probe, &p->neighbours, c->ts, c->weight);
        struct values_at va = {&p->neighbours, c->ts, {0}, {{0}}, 0};
        size_t weakest = 0;
        double wv = INFINITY;
        for (size_t i = 0; i < ps->n_neighbours; i++) {
            double v = value_at(&va, ps->neighbours[i]->score);
            if (v < wv) {
                wv = v;
                weakest = i;
            }
        }
        if (value_at(&va, &probe) <= wv)
            return EDDY_OK;
        protobuf_c_message_free_unpacked(&ps->neighbours[weakest]->base, NULL);
        memmove(&ps->neighbours[weakest], &ps->neighbours[weakest + 1],
                (ps->n_neighbours - weakest - 1) * sizeof(*ps->neighbours));
        ps->n_neighbours--;
        if (weakest < lo)
            lo--;
    }
    Eddy__Store__V1__Neighbour *n = malloc(sizeof(*n));
    if (!n)
        return EDDY_ERR_NOMEM;
    eddy__store__v1__neighbour__init(n);
    n->score = decay_new();
    if (!n->score || pb_set_str(&n->product_id, c->to_product) != EDDY_OK ||
        pb_set_str(&n->category, c->to_category) != EDDY_OK ||
        pb_grow((void **)&ps->neighbours, ps->n_neighbours, sizeof(*ps->neighbours)) != EDDY_OK) {
        protobuf_c_message_free_unpacked(&n->base, NULL);
        return EDDY_ERR_NOMEM;
    }
    decay_add(n->score, &p->neighbours, c->ts, c->weight);
    memmove(&ps->neighbours[lo + 1], &ps->neighbours[lo],
            (ps->n_neighbours - lo) * sizeof(*ps->neighbours));
    ps->neighbours[lo] = n;
    ps->n_neighbours++;
    return EDDY_OK;
}

static eddy_err apply_pair(store_txn *t, const struct product_params *p, uint32_t q,
                           const Eddy__Store__V1__CoOccurrence *c)
{
    struct store_key k;
    Eddy__Store__V1__ProductState *ps = NULL;
    eddy_err err = load_product(t, q, c->from_product, &ps, &k);
    if (err == EDDY_OK)
        err = add_neighbour(ps, p, c);
    if (err == EDDY_OK)
        err = store_txn_obj_set(t, &k, &ps->base);
    return err;
}

eddy_err product_apply(store_txn *t, const struct product_params *p,
                       const Eddy__Store__V1__Stage2Batch *b,
                       bool (*owns)(void *ud, uint32_t partition), void *owns_ud)
{
    /* One claim per product partition touched by the batch. Partitions are few per batch
     * (one event's records), so a small list beats a set. */
    uint32_t claimed[64];
    bool fresh_of[64];
    size_t nclaimed = 0;
    eddy_err err = EDDY_OK;
    store_txn_set_packer(t, &eddy__store__v1__product_state__descriptor, product_pack);

    /* half of an event's pairs start at its own product: its partition is hashed once */
    const char *own = b->n_updates ? b->updates[0]->product_id : NULL;
    uint32_t own_q = UINT32_MAX;
    size_t total = product_records(b);
    for (size_t i = 0; i < total && err == EDDY_OK; i++) {
        const char *pid = product_record_key(b, i);
        bool is_own = own && (pid == own || strcmp(pid, own) == 0);
        if (is_own && own_q == UINT32_MAX)
            own_q = partition_of_product(own, p->partitions);
        uint32_t q = is_own ? own_q : partition_of_product(pid, p->partitions);
        if (owns && !owns(owns_ud, q))
            continue;
        size_t j = 0;
        while (j < nclaimed && claimed[j] != q)
            j++;
        if (j == nclaimed) {
            if (nclaimed == 64)
                return EDDY_ERR_TOO_LARGE;
            claimed[j] = q;
            err = claim(t, q, b->source_partition, b->source_seq, &fresh_of[j]);
            nclaimed++;
            if (err != EDDY_OK)
                break;
        }
        if (!fresh_of[j])
            continue;
        if (i < b->n_updates)
            err = apply_update(t, p, q, b->updates[i]);
        else
            err = apply_pair(t, p, q, b->pairs[i - b->n_updates]);
    }
    return err;
}

void product_key(struct store_key *k, uint32_t partitions, const char *product_id)
{
    key_init(k, partition_of_product(product_id, partitions), T_PRODUCT);
    key_str(k, product_id);
}

eddy_err product_get(store *s, uint32_t partitions, const char *product_id,
                     Eddy__Store__V1__ProductState **out)
{
    struct store_key k;
    product_key(&k, partitions, product_id);
    return store_get_msg(s, &k, &eddy__store__v1__product_state__descriptor,
                         (ProtobufCMessage **)out);
}
