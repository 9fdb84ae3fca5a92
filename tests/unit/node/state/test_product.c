/* Stage-2 product state does not depend on the order in which stage-2 batches arrive (they
 * come from every user partition, in a cluster over the network): the same batches
 * applied in three orders give the same stored PRODUCT rows, byte for byte — category,
 * brand and price included, which events without them, later events and ties at one event
 * time used to make order-dependent; and the co-occurrence pairs (COOC rows, with pairs
 * old enough to be dropped, buckets moving up and categories from the newest pair), which
 * neighbour lists truncated by arrival used to make order-dependent. The strongest
 * neighbours are read best first, and a format-2 neighbour list converts into rows. And
 * each batch applies once: the exactly-once marks, one row per product partition, also
 * when they come from rows of the older layout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/partition.h"
#include "node/state/decay.h"
#include "node/state/product.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

#include "engine_fixture.h"
#include "xorshift.h"

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
    struct product_params p = {FIXTURE_PARTITIONS, {86400000, 8}, {86400000, 8}, 50,
                               PRODUCT_PAIR_SET_DEFAULT};
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
    struct product_params p = {FIXTURE_PARTITIONS, {86400000, 8}, {86400000, 8}, 50,
                               PRODUCT_PAIR_SET_DEFAULT};
    assert_int_equal(product_apply(t, &p, b, NULL, NULL), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    Eddy__Store__V1__ProductState *ps = NULL;
    assert_int_equal(product_get(st, FIXTURE_PARTITIONS, "p-1", &ps), EDDY_OK);
    if (ps)
        eddy__store__v1__product_state__free_unpacked(ps, NULL);
    return ps != NULL;
}

static char *dump_tables(store *st, uint32_t tables)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(store_dump(st, tables, f), EDDY_OK);
    fclose(f);
    return buf;
}

static char *dump_table(store *st, enum store_table table)
{
    return dump_tables(st, 1u << table);
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


static size_t lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* ---- pairs ---- */

#define NP 240   /* batches of one pair each */
#define HL 1000  /* --neighbour-half-life of the pair tests: buckets of 8 s */

struct pairs {
    Eddy__Store__V1__CoOccurrence c[NP], *cptr[NP];
    Eddy__Store__V1__Stage2Batch b[NP];
    char from[NP][8], to[NP][8];
};

/* Pairs among 3 products and 12 neighbours over 40 s of event time (five 8-s buckets):
 * some older than the two buckets a row keeps, some with a category, some without, ties of
 * time between categories. In time order a row fills buckets that a newer pair then takes
 * out of it; in reverse time order the old pairs are dropped on arrival. */
static void make_pairs(struct pairs *s)
{
    static const char *const cats[] = {"", "books", "toys", "games"};
    rng = 88172645463325252ull;
    for (int i = 0; i < NP; i++) {
        snprintf(s->from[i], sizeof(s->from[i]), "p-%d", (int)(next() % 3));
        snprintf(s->to[i], sizeof(s->to[i]), "n-%02d", (int)(next() % 12));
        eddy__store__v1__co_occurrence__init(&s->c[i]);
        s->c[i].from_product = s->from[i];
        s->c[i].to_product = s->to[i];
        /* time grows with i (order 0 is time order, order 1 its reverse), by steps of
         * 500 ms so that pairs tie */
        s->c[i].ts = T0 + ((int64_t)i * 40000 / NP + (int64_t)(next() % 2000)) / 500 * 500;
        s->c[i].weight = 1.0 + (double)(next() % 3);
        s->c[i].to_category = (char *)cats[next() % 4];
        s->cptr[i] = &s->c[i];
        eddy__store__v1__stage2_batch__init(&s->b[i]);
        s->b[i].source_partition = (uint32_t)i; /* of its own: any order is an arrival order */
        s->b[i].source_seq = 7;
        s->b[i].pairs = &s->cptr[i];
        s->b[i].n_pairs = 1;
    }
}

static const struct product_params pair_params = {FIXTURE_PARTITIONS, {86400000, 8}, {HL, 8}, 50,
                                                    PRODUCT_PAIR_SET_DEFAULT};

/* Apply the batches in 'order', committing every 'every' batches, to a fresh store; the
 * stored PRODUCT and COOC rows. */
