/* The user model's top categories: the best 'max' of every category in decayed-affinity
 * order (ties by name), whatever 'max', for the categories seen in any order; events of the
 * same millisecond give the same model in either order, with no event id kept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/pbutil.h"
#include "node/state/model.h"
#include "node/state/pbenc.h"

#define T0 1800000000000LL

static const struct model_params P = {{7 * 86400000LL, 8}, 20, 50, 50};

static void apply(Eddy__Store__V1__UserModel *m, const char *category, Eddy__V1__EventType type,
                  int64_t ts, int i)
{
    char id[16], pid[16];
    snprintf(id, sizeof(id), "e%d", i);
    snprintf(pid, sizeof(pid), "p%d", i);
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = id;
    ev.user_id = "u1";
    ev.product_id = pid;
    ev.category = (char *)category;
    ev.event_type = type;
    ev.timestamp_ms = ts;
    assert_int_equal(model_apply(m, &P, &ev), EDDY_OK);
}

static Eddy__Store__V1__UserModel *model_new(void)
{
    Eddy__Store__V1__UserModel *m = malloc(sizeof(*m));
    assert_non_null(m);
    eddy__store__v1__user_model__init(m);
    return m;
}

static void test_top_categories_are_the_head_of_the_full_order(void **state)
{
    Eddy__Store__V1__UserModel *m = model_new();
    /* weights: views 1, purchases 5; "d" and "e" tie and are ordered by name */
    const char *cats[] = {"a", "b", "c", "d", "e", "f"};
    int views[] = {1, 4, 2, 3, 3, 0};
    int i = 0;
    for (size_t c = 0; c < 6; c++) {
        for (int v = 0; v < views[c]; v++, i++)
            apply(m, cats[c], EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, i);
    }
    apply(m, "f", EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE, T0, i++);

    struct affinity all[8], top[3];
    size_t n = model_top_categories(m, &P, all, 8);
    assert_int_equal(n, 6);
    const char *want[] = {"f", "b", "d", "e", "c", "a"};
    for (size_t k = 0; k < n; k++) {
        assert_string_equal(all[k].name, want[k]);
        if (k > 0)
            assert_true(all[k - 1].score >= all[k].score);
    }
    assert_int_equal(model_top_categories(m, &P, top, 3), 3);
    for (size_t k = 0; k < 3; k++) {
        assert_string_equal(top[k].name, want[k]);
        assert_true(top[k].score == all[k].score);
    }
    assert_int_equal(model_top_categories(m, &P, top, 0), 0);

    /* an older view counts less than a newer one of the same weight */
    Eddy__Store__V1__UserModel *m2 = model_new();
    apply(m2, "old", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, 0);
    apply(m2, "new", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0 + 86400000LL, 1);
    assert_int_equal(model_top_categories(m2, &P, top, 1), 1);
    assert_string_equal(top[0].name, "new");

    eddy__store__v1__user_model__free_unpacked(m, NULL);
    eddy__store__v1__user_model__free_unpacked(m2, NULL);
    (void)state;
}

/* Found by fuzz_store_values: a stored model whose category has a name but no score (a
 * damaged value: the writer always gives one) crashed the next event's apply in
 * decay_add. It now starts the score afresh. */
static void test_apply_to_a_stored_category_without_score(void **state)
{
    /* categories { name: "shoes" } and nothing else, as stored */
    static const uint8_t stored[] = {0x0a, 0x07, 0x0a, 0x05, 's', 'h', 'o', 'e', 's'};
    Eddy__Store__V1__UserModel *m = eddy__store__v1__user_model__unpack(NULL, sizeof(stored), stored);
    assert_non_null(m);
    assert_int_equal(m->n_categories, 1);
    assert_null(m->categories[0]->score);
    apply(m, "shoes", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, 1);
    assert_int_equal(m->n_categories, 1);
    assert_non_null(m->categories[0]->score);
    struct affinity top[1];
    assert_int_equal(model_top_categories(m, &P, top, 1), 1);
    assert_string_equal(top[0].name, "shoes");
    assert_true(top[0].score > 0.99 && top[0].score < 1.01); /* one view, weight 1, now */
    eddy__store__v1__user_model__free_unpacked(m, NULL);
    (void)state;
}

/* An event of user u1 with the given id, product and category (borrowed strings). */
static void apply_ev(Eddy__Store__V1__UserModel *m, const char *id, Eddy__V1__EventType type,
                     int64_t ts, const char *product, const char *category)
{
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = (char *)id;
    ev.user_id = "u1";
    ev.product_id = (char *)product;
    ev.category = (char *)category;
    ev.event_type = type;
    ev.timestamp_ms = ts;
    assert_int_equal(model_apply(m, &P, &ev), EDDY_OK);
}

