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

static bool lists(const Eddy__Store__V1__Impression *imp, const char *product)
{
    for (size_t i = 0; i < imp->n_products; i++) {
        if (strcmp(imp->products[i], product) == 0)
            return true;
    }
    return false;
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

/* Add to the counts of (experiment, variant) in partition p: 'impressions', one for the
 * first event of 'kind' attributed to an impression (0: none), and 'revenue'. */
static eddy_err count(store_txn *t, uint32_t p, const char *experiment, const char *variant,
                      uint64_t impressions, unsigned kind, double revenue, double revenue_sq)
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
    c->impressions += impressions;
    c->clicks += kind == ATTR_CLICK;
    c->add_to_carts += kind == ATTR_CART;
    c->purchases += kind == ATTR_PURCHASE;
    c->revenue += revenue;
    c->revenue_sq += revenue_sq;
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
    return err == EDDY_OK ? count(t, p, imp->experiment, imp->variant, 1, 0, 0, 0) : err;
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
    if (!first && revenue == 0)
        return EDDY_OK;
    /* the impression's revenue r grows by x: its square by 2rx + x^2 */
    double sq = 2 * e->revenue * revenue + revenue * revenue;
    e->done |= kind;
    e->revenue += revenue;
    if ((err = store_txn_obj_set(t, &k, &ui->base)) != EDDY_OK)
        return err;
    return count(t, p, e->impression->experiment, e->impression->variant, 0,
                 first ? kind : 0, revenue, sq);
}
