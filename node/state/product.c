/* Stage-2 product state: popularity, category index, neighbours, product windows. */
#include "node/state/product.h"

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

static bool marks_pack(const ProtobufCMessage *m, struct pbenc_out *o)
{
    const Eddy__Store__V1__Stage2Marks *mk = (const Eddy__Store__V1__Stage2Marks *)m;
    if (pbenc_unknown(m))
        return false;
    size_t body = 0;
    for (size_t i = 0; i < mk->n_next_seq; i++)
        body += pbenc_varint_size(mk->next_seq[i]);
    size_t n = mk->n_next_seq ? pbenc_sub_size(body) : 0;
    if (!pbenc_reserve(o, n))
        return false;
    uint8_t *p = o->buf;
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
 * A ProductState is re-encoded whole at every group commit that touched it (the neighbour
 * list of format 2 only while a partition is converted: product_convert). */

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

bool product_state_pack(const Eddy__Store__V1__ProductState *ps, struct pbenc_out *o)
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
               pbenc_u64_size((uint64_t)ps->category_ts) + pbenc_u64_size((uint64_t)ps->brand_ts) +
               pbenc_u64_size((uint64_t)ps->pair_bucket);
    for (size_t i = 0; i < ps->n_neighbours; i++) {
        const Eddy__Store__V1__Neighbour *nb = ps->neighbours[i];
        if (pbenc_unknown(&nb->base) || (nb->score && pbenc_unknown(&nb->score->base)))
            return false;
        x.body = neighbour_body(nb, &x.id, &x.cat);
        if (i < PACK_LENS)
            nl[i] = x;
        n += pbenc_sub_size(x.body);
    }
    if (!pbenc_reserve(o, n))
        return false;
    uint8_t *p = o->buf;
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
    p = pbenc_put_u64(p, PB_PRODUCT_BRAND_TS, (uint64_t)ps->brand_ts);
    pbenc_put_u64(p, PB_PRODUCT_PAIR_BUCKET, (uint64_t)ps->pair_bucket);
    return true;
}

static bool product_pack(const ProtobufCMessage *m, struct pbenc_out *o)
{
    return product_state_pack((const Eddy__Store__V1__ProductState *)m, o);
}

/* The product's state as an object of the txn (borrowed until commit), created if absent.
 * 'own' (NULL: none) remembers the state of the batch's own product across its records:
 * half of an event's pairs start there, and each lookup hashes and compares the key. The
 * pointer stays valid across records because the batch's first record of its own product
 * is its update (updates[0]), which writes the state: a pending entry of the txn, which
 * no catch-up with other writers of the store forgets and nothing replaces. */
static eddy_err load_product(store_txn *t, uint32_t q, const char *id,
                             Eddy__Store__V1__ProductState **own,
                             Eddy__Store__V1__ProductState **ps, struct store_key *k)
{
    key_init(k, q, T_PRODUCT);
    key_str(k, id);
    if (own && *own) {
        *ps = *own;
        return EDDY_OK;
    }
    bool created;
    eddy_err err = store_txn_obj_get_or_new(t, k, &eddy__store__v1__product_state__descriptor,
                                            (ProtobufCMessage **)ps, &created);
    if (err == EDDY_OK && own)
        *own = *ps;
    return err;
}

/* 'last_ts': the product's newest update before this one. A PROD_WIN row is written only
 * by an update of its window, which ProductState.last_ts then covers (products are never
 * deleted), so a window after last_ts has no row yet: it is created without a read. */
static eddy_err count_window(store_txn *t, uint32_t q, const Eddy__Store__V1__ProductUpdate *u,
                             int64_t last_ts)
{
    struct store_key k;
    key_init(&k, q, T_PROD_WIN);
    key_i64(&k, u->window_start);
    key_str(&k, u->product_id);
    return counts_bump(t, &k, u->event_type, u->category, last_ts < u->window_start);
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
                             const Eddy__Store__V1__ProductUpdate *u,
                             Eddy__Store__V1__ProductState **own)
{
    struct store_key k, ck;
    Eddy__Store__V1__ProductState *ps = NULL;
    eddy_err err = load_product(t, q, u->product_id, own, &ps, &k);
    if (err != EDDY_OK)
        goto out;
    int64_t last_ts = ps->last_ts;
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
        err = count_window(t, q, u, last_ts);
out:
    return err; /* the state belongs to the txn */
}

