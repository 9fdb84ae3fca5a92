/* The apply's reads through the writer's txn: with key sets (apply_params.key_set_bytes),
 * the first read of a new user's model, of a new product's state and of the impressions of
 * a user who never had one is answered "absent" without a LevelDB read, and the state
 * written is the same as without them; a user's or a product's row of a new window is
 * created without a read. The event an append hands its apply is, field for
 * field, its log record's decode, whether copied or decoded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/partition.h"
#include "node/state/apply.h"
#include "node/state/logrec.h"
#include "node/state/product.h"
#include "node/state/store_txn.h"
#include "tests/support/engine_opts.h"
#include "tests/unit/node/state/store_fixture.h"

#define T0 1800000000000LL

struct run {
    store_txn *t;
    struct engine_opts o;
};

/* --dev's stage 2: applied in the same txn. */
static eddy_err emit(void *ud, const Eddy__Store__V1__Stage2Batch *b)
{
    struct run *r = ud;
    return product_apply(r->t, &r->o.product, b, NULL, NULL);
}

static void apply1(struct run *r, struct part_meta *metas, const char *id, const char *user,
                   Eddy__V1__EventType type, const char *product, int64_t ts)
{
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = (char *)id;
    ev.user_id = (char *)user;
    ev.timestamp_ms = ts;
    ev.event_type = type;
    ev.product_id = (char *)product;
    ev.category = (char *)"books";
    uint32_t p = partition_of_user(user, r->o.apply.partitions);
    enum apply_outcome oc;
    assert_int_equal(apply_event(r->t, &r->o.apply, p, &metas[p], &ev, emit, r, &oc), EDDY_OK);
    assert_int_equal(oc, APPLY_ACCEPTED);
}

/* Three events, a commit after each; the stats of the txn's reads and the state, dumped. */
static char *run_events(store *s, size_t key_set_bytes, struct store_txn_stats *st)
{
    struct run r = {store_txn_new(s), test_engine_opts("")};
    struct part_meta metas[TEST_ENGINE_PARTITIONS];
    assert_non_null(r.t);
    r.o.apply.key_set_bytes = key_set_bytes;
    r.o.apply.product = &r.o.product;
    for (uint32_t p = 0; p < TEST_ENGINE_PARTITIONS; p++)
        assert_int_equal(apply_meta_load(s, p, &metas[p]), EDDY_OK);
    /* u1 and p1 new; then u1 clicks p2, new, and has no impression; then u2, new, clicks
     * p1 and has none: 6 first reads of rows that do not exist */
    apply1(&r, metas, "e1", "u1", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, "p1", T0);
    assert_int_equal(store_txn_commit(r.t, false), EDDY_OK);
    apply1(&r, metas, "e2", "u1", EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK, "p2", T0 + 1000);
    assert_int_equal(store_txn_commit(r.t, false), EDDY_OK);
    apply1(&r, metas, "e3", "u2", EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK, "p1", T0 + 2000);
    for (uint32_t p = 0; p < TEST_ENGINE_PARTITIONS; p++)
        assert_int_equal(apply_meta_save(r.t, p, &metas[p]), EDDY_OK);
    assert_int_equal(store_txn_commit(r.t, false), EDDY_OK);
    store_txn_stats(r.t, st);
    store_txn_free(r.t);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(store_dump(s, UINT32_MAX, f), EDDY_OK);
    fclose(f);
    return buf;
}

static void test_key_sets_spare_reads_of_new_rows(void **state)
{
    struct fx *f = *state;
    struct store_txn_stats without, with;
    char *a = run_events(f->s, 0, &without);
    /* the same events again on an empty store */
    store_close(f->s);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    struct store_opts so = {f->dir, 0, 0};
    char err[256];
    assert_int_equal(store_open(&so, &f->s, err, sizeof(err)), EDDY_OK);
    char *b = run_events(f->s, APPLY_KEY_SET_DEFAULT, &with);

    assert_string_equal(a, b);
    assert_int_equal(with.absent, without.absent + 6);
    assert_int_equal(with.misses + 6, without.misses);
    assert_true(with.key_set_keys >= 4); /* u1, u2, p1, p2 */
    free(a);
    free(b);
}

/* The view count of the USER_WIN or PROD_WIN row of 'id' in window 'ws' (0: no row). */
static uint64_t window_views(store *s, enum store_table table, const char *id, int64_t ws)
{
    struct store_key k;
    if (table == T_USER_WIN) {
        key_init(&k, partition_of_user(id, TEST_ENGINE_PARTITIONS), T_USER_WIN);
        key_lstr(&k, id);
        key_i64(&k, ws);
    } else {
        key_init(&k, partition_of_product(id, TEST_ENGINE_PARTITIONS), T_PROD_WIN);
        key_i64(&k, ws);
        key_str(&k, id);
    }
    char *v = NULL;
    size_t vlen = 0;
    assert_int_equal(store_get(s, &k, &v, &vlen), EDDY_OK);
    if (!v)
        return 0;
    Eddy__Store__V1__Counts *c = eddy__store__v1__counts__unpack(NULL, vlen, (const uint8_t *)v);
    assert_non_null(c);
    uint64_t n = c->view;
    eddy__store__v1__counts__free_unpacked(c, NULL);
    free(v);
    return n;
}

