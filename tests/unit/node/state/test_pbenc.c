/* The hand-written encoders (pbenc.h: product_state_pack, model_pack, the txn's Counts
 * packer, the log record of an event) write exactly protobuf-c's bytes, for seeded random messages with the edge cases
 * of proto3 encoding: zero and negative numbers, -0.0, empty and NULL strings, NULL
 * sub-messages, strings and sub-messages over 127 bytes (two-byte lengths); a message with
 * unknown fields is left to protobuf-c. Recommend's partial decode of a user model reads
 * what protobuf-c reads. Every tag the encoders and decoders use is the field's number and
 * wire type in the descriptors protobuf-c generated from store.proto (and eddy.proto's
 * Event), and every field of the messages they write has one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <malloc.h>

#include "node/state/apply.h"
#include "node/state/counts.h"
#include "node/state/model.h"
#include "common/pbutil.h"
#include "node/state/pbenc.h"
#include "node/state/product.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

#include "xorshift.h"

/* A number that is often 0, sometimes negative, sometimes large. */
static int64_t num(void)
{
    switch (next() % 5) {
    case 0: return 0;
    case 1: return -(int64_t)(next() % 100000);
    case 2: return (int64_t)(next() % 300);
    case 3: return (int64_t)next();
    default: return 1800000000000LL + (int64_t)(next() % 1000000);
    }
}

static double dbl(void)
{
    switch (next() % 4) {
    case 0: return 0.0;
    case 1: return -0.0;
    case 2: return (double)(next() % 100000) / 100.0;
    default: return -1.5;
    }
}

/* A malloc'd string: NULL, empty, short, or over 127 bytes. */
static char *str(void)
{
    size_t len;
    switch (next() % 5) {
    case 0: return NULL;
    case 1: len = 0; break;
    case 2: len = 200 + next() % 100; break;
    default: len = 1 + next() % 20; break;
    }
    char *s = malloc(len + 1);
    assert_non_null(s);
    for (size_t i = 0; i < len; i++)
        s[i] = (char)('a' + next() % 26);
    s[len] = '\0';
    return s;
}

static Eddy__Store__V1__Decayed *decayed(bool maybe_null)
{
    if (maybe_null && next() % 4 == 0)
        return NULL;
    Eddy__Store__V1__Decayed *d = malloc(sizeof(*d));
    assert_non_null(d);
    eddy__store__v1__decayed__init(d);
    d->bucket = num();
    d->cur = num();
    d->prev = num();
    return d;
}

static void *array(size_t n, size_t size)
{
    void *a = calloc(n ? n : 1, size);
    assert_non_null(a);
    return a;
}

/* Compare 'got' (from a hand-written encoder) with protobuf-c's bytes of 'm'. */
/* 'o' holds protobuf-c's bytes of 'm', in its scratch if they fit there; freed after. */
static void assert_same_bytes(const ProtobufCMessage *m, struct pbenc_out *o)
{
    size_t want_len = protobuf_c_message_get_packed_size(m);
    uint8_t *want = malloc(want_len ? want_len : 1);
    assert_non_null(want);
    protobuf_c_message_pack(m, want);
    assert_int_equal(o->len, want_len);
    assert_memory_equal(o->buf, want, o->len);
    assert_true((o->buf == o->scratch) == (o->scratch && o->len <= o->cap));
    free(want);
    if (o->buf != o->scratch)
        free(o->buf);
}