/* ---- pairs ---------------------------------------------------------------------------
 * Each co-occurrence pair (product, neighbour) is one COOC row: its decayed sum, exact and
 * written only when a pair of it arrives, so a product's neighbours are a pure function of
 * the set of pairs, whatever order they arrive in (the top --max-neighbours are picked
 * when read: product_neighbours). What bounds a product's rows is time, by a rule that is
 * itself order independent: with P the newest pair bucket of the product (pair_bucket,
 * the maximum over its pairs), a row keeps only the contributions of buckets P and P - 1.
 * A pair older than that is dropped; when P moves up, rows that fall out of the two
 * buckets go and the kept rows lose their counts (and category) from before P - 1: the
 * state a set of pairs gives is the same in whatever order they arrived (the unit tests
 * check three). Buckets are --decay-bucket (8) half-lives of --neighbour-half-life wide:
 * at the default half-life (ten years) P never moves, and every pair is kept. */

bool product_pair_pack(const Eddy__Store__V1__CoOccurrencePair *pr, struct pbenc_out *o)
{
    if (pbenc_unknown(&pr->base) || (pr->score && pbenc_unknown(&pr->score->base)))
        return false;
    size_t lcat;
    size_t n = pbenc_decayed_size(pr->score) + pbenc_str_size(pr->category, &lcat) +
               pbenc_u64_size((uint64_t)pr->category_ts);
    if (!pbenc_reserve(o, n))
        return false;
    uint8_t *p = o->buf;
    p = pbenc_put_decayed(p, PB_COOC_SCORE, pr->score);
    p = pbenc_put_str(p, PB_COOC_CATEGORY, pr->category, lcat);
    pbenc_put_u64(p, PB_COOC_CATEGORY_TS, (uint64_t)pr->category_ts);
    return true;
}

static bool cooc_pack(const ProtobufCMessage *m, struct pbenc_out *o)
{
    return product_pair_pack((const Eddy__Store__V1__CoOccurrencePair *)m, o);
}

static void cooc_key(struct store_key *k, uint32_t q, const char *from, const char *to)
{
    key_init(k, q, T_COOC);
    key_lstr(k, from);
    key_str(k, to);
}

/* The keys of a product's COOC rows, packed as (u16 length, bytes) in one buffer. */
struct cooc_keys {
    unsigned char *buf;
    size_t len, cap, n;
    eddy_err err;
};

static int take_cooc_key(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct cooc_keys *l = ud;
    (void)v;
    (void)vlen;
    if (klen > STORE_KEY_MAX)
        return 0;
    if (l->len + 2 + klen > l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 4096;
        while (ncap < l->len + 2 + klen)
            ncap *= 2;
        unsigned char *nb = realloc(l->buf, ncap);
        if (!nb) {
            l->err = EDDY_ERR_NOMEM;
            return 1;
        }
        l->buf = nb;
        l->cap = ncap;
    }
    l->buf[l->len] = (unsigned char)(klen >> 8);
    l->buf[l->len + 1] = (unsigned char)klen;
    memcpy(l->buf + l->len + 2, k, klen);
    l->len += 2 + klen;
    l->n++;
    return 0;
}

/* Rebase one row on the product's new newest bucket 'top': it keeps only what counts in
 * buckets top and top - 1, and goes if nothing does. */
