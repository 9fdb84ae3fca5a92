/* Impressions and the attribution of events to them, inside the deterministic apply. */
#include "node/state/attribution.h"

#include <stdlib.h>
#include <string.h>

#include "common/pbutil.h"

unsigned attribution_kind(Eddy__V1__EventType type)
{
    switch (type) {
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK: return ATTR_CLICK;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART: return ATTR_CART;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE: return ATTR_PURCHASE;
    default: return 0;
    }
}

/* The index of 'product' in the impression's list, or -1. */
static int product_index(const Eddy__Store__V1__Impression *imp, const char *product)
{
    for (size_t i = 0; i < imp->n_products; i++) {
        if (strcmp(imp->products[i], product) == 0)
            return (int)i;
    }
    return -1;
}

static bool lists(const Eddy__Store__V1__Impression *imp, const char *product)
{
    return product_index(imp, product) >= 0;
}

bool attribution_hit(const Eddy__Store__V1__UserImpressions__Entry *e, const Eddy__V1__Event *ev)
{
    unsigned kind = attribution_kind(ev->event_type);
    int at = e->impression && !pb_empty(ev->product_id)
                 ? product_index(e->impression, ev->product_id) : -1;
    if (at < 0 || !(kind == ATTR_CLICK || kind == ATTR_PURCHASE))
        return false;
    for (size_t i = 0; i < e->n_hits; i++) {
        if (e->hits[i] == (uint32_t)at)
            return false;
    }
    return true;
}

int attribution_find(const Eddy__Store__V1__UserImpressions *ui, const Eddy__V1__Event *ev)
{
    unsigned kind = attribution_kind(ev->event_type);
    if (!ui || !kind || pb_empty(ev->product_id))
        return -1;
    bool by_id = !pb_empty(ev->recommendation_id);
    for (size_t i = ui->n_entries; i-- > 0;) {
        const Eddy__Store__V1__Impression *imp = ui->entries[i]->impression;
        if (!imp)
            continue;
        if (by_id) {
            if (strcmp(imp->recommendation_id, ev->recommendation_id) == 0)
                return lists(imp, ev->product_id) ? (int)i : -1;
            continue;
        }
        int64_t window = kind == ATTR_CLICK ? imp->click_window_ms : imp->purchase_window_ms;
        if (ev->timestamp_ms + ATTRIBUTION_SKEW_MS < imp->ts ||
            ev->timestamp_ms - imp->ts > window)
            continue;
        if (lists(imp, ev->product_id))
            return (int)i;
    }
    return -1;
}

eddy_err attribution_add(Eddy__Store__V1__UserImpressions *ui,
                         const Eddy__Store__V1__Impression *imp)
{
    /* a deep copy through the wire format: every field in its own malloc'd block, as the
     * txn's free_unpacked expects */
    Eddy__Store__V1__Impression copy = *imp;
    copy.user_id = (char *)""; /* the row's key holds it */
    size_t len = eddy__store__v1__impression__get_packed_size(&copy);
    uint8_t *buf = malloc(len ? len : 1);
    Eddy__Store__V1__UserImpressions__Entry *e = malloc(sizeof(*e));
    eddy_err err = EDDY_ERR_NOMEM;
    if (!buf || !e)
        goto out;
    eddy__store__v1__user_impressions__entry__init(e);
    eddy__store__v1__impression__pack(&copy, buf);
    if (!(e->impression = eddy__store__v1__impression__unpack(NULL, len, buf)))
        goto out;
    if (ui->n_entries >= ATTRIBUTION_KEEP) {
        protobuf_c_message_free_unpacked(&ui->entries[0]->base, NULL);
        memmove(ui->entries, ui->entries + 1, (ui->n_entries - 1) * sizeof(*ui->entries));
        ui->n_entries--;
    }
    if ((err = pb_grow((void **)&ui->entries, ui->n_entries, sizeof(*ui->entries))) != EDDY_OK)
        goto out;
    ui->entries[ui->n_entries++] = e;
    e = NULL;
out:
    if (e)
        protobuf_c_message_free_unpacked(&e->base, NULL);
    free(buf);
    return err;
}