/* A user's or a product's row of a window after its last event cannot exist, so it is
 * created without a read (which would go down to LevelDB to miss); a row that does exist
 * is read and added to, also after the user's model expired (--state-ttl) and started
 * afresh while the rows of its windows stayed. */
static void test_new_window_rows_are_not_read(void **state)
{
    struct fx *f = *state;
    struct run r = {store_txn_new(f->s), test_engine_opts("")};
    struct part_meta metas[TEST_ENGINE_PARTITIONS];
    assert_non_null(r.t);
    r.o.apply.product = &r.o.product;
    r.o.apply.state_ttl_ms = 10000;
    for (uint32_t p = 0; p < TEST_ENGINE_PARTITIONS; p++)
        assert_int_equal(apply_meta_load(f->s, p, &metas[p]), EDDY_OK);
    char other[16]; /* a user of u1's partition, to move its watermark */
    uint32_t p1 = partition_of_user("u1", TEST_ENGINE_PARTITIONS);
    for (int i = 0;; i++) {
        snprintf(other, sizeof(other), "v%d", i);
        if (partition_of_user(other, TEST_ENGINE_PARTITIONS) == p1)
            break;
    }
    const Eddy__V1__EventType view = EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
    apply1(&r, metas, "e1", "u1", view, "p1", T0 + 1000);
    apply1(&r, metas, "e2", other, view, "p2", T0 + 40000); /* watermark T0 + 35 s: u1 expires */
    apply1(&r, metas, "e3", "u1", view, "p1", T0 + 30000);  /* window T0 again */
    assert_int_equal(store_txn_commit(r.t, false), EDDY_OK);
    struct store_txn_stats before, after;
    store_txn_stats(r.t, &before);
    /* a new window: only its event id (DEDUP) and the partition's row are read */
    apply1(&r, metas, "e4", "u1", view, "p1", T0 + 61000);
    store_txn_stats(r.t, &after);
    assert_int_equal(after.misses - before.misses, 2);
    assert_int_equal(store_txn_commit(r.t, false), EDDY_OK);
    assert_int_equal(window_views(f->s, T_USER_WIN, "u1", T0), 2);
    assert_int_equal(window_views(f->s, T_PROD_WIN, "p1", T0), 2);
    assert_int_equal(window_views(f->s, T_USER_WIN, "u1", T0 + 60000), 1);
    assert_int_equal(window_views(f->s, T_PROD_WIN, "p1", T0 + 60000), 1);
    store_txn_free(r.t);
}

/* Two messages equal field for field: scalars bit for bit, strings by value (never NULL,
 * as an unpack leaves them), sub-messages and repeated fields in depth, the same number
 * of unknown fields. */
static void assert_same_msg(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    assert_ptr_equal(a->descriptor, b->descriptor);
    assert_int_equal(a->n_unknown_fields, b->n_unknown_fields);
    const ProtobufCMessageDescriptor *d = a->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *pa = (const char *)a + f->offset, *pb = (const char *)b + f->offset;
        size_t n = 1;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)((const char *)a + f->quantifier_offset);
            assert_int_equal(n, *(const size_t *)((const char *)b + f->quantifier_offset));
            pa = *(const char *const *)pa;
            pb = *(const char *const *)pb;
        }
        size_t es = f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE
                        ? sizeof(void *)
                    : f->type == PROTOBUF_C_TYPE_INT64 || f->type == PROTOBUF_C_TYPE_DOUBLE
                        ? 8
                        : 4;
        for (size_t k = 0; k < n; k++, pa += es, pb += es) {
            if (f->type == PROTOBUF_C_TYPE_STRING) {
                const char *sa = *(const char *const *)pa, *sb = *(const char *const *)pb;
                assert_non_null(sa); /* a decode leaves no NULL string */
                assert_non_null(sb);
                assert_string_equal(sa, sb);
            } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                const ProtobufCMessage *ma = *(const ProtobufCMessage *const *)pa;
                const ProtobufCMessage *mb = *(const ProtobufCMessage *const *)pb;
                assert_true((ma == NULL) == (mb == NULL));
                if (ma)
                    assert_same_msg(ma, mb);
            } else {
                assert_memory_equal(pa, pb, es);
            }
        }
    }
}

/* Append 'ev' at seq 0 of partition 0 and check what the append hands the apply against
 * the decode of the record it wrote; whether it was copied. */
