/* The decoders of values read back from LevelDB (node/state/): the first byte picks the
 * value's type, the rest is its bytes as stored. Each is decoded as the node decodes it and
 * handed to the code that reads it; where a hand-written codec stands beside protobuf-c
 * (model_unpack_for_recommend, model_last_ts, model_pack, product_state_pack) the two must
 * agree on what a writer can store, as their headers promise. A log record is read by
 * logrec_unpack (either encoding); an event it gives back encodes again to a record that
 * decodes to the same event. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "node/state/counts.h"
#include "node/state/decay.h"
#include "node/state/logrec.h"
#include "node/state/model.h"
#include "node/state/pbenc.h"
#include "node/state/product.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct model_params MP = {{7 * 86400000LL, 8}, 20, 50, 50};
static const struct decay_params POP = {86400000, 8};

/* An arena as Recommend gives model_unpack_for_recommend: freed all at once. */
struct arena {
    void **blocks;
    size_t n, cap;
};

static void *arena_alloc(void *ud, size_t size)
{
    struct arena *a = ud;
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        void **b = realloc(a->blocks, cap * sizeof(*b));
        if (!b)
            return NULL;
        a->blocks = b;
        a->cap = cap;
    }
    void *p = malloc(size ? size : 1);
    if (p)
        a->blocks[a->n++] = p;
    return p;
}

static void arena_free_one(void *ud, void *p)
{
    (void)ud;
    (void)p; /* everything goes at once */
}

static void arena_release(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->blocks[i]);
    free(a->blocks);
}

/* protobuf-c's encoding of 'm' must be what the hand-written packer wrote. */
static void same_as_protobuf_c(const ProtobufCMessage *m, const uint8_t *buf, size_t len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *ref = malloc(n ? n : 1);
    if (!ref)
        abort();
    protobuf_c_message_pack(m, ref);
    if (n != len || memcmp(ref, buf, n) != 0)
        abort();
    free(ref);
}

static bool same_str(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool same_decayed(const Eddy__Store__V1__Decayed *a, const Eddy__Store__V1__Decayed *b)
{
    if (!a || !b)
        return !a == !b;
    return a->bucket == b->bucket && a->cur == b->cur && a->prev == b->prev;
}

static bool same_recent(Eddy__Store__V1__Recent *const *a, Eddy__Store__V1__Recent *const *b,
                        size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!same_str(a[i]->id, b[i]->id) || a[i]->ts != b[i]->ts)
            return false;
    }
    return true;
}

/* model_unpack_for_recommend gives the fields Recommend reads as protobuf-c does ('full':
 * its decode of the same canonical bytes, or NULL: only decode). */
static void check_fast_model(const uint8_t *buf, size_t len, const Eddy__Store__V1__UserModel *full)
{
    struct arena a = {0};
    ProtobufCAllocator alloc = {arena_alloc, arena_free_one, &a};
    Eddy__Store__V1__UserModel *m = NULL;
    eddy_err err = model_unpack_for_recommend(buf, len, &alloc, &m);
    if (err == EDDY_OK && full) {
        if (m->n_categories != full->n_categories || m->n_views != full->n_views ||
            m->n_purchases != full->n_purchases || m->n_cart != full->n_cart ||
            m->last_ts != full->last_ts)
            abort();
        for (size_t i = 0; i < m->n_categories; i++) {
            if (!same_str(m->categories[i]->name, full->categories[i]->name) ||
                !same_decayed(m->categories[i]->score, full->categories[i]->score))
                abort();
        }
        if (!same_recent(m->views, full->views, m->n_views) ||
            !same_recent(m->purchases, full->purchases, m->n_purchases))
            abort();
        for (size_t i = 0; i < m->n_cart; i++) {
            if (!same_str(m->cart[i]->product_id, full->cart[i]->product_id) ||
                m->cart[i]->in_cart != full->cart[i]->in_cart)
                abort();
        }
    }
    if (err == EDDY_OK) {
        struct affinity top[8];
        model_top_categories(m, &MP, top, 8);
    }
    arena_release(&a);
}

/* Whether 'buf' is exactly protobuf-c's encoding of 'm': a value a writer can have
 * stored. protobuf-c is lax with wire types (it reads a bool sent as fixed64 as true, the
 * hand-written reader skips it as protobuf does), so the two readers are compared on
 * canonical bytes only; on any other bytes they only must not crash or leak. */
static bool canonical(const ProtobufCMessage *m, const uint8_t *buf, size_t len)
{
    if (!m || protobuf_c_message_get_packed_size(m) != len)
        return false;
    uint8_t *again = malloc(len ? len : 1);
    if (!again)
        abort();
    protobuf_c_message_pack(m, again);
    bool same = memcmp(again, buf, len) == 0;
    free(again);
    return same;
}