void attribution_user_key(struct store_key *k, uint32_t p, const char *user_id)
{
    key_init(k, p, T_IMPR);
    key_lstr(k, user_id);
}

/* What one record adds to the counts of a variant in a partition. */
struct delta {
    uint64_t impressions;
    unsigned kind;        /* the first event of this kind attributed to an impression (0: none) */
    double revenue, revenue_sq;
    uint64_t recommended; /* products listed */
    uint64_t hits;        /* listed products clicked or bought for the first time */
};

static eddy_err count(store_txn *t, uint32_t p, const char *experiment, const char *variant,
                      const struct delta *d)
{
    struct store_key k;
    Eddy__Store__V1__VariantCounts *c = NULL;
    bool created;
    key_init(&k, p, T_EXP_STAT);
    key_lstr(&k, experiment);
    key_str(&k, variant);
    eddy_err err = store_txn_obj_get_or_new(t, &k, &eddy__store__v1__variant_counts__descriptor,
                                            (ProtobufCMessage **)&c, &created);
    if (err != EDDY_OK)
        return err;
    c->impressions += d->impressions;
    c->clicks += d->kind == ATTR_CLICK;
    c->add_to_carts += d->kind == ATTR_CART;
    c->purchases += d->kind == ATTR_PURCHASE;
    c->revenue += d->revenue;
    c->revenue_sq += d->revenue_sq;
    c->recommended += d->recommended;
    c->recommended_hits += d->hits;
    return store_txn_obj_set(t, &k, &c->base);
}

eddy_err attribution_impression(store_txn *t, uint32_t p, const Eddy__Store__V1__Impression *imp)
{
    struct store_key k;
    Eddy__Store__V1__UserImpressions *ui = NULL;
    bool created;
    attribution_user_key(&k, p, imp->user_id);
    eddy_err err = store_txn_obj_get_or_new(t, &k,
                                            &eddy__store__v1__user_impressions__descriptor,
                                            (ProtobufCMessage **)&ui, &created);
    if (err != EDDY_OK)
        return err;
    err = attribution_add(ui, imp);
    eddy_err serr = store_txn_obj_set(t, &k, &ui->base);
    if (err == EDDY_OK)
        err = serr;
    struct delta d = {.impressions = 1, .recommended = imp->n_products};
    return err == EDDY_OK ? count(t, p, imp->experiment, imp->variant, &d) : err;
}

eddy_err attribution_event(store_txn *t, uint32_t p, const Eddy__V1__Event *ev)
{
    struct store_key k;
    Eddy__Store__V1__UserImpressions *ui = NULL;
    unsigned kind = attribution_kind(ev->event_type);
    if (!kind)
        return EDDY_OK;
    attribution_user_key(&k, p, ev->user_id);
    eddy_err err = store_txn_obj_get(t, &k, &eddy__store__v1__user_impressions__descriptor,
                                     (ProtobufCMessage **)&ui);
    if (err != EDDY_OK || !ui)
        return err;
    int i = attribution_find(ui, ev);
    if (i < 0)
        return EDDY_OK;
    Eddy__Store__V1__UserImpressions__Entry *e = ui->entries[i];
    bool first = !(e->done & kind);
    double revenue = kind == ATTR_PURCHASE ? ev->price : 0;
    bool hit = attribution_hit(e, ev);
    if (!first && revenue == 0 && !hit)
        return EDDY_OK;
    if (hit && (err = pb_grow((void **)&e->hits, e->n_hits, sizeof(*e->hits))) != EDDY_OK)
        return err;
    if (hit)
        e->hits[e->n_hits++] = (uint32_t)product_index(e->impression, ev->product_id);
    /* the impression's revenue r grows by x: its square by 2rx + x^2 */
    struct delta d = {.kind = first ? kind : 0, .revenue = revenue,
                      .revenue_sq = 2 * e->revenue * revenue + revenue * revenue,
                      .hits = hit};
    e->done |= kind;
    e->revenue += revenue;
    if ((err = store_txn_obj_set(t, &k, &ui->base)) != EDDY_OK)
        return err;
    return count(t, p, e->impression->experiment, e->impression->variant, &d);
}