static char *apply_pairs_in(struct pairs *s, const int *order, int every)
{
    char *dir = tmpdir_for("product-pairs");
    store *st = NULL;
    char err[256];
    struct store_opts so = {dir, 0, 0};
    assert_int_equal(store_open(&so, &st, err, sizeof(err)), EDDY_OK);
    store_txn *t = store_txn_new(st);
    for (int i = 0; i < NP; i++) {
        assert_int_equal(product_apply(t, &pair_params, &s->b[order[i]], NULL, NULL), EDDY_OK);
        if ((i + 1) % every == 0)
            assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    }
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);
    char *rows = dump_tables(st, (1u << T_PRODUCT) | (1u << T_COOC));
    store_close(st);
    rmrf(dir);
    free(dir);
    return rows;
}

static void test_pairs_do_not_depend_on_arrival_order(void **state)
{
    (void)state;
    static struct pairs s;
    make_pairs(&s);
    int orders[3][NP];
    for (int i = 0; i < NP; i++) {
        orders[0][i] = i;
        orders[1][i] = NP - 1 - i;
        orders[2][i] = i;
    }
    for (int i = NP - 1; i > 0; i--) { /* a seeded shuffle */
        int j = (int)(next() % (uint64_t)(i + 1)), x = orders[2][i];
        orders[2][i] = orders[2][j];
        orders[2][j] = x;
    }
    static const int every[3] = {1, 7, NP};
    char *first = apply_pairs_in(&s, orders[0], every[0]);
    for (int o = 1; o < 3; o++) {
        char *other = apply_pairs_in(&s, orders[o], every[o]);
        assert_string_equal(other, first);
        free(other);
    }
    /* 3 products, and fewer rows than the 36 pairs seen: the oldest fell out */
    size_t rows = lines(first);
    assert_true(rows > 3 + 12);
    assert_true(rows < 3 + 36);
    free(first);
}

/* A product's neighbours are read best first, ties by id, at most 'max': the order of their
 * values at any event time. */
static void test_neighbours_read_best_first(void **state)
{
    (void)state;
    char *dir = tmpdir_for("product-read");
    store *st = NULL;
    char err[256];
    struct store_opts so = {dir, 0, 0};
    assert_int_equal(store_open(&so, &st, err, sizeof(err)), EDDY_OK);
    store_txn *t = store_txn_new(st);
    /* "a" 3 at T0, "b" 1 at T0 + 9 s (next bucket: worth 2^9 of one at T0), "c" and "d"
     * 2 each at T0 + 1 s, "e" 0.5 at T0 */
    static const struct { const char *to; int64_t dt; double w; } spec[] = {
        {"a", 0, 3}, {"b", 9000, 1}, {"d", 1000, 2}, {"c", 1000, 2}, {"e", 0, 0.5}};
    for (size_t i = 0; i < 5; i++) {
        Eddy__Store__V1__CoOccurrence c = EDDY__STORE__V1__CO_OCCURRENCE__INIT, *cp = &c;
        Eddy__Store__V1__Stage2Batch b = EDDY__STORE__V1__STAGE2_BATCH__INIT;
        c.from_product = "x";
        c.to_product = (char *)spec[i].to;
        c.ts = T0 + spec[i].dt;
        c.weight = spec[i].w;
        c.to_category = "cat";
        b.source_seq = i;
        b.pairs = &cp;
        b.n_pairs = 1;
        assert_int_equal(product_apply(t, &pair_params, &b, NULL, NULL), EDDY_OK);
    }
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);
    struct product_neighbour *l = NULL;
    size_t n = 0;
    assert_int_equal(product_neighbours(st, &pair_params, "x", 4, 256, &l, &n), EDDY_OK);
    assert_int_equal(n, 4);
    static const char *const want[] = {"b", "c", "d", "a"};
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(l[i].id, want[i]);
        assert_string_equal(l[i].category, "cat");
    }
    for (size_t i = 0; i + 1 < n; i++) {
        Eddy__Store__V1__Decayed x = {PROTOBUF_C_MESSAGE_INIT(&eddy__store__v1__decayed__descriptor),
                                      l[i].bucket, l[i].cur, l[i].prev};
        Eddy__Store__V1__Decayed y = {PROTOBUF_C_MESSAGE_INIT(&eddy__store__v1__decayed__descriptor),
                                      l[i + 1].bucket, l[i + 1].cur, l[i + 1].prev};
        int64_t at = T0 + 20000;
        assert_true(decay_value(&x, &pair_params.neighbours, at) >=
                    decay_value(&y, &pair_params.neighbours, at));
    }
    product_neighbours_free(l, n);
    assert_int_equal(product_neighbours(st, &pair_params, "unknown", 4, 256, &l, &n), EDDY_OK);
    assert_int_equal(n, 0);
    product_neighbours_free(l, n);
    store_close(st);
    rmrf(dir);
    free(dir);
}