static void test_product_state(void **state)
{
    (void)state;
    for (int round = 0; round < 300; round++) {
        Eddy__Store__V1__ProductState *ps = malloc(sizeof(*ps));
        assert_non_null(ps);
        eddy__store__v1__product_state__init(ps);
        ps->category = str();
        ps->brand = str();
        ps->price = dbl();
        ps->popularity = decayed(true);
        ps->last_ts = num();
        ps->category_indexed = str();
        ps->price_ts = num();
        ps->category_ts = num();
        ps->brand_ts = num();
        ps->pair_bucket = num();
        ps->n_neighbours = next() % 60;
        ps->neighbours = array(ps->n_neighbours, sizeof(*ps->neighbours));
        for (size_t i = 0; i < ps->n_neighbours; i++) {
            Eddy__Store__V1__Neighbour *nb = malloc(sizeof(*nb));
            assert_non_null(nb);
            eddy__store__v1__neighbour__init(nb);
            nb->product_id = str();
            nb->category = str();
            nb->score = decayed(true);
            ps->neighbours[i] = nb;
        }
        struct pbenc_out o = {0};
        assert_true(product_state_pack(ps, &o));
        assert_same_bytes(&ps->base, &o);
        eddy__store__v1__product_state__free_unpacked(ps, NULL);
    }
}

static void test_cooc_pair(void **state)
{
    (void)state;
    for (int round = 0; round < 300; round++) {
        Eddy__Store__V1__CoOccurrencePair *pr = malloc(sizeof(*pr));
        assert_non_null(pr);
        eddy__store__v1__co_occurrence_pair__init(pr);
        pr->score = decayed(true);
        pr->category = str();
        pr->category_ts = num();
        uint8_t scratch[24]; /* some rows fit, some do not */
        struct pbenc_out o = {scratch, sizeof(scratch), NULL, 0};
        assert_true(product_pair_pack(pr, &o));
        assert_same_bytes(&pr->base, &o);
        eddy__store__v1__co_occurrence_pair__free_unpacked(pr, NULL);
    }
}

static void recent_list(Eddy__Store__V1__Recent ***arr, size_t *n)
{
    *n = next() % 25;
    *arr = array(*n, sizeof(**arr));
    for (size_t i = 0; i < *n; i++) {
        Eddy__Store__V1__Recent *r = malloc(sizeof(*r));
        assert_non_null(r);
        eddy__store__v1__recent__init(r);
        r->id = str();
        r->category = str();
        r->ts = num();
        r->event_id = str();
        (*arr)[i] = r;
    }
}

static void scored_list(Eddy__Store__V1__Scored ***arr, size_t *n)
{
    *n = next() % 55;
    *arr = array(*n, sizeof(**arr));
    for (size_t i = 0; i < *n; i++) {
        Eddy__Store__V1__Scored *sc = malloc(sizeof(*sc));
        assert_non_null(sc);
        eddy__store__v1__scored__init(sc);
        sc->name = str();
        sc->score = decayed(true);
        (*arr)[i] = sc;
    }
}

static Eddy__Store__V1__UserModel *random_model(void)
{
    Eddy__Store__V1__UserModel *m = malloc(sizeof(*m));
    assert_non_null(m);
    eddy__store__v1__user_model__init(m);
    scored_list(&m->categories, &m->n_categories);
    scored_list(&m->brands, &m->n_brands);
    m->price_min = dbl();
    m->price_max = dbl();
    m->price_sum = decayed(true);
    m->price_n = decayed(true);
    recent_list(&m->views, &m->n_views);
    recent_list(&m->searches, &m->n_searches);
    recent_list(&m->purchases, &m->n_purchases);
    m->n_cart = next() % 55;
    m->cart = array(m->n_cart, sizeof(*m->cart));
    for (size_t i = 0; i < m->n_cart; i++) {
        Eddy__Store__V1__CartEntry *c = malloc(sizeof(*c));
        assert_non_null(c);
        eddy__store__v1__cart_entry__init(c);
        c->product_id = str();
        c->category = str();
        c->ts = num();
        c->event_id = str();
        c->in_cart = next() % 2;
        m->cart[i] = c;
    }
    m->last_ts = num();
    m->events = (uint64_t)num();
    return m;
}

static void test_user_model(void **state)
{
    (void)state;
    for (int round = 0; round < 300; round++) {
        Eddy__Store__V1__UserModel *m = random_model();
        struct pbenc_out o = {0};
        assert_true(model_pack(m, &o));
        assert_same_bytes(&m->base, &o);
        eddy__store__v1__user_model__free_unpacked(m, NULL);
    }
}