/* Pairs of events at the same time, each pair applied in both orders (with the ids
 * swapped, so an order by event id would show): the packed models are the same, and
 * they hold no event id. The pairs: two products viewed (ordered by product id), one
 * product viewed under two categories (the greater kept), an add to cart and a removal
 * (the removal wins), two adds under two categories (the greater kept). */
static void test_same_time_events_in_either_order(void **state)
{
    (void)state;
    static const struct {
        Eddy__V1__EventType t1, t2;
        const char *p1, *c1, *p2, *c2;
    } pairs[] = {
        {EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, "pa", "c",
         "pb", "c"},
        {EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, "pa", "c1",
         "pa", "c2"},
        {EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART,
         EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART, "pa", "c", "pa", "c"},
        {EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART, EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART,
         "pa", "c1", "pa", "c2"},
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        uint8_t *buf[2];
        size_t len[2];
        for (int order = 0; order < 2; order++) {
            Eddy__Store__V1__UserModel *m = model_new();
            apply_ev(m, "e0", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, "p0", "c");
            const char *first = order ? "e2" : "e1", *second = order ? "e1" : "e2";
            if (order == 0) {
                apply_ev(m, first, pairs[i].t1, T0 + 5, pairs[i].p1, pairs[i].c1);
                apply_ev(m, second, pairs[i].t2, T0 + 5, pairs[i].p2, pairs[i].c2);
            } else {
                apply_ev(m, first, pairs[i].t2, T0 + 5, pairs[i].p2, pairs[i].c2);
                apply_ev(m, second, pairs[i].t1, T0 + 5, pairs[i].p1, pairs[i].c1);
            }
            struct pbenc_out o = {0};
            assert_true(model_pack(m, &o));
            buf[order] = o.buf;
            len[order] = o.len;
            for (size_t j = 0; j < m->n_views; j++)
                assert_string_equal(m->views[j]->event_id, "");
            for (size_t j = 0; j < m->n_cart; j++)
                assert_string_equal(m->cart[j]->event_id, "");
            if (i == 0) {
                assert_int_equal(m->n_views, 3);
                assert_string_equal(m->views[0]->id, "pb");
            } else if (i == 1) {
                assert_int_equal(m->n_views, 2);
                assert_string_equal(m->views[0]->category, "c2");
            } else {
                assert_int_equal(m->n_cart, 1);
                assert_int_equal(m->cart[0]->in_cart, i == 3);
                assert_string_equal(m->cart[0]->category, i == 3 ? "c2" : "c");
            }
            eddy__store__v1__user_model__free_unpacked(m, NULL);
        }
        assert_int_equal(len[0], len[1]);
        assert_memory_equal(buf[0], buf[1], len[0]);
        free(buf[0]);
        free(buf[1]);
    }
}

/* A model of format 4 (event ids in its entries, a tie in its views ordered by them)
 * converts to the bytes format 5 gives the same events; converting again changes nothing. */
static void test_convert_format4(void **state)
{
    (void)state;
    Eddy__Store__V1__UserModel *m = model_new();
    apply_ev(m, "x", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, "pa", "c");
    apply_ev(m, "y", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, T0, "pb", "c");
    apply_ev(m, "z", EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART, T0, "pc", "c");
    struct pbenc_out ow = {0}, og = {0};
    assert_true(model_pack(m, &ow));
    uint8_t *want = ow.buf;
    size_t wlen = ow.len;
    assert_false(model_convert(m));
    assert_string_equal(m->views[0]->id, "pb");
    Eddy__Store__V1__Recent *t = m->views[0]; /* format 4: "x" < "y", pa first */
    m->views[0] = m->views[1];
    m->views[1] = t;
    assert_int_equal(pb_set_str(&m->views[0]->event_id, "y"), EDDY_OK);
    assert_int_equal(pb_set_str(&m->views[1]->event_id, "x"), EDDY_OK);
    assert_int_equal(pb_set_str(&m->cart[0]->event_id, "z"), EDDY_OK);
    assert_true(model_convert(m));
    assert_false(model_convert(m));
    assert_true(model_pack(m, &og));
    uint8_t *got = og.buf;
    size_t glen = og.len;
    assert_int_equal(glen, wlen);
    assert_memory_equal(got, want, wlen);
    free(want);
    free(got);
    eddy__store__v1__user_model__free_unpacked(m, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_top_categories_are_the_head_of_the_full_order),
        cmocka_unit_test(test_apply_to_a_stored_category_without_score),
        cmocka_unit_test(test_same_time_events_in_either_order),
        cmocka_unit_test(test_convert_format4),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