/* A format-2 product keeps its neighbours in a list: product_convert makes them rows (the
 * list's scores, older buckets left out as the rows would), empties the list, and runs
 * again without change. */
static void test_format2_list_converts_to_rows(void **state)
{
    (void)state;
    char *dir = tmpdir_for("product-convert");
    store *st = NULL;
    char err[256];
    struct store_opts so = {dir, 0, 0};
    assert_int_equal(store_open(&so, &st, err, sizeof(err)), EDDY_OK);
    uint32_t q = partition_of_product("x", FIXTURE_PARTITIONS);
    Eddy__Store__V1__ProductState ps = EDDY__STORE__V1__PRODUCT_STATE__INIT;
    Eddy__Store__V1__Decayed d[3] = {EDDY__STORE__V1__DECAYED__INIT,
                                     EDDY__STORE__V1__DECAYED__INIT,
                                     EDDY__STORE__V1__DECAYED__INIT};
    Eddy__Store__V1__Neighbour nb[3] = {EDDY__STORE__V1__NEIGHBOUR__INIT,
                                        EDDY__STORE__V1__NEIGHBOUR__INIT,
                                        EDDY__STORE__V1__NEIGHBOUR__INIT};
    Eddy__Store__V1__Neighbour *nbp[3] = {&nb[0], &nb[1], &nb[2]};
    static const char *const ids[] = {"a", "b", "old"};
    static const int64_t buckets[] = {10, 9, 8};
    for (int i = 0; i < 3; i++) {
        d[i].bucket = buckets[i];
        d[i].cur = 1000 * (i + 1);
        d[i].prev = 7;
        nb[i].product_id = (char *)ids[i];
        nb[i].category = "cat";
        nb[i].score = &d[i];
    }
    ps.category = "mine";
    ps.neighbours = nbp;
    ps.n_neighbours = 3;
    struct store_key k;
    product_key(&k, FIXTURE_PARTITIONS, "x");
    store_txn *t = store_txn_new(st);
    assert_int_equal(store_txn_put_msg(t, &k, &ps.base), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);

    size_t converted = 0;
    assert_int_equal(product_convert(t, q, &converted), EDDY_OK);
    assert_int_equal(converted, 1);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    char *rows = dump_tables(st, (1u << T_PRODUCT) | (1u << T_COOC));
    assert_int_equal(product_convert(t, q, &converted), EDDY_OK);
    assert_int_equal(converted, 0);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    char *again = dump_tables(st, (1u << T_PRODUCT) | (1u << T_COOC));
    assert_string_equal(again, rows);
    store_txn_free(t);

    Eddy__Store__V1__ProductState *got = NULL;
    assert_int_equal(product_get(st, FIXTURE_PARTITIONS, "x", &got), EDDY_OK);
    assert_non_null(got);
    assert_int_equal(got->n_neighbours, 0);
    assert_int_equal(got->pair_bucket, 10);
    assert_string_equal(got->category, "mine");
    eddy__store__v1__product_state__free_unpacked(got, NULL);
    struct product_neighbour *l = NULL;
    size_t n = 0;
    assert_int_equal(product_neighbours(st, &pair_params, "x", 10, 256, &l, &n), EDDY_OK);
    assert_int_equal(n, 2); /* "old", two buckets back, counts no more */
    assert_string_equal(l[0].id, "a");
    assert_int_equal(l[0].cur, 1000);
    assert_int_equal(l[0].prev, 7);
    assert_string_equal(l[1].id, "b");
    assert_int_equal(l[1].prev, 0); /* bucket 8 of "b" is older than the two kept */
    product_neighbours_free(l, n);
    free(rows);
    free(again);
    store_close(st);
    rmrf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attributes_do_not_depend_on_arrival_order),
        cmocka_unit_test(test_marks_apply_each_batch_once),
        cmocka_unit_test(test_pairs_do_not_depend_on_arrival_order),
        cmocka_unit_test(test_neighbours_read_best_first),
        cmocka_unit_test(test_format2_list_converts_to_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
