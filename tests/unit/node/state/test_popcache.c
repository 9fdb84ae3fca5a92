/* The popularity lists: lists refreshed together in one pass (by the refresher thread)
 * equal lists read alone, bit for bit; a list not cached yet is read once for concurrent
 * callers, and a read that fails is not cached. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "node/state/popcache.h"

#include "cache_fixture.h"

/* A list cache of the filled engine's store: lists of 50, valid for 'staleness_ms', aged
 * by the fake clock. */
static popcache *cache_new(engine *e, int64_t staleness_ms)
{
    popcache *pc = popcache_new(engine_store(e), &engine_options(e)->product, staleness_ms, 50);
    assert_non_null(pc);
    popcache_set_clock(pc, fake_clock);
    return pc;
}

/* Every list of a fresh cache (each read alone, nothing else in use). */
static void fresh_lists(engine *e, const char *const *cats, size_t ncats,
                        struct scored_product (*out)[50], size_t *n)
{
    for (size_t c = 0; c < ncats; c++) {
        popcache *pc = cache_new(e, 0);
        assert_int_equal(popcache_top(pc, cats[c], out[c], NULL, 50, &n[c]), EDDY_OK);
        popcache_free(pc);
    }
}

/* 40 views of 'product' ('category') by 'user', event ids "<prefix>-<i>". */
static void forty_views(engine *e, const char *prefix, const char *user, const char *product,
                        const char *category)
{
    char ids[40][16];
    Eddy__V1__Event *ev[40];
    for (int i = 0; i < 40; i++) {
        snprintf(ids[i], sizeof(ids[i]), "%s-%d", prefix, i);
        ev[i] = mk(ids[i], user, T0 + 1800000 + i, VIEW, product, category);
    }
    ingest(e, ev, 40);
    for (int i = 0; i < 40; i++)
        free(ev[i]);
}

/* Lists in use expire together and come back from one pass over the index, run by the
 * refresher thread: the call that finds them expired answers the previous list, and
 * afterwards every list is the same (bit for bit) as each read alone from a fresh cache,
 * before and after more events change the popularity; a category read alone too. */
static void test_lists_refreshed_together(void **state)
{
    engine *e = ((struct filled *)*state)->e;
    const char *cats[] = {"", "books", "toys", "none-such"};
    static struct scored_product want[4][50], old[4][50], got[50];
    size_t nwant[4], nold[4], n;
    popcache *pc = cache_new(e, 100);
    fresh_lists(e, cats, 4, want, nwant);
    assert_true(nwant[0] > nwant[1] && nwant[1] > 0 && nwant[2] > 0 && nwant[3] == 0);
    for (int round = 0; round < 2; round++) { /* the second round finds them cached: in use */
        for (size_t c = 0; c < 4; c++) {
            assert_int_equal(popcache_top(pc, cats[c], got, NULL, 50, &n), EDDY_OK);
            assert_same_list(want[c], nwant[c], got, n);
        }
    }

    /* p1 (toys) becomes the most popular product of all */
    forty_views(e, "more", "u99", pid[1], "toys");
    memcpy(old, want, sizeof(old));
    memcpy(nold, nwant, sizeof(nold));
    fresh_lists(e, cats, 4, want, nwant);
    assert_string_equal(want[0][0].product_id, "p1");
    assert_string_equal(want[2][0].product_id, "p1");
    assert_string_not_equal(old[0][0].product_id, "p1");
    advance(150); /* every list expired */
    assert_int_equal(popcache_top(pc, cats[0], got, NULL, 50, &n), EDDY_OK);
    assert_same_list(old[0], nold[0], got, n); /* the refresh is not this call's */
    popcache_sync(pc); /* the refresher read all four in use */
    for (size_t c = 0; c < 4; c++) {
        assert_int_equal(popcache_top(pc, cats[c], got, NULL, 50, &n), EDDY_OK);
        assert_same_list(want[c], nwant[c], got, n);
    }
    /* not read for more than twice the staleness: read again by the call itself */
    memcpy(old, want, sizeof(old));
    memcpy(nold, nwant, sizeof(nold));
    forty_views(e, "again", "u98", pid[3], "books");
    fresh_lists(e, cats, 4, want, nwant);
    assert_true(want[1][0].score != old[1][0].score); /* p3 leads "books" by more now */
    advance(250);
    assert_int_equal(popcache_top(pc, "books", got, NULL, 50, &n), EDDY_OK);
    assert_same_list(want[1], nwant[1], got, n);
    popcache_free(pc);
    /* a cache where only "books" is in use: refreshed alone, from its own key ranges */
    pc = cache_new(e, 100);
    for (int round = 0; round < 3; round++) {
        assert_int_equal(popcache_top(pc, "books", got, NULL, 3, &n), EDDY_OK);
        assert_same_list(want[1], nwant[1] < 3 ? nwant[1] : 3, got, n);
        advance(150);
    }
    popcache_free(pc);
}

