/* Stage-2 product state does not depend on the order in which stage-2 batches arrive (they
 * come from every user partition, in a cluster over the network): the same batches
 * applied in three orders give the same stored PRODUCT rows, byte for byte — category,
 * brand and price included, which events without them, later events and ties at one event
 * time used to make order-dependent. And each batch applies once: the exactly-once marks,
 * one row per product partition, also when they come from rows of the older layout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/partition.h"
#include "node/state/product.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

#include "engine_fixture.h"

#define N 12

struct updates {
    Eddy__Store__V1__ProductUpdate u[N], *uptr[N];
    Eddy__Store__V1__Stage2Batch b[N];
};

/* One product: later events without a category or price, two events at one time with
 * different prices and brands, one older event with the "newest" looking values. */
static void make(struct updates *s)
{
    static const struct {
        int64_t dt;
        const char *cat, *brand;
        double price;
    } spec[N] = {
        {0, "books", "acme", 10},     {60, "", "", 0},          {60, "toys", "zeta", 12},
        {60, "games", "beta", 11},    {120, "", "", 0},         {30, "zzz", "zzz", 99},
        {180, "books", "", 0},        {180, "", "acme", 0},     {240, "", "", 13},
        {240, "", "", 12.5},          {300, "", "", 0},         {10, "aaa", "aaa", 1},
    };
    for (int i = 0; i < N; i++) {
        eddy__store__v1__product_update__init(&s->u[i]);
        s->u[i].product_id = "p-1";
        s->u[i].category = (char *)spec[i].cat;
        s->u[i].brand = (char *)spec[i].brand;
        s->u[i].price = spec[i].price;
        s->u[i].event_type = VIEW;
        s->u[i].ts = T0 + spec[i].dt * 1000;
        s->u[i].window_start = T0;
        s->uptr[i] = &s->u[i];
        eddy__store__v1__stage2_batch__init(&s->b[i]);
        s->b[i].source_partition = (uint32_t)i;
        s->b[i].source_seq = 0;
        s->b[i].updates = &s->uptr[i];
        s->b[i].n_updates = 1;
    }
}

/* Apply the batches in 'order' to a fresh store; the product's stored bytes. */
static char *apply_in(struct updates *s, const int *order, size_t *len)
{
    char *dir = tmpdir_for("product");
    store *st = NULL;
    char err[256];
    struct store_opts so = {dir, 0, 0};
    assert_int_equal(store_open(&so, &st, err, sizeof(err)), EDDY_OK);
    store_txn *t = store_txn_new(st);
    struct product_params p = {FIXTURE_PARTITIONS, {86400000, 8}, {86400000, 8}, 50};
    for (int i = 0; i < N; i++)
        assert_int_equal(product_apply(t, &p, &s->b[order[i]], NULL, NULL), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);
    Eddy__Store__V1__ProductState *ps = NULL;
    assert_int_equal(product_get(st, FIXTURE_PARTITIONS, "p-1", &ps), EDDY_OK);
    assert_non_null(ps);
    assert_string_equal(ps->category, "books"); /* the newest event that had one */
    assert_string_equal(ps->brand, "acme");
    assert_true(ps->price == 13);               /* of the two at T0+240 s, the greater */
    assert_int_equal(ps->last_ts, T0 + 300000);
    *len = eddy__store__v1__product_state__get_packed_size(ps);
    char *bytes = malloc(*len);
    assert_non_null(bytes);
    eddy__store__v1__product_state__pack(ps, (uint8_t *)bytes);
    eddy__store__v1__product_state__free_unpacked(ps, NULL);
    store_close(st);
    rmrf(dir);
    free(dir);
    return bytes;
}

static void test_attributes_do_not_depend_on_arrival_order(void **state)
{
    (void)state;
    struct updates s;
    make(&s);
    static const int orders[3][N] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11},
        {11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0},
        {5, 2, 9, 0, 7, 3, 11, 8, 1, 10, 6, 4},
    };
    size_t len0, len;
    char *first = apply_in(&s, orders[0], &len0);
    for (int o = 1; o < 3; o++) {
        char *other = apply_in(&s, orders[o], &len);
        assert_int_equal(len, len0);
        assert_memory_equal(other, first, len);
        free(other);
    }
    free(first);
}


/* Apply 'b' in a txn of its own (committed); whether the product exists afterwards. */
static bool apply_one(store *st, store_txn *t, const Eddy__Store__V1__Stage2Batch *b)
{
    struct product_params p = {FIXTURE_PARTITIONS, {86400000, 8}, {86400000, 8}, 50};
    assert_int_equal(product_apply(t, &p, b, NULL, NULL), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    Eddy__Store__V1__ProductState *ps = NULL;
    assert_int_equal(product_get(st, FIXTURE_PARTITIONS, "p-1", &ps), EDDY_OK);
    if (ps)
        eddy__store__v1__product_state__free_unpacked(ps, NULL);
    return ps != NULL;
}

static char *dump_table(store *st, enum store_table table)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(store_dump(st, 1u << table, f), EDDY_OK);
    fclose(f);
    return buf;
}

static void test_marks_apply_each_batch_once(void **state)
{
    (void)state;
    struct updates s;
    make(&s);
    char *dir = tmpdir_for("product-marks");
    store *st = NULL;
    char err[256];
    struct store_opts so = {dir, 0, 0};
    assert_int_equal(store_open(&so, &st, err, sizeof(err)), EDDY_OK);
    uint32_t q = partition_of_product("p-1", FIXTURE_PARTITIONS);

    /* rows of the older layout: source 2 applied up to seq 5, source 0 up to seq 0 */
    store_txn *t = store_txn_new(st);
    static const struct { uint16_t src; uint64_t next; } old[] = {{2, 6}, {0, 1}};
    for (size_t i = 0; i < 2; i++) {
        struct store_key k, v;
        key_init(&k, q, T_S2_HW);
        key_u16(&k, old[i].src);
        v.len = 0;
        key_u64(&v, old[i].next);
        assert_int_equal(store_txn_put(t, &k, v.buf, v.len), EDDY_OK);
    }
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);

    Eddy__Store__V1__Stage2Batch *b = &s.b[0];
    t = store_txn_new(st);
    b->source_partition = 2;
    b->source_seq = 5;
    assert_false(apply_one(st, t, b)); /* below the old row's mark: applied before */
    b->source_seq = 6;
    assert_true(apply_one(st, t, b));
    char *after = dump_table(st, T_PRODUCT);
    assert_true(apply_one(st, t, b)); /* again, from the txn's kept marks */
    store_txn_free(t);
    t = store_txn_new(st);
    assert_true(apply_one(st, t, b)); /* again, from the stored row */
    char *again = dump_table(st, T_PRODUCT);
    assert_string_equal(again, after);
    b->source_partition = 3;
    b->source_seq = 0;
    assert_true(apply_one(st, t, b)); /* another source: applied */
    char *third = dump_table(st, T_PRODUCT);
    assert_string_not_equal(third, after);
    store_txn_free(t);

    /* one row, the older ones gone: next_seq 1, 0, 7, 1 for sources 0..3 */
    char *marks = dump_table(st, T_S2_HW);
    char want[64];
    snprintf(want, sizeof(want), "%04x%02x 0a0401000701\n", q, T_S2_HW);
    assert_string_equal(marks, want);
    free(marks);
    free(after);
    free(again);
    free(third);
    store_close(st);
    rmrf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attributes_do_not_depend_on_arrival_order),
        cmocka_unit_test(test_marks_apply_each_batch_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