static void user_model(const uint8_t *buf, size_t len)
{
    Eddy__Store__V1__UserModel *m = eddy__store__v1__user_model__unpack(NULL, len, buf);
    bool exact = canonical(m ? &m->base : NULL, buf, len);
    int64_t ts;
    if (model_last_ts(buf, len, &ts) && exact && ts != m->last_ts)
        abort();
    check_fast_model(buf, len, exact ? m : NULL);
    if (!m)
        return;
    struct pbenc_out o = {0};
    if (model_pack(m, &o))
        same_as_protobuf_c(&m->base, o.buf, o.len);
    free(o.buf);
    Eddy__V1__UserProfile *pr = NULL;
    if (model_to_profile(m, &MP, "u-1", &pr) == EDDY_OK)
        model_profile_free(pr);
    struct affinity top[8];
    model_top_categories(m, &MP, top, 8);
    (void)model_in_cart(m, "p-1");
    /* the writer applies the next event to the stored model */
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = "e-1";
    ev.user_id = "u-1";
    ev.timestamp_ms = m->last_ts;
    ev.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART;
    ev.product_id = "p-1";
    ev.category = "shoes";
    ev.brand = "acme";
    ev.price = 10;
    (void)model_apply(m, &MP, &ev);
    eddy__store__v1__user_model__free_unpacked(m, NULL);
}

static void product_state(const uint8_t *buf, size_t len)
{
    Eddy__Store__V1__ProductState *ps = eddy__store__v1__product_state__unpack(NULL, len, buf);
    if (!ps)
        return;
    struct pbenc_out o = {0};
    if (product_state_pack(ps, &o))
        same_as_protobuf_c(&ps->base, o.buf, o.len);
    free(o.buf);
    (void)decay_value(ps->popularity, &POP, ps->last_ts);
    for (size_t i = 0; i < ps->n_neighbours; i++)
        (void)decay_value(ps->neighbours[i]->score, &POP, ps->last_ts);
    eddy__store__v1__product_state__free_unpacked(ps, NULL);
}

static void decayed(const uint8_t *buf, size_t len)
{
    Eddy__Store__V1__Decayed *d = eddy__store__v1__decayed__unpack(NULL, len, buf);
    if (!d)
        return;
    (void)decay_value(d, &POP, d->bucket);
    decay_add(d, &POP, 1800000000000LL, 1.0); /* the next event at today's time */
    eddy__store__v1__decayed__free_unpacked(d, NULL);
}

static void counts(const uint8_t *buf, size_t len)
{
    Eddy__Store__V1__Counts *c = eddy__store__v1__counts__unpack(NULL, len, buf);
    if (!c)
        return;
    Eddy__Store__V1__Counts sum = EDDY__STORE__V1__COUNTS__INIT;
    counts_add(&sum, c);
    counts_add(&sum, c);
    for (int t = 0; t <= EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH; t++)
        (void)counts_get(&sum, (Eddy__V1__EventType)t);
    eddy__store__v1__counts__free_unpacked(c, NULL);
}

static void stage2_batch(const uint8_t *buf, size_t len)
{
    Eddy__Store__V1__Stage2Batch *b = eddy__store__v1__stage2_batch__unpack(NULL, len, buf);
    if (!b)
        return;
    for (size_t i = 0; i < product_records(b); i++) {
        if (!product_record_key(b, i))
            abort();
    }
    eddy__store__v1__stage2_batch__free_unpacked(b, NULL);
}

/* The protobuf bytes of 'ev' (caller frees): how two events are compared. */
static uint8_t *event_bytes(const Eddy__V1__Event *ev, size_t *len)
{
    *len = eddy__v1__event__get_packed_size(ev);
    uint8_t *b = malloc(*len ? *len : 1);
    if (b)
        eddy__v1__event__pack(ev, b);
    return b;
}

static void log_record(const uint8_t *buf, size_t len)
{
    Eddy__Store__V1__LogRecord *r = logrec_unpack(buf, len);
    if (!r)
        return;
    struct pbenc_out o = {NULL, 0, NULL, 0};
    if (r->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_EVENT && r->event &&
        logrec_pack_event(r->event, &o)) {
        Eddy__Store__V1__LogRecord *again = logrec_unpack(o.buf, o.len);
        if (!again || !again->event)
            abort(); /* a record the encoder wrote does not read back */
        size_t n1, n2;
        uint8_t *b1 = event_bytes(r->event, &n1), *b2 = event_bytes(again->event, &n2);
        if (b1 && b2 && (n1 != n2 || memcmp(b1, b2, n1) != 0))
            abort(); /* it reads back as another event */
        free(b1);
        free(b2);
        eddy__store__v1__log_record__free_unpacked(again, NULL);
        free(o.buf);
    }
    eddy__store__v1__log_record__free_unpacked(r, NULL);
}

static void any(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, buf);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *buf = data + 1;
    size_t len = size - 1;
    switch (data[0] % 9) {
    case 0: user_model(buf, len); break;
    case 1: product_state(buf, len); break;
    case 2: decayed(buf, len); break;
    case 3: counts(buf, len); break;
    case 4: stage2_batch(buf, len); break;
    case 5: log_record(buf, len); break;
    case 6: any(&eddy__store__v1__stage2_marks__descriptor, buf, len); break;
    case 7: any(&eddy__store__v1__partition_meta__descriptor, buf, len); break;
    case 8: any(&eddy__store__v1__dedup__descriptor, buf, len); break;
    }
    return 0;
}
