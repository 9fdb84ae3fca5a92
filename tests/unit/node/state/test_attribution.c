/* node/state/attribution.c: which impression an event is attributed to (by id, by window,
 * the latest, only listed products, only CLICK / ADD_TO_CART / PURCHASE), the list of a
 * user's latest impressions (bounded, oldest dropped), and recommendation accuracy in a
 * partition's counts (each listed product counted once, and once more when clicked or
 * bought). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "node/state/attribution.h"
#include "tests/unit/node/state/store_fixture.h"

#define MIN 60000LL

static Eddy__Store__V1__UserImpressions *impressions(void)
{
    Eddy__Store__V1__UserImpressions *ui = malloc(sizeof(*ui));
    assert_non_null(ui);
    eddy__store__v1__user_impressions__init(ui);
    return ui;
}

/* Add impression 'id' at 'ts' listing 'products' (NULL-terminated) to 'ui'. */
static void add(Eddy__Store__V1__UserImpressions *ui, const char *id, int64_t ts,
                const char *const *products)
{
    Eddy__Store__V1__Impression imp = EDDY__STORE__V1__IMPRESSION__INIT;
    size_t n = 0;
    while (products[n])
        n++;
    imp.recommendation_id = (char *)id;
    imp.user_id = (char *)"u";
    imp.experiment = (char *)"exp";
    imp.variant = (char *)"B";
    imp.ts = ts;
    imp.products = (char **)products;
    imp.n_products = n;
    imp.click_window_ms = 30 * MIN;
    imp.purchase_window_ms = 24 * 60 * MIN;
    assert_int_equal(attribution_add(ui, &imp), EDDY_OK);
}

static Eddy__V1__Event event(Eddy__V1__EventType type, const char *product, int64_t ts,
                             const char *rec_id)
{
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = (char *)"e";
    ev.user_id = (char *)"u";
    ev.event_type = type;
    ev.product_id = (char *)product;
    ev.timestamp_ms = ts;
    ev.recommendation_id = (char *)rec_id;
    return ev;
}

#define CLICK EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK
#define CART EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART
#define BUY EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE
#define VIEW EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW

static void test_window_latest_listing(void **state)
{
    (void)state;
    static const char *const first[] = {"p1", "p2", NULL}, *const second[] = {"p2", "p3", NULL};
    Eddy__Store__V1__UserImpressions *ui = impressions();
    int64_t t = 1700000000000;
    add(ui, "r1", t, first);
    add(ui, "r2", t + MIN, second);
    Eddy__V1__Event ev = event(CLICK, "p2", t + 2 * MIN, "");
    assert_int_equal(attribution_find(ui, &ev), 1); /* the latest that listed it */
    ev = event(CLICK, "p1", t + 2 * MIN, "");
    assert_int_equal(attribution_find(ui, &ev), 0); /* only the first listed p1 */
    ev = event(CLICK, "p9", t + 2 * MIN, "");
    assert_int_equal(attribution_find(ui, &ev), -1); /* listed by none */
    ev = event(VIEW, "p2", t + 2 * MIN, "");
    assert_int_equal(attribution_find(ui, &ev), -1); /* views are not attributed */
    /* the click window is 30 min, the purchase window 24 h */
    ev = event(CLICK, "p1", t + 31 * MIN, "");
    assert_int_equal(attribution_find(ui, &ev), -1);
    ev = event(CLICK, "p1", t + 30 * MIN, "");
    assert_int_equal(attribution_find(ui, &ev), 0);
    ev = event(BUY, "p1", t + 23 * 60 * MIN, "");
    assert_int_equal(attribution_find(ui, &ev), 0);
    ev = event(CART, "p1", t + 25 * 60 * MIN, "");
    assert_int_equal(attribution_find(ui, &ev), -1);
    /* an event before the answer: up to the skew allowance only */
    ev = event(CLICK, "p3", t + MIN - ATTRIBUTION_SKEW_MS, "");
    assert_int_equal(attribution_find(ui, &ev), 1);
    ev = event(CLICK, "p3", t + MIN - ATTRIBUTION_SKEW_MS - 1, "");
    assert_int_equal(attribution_find(ui, &ev), -1);
    eddy__store__v1__user_impressions__free_unpacked(ui, NULL);
}

static void test_by_id(void **state)
{
    (void)state;
    static const char *const first[] = {"p1", "p2", NULL}, *const second[] = {"p2", NULL};
    Eddy__Store__V1__UserImpressions *ui = impressions();
    int64_t t = 1700000000000;
    add(ui, "r1", t, first);
    add(ui, "r2", t + MIN, second);
    /* the id wins over the latest, and over the window */
    Eddy__V1__Event ev = event(CLICK, "p2", t + 40 * 24 * 60 * MIN, "r1");
    assert_int_equal(attribution_find(ui, &ev), 0);
    /* an id whose answer did not list the product, or unknown: nothing (no fallback) */
    ev = event(CLICK, "p1", t + 2 * MIN, "r2");
    assert_int_equal(attribution_find(ui, &ev), -1);
    ev = event(CLICK, "p2", t + 2 * MIN, "r-unknown");
    assert_int_equal(attribution_find(ui, &ev), -1);
    eddy__store__v1__user_impressions__free_unpacked(ui, NULL);
}

