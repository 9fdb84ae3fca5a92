/* Event counts by type. */
#include "node/state/counts.h"

#include <stdlib.h>
#include <string.h>

#include "common/pbutil.h"
#include "node/state/pbenc.h"
#include "node/state/store_txn.h"

uint64_t *counts_slot(Eddy__Store__V1__Counts *c, Eddy__V1__EventType type)
{
    switch (type) {
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW: return &c->view;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK: return &c->click;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART: return &c->add_to_cart;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART: return &c->remove_from_cart;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE: return &c->purchase;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH: return &c->search;
    default: return NULL;
    }
}

uint64_t counts_get(const Eddy__Store__V1__Counts *c, Eddy__V1__EventType type)
{
    const uint64_t *s = counts_slot((Eddy__Store__V1__Counts *)c, type);
    if (s)
        return *s;
    return c->view + c->click + c->add_to_cart + c->remove_from_cart + c->purchase + c->search;
}

void counts_add(Eddy__Store__V1__Counts *a, const Eddy__Store__V1__Counts *b)
{
    a->view += b->view;
    a->click += b->click;
    a->add_to_cart += b->add_to_cart;
    a->remove_from_cart += b->remove_from_cart;
    a->purchase += b->purchase;
    a->search += b->search;
}

/* protobuf_c_message_pack's bytes of a Counts, written directly (pbenc.h): three window
 * counts change per event and are packed at every group commit. */
static bool pack_counts(const ProtobufCMessage *m, struct pbenc_out *o)
{
    const Eddy__Store__V1__Counts *c = (const Eddy__Store__V1__Counts *)m;
    if (pbenc_unknown(m))
        return false;
    const uint64_t v[6] = {c->view, c->click, c->add_to_cart, c->remove_from_cart,
                           c->purchase, c->search};
    size_t lcat, n = pbenc_str_size(c->category, &lcat);
    for (int i = 0; i < 6; i++)
        n += pbenc_u64_size(v[i]);
    if (!pbenc_reserve(o, n))
        return false;
    uint8_t *p = o->buf;
    static const uint8_t tags[6] = {PB_COUNTS_VIEW,     PB_COUNTS_CLICK,
                                    PB_COUNTS_ADD_TO_CART, PB_COUNTS_REMOVE_FROM_CART,
                                    PB_COUNTS_PURCHASE, PB_COUNTS_SEARCH};
    for (int i = 0; i < 6; i++)
        p = pbenc_put_u64(p, tags[i], v[i]);
    pbenc_put_str(p, PB_COUNTS_CATEGORY, c->category, lcat);
    return true;
}

/* A row known absent, created empty and set without the read (the txn owns it). */
static eddy_err counts_new(store_txn *t, const struct store_key *key, Eddy__Store__V1__Counts **c)
{
    if (!(*c = malloc(sizeof(**c))))
        return EDDY_ERR_NOMEM;
    eddy__store__v1__counts__init(*c);
    eddy_err err = store_txn_obj_set(t, key, &(*c)->base);
    if (err != EDDY_OK)
        *c = NULL; /* freed */
    return err;
}

eddy_err counts_bump(store_txn *t, const struct store_key *key, Eddy__V1__EventType type,
                     const char *category, bool absent)
{
    store_txn_set_packer(t, &eddy__store__v1__counts__descriptor, pack_counts);
    Eddy__Store__V1__Counts *c = NULL;
    eddy_err err = absent ? counts_new(t, key, &c)
                          : store_txn_obj_edit(t, key, &eddy__store__v1__counts__descriptor,
                                               (ProtobufCMessage **)&c);
    if (err != EDDY_OK)
        return err;
    uint64_t *slot = counts_slot(c, type);
    if (slot)
        (*slot)++;
    if (!pb_empty(category) && strcmp(c->category, category) != 0)
        err = pb_set_str(&c->category, category);
    return err;
}

Eddy__V1__TypeCounts *counts_to_public(const Eddy__Store__V1__Counts *c)
{
    Eddy__V1__TypeCounts *t = malloc(sizeof(*t));
    if (!t)
        return NULL;
    eddy__v1__type_counts__init(t);
    t->view = c->view;
    t->click = c->click;
    t->add_to_cart = c->add_to_cart;
    t->remove_from_cart = c->remove_from_cart;
    t->purchase = c->purchase;
    t->search = c->search;
    t->total = counts_get(c, EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED);
    return t;
}
