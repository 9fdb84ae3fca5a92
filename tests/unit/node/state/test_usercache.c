/* The user cache: a hit gives back what was put, a write of the user's model, BOUGHT or
 * SEEN rows (and nothing else's) turns it into a miss, entries are evicted to stay within
 * the budget, and Recommend through the cache answers exactly as without it, across writes
 * that change the answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/partition.h"
#include "node/state/query.h"
#include "node/state/stage2cache.h"
#include "node/state/store_txn.h"
#include "node/state/usercache.h"

#include "cache_fixture.h"

static uint32_t part(const char *user)
{
    return partition_of_user(user, FIXTURE_PARTITIONS);
}

static void assert_same_view(const struct user_recview *a, const struct user_recview *b)
{
    assert_int_equal(a->present, b->present);
    assert_true(a->last_ts == b->last_ts);
    assert_int_equal(a->ncats, b->ncats);
    for (size_t i = 0; i < a->ncats; i++) {
        assert_string_equal(a->cats[i], b->cats[i]);
        assert_true(a->affinity[i] == b->affinity[i]);
    }
    assert_int_equal(a->nrecent, b->nrecent);
    for (size_t i = 0; i < a->nrecent; i++)
        assert_string_equal(a->recent[i], b->recent[i]);
    assert_int_equal(a->ncart, b->ncart);
    for (size_t i = 0; i < a->ncart; i++)
        assert_string_equal(a->cart[i], b->cart[i]);
    assert_int_equal(a->nbought, b->nbought);
    for (size_t i = 0; i < a->nbought; i++)
        assert_string_equal(a->bought[i], b->bought[i]);
    assert_int_equal(a->nseen, b->nseen);
    for (size_t i = 0; i < a->nseen; i++)
        assert_string_equal(a->seen[i], b->seen[i]);
}

/* A committed txn that puts one row of 'table' for 'user' ('rest': the product, or none for
 * USER). */
static void write_row(store *st, enum store_table table, const char *user, const char *rest)
{
    struct store_key k;
    key_init(&k, part(user), table);
    if (rest) {
        key_lstr(&k, user);
        key_str(&k, rest);
    } else {
        key_str(&k, user);
    }
    store_txn *t = store_txn_new(st);
    assert_non_null(t);
    assert_int_equal(store_txn_put(t, &k, "", 0), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);
}

/* A put view comes back from a hit; any write of the user's USER key, BOUGHT or SEEN rows
 * makes the next lookup (at the stamp of now) miss; another user's writes do not. */
static void test_hit_miss_invalidation(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    store *st = engine_store(e);
    usercache *uc = usercache_new(st, 1 << 20);
    assert_non_null(uc);
    struct usercache_buf buf = {0};
    struct user_recview got;
    const char *cart[] = {"c1"}, *bought[] = {"b1", "b2"}, *seen[] = {"s1"};
    struct user_recview v = {.present = true, .last_ts = T0 + 5, .ncats = 2,
                             .cats = {"books", "toys"}, .affinity = {0.75, 0.25},
                             .nrecent = 3, .recent = {"r1", "r2", "r3"},
                             .cart = cart, .ncart = 1, .bought = bought, .nbought = 2,
                             .seen = seen, .nseen = 1};
    static const enum store_table tables[] = {T_USER, T_BOUGHT, T_SEEN};
    for (size_t t = 0; t < 3; t++) {
        uint64_t s0 = usercache_stamp(uc, part("u1"), "u1");
        usercache_put(uc, "u1", s0, &v);
        assert_true(usercache_get(uc, "u1", usercache_stamp(uc, part("u1"), "u1"), &buf, &got));
        assert_same_view(&v, &got);

        write_row(st, tables[t], "someone-else", tables[t] == T_USER ? NULL : "x");
        assert_true(usercache_get(uc, "u1", usercache_stamp(uc, part("u1"), "u1"), &buf, &got));

        write_row(st, tables[t], "u1", tables[t] == T_USER ? NULL : "p9");
        uint64_t s1 = usercache_stamp(uc, part("u1"), "u1");
        assert_true(s1 != s0);
        assert_false(usercache_get(uc, "u1", s1, &buf, &got));
    }
    /* a user without a model is cached as such */
    struct user_recview none = {0};
    usercache_put(uc, "nobody", usercache_stamp(uc, part("nobody"), "nobody"), &none);
    assert_true(
        usercache_get(uc, "nobody", usercache_stamp(uc, part("nobody"), "nobody"), &buf, &got));
    assert_false(got.present);
    struct usercache_stats stt;
    usercache_stats(uc, &stt);
    assert_int_equal(stt.hits, 7);
    assert_int_equal(stt.misses, 3);
    usercache_buf_release(&buf);
    usercache_free(uc);
}