static bool appended_as_logged(store *s, const Eddy__V1__Event *ev)
{
    store_txn *t = store_txn_new(s);
    assert_non_null(t);
    struct part_meta m;
    struct apply_ahead a;
    struct apply_logged logged;
    bool dup;
    assert_int_equal(apply_meta_load(s, 0, &m), EDDY_OK);
    apply_ahead_init(&a, &m);
    assert_int_equal(apply_append_event(t, 0, &m, &a, ev, &logged, &dup), EDDY_OK);
    assert_false(dup);
    assert_non_null(logged.ev);
    struct store_key k;
    const char *v;
    size_t vlen;
    bool found;
    key_init(&k, 0, T_LOG);
    key_u64(&k, 0);
    assert_int_equal(store_txn_get(t, &k, &v, &vlen, &found), EDDY_OK);
    assert_true(found);
    Eddy__Store__V1__LogRecord *r = logrec_unpack((const uint8_t *)v, vlen);
    assert_non_null(r);
    assert_int_equal(r->kind_case, EDDY__STORE__V1__LOG_RECORD__KIND_EVENT);
    assert_same_msg(&r->event->base, &logged.ev->base);
    bool copied = !logged.unpacked;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    apply_logged_release(&logged);
    store_txn_free(t); /* nothing committed: the next call appends at seq 0 again */
    return copied;
}

static void test_appended_event_is_the_records_decode(void **state)
{
    struct fx *f = *state;
    Eddy__V1__Event__MetadataEntry m1 = EDDY__V1__EVENT__METADATA_ENTRY__INIT;
    Eddy__V1__Event__MetadataEntry m2 = EDDY__V1__EVENT__METADATA_ENTRY__INIT;
    Eddy__V1__Event__MetadataEntry *meta[] = {&m1, &m2};
    m1.key = (char *)"color";
    m1.value = (char *)"red";
    m2.key = (char *)"empty"; /* an empty value: not packed */
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = (char *)"e1";
    ev.user_id = (char *)"u1";
    ev.session_id = (char *)"s1";
    ev.timestamp_ms = T0;
    ev.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE;
    ev.product_id = (char *)"p1";
    ev.category = (char *)"books";
    ev.brand = (char *)"acme";
    ev.price = 12.25;
    ev.search_query = (char *)"q";
    ev.recommendation_id = (char *)"r1";
    ev.metadata = meta;
    ev.n_metadata = 2;
    assert_true(appended_as_logged(f->s, &ev)); /* every field: copied */

    ev.session_id = NULL; /* unset strings, one NULL and one "" */
    ev.brand = (char *)"";
    ev.price = 0;
    ev.n_metadata = 0;
    ev.metadata = NULL;
    assert_true(appended_as_logged(f->s, &ev));

    ev.price = -0.0; /* not packed: decoded as 0, so decoded */
    assert_false(appended_as_logged(f->s, &ev));

    /* a field this binary does not know (from a newer client): kept in the record */
    ev.price = 1;
    size_t len = eddy__v1__event__get_packed_size(&ev);
    uint8_t *buf = malloc(len + 2);
    assert_non_null(buf);
    eddy__v1__event__pack(&ev, buf);
    buf[len] = 15 << 3; /* field 15, a varint: 1 */
    buf[len + 1] = 1;
    Eddy__V1__Event *unknown = eddy__v1__event__unpack(NULL, len + 2, buf);
    assert_non_null(unknown);
    assert_int_equal(unknown->base.n_unknown_fields, 1);
    assert_false(appended_as_logged(f->s, unknown));
    eddy__v1__event__free_unpacked(unknown, NULL);
    free(buf);
}

/* DEDUP keys (format 6): an id numbered in sequence or a UUID by its exact compact form
 * (numbered ids share their prefix), a short id as it is, a long id with no shorter form
 * by 0x05 and its 16-byte hash; every key distinct. */
static void test_dedup_keys(void **state)
{
    (void)state;
    static const struct {
        const char *id;
        size_t len;      /* of the key after partition and table */
        int first;       /* its first byte, -1: any */
    } cases[] = {
        {"r1a25062aa32-3-123456", 1 + 15 + 3, (15 << 2) | 3},
        {"r1a25062aa32-3-123457", 1 + 15 + 3, (15 << 2) | 3},
        {"0f8fad5b-d9cb-469f-a165-70867728950e", 17, 1},
        {"0F8FAD5B-D9CB-469F-A165-70867728950E", 17, 2},
        {"short-id", 9, 8 << 2},
        {"a-long-id-without-any-number-at-its-end", 17, 0x05},
        {"another-long-id-with-no-number-at-its-end", 17, 0x05},
    };
    size_t n = sizeof(cases) / sizeof(cases[0]);
    struct store_key k[sizeof(cases) / sizeof(cases[0])];
    for (size_t i = 0; i < n; i++) {
        apply_dedup_key(&k[i], 7, cases[i].id, strlen(cases[i].id));
        assert_int_equal(k[i].buf[2], T_DEDUP);
        assert_int_equal(k[i].len, 3 + cases[i].len);
        assert_int_equal(k[i].buf[3], cases[i].first);
        for (size_t j = 0; j < i; j++)
            assert_false(k[i].len == k[j].len && memcmp(k[i].buf, k[j].buf, k[i].len) == 0);
    }
    /* numbered ids in sequence share all but their number's bytes */
    assert_memory_equal(k[0].buf, k[1].buf, 3 + 1 + 15);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dedup_keys),
        cmocka_unit_test_setup_teardown(test_key_sets_spare_reads_of_new_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_window_rows_are_not_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_appended_event_is_the_records_decode, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