/* A protobuf-c allocator that counts the blocks alive, by glibc's own sizes (usable size
 * plus its 8-byte header). Unpacking also allocates and frees scratch space. */
static size_t counted;

static void *counting_alloc(void *ud, size_t n)
{
    (void)ud;
    void *p = malloc(n);
    counted += p ? malloc_usable_size(p) + 8 : 0;
    return p;
}

static void counting_free(void *ud, void *p)
{
    (void)ud;
    counted -= p ? malloc_usable_size(p) + 8 : 0;
    free(p);
}

#if defined(__SANITIZE_ADDRESS__)
#define GLIBC_SIZES 0 /* ASan's allocator sizes blocks its own way */
#else
#define GLIBC_SIZES 1
#endif

/* pb_heap_size finds the blocks unpacking allocates, at their sizes: the budget of the
 * values a txn keeps is charged with it. */
static void test_heap_size(void **state)
{
    (void)state;
    ProtobufCAllocator counting = {counting_alloc, counting_free, NULL};
    for (int round = 0; round < 100; round++) {
        Eddy__Store__V1__UserModel *m = random_model();
        size_t len = protobuf_c_message_get_packed_size(&m->base);
        uint8_t *buf = malloc(len ? len : 1);
        assert_non_null(buf);
        protobuf_c_message_pack(&m->base, buf);
        eddy__store__v1__user_model__free_unpacked(m, NULL);
        counted = 0;
        Eddy__Store__V1__UserModel *u = eddy__store__v1__user_model__unpack(&counting, len, buf);
        assert_non_null(u);
        /* glibc may hand out a block a little larger than asked (a free block that was
         * not worth splitting): within 3 % */
        size_t est = pb_heap_size(&u->base);
        if (GLIBC_SIZES)
            assert_true(est * 100 >= counted * 97 && est <= counted);
        assert_true(est >= len);
        eddy__store__v1__user_model__free_unpacked(u, &counting);
        free(buf);
    }
}

static const char *nonnull(const char *s)
{
    return s ? s : "";
}

static void assert_same_decayed(const Eddy__Store__V1__Decayed *a,
                                const Eddy__Store__V1__Decayed *b)
{
    assert_true((a == NULL) == (b == NULL));
    if (a) {
        assert_true(a->bucket == b->bucket && a->cur == b->cur && a->prev == b->prev);
    }
}

static void assert_same_recent(Eddy__Store__V1__Recent *const *a, size_t na,
                               Eddy__Store__V1__Recent *const *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(nonnull(a[i]->id), nonnull(b[i]->id));
        assert_true(a[i]->ts == b[i]->ts);
    }
}

/* Recommend's partial decode gives protobuf-c's values for every field it reads, and
 * refuses truncated bytes. */
static void test_unpack_for_recommend(void **state)
{
    (void)state;
    for (int round = 0; round < 300; round++) {
        Eddy__Store__V1__UserModel *src = random_model();
        size_t len = protobuf_c_message_get_packed_size(&src->base);
        uint8_t *buf = malloc(len ? len : 1);
        assert_non_null(buf);
        protobuf_c_message_pack(&src->base, buf);
        Eddy__Store__V1__UserModel *want = eddy__store__v1__user_model__unpack(NULL, len, buf);
        Eddy__Store__V1__UserModel *got = NULL;
        assert_non_null(want);
        assert_int_equal(model_unpack_for_recommend(buf, len, NULL, &got), EDDY_OK);
        assert_non_null(got);
        assert_true(got->last_ts == want->last_ts);
        assert_int_equal(got->n_categories, want->n_categories);
        for (size_t i = 0; i < want->n_categories; i++) {
            assert_string_equal(nonnull(got->categories[i]->name),
                                nonnull(want->categories[i]->name));
            assert_same_decayed(got->categories[i]->score, want->categories[i]->score);
        }
        assert_same_recent(got->views, got->n_views, want->views, want->n_views);
        assert_same_recent(got->purchases, got->n_purchases, want->purchases,
                           want->n_purchases);
        assert_int_equal(got->n_cart, want->n_cart);
        for (size_t i = 0; i < want->n_cart; i++) {
            assert_string_equal(nonnull(got->cart[i]->product_id),
                                nonnull(want->cart[i]->product_id));
            assert_int_equal(got->cart[i]->in_cart, want->cart[i]->in_cart);
        }
        assert_int_equal(got->n_brands + got->n_searches, 0); /* not read */
        eddy__store__v1__user_model__free_unpacked(got, NULL);
        if (len > 1) { /* cut inside the last field: refused, as protobuf-c refuses it */
            Eddy__Store__V1__UserModel *cut = NULL;
            assert_null(eddy__store__v1__user_model__unpack(NULL, len - 1, buf));
            assert_int_equal(model_unpack_for_recommend(buf, len - 1, NULL, &cut),
                             EDDY_ERR_CORRUPT);
            if (cut)
                eddy__store__v1__user_model__free_unpacked(cut, NULL);
        }
        eddy__store__v1__user_model__free_unpacked(want, NULL);
        eddy__store__v1__user_model__free_unpacked(src, NULL);
        free(buf);
    }
}