/* Entries are evicted so that the cache stays within its budget; the ones just used stay. */
static void test_eviction_under_budget(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    const size_t budget = 1 << 20;
    usercache *uc = usercache_new(engine_store(e), budget);
    assert_non_null(uc);
    struct usercache_buf buf = {0};
    struct user_recview got;
    const char *bought[20];
    char ids[20][32];
    for (int i = 0; i < 20; i++) {
        snprintf(ids[i], sizeof(ids[i]), "product-%023d", i);
        bought[i] = ids[i];
    }
    struct user_recview v = {.present = true, .bought = bought, .nbought = 20};
    char user[32];
    for (int u = 0; u < 4000; u++) {
        snprintf(user, sizeof(user), "user-%d", u);
        usercache_put(uc, user, 7, &v);
        struct usercache_stats st;
        usercache_stats(uc, &st);
        assert_true(st.bytes <= budget);
        if (u > 0 && u % 10 == 0) /* user-0 is used all along: the clock keeps it */
            assert_true(usercache_get(uc, "user-0", 7, &buf, &got));
    }
    struct usercache_stats st;
    usercache_stats(uc, &st);
    assert_true(st.evictions > 2000);
    assert_true(st.entries < 2000 && st.entries > 500);
    assert_true(usercache_get(uc, "user-0", 7, &buf, &got));
    assert_same_view(&v, &got);
    assert_true(usercache_get(uc, "user-3999", 7, &buf, &got));
    assert_false(usercache_get(uc, "user-3999", 8, &buf, &got)); /* another stamp: a miss */

    /* an entry over an eighth of its shard's budget is not cached */
    const char *many[600];
    for (int i = 0; i < 600; i++)
        many[i] = ids[i % 20];
    struct user_recview big = {.present = true, .bought = many, .nbought = 600};
    usercache_put(uc, "big", 7, &big);
    assert_false(usercache_get(uc, "big", 7, &buf, &got));
    usercache_buf_release(&buf);
    usercache_free(uc);

    /* a budget of 0 caches nothing */
    uc = usercache_new(engine_store(e), 0);
    assert_non_null(uc);
    usercache_put(uc, "user-0", 7, &v);
    assert_false(usercache_get(uc, "user-0", 7, &buf, &got));
    usercache_free(uc);
}

static bool lists(const Eddy__V1__RecommendResponse *r, const char *product)
{
    for (size_t i = 0; i < r->n_items; i++)
        if (strcmp(r->items[i]->product_id, product) == 0)
            return true;
    return false;
}

/* Recommend through the user cache answers exactly as without it, for every user, with and
 * without the interacted products left out, before and after events that change the
 * answers (a purchase must leave the product out at once). */
static void test_recommend_same(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    stage2cache *sc = stage2cache_new(engine_store(e), &engine_options(e)->product, 0, 50);
    assert_non_null(sc);
    usercache *uc = usercache_new(engine_store(e), 1 << 20);
    assert_non_null(uc);
    struct query_ctx q0 = {e, sc, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    struct query_ctx q1 = {e, sc, 10, 100, NULL, NULL, 0, uc, NULL, false};
    static const Eddy__V1__Exclusion excl[] = {EDDY__V1__EXCLUSION__EXCLUSION_PURCHASED,
                                               EDDY__V1__EXCLUSION__EXCLUSION_INTERACTED};
    int bought_listed = 0;
    for (int round = 0; round < 3; round++) {
        for (int u = 0; u < 31; u++) {
            char user[16];
            snprintf(user, sizeof(user), "u%d", u);
            for (int x = 0; x < 2; x++) {
                Eddy__V1__RecommendRequest rr = EDDY__V1__RECOMMEND_REQUEST__INIT;
                rr.user_id = user;
                rr.max_recommendations = 50;
                rr.exclude = excl[x];
                Eddy__V1__RecommendResponse *a = NULL, *b = NULL;
                assert_int_equal(query_recommend(&q0, &rr, &a), EDDY_OK);
                assert_int_equal(query_recommend(&q1, &rr, &b), EDDY_OK);
                assert_same_answer(a, b);
                if (round == 1 && x == 0 && u < 10)
                    bought_listed += lists(a, pid[(u + 7) % (NPROD - 2)]);
                if (round == 2 && u < 10)
                    assert_false(lists(b, pid[(u + 7) % (NPROD - 2)]));
                query_free_response(&a->base);
                query_free_response(&b->base);
            }
        }
        if (round == 0) { /* users u0..u9 put one product in the cart, view another */
            static char ids[20][16];
            Eddy__V1__Event *ev[20];
            for (int u = 0; u < 10; u++) {
                static char users[10][16];
                snprintf(users[u], sizeof(users[u]), "u%d", u);
                snprintf(ids[2 * u], sizeof(ids[0]), "r1-%d", u);
                snprintf(ids[2 * u + 1], sizeof(ids[0]), "r1b-%d", u);
                ev[2 * u] = mk(ids[2 * u], users[u], T0 + 3600000, CART, pid[(u + 1) % 22], "toys");
                ev[2 * u + 1] = mk(ids[2 * u + 1], users[u], T0 + 3600001, VIEW,
                                   pid[(u + 7) % (NPROD - 2)], "books");
            }
            ingest(e, ev, 20);
            for (int i = 0; i < 20; i++)
                free(ev[i]);
        } else if (round == 1) { /* then buy the viewed one: never recommended again */
            static char ids[10][16], users[10][16];
            Eddy__V1__Event *ev[10];
            for (int u = 0; u < 10; u++) {
                snprintf(users[u], sizeof(users[u]), "u%d", u);
                snprintf(ids[u], sizeof(ids[0]), "r2-%d", u);
                ev[u] = mk(ids[u], users[u], T0 + 3600002, BUY, pid[(u + 7) % (NPROD - 2)],
                           "books");
            }
            ingest(e, ev, 10);
            for (int i = 0; i < 10; i++)
                free(ev[i]);
        }
    }
    assert_true(bought_listed > 0); /* the purchases did change answers */
    struct usercache_stats st;
    usercache_stats(uc, &st);
    assert_true(st.hits >= 31 + 21); /* a user's second request of a round, and the
                                      * unchanged users' later rounds */
    assert_true(st.misses >= 31 + 20);
    usercache_free(uc);
    stage2cache_free(sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hit_miss_invalidation, filled_setup,
                                        filled_teardown),
        cmocka_unit_test_setup_teardown(test_eviction_under_budget, filled_setup,
                                        filled_teardown),
        cmocka_unit_test_setup_teardown(test_recommend_same, filled_setup, filled_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