static eddy_err rebase_row(store_txn *t, const struct product_params *p, const struct store_key *k,
                           int64_t top)
{
    Eddy__Store__V1__CoOccurrencePair *pr = NULL;
    eddy_err err = store_txn_obj_get(t, k, &eddy__store__v1__co_occurrence_pair__descriptor,
                                     (ProtobufCMessage **)&pr);
    if (err != EDDY_OK || !pr)
        return err;
    if (!pr->score || pr->score->bucket < top - 1)
        return store_txn_del(t, k);
    bool changed = false;
    if (pr->score->bucket == top - 1 && pr->score->prev != 0) {
        pr->score->prev = 0; /* bucket top - 2 */
        changed = true;
    }
    if (!pb_empty(pr->category) && decay_bucket(&p->neighbours, pr->category_ts) < top - 1) {
        free(pr->category); /* set by a pair that no longer counts */
        pr->category = NULL;
        pr->category_ts = 0;
        changed = true;
    }
    return changed ? store_txn_obj_set(t, k, &pr->base) : EDDY_OK;
}

/* The product 'from' (partition q) has a pair in bucket 'top', newer than every one
 * before: rebase its rows on it. */
static eddy_err rebase_rows(store_txn *t, const struct product_params *p, uint32_t q,
                            const char *from, int64_t top)
{
    struct store_key start, end, k;
    struct cooc_keys l = {0};
    key_init(&start, q, T_COOC);
    key_lstr(&start, from);
    key_prefix_end(&start, &end);
    /* keys first: the scan must not see the txn change under it */
    eddy_err err = store_txn_scan(t, &start, &end, take_cooc_key, &l);
    if (err == EDDY_OK)
        err = l.err;
    for (size_t off = 0; err == EDDY_OK && off < l.len;) {
        k.len = (size_t)l.buf[off] << 8 | l.buf[off + 1];
        memcpy(k.buf, l.buf + off + 2, k.len);
        off += 2 + k.len;
        err = rebase_row(t, p, &k, top);
    }
    free(l.buf);
    return err;
}