static void test_keeps_the_latest(void **state)
{
    (void)state;
    static const char *const p[] = {"p", NULL};
    Eddy__Store__V1__UserImpressions *ui = impressions();
    char id[16];
    for (int i = 0; i < ATTRIBUTION_KEEP + 3; i++) {
        snprintf(id, sizeof(id), "r%d", i);
        add(ui, id, 1000 + i, p);
    }
    assert_int_equal(ui->n_entries, ATTRIBUTION_KEEP);
    assert_string_equal(ui->entries[0]->impression->recommendation_id, "r3");
    assert_string_equal(ui->entries[ATTRIBUTION_KEEP - 1]->impression->recommendation_id, "r18");
    assert_string_equal(ui->entries[0]->impression->user_id, ""); /* the row's key has it */
    Eddy__V1__Event ev = event(CLICK, "p", 2000, "r1");
    assert_int_equal(attribution_find(ui, &ev), -1); /* dropped */
    eddy__store__v1__user_impressions__free_unpacked(ui, NULL);
}

/* The variant's counts in partition 'p' as the txn sees them. */
static Eddy__Store__V1__VariantCounts *counts_of(store_txn *t, uint32_t p, const char *variant)
{
    struct store_key k;
    ProtobufCMessage *c = NULL;
    key_init(&k, p, T_EXP_STAT);
    key_lstr(&k, "exp");
    key_str(&k, variant);
    assert_int_equal(store_txn_obj_get(t, &k, &eddy__store__v1__variant_counts__descriptor, &c),
                     EDDY_OK);
    assert_non_null(c);
    return (Eddy__Store__V1__VariantCounts *)c;
}

static void apply(store_txn *t, Eddy__V1__EventType type, const char *product, int64_t ts,
                  const char *rec_id, double price)
{
    Eddy__V1__Event ev = event(type, product, ts, rec_id);
    ev.price = price;
    assert_int_equal(attribution_event(t, 3, &ev), EDDY_OK);
}

static void test_accuracy_counts_each_listed_product_once(void **state)
{
    struct fx *f = *state;
    static const char *const listed[] = {"p1", "p2", "p3", "p4", NULL};
    int64_t t0 = 1700000000000;
    store_txn *t = store_txn_new(f->s);
    assert_non_null(t);
    Eddy__Store__V1__Impression imp = EDDY__STORE__V1__IMPRESSION__INIT;
    imp.recommendation_id = (char *)"r1";
    imp.user_id = (char *)"u";
    imp.experiment = (char *)"exp";
    imp.variant = (char *)"B";
    imp.ts = t0;
    imp.products = (char **)listed;
    imp.n_products = 4;
    imp.click_window_ms = 30 * MIN;
    imp.purchase_window_ms = 24 * 60 * MIN;
    assert_int_equal(attribution_impression(t, 3, &imp), EDDY_OK);
    Eddy__Store__V1__VariantCounts *c = counts_of(t, 3, "B");
    assert_int_equal(c->impressions, 1);
    assert_int_equal(c->recommended, 4);
    assert_int_equal(c->recommended_hits, 0);

    apply(t, CLICK, "p1", t0 + MIN, "", 0);          /* a hit */
    apply(t, CLICK, "p1", t0 + 2 * MIN, "", 0);      /* the same product: not again */
    apply(t, BUY, "p1", t0 + 3 * MIN, "", 10.0);     /* bought after the click: not again */
    apply(t, CLICK, "p2", t0 + 4 * MIN, "r1", 0);    /* a second product, by id: a hit */
    apply(t, CART, "p3", t0 + 5 * MIN, "", 0);       /* a cart is neither click nor buy */
    apply(t, VIEW, "p4", t0 + 5 * MIN, "", 0);       /* nor is a view */
    apply(t, CLICK, "p9", t0 + 5 * MIN, "", 0);      /* not listed */
    apply(t, BUY, "p4", t0 + 25 * 60 * MIN, "", 5.0); /* outside the purchase window */
    apply(t, BUY, "p3", t0 + 23 * 60 * MIN, "", 7.0); /* bought within it: a hit */
    c = counts_of(t, 3, "B");
    assert_int_equal(c->recommended, 4);
    assert_int_equal(c->recommended_hits, 3);
    assert_int_equal(c->impressions, 1);
    assert_int_equal(c->clicks, 1); /* CTR counts answers, once */
    assert_int_equal(c->add_to_carts, 1);
    assert_int_equal(c->purchases, 1);
    assert_true(c->revenue == 17.0);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);

    /* the pure rule on the stored entry: what is hit stays hit */
    Eddy__Store__V1__UserImpressions *ui = impressions();
    add(ui, "r2", t0, listed);
    Eddy__V1__Event ev = event(CLICK, "p4", t0 + MIN, "");
    assert_true(attribution_hit(ui->entries[0], &ev));
    uint32_t hit[] = {3};
    ui->entries[0]->hits = hit;
    ui->entries[0]->n_hits = 1;
    assert_false(attribution_hit(ui->entries[0], &ev));
    ev = event(CART, "p1", t0 + MIN, "");
    assert_false(attribution_hit(ui->entries[0], &ev));
    ui->entries[0]->hits = NULL;
    ui->entries[0]->n_hits = 0;
    eddy__store__v1__user_impressions__free_unpacked(ui, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_latest_listing),
        cmocka_unit_test(test_by_id),
        cmocka_unit_test(test_keeps_the_latest),
        cmocka_unit_test_setup_teardown(test_accuracy_counts_each_listed_product_once, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
