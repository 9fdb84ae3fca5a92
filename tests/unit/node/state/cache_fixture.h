/* What the Recommend cache tests (popcache, nbcache, stage2cache, usercache) share: an
 * engine filled with co-occurring views of NPROD products in a fresh directory per test
 * (cmocka setup / teardown), a clock the tests move by hand, and bit-for-bit comparisons of
 * lists and of Recommend answers.
 * Header-only: include it after <cmocka.h> in one test file each. */
#ifndef EDDY_TEST_CACHE_FIXTURE_H
#define EDDY_TEST_CACHE_FIXTURE_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "eddy/v1/eddy.pb-c.h"
#include "node/state/engine.h"
#include "node/state/recommend.h"

#include "engine_fixture.h"

#define NPROD 24

static char pid[NPROD][16];

/* 30 users each view 6 products (overlapping windows of the catalogue) a few seconds
 * apart: every product gets co-occurrence neighbours with different scores and ties. */
static inline engine *fill(const char *dir, struct engine_opts *o)
{
    *o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(o, &e, err, sizeof(err)), EDDY_OK);
    static char ids[30 * 6][16], users[30][16];
    Eddy__V1__Event *ev[30 * 6];
    size_t n = 0;
    for (int i = 0; i < NPROD; i++)
        snprintf(pid[i], sizeof(pid[i]), "p%d", i);
    for (int u = 0; u < 30; u++) {
        snprintf(users[u], sizeof(users[u]), "u%d", u);
        for (int k = 0; k < 6; k++) {
            snprintf(ids[n], sizeof(ids[n]), "e%d-%d", u, k);
            int p = (u * 5 + k * (1 + u % 3)) % (NPROD - 2); /* p22, p23: no state */
            ev[n] = mk(ids[n], users[u], T0 + u * 60000LL + k * 1000LL + (u % 4) * 7, VIEW,
                       pid[p], p % 3 == 0 ? "books" : p % 3 == 1 ? "toys" : "");
            n++;
        }
    }
    ingest(e, ev, n);
    for (size_t i = 0; i < n; i++)
        free(ev[i]);
    return e;
}

/* Each test's engine, filled by fill() in its own directory (cmocka setup / teardown). */
struct filled {
    char *dir;
    struct engine_opts o;
    engine *e;
};

static inline int filled_setup(void **state)
{
    struct filled *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->dir = tmpdir_for("stage2cache");
    f->e = fill(f->dir, &f->o);
    *state = f;
    return 0;
}

static inline int filled_teardown(void **state)
{
    struct filled *f = *state;
    engine_close(f->e);
    rmrf(f->dir);
    free(f->dir);
    free(f);
    return 0;
}


/* The caches' clock: moved by hand (advance), so that expiry does not depend on how long
 * the test takes to get from one call to the next. */
static _Atomic int64_t fake_ms = 1000000;

static inline int64_t fake_clock(void)
{
    return atomic_load(&fake_ms);
}

static inline void advance(int64_t ms)
{
    atomic_fetch_add(&fake_ms, ms);
}

static inline void assert_same_list(const struct scored_product *a, size_t na,
                             const struct scored_product *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(a[i].product_id, b[i].product_id);
        assert_string_equal(a[i].category, b[i].category);
        assert_true(a[i].score == b[i].score); /* bit-identical, not approximately */
    }
}

/* Two Recommend answers are the same, scores bit for bit. */
static inline void assert_same_answer(const Eddy__V1__RecommendResponse *a,
                                      const Eddy__V1__RecommendResponse *b)
{
    assert_int_equal(a->cold_start, b->cold_start);
    assert_int_equal(a->n_items, b->n_items);
    for (size_t i = 0; i < a->n_items; i++) {
        assert_string_equal(a->items[i]->product_id, b->items[i]->product_id);
        assert_string_equal(a->items[i]->reason, b->items[i]->reason);
        assert_string_equal(a->items[i]->category, b->items[i]->category);
        assert_true(a->items[i]->score == b->items[i]->score); /* bit-identical */
    }
}

#endif