static eddy_err apply_pair(store_txn *t, const struct product_params *p, uint32_t q,
                           const Eddy__Store__V1__CoOccurrence *c,
                           Eddy__Store__V1__ProductState **own)
{
    struct store_key k;
    Eddy__Store__V1__ProductState *ps = NULL;
    Eddy__Store__V1__CoOccurrencePair *pr = NULL;
    if (!(c->weight > 0) || pb_empty(c->to_product))
        return EDDY_OK; /* adds nothing */
    eddy_err err = load_product(t, q, c->from_product, own, &ps, &k);
    if (err != EDDY_OK)
        return err;
    int64_t b = decay_bucket(&p->neighbours, c->ts);
    if (b < ps->pair_bucket - 1)
        return EDDY_OK; /* older than what the product's rows count */
    if (b > ps->pair_bucket) {
        if ((err = rebase_rows(t, p, q, c->from_product, b)) != EDDY_OK)
            return err;
        ps->pair_bucket = b;
        if ((err = store_txn_obj_set(t, &k, &ps->base)) != EDDY_OK)
            return err;
    }
    cooc_key(&k, q, c->from_product, c->to_product);
    if ((err = store_txn_obj_edit(t, &k, &eddy__store__v1__co_occurrence_pair__descriptor,
                                  (ProtobufCMessage **)&pr)) != EDDY_OK ||
        (err = decay_ensure(&pr->score)) != EDDY_OK)
        return err;
    /* b >= P - 1 and the row's bucket <= P: decay_add drops nothing that counts */
    decay_add(pr->score, &p->neighbours, c->ts, c->weight);
    if (newer_str(c->ts, c->to_category, pr->category_ts, pr->category)) {
        if ((err = pb_set_str(&pr->category, c->to_category)) != EDDY_OK)
            return err;
        pr->category_ts = c->ts;
    }
    return EDDY_OK;
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
    store_txn_set_packer(t, &eddy__store__v1__co_occurrence_pair__descriptor, cooc_pack);
    store_txn_index_keys(t, UINT32_C(1) << T_COOC, p->pair_set_bytes);

    /* half of an event's pairs start at its own product: its partition is hashed once */
    const char *own = b->n_updates ? b->updates[0]->product_id : NULL;
    uint32_t own_q = UINT32_MAX;
    Eddy__Store__V1__ProductState *own_ps = NULL; /* borrowed from the txn */
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
        Eddy__Store__V1__ProductState **own_of = is_own ? &own_ps : NULL;
        if (i < b->n_updates)
            err = apply_update(t, p, q, b->updates[i], own_of);
        else
            err = apply_pair(t, p, q, b->pairs[i - b->n_updates], own_of);
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

void product_pairs_key(struct store_key *k, uint32_t partitions, const char *product_id)
{
    key_init(k, partition_of_product(product_id, partitions), T_COOC);
    key_lstr(k, product_id);
}

/* ---- reading neighbours ------------------------------------------------------------- */

struct nb_rows {
    const struct product_params *pp;
    size_t prefix, max_str;
    struct product_neighbour *l;
    size_t n, cap;
    eddy_err err;
};

static int take_row(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct nb_rows *r = ud;
    Eddy__Store__V1__CoOccurrencePair *pr = NULL;
    size_t idlen = klen - r->prefix;
    if (klen <= r->prefix || idlen > r->max_str)
        return 0;
    pr = eddy__store__v1__co_occurrence_pair__unpack(NULL, vlen, (const uint8_t *)v);
    if (!pr)
        return 0; /* a damaged row is left out */
    const char *cat = pr->category ? pr->category : "";
    size_t catlen = strlen(cat);
    if (catlen > r->max_str || !pr->score)
        goto out;
    if (r->n == r->cap) {
        size_t ncap = r->cap ? r->cap * 2 : 64;
        struct product_neighbour *nl = realloc(r->l, ncap * sizeof(*nl));
        if (!nl) {
            r->err = EDDY_ERR_NOMEM;
            goto out;
        }
        r->l = nl;
        r->cap = ncap;
    }
    struct product_neighbour *nb = &r->l[r->n];
    if (!(nb->id = malloc(idlen + 1 + catlen + 1))) {
        r->err = EDDY_ERR_NOMEM;
        goto out;
    }
    memcpy(nb->id, k + r->prefix, idlen);
    nb->id[idlen] = '\0';
    nb->category = nb->id + idlen + 1;
    memcpy(nb->category, cat, catlen + 1);
    nb->bucket = pr->score->bucket;
    nb->cur = pr->score->cur;
    nb->prev = pr->score->prev;
    r->n++;
out:
    protobuf_c_message_free_unpacked(&pr->base, NULL);
    return r->err != EDDY_OK;
}

static int by_score(const void *a, const void *b)
{
    const struct product_neighbour *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return strcmp(x->id, y->id);
}

eddy_err product_neighbours(store *s, const struct product_params *pp, const char *product_id,
                            size_t max, size_t max_str, struct product_neighbour **out,
                            size_t *n)
{
    struct store_key start, end;
    struct nb_rows r = {pp, 0, max_str, NULL, 0, 0, EDDY_OK};
    *out = NULL;
    *n = 0;
    product_pairs_key(&start, pp->partitions, product_id);
    key_prefix_end(&start, &end);
    r.prefix = start.len;
    eddy_err err = store_scan(s, &start, &end, take_row, &r);
    if (err == EDDY_OK)
        err = r.err;
    if (err != EDDY_OK) {
        product_neighbours_free(r.l, r.n);
        return err;
    }
    /* Each score at the start of the newest bucket B among the rows: the same factor off
     * its value at any event time (so the same order at every time), a function of the
     * product's rows alone (so the same on every node, whatever its newest event), and
     * exact powers of two, so no exp2 and no overflow however far the buckets are from
     * zero. The rows are at most one bucket apart (0 or 1 in a converted or rebased
     * product): nothing underflows. */
    int64_t top = INT64_MIN;
    for (size_t i = 0; i < r.n; i++)
        if (r.l[i].bucket > top)
            top = r.l[i].bucket;
    for (size_t i = 0; i < r.n; i++) {
        struct product_neighbour *nb = &r.l[i];
        struct decay_sum v = {nb->bucket, nb->cur, nb->prev};
        nb->score = decay_value_at_bucket(&v, &pp->neighbours, top);
    }
    if (r.n > 1)
        qsort(r.l, r.n, sizeof(*r.l), by_score);
    size_t keep = r.n < max ? r.n : max;
    for (size_t i = keep; i < r.n; i++)
        free(r.l[i].id);
    *out = r.l;
    *n = keep;
    return EDDY_OK;
}

void product_neighbours_free(struct product_neighbour *l, size_t n)
{
    for (size_t i = 0; l && i < n; i++)
        free(l[i].id);
    free(l);
}

/* ---- conversion of format 2 ---------------------------------------------------------- */

/* Format 2 product 'ps' (at 'k', partition q): its neighbour list becomes COOC rows. The
 * list held the strongest --max-neighbours by arrival: the rows are what it kept, no more. */
static eddy_err convert_one(store_txn *t, uint32_t q,
                            const struct store_key *k, Eddy__Store__V1__ProductState *ps)
{
    const char *id = (const char *)k->buf + 3;
    size_t idlen = k->len - 3;
    char from[STORE_KEY_MAX + 1];
    memcpy(from, id, idlen);
    from[idlen] = '\0';
    int64_t top = ps->pair_bucket;
    for (size_t i = 0; i < ps->n_neighbours; i++)
        if (ps->neighbours[i]->score && ps->neighbours[i]->score->bucket > top)
            top = ps->neighbours[i]->score->bucket;
    eddy_err err = EDDY_OK;
    for (size_t i = 0; i < ps->n_neighbours && err == EDDY_OK; i++) {
        Eddy__Store__V1__Neighbour *nb = ps->neighbours[i];
        if (!nb->score || pb_empty(nb->product_id) || nb->score->bucket < top - 1)
            continue;
        Eddy__Store__V1__CoOccurrencePair pr = EDDY__STORE__V1__CO_OCCURRENCE_PAIR__INIT;
        Eddy__Store__V1__Decayed d = *nb->score;
        if (d.bucket == top - 1)
            d.prev = 0;
        pr.score = &d;
        pr.category = nb->category;
        struct store_key ck;
        cooc_key(&ck, q, from, nb->product_id);
        err = store_txn_put_msg(t, &ck, &pr.base);
    }
    for (size_t i = 0; i < ps->n_neighbours; i++)
        protobuf_c_message_free_unpacked(&ps->neighbours[i]->base, NULL);
    free(ps->neighbours);
    ps->neighbours = NULL;
    ps->n_neighbours = 0;
    ps->pair_bucket = top;
    if (err == EDDY_OK)
        err = store_txn_obj_set(t, k, &ps->base);
    return err;
}

eddy_err product_convert(store_txn *t, uint32_t q, size_t *converted)
{
    struct store_key start, end, k;
    struct cooc_keys l = {0};
    *converted = 0;
    store_txn_set_packer(t, &eddy__store__v1__product_state__descriptor, product_pack);
    key_init(&start, q, T_PRODUCT);
    key_prefix_end(&start, &end);
    eddy_err err = store_txn_scan(t, &start, &end, take_cooc_key, &l);
    if (err == EDDY_OK)
        err = l.err;
    for (size_t off = 0; err == EDDY_OK && off < l.len;) {
        Eddy__Store__V1__ProductState *ps = NULL;
        k.len = (size_t)l.buf[off] << 8 | l.buf[off + 1];
        memcpy(k.buf, l.buf + off + 2, k.len);
        off += 2 + k.len;
        err = store_txn_obj_get(t, &k, &eddy__store__v1__product_state__descriptor,
                                (ProtobufCMessage **)&ps);
        if (err == EDDY_ERR_CORRUPT) {
            err = EDDY_OK; /* logged; left as it is, for the readers to find as before */
            continue;
        }
        if (err == EDDY_OK && ps && ps->n_neighbours) {
            err = convert_one(t, q, &k, ps);
            ++*converted;
        }
    }
    free(l.buf);
    return err;
}