/* A source whose list reads block until released, counting the reads. */
struct gated_src {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    int calls;
};

static eddy_err gated_top(void *ud, const char *category, struct topk *out)
{
    struct gated_src *g = ud;
    pthread_mutex_lock(&g->mu);
    g->calls++;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    if (strcmp(category, "down") == 0)
        return EDDY_ERR_UNAVAILABLE;
    for (int i = 0; i < 3; i++) {
        char id[32];
        struct decay_sum v = {7, 10 - i, 0};
        snprintf(id, sizeof(id), "%s-%d", category, i);
        topk_offer_sum(out, id, strlen(id), category, strlen(category), &v);
    }
    return EDDY_OK;
}

struct top_call {
    popcache *pc;
    const char *category;
    struct scored_product out[50];
    size_t n;
    eddy_err err;
};

static void *top_thread(void *arg)
{
    struct top_call *c = arg;
    c->err = popcache_top(c->pc, c->category, c->out, NULL, 50, &c->n);
    return NULL;
}

/* Callers of a list not cached yet wait for the one thread reading it: one read, the same
 * answer for all. A read that fails is not cached: the next call reads again. */
static void test_cold_list_read_once(void **state)
{
    (void)state;
    struct gated_src g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};
    struct popcache_source src = {gated_top, &g};
    struct product_params pp = {8, {86400000, 8}, {7 * 86400000LL, 8}, 50, 0};
    popcache *pc = popcache_new(NULL, &pp, 3600000, 50);
    popcache_set_source(pc, &src);
    static struct top_call calls[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        calls[i] = (struct top_call){.pc = pc, .category = "books"};
        if (i == 1) { /* the first caller is inside the read before the others start */
            pthread_mutex_lock(&g.mu);
            while (g.calls == 0)
                pthread_cond_wait(&g.cv, &g.mu);
            pthread_mutex_unlock(&g.mu);
        }
        assert_int_equal(pthread_create(&th[i], NULL, top_thread, &calls[i]), 0);
    }
    struct timespec pause = {0, 50 * 1000000L}; /* time for a second read, if one came */
    nanosleep(&pause, NULL);
    pthread_mutex_lock(&g.mu);
    assert_int_equal(g.calls, 1);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(calls[i].err, EDDY_OK);
        assert_same_list(calls[0].out, calls[0].n, calls[i].out, calls[i].n);
    }
    assert_int_equal(calls[0].n, 3);
    assert_string_equal(calls[0].out[0].product_id, "books-0");
    assert_int_equal(g.calls, 1);

    static struct scored_product out[50];
    size_t n;
    assert_int_equal(popcache_top(pc, "down", out, NULL, 50, &n), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(popcache_top(pc, "down", out, NULL, 50, &n), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(g.calls, 3);
    assert_int_equal(popcache_top(pc, "books", out, NULL, 50, &n), EDDY_OK);
    assert_int_equal(g.calls, 3); /* cached */
    popcache_free(pc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lists_refreshed_together, filled_setup, filled_teardown),
        cmocka_unit_test(test_cold_list_read_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