/* Field 15 (varint 1) is in no stored message: it decodes as an unknown field. */
static void test_unknown_fields_left_to_protobuf_c(void **state)
{
    (void)state;
    const uint8_t bytes[] = {0x0a, 0x01, 'x', 0x78, 0x01};
    Eddy__Store__V1__ProductState *ps =
        eddy__store__v1__product_state__unpack(NULL, sizeof(bytes), bytes);
    Eddy__Store__V1__UserModel *m = eddy__store__v1__user_model__unpack(NULL, 2, bytes + 3);
    assert_non_null(ps);
    assert_non_null(m);
    assert_int_equal(ps->base.n_unknown_fields, 1);
    struct pbenc_out o = {0};
    assert_false(product_state_pack(ps, &o));
    assert_false(model_pack(m, &o));
    assert_null(o.buf);
    eddy__store__v1__product_state__free_unpacked(ps, NULL);
    eddy__store__v1__user_model__free_unpacked(m, NULL);
}

/* Window counts go through the txn's packer (counts_bump): what is stored is protobuf-c's
 * encoding of what the txn holds. */
static void test_counts_through_the_txn(void **state)
{
    (void)state;
    char dir[] = "/tmp/eddy-test-pbenc-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct store_opts so = {dir, 0, 0};
    store *s = NULL;
    char err[256];
    assert_int_equal(store_open(&so, &s, err, sizeof(err)), EDDY_OK);
    store_txn *t = store_txn_new(s);
    static const char *cats[] = {"", "books", NULL};
    for (int i = 0; i < 200; i++) {
        struct store_key k;
        key_init(&k, 1, T_PROD_WIN);
        key_u64(&k, (uint64_t)(i % 7));
        assert_int_equal(
            counts_bump(t, &k, (Eddy__V1__EventType)(next() % 8), cats[i % 3], false), EDDY_OK);
        if (i % 10 == 9)
            assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    }
    for (int w = 0; w < 7; w++) {
        struct store_key k;
        key_init(&k, 1, T_PROD_WIN);
        key_u64(&k, (uint64_t)w);
        char *v = NULL;
        size_t vlen = 0;
        assert_int_equal(store_get(s, &k, &v, &vlen), EDDY_OK);
        assert_non_null(v);
        Eddy__Store__V1__Counts *c =
            eddy__store__v1__counts__unpack(NULL, vlen, (const uint8_t *)v);
        assert_non_null(c);
        assert_true(counts_get(c, EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED) > 0);
        struct pbenc_out o = {NULL, 0, malloc(vlen ? vlen : 1), vlen};
        assert_non_null(o.buf);
        memcpy(o.buf, v, vlen);
        assert_same_bytes(&c->base, &o);
        eddy__store__v1__counts__free_unpacked(c, NULL);
        free(v);
    }
    store_txn_free(t);
    store_close(s);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* The wire type protobuf-c writes a field with. */
static unsigned wire_of(const ProtobufCFieldDescriptor *f)
{
    if (f->label == PROTOBUF_C_LABEL_REPEATED && (f->flags & PROTOBUF_C_FIELD_FLAG_PACKED))
        return PB_WIRE_LEN;
    switch (f->type) {
    case PROTOBUF_C_TYPE_DOUBLE:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64: return PB_WIRE_I64;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32: return PB_WIRE_I32;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE: return PB_WIRE_LEN;
    default: return PB_WIRE_VARINT; /* the ints, bool, enum */
    }
}

static void test_tags_match_store_proto(void **state)
{
    static const struct {
        const ProtobufCMessageDescriptor *d;
        const char *field;
        uint8_t tag;
    } tags[] = {
        {&eddy__store__v1__decayed__descriptor, "bucket", PB_DECAYED_BUCKET},
        {&eddy__store__v1__decayed__descriptor, "cur", PB_DECAYED_CUR},
        {&eddy__store__v1__decayed__descriptor, "prev", PB_DECAYED_PREV},
        {&eddy__store__v1__scored__descriptor, "name", PB_SCORED_NAME},
        {&eddy__store__v1__scored__descriptor, "score", PB_SCORED_SCORE},
        {&eddy__store__v1__recent__descriptor, "id", PB_RECENT_ID},
        {&eddy__store__v1__recent__descriptor, "category", PB_RECENT_CATEGORY},
        {&eddy__store__v1__recent__descriptor, "ts", PB_RECENT_TS},
        {&eddy__store__v1__recent__descriptor, "event_id", PB_RECENT_EVENT_ID},
        {&eddy__store__v1__cart_entry__descriptor, "product_id", PB_CART_PRODUCT_ID},
        {&eddy__store__v1__cart_entry__descriptor, "category", PB_CART_CATEGORY},
        {&eddy__store__v1__cart_entry__descriptor, "ts", PB_CART_TS},
        {&eddy__store__v1__cart_entry__descriptor, "event_id", PB_CART_EVENT_ID},
        {&eddy__store__v1__cart_entry__descriptor, "in_cart", PB_CART_IN_CART},
        {&eddy__store__v1__user_model__descriptor, "categories", PB_MODEL_CATEGORIES},
        {&eddy__store__v1__user_model__descriptor, "brands", PB_MODEL_BRANDS},
        {&eddy__store__v1__user_model__descriptor, "price_min", PB_MODEL_PRICE_MIN},
        {&eddy__store__v1__user_model__descriptor, "price_max", PB_MODEL_PRICE_MAX},
        {&eddy__store__v1__user_model__descriptor, "price_sum", PB_MODEL_PRICE_SUM},
        {&eddy__store__v1__user_model__descriptor, "price_n", PB_MODEL_PRICE_N},
        {&eddy__store__v1__user_model__descriptor, "views", PB_MODEL_VIEWS},
        {&eddy__store__v1__user_model__descriptor, "searches", PB_MODEL_SEARCHES},
        {&eddy__store__v1__user_model__descriptor, "purchases", PB_MODEL_PURCHASES},
        {&eddy__store__v1__user_model__descriptor, "cart", PB_MODEL_CART},
        {&eddy__store__v1__user_model__descriptor, "last_ts", PB_MODEL_LAST_TS},
        {&eddy__store__v1__user_model__descriptor, "events", PB_MODEL_EVENTS},
        {&eddy__store__v1__counts__descriptor, "view", PB_COUNTS_VIEW},
        {&eddy__store__v1__counts__descriptor, "click", PB_COUNTS_CLICK},
        {&eddy__store__v1__counts__descriptor, "add_to_cart", PB_COUNTS_ADD_TO_CART},
        {&eddy__store__v1__counts__descriptor, "remove_from_cart", PB_COUNTS_REMOVE_FROM_CART},
        {&eddy__store__v1__counts__descriptor, "purchase", PB_COUNTS_PURCHASE},
        {&eddy__store__v1__counts__descriptor, "search", PB_COUNTS_SEARCH},
        {&eddy__store__v1__counts__descriptor, "category", PB_COUNTS_CATEGORY},
        {&eddy__store__v1__neighbour__descriptor, "product_id", PB_NEIGHBOUR_PRODUCT_ID},
        {&eddy__store__v1__neighbour__descriptor, "score", PB_NEIGHBOUR_SCORE},
        {&eddy__store__v1__neighbour__descriptor, "category", PB_NEIGHBOUR_CATEGORY},
        {&eddy__store__v1__product_state__descriptor, "category", PB_PRODUCT_CATEGORY},
        {&eddy__store__v1__product_state__descriptor, "brand", PB_PRODUCT_BRAND},
        {&eddy__store__v1__product_state__descriptor, "price", PB_PRODUCT_PRICE},
        {&eddy__store__v1__product_state__descriptor, "popularity", PB_PRODUCT_POPULARITY},
        {&eddy__store__v1__product_state__descriptor, "neighbours", PB_PRODUCT_NEIGHBOURS},
        {&eddy__store__v1__product_state__descriptor, "last_ts", PB_PRODUCT_LAST_TS},
        {&eddy__store__v1__product_state__descriptor, "category_indexed",
         PB_PRODUCT_CATEGORY_INDEXED},
        {&eddy__store__v1__product_state__descriptor, "price_ts", PB_PRODUCT_PRICE_TS},
        {&eddy__store__v1__product_state__descriptor, "category_ts", PB_PRODUCT_CATEGORY_TS},
        {&eddy__store__v1__product_state__descriptor, "brand_ts", PB_PRODUCT_BRAND_TS},
        {&eddy__store__v1__product_state__descriptor, "pair_bucket", PB_PRODUCT_PAIR_BUCKET},
        {&eddy__store__v1__co_occurrence_pair__descriptor, "score", PB_COOC_SCORE},
        {&eddy__store__v1__co_occurrence_pair__descriptor, "category", PB_COOC_CATEGORY},
        {&eddy__store__v1__co_occurrence_pair__descriptor, "category_ts", PB_COOC_CATEGORY_TS},
        {&eddy__store__v1__stage2_marks__descriptor, "next_seq", PB_MARKS_NEXT_SEQ},
    };
    size_t n = sizeof(tags) / sizeof(tags[0]);
    for (size_t i = 0; i < n; i++) {
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(tags[i].d, tags[i].field);
        if (!f)
            fail_msg("%s.%s: not in store.proto", tags[i].d->name, tags[i].field);
        if (f->id != PB_FIELD(tags[i].tag) || wire_of(f) != PB_WIRE(tags[i].tag))
            fail_msg("%s.%s is field %u, wire type %u in store.proto; its tag 0x%02x says "
                     "field %u, wire type %u",
                     tags[i].d->name, tags[i].field, f->id, wire_of(f), tags[i].tag,
                     PB_FIELD(tags[i].tag), PB_WIRE(tags[i].tag));
        assert_true(tags[i].tag < 0x80); /* the encoders write one-byte tags */
        /* a field added to a message the encoders write must get a tag (and be written) */
        size_t named = 0;
        for (size_t j = 0; j < n; j++)
            named += tags[j].d == tags[i].d;
        if (named != tags[i].d->n_fields)
            fail_msg("%s has %u fields in store.proto, %zu with a tag in pbenc.h",
                     tags[i].d->name, tags[i].d->n_fields, named);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_product_state),
        cmocka_unit_test(test_cooc_pair),
        cmocka_unit_test(test_user_model),
        cmocka_unit_test(test_heap_size),
        cmocka_unit_test(test_unpack_for_recommend),
        cmocka_unit_test(test_unknown_fields_left_to_protobuf_c),
        cmocka_unit_test(test_counts_through_the_txn),
        cmocka_unit_test(test_tags_match_store_proto),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
